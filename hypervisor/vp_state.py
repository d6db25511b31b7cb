"""Saving and restoring what the hypervisor keeps of a partition (issue 13): the root's
``partition_save_request`` and ``partition_restore_request`` (proto/save_messages.py).

Saved only under pause with no VP executing guest code: every VP is then at an exit,
so its register block is the one its last exit carried, and nothing changes guest memory
while the root copies it.  Timers travel as the time left on them (the local APIC's and
the synthetic timers'), and the reference time as its value at the save: restored, they
go on from there, so the partition's time stands still across the gap — as Hyper-V's
reference time does while a partition is saved (TLFS: the TSC page "will appear to stop").
The TSC page is published again with a new TscSequence, its offset made from the new
creation time.

A restore goes into a partition none of whose VPs has connected yet (the root does it
right after creating the partition, before it starts the partition's process), and
checks every field (:mod:`proto.partition_state`) before it changes anything.
"""

from __future__ import annotations

import logging
import time
from time import perf_counter_ns

import msgpack

from proto import messages as m
from proto import partition_state as ps
from proto.codes import HvPartitionState
from proto.save_messages import MAX_STATE_BYTES
from proto.saved_state import SavedStateError

from hypervisor.apic import Apic
from hypervisor.synic import QueuedMessage, SynicVp

log = logging.getLogger("hypervisor")
APIC_INTS, SCHED_FIELDS = ps.APIC_INTS, ps.SCHED_FIELDS  # (what is saved, and checked there)
MAX_PENDING = 256  # pending vectors a record holds (proto/partition_state.py checks it)


def _left(deadline: int | None, now: int) -> int | None:
    return None if deadline is None else max(0, deadline - now)


def save(part, now: int, untaken=lambda vp: []) -> dict:
    """``{"hypervisor": …, "vps": […]}`` of ``part``, now (perf_counter_ns); ``untaken(vp)``:
    the vectors posted to ``vp`` that it has not taken yet (hypervisor/posted.py) — in
    service here since they were posted, so pending in the record: restored, they come with
    the first resume instead of being lost with the source's VP process."""
    vps = []
    for vp in part.vps:
        a, s = vp.apic, vp.synic
        vps.append({
            "index": vp.index, "rflags": vp.rflags, "cr3": vp.cr3, "suspended": vp.sched.suspended,
            "assist_page": vp.assist_page,
            "pending": ([vector for vector, _ in vp.interrupts.pending] + untaken(vp))[:MAX_PENDING],
            "apic": {**{k: getattr(a, k) for k in APIC_INTS},
                     "isr": ps.mask_to_bytes(a.isr), "irr": ps.mask_to_bytes(a.irr),
                     "auto_eoi": ps.mask_to_bytes(a.auto_eoi),
                     "timer_remaining_ns": _left(a.timer_deadline_ns, now),
                     "assist_enabled": a.assist_enabled},
            "synic": {"scontrol": s.scontrol, "siefp": s.siefp, "simp": s.simp, "sints": list(s.sints),
                      "queues": [[[q.message_type, q.payload, q.origin] for q in queue] for queue in s.queues],
                      "stimers": [{"config": t.config, "count": t.count, "due_ref": t.due_ref,
                                   "remaining_ns": _left(t.deadline_ns, now)} for t in s.stimers]},
            "sched": {**{k: getattr(vp.sched, k) for k in SCHED_FIELDS}, "vruntime": vp.sched.vruntime},
        })
    hv = {"guest_os_id": part.guest_os_id, "hypercall_msr": part.hypercall_msr,
          "reference_tsc": part.reference_tsc, "tsc_sequence": part.tsc_sequence,
          "reference_time_100ns": part.reference_time_100ns(), "clock_offset_ns": part.clock_offset_ns}
    return {"hypervisor": hv, "vps": vps}


def restore(part, state: dict, now: int, synic, interrupts) -> None:
    """Set ``part``'s state from ``state`` (checked here, all of it, before anything
    changes); SavedStateError naming the field otherwise."""
    hv = ps.check_hypervisor(state.get("hypervisor") if isinstance(state, dict) else None)
    vps = ps.check_vps(state.get("vps"))
    if len(vps) != len(part.vps):
        raise ps.WrongShape(f"saved state has {len(vps)} VPs; partition {part.id} has {len(part.vps)}")
    for vp, saved in zip(part.vps, vps):
        a = saved["apic"]
        vp.rflags, vp.cr3, vp.assist_page = saved["rflags"] | m.RFLAGS_FIXED, saved["cr3"], saved["assist_page"]
        vp.regs_written.clear()
        # Not HvRegisterExplicitSuspend: the root starts the VPs once the partition's worker
        # is ready, as for any partition (root/run.py); the saved value is only a record.
        apic = Apic(vp.index)
        for k in APIC_INTS:
            setattr(apic, k, a[k])
        apic.isr, apic.irr = ps.mask_from_bytes(a["isr"]), ps.mask_from_bytes(a["irr"])
        apic.auto_eoi = ps.mask_from_bytes(a["auto_eoi"])
        apic.assist_enabled = a["assist_enabled"]
        if a["timer_remaining_ns"] is not None:
            apic.timer_deadline_ns = now + a["timer_remaining_ns"]
        vp.apic = apic
        vp.interrupts.clear()
        for vector in saved["pending"]:
            vp.interrupts.post(vector, ())
        s, syn = saved["synic"], SynicVp()
        syn.scontrol, syn.siefp, syn.simp, syn.sints = s["scontrol"], s["siefp"], s["simp"], list(s["sints"])
        for queue, msgs in zip(syn.queues, s["queues"]):
            queue.extend(QueuedMessage(t, payload, origin, now) for t, payload, origin in msgs)
        for t, st in zip(syn.stimers, s["stimers"]):
            t.config, t.count, t.due_ref = st["config"], st["count"], st["due_ref"]
            t.deadline_ns = None if st["remaining_ns"] is None else now + st["remaining_ns"]
        vp.synic = syn
        for k in SCHED_FIELDS:
            setattr(vp.sched, k, saved["sched"][k])
    part.guest_os_id, part.hypercall_msr = hv["guest_os_id"], hv["hypercall_msr"]
    part.reference_tsc, part.tsc_sequence = hv["reference_tsc"], hv["tsc_sequence"]
    # The reference time goes on from its saved value: created_ns is moved so that
    # reference_time_100ns() (and the TSC page's offset, made from it) is that value now.
    part.clock_offset_ns = hv["clock_offset_ns"]
    part.created_ns = time.monotonic_ns() + part.clock_offset_ns - hv["reference_time_100ns"] * 100
    # What an MSR write would set in motion: the TSC page published again (if enabled) with
    # a new TscSequence, the AutoEOI vectors told to the APIC, the timers rescheduled.
    part.vps[0].synic.actions |= {"tsc_page", "stimer"}
    for vp in part.vps:
        vp.synic.actions.add("sints")
        synic.after_wrmsr(part, vp)
    interrupts.timers_changed()


class PartitionStates:
    """The root's save and restore requests' handlers, and the VPs' answers to
    ``vp_state_query``."""

    def __init__(self, *, table, outbox, synic, interrupts, posted=None) -> None:
        self._table = table
        self._posted = posted  # hypervisor.posted.PostedDescriptors, or None
        self._outbox = outbox
        self._synic = synic
        self._interrupts = interrupts
        # partition id → (the root's identity, each VP's answer or None): a vp_state_request
        # being answered.  A new request replaces one whose VPs never all answered.
        self._collecting: dict[int, tuple[bytes, list]] = {}

    def _saveable(self, identity: bytes, msg):
        """The partition, paused with every VP at an exit; None (refused) otherwise."""
        part = self._part(identity, msg)
        if part is None:
            return None
        if not part.cpu.paused:
            self._outbox.error(identity, msg.TYPE, "OUT_OF_TURN", f"pause partition {part.id} first")
            return None
        running = [vp.index for vp in part.vps if vp.sched.executing]
        if running:
            self._outbox.error(identity, msg.TYPE, "OUT_OF_TURN",
                               f"partition {part.id}: VPs {running} still executing guest code")
            return None
        return part

    def on_vp_state_request(self, identity: bytes, peer, msg: m.VpStateRequest, t_in: int) -> None:
        part = self._saveable(identity, msg)
        if part is None:
            return
        missing = [vp.index for vp in part.vps if vp.peer is None]
        if missing:
            return self._outbox.error(identity, msg.TYPE, "OUT_OF_TURN",
                                      f"partition {part.id}: VPs {missing} have not connected")
        self._collecting[part.id] = (identity, [None] * len(part.vps))
        for vp in part.vps:
            self._outbox.send(vp.peer, m.VpStateQuery(part.id))

    def on_vp_state_reply(self, identity: bytes, peer, msg: m.VpStateReply, t_in: int) -> None:
        part, vp = peer.partition, peer.vp
        pending = self._collecting.get(part.id) if part is not None and vp is not None else None
        if pending is None or pending[1][vp.index] is not None:
            return self._outbox.error(identity, msg.TYPE, "OUT_OF_TURN", "no VP state was asked for")
        root, answers = pending
        answers[vp.index] = (msg.boundary, msg.state)
        if all(a is not None for a in answers):
            del self._collecting[part.id]
            states = msgpack.packb([list(a) for a in answers], use_bin_type=True)
            if len(states) > MAX_STATE_BYTES:
                return self._outbox.error(root, m.VpStateRequest.TYPE, "CONFLICT", "the VPs' states are too large")
            self._outbox.send(root, m.VpStates(part.id, states))

    def _part(self, identity: bytes, msg):
        part = self._table.get(msg.partition)
        if part is None:
            self._outbox.error(identity, msg.TYPE, "UNKNOWN_PARTITION", f"no partition {msg.partition}")
        elif part.state in (HvPartitionState.FINALIZED, HvPartitionState.DELETED):
            self._outbox.error(identity, msg.TYPE, "CONFLICT", f"partition {part.id} is stopped")
            part = None
        return part

    def on_save_request(self, identity: bytes, peer, msg: m.PartitionSaveRequest, t_in: int) -> None:
        part = self._saveable(identity, msg)
        if part is None:
            return
        untaken = self._posted.untaken if self._posted is not None else (lambda vp: [])
        blob = msgpack.packb(save(part, perf_counter_ns(), untaken), use_bin_type=True)
        if len(blob) > MAX_STATE_BYTES:
            return self._outbox.error(identity, msg.TYPE, "CONFLICT",
                                      f"partition {part.id}'s state is {len(blob)} bytes, over {MAX_STATE_BYTES}")
        self._outbox.send(identity, m.PartitionState(part.id, blob))

    def on_restore_request(self, identity: bytes, peer, msg: m.PartitionRestoreRequest, t_in: int) -> None:
        part = self._part(identity, msg)
        if part is None:
            return
        connected = [vp.index for vp in part.vps if vp.peer is not None]
        if connected:
            return self._outbox.error(identity, msg.TYPE, "OUT_OF_TURN",
                                      f"partition {part.id}: VPs {connected} already connected")
        try:
            state = msgpack.unpackb(msg.state, raw=False, strict_map_key=True)
            restore(part, state, perf_counter_ns(), self._synic, self._interrupts)
        except (ValueError, msgpack.UnpackException, SavedStateError) as e:
            return self._outbox.error(identity, msg.TYPE, "INVALID_FIELD", str(e)[:500])
        log.info("partition %d: hypervisor state restored (%d VPs, reference time %d)", part.id,
                 len(part.vps), part.reference_time_100ns())
        self._outbox.send(identity, m.Ack(msg.TYPE))
