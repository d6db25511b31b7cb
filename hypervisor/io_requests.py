"""``io``'s qtest-style operations beyond one instruction (:mod:`proto.io_messages`).

What a conformance test needs around the instructions ``RootRequests.on_execute_request``
executes: guest memory in bulk and the VP's registers; a hypercall made the guest's way —
the input value in RCX and the input and output pages' GPAs in RDX and R8, the input read
from guest memory and the output written back there, as the hypervisor does for a VP's
VMCALL; the interrupts delivered (``irq_log.py``); and stepping a paused partition's clocks.

Memory is reached only through the named partition's own SLAT: a GPA its map does not have
is refused (UNMAPPED_GPA), whoever's pages lie behind it.  ``clock_step`` adds to the
partition's clocks — the reference counter (HV_X64_MSR_TIME_REF_COUNT), its VPs' local
APIC timers and its worker's device clock (PIT, RTC, UART) — on top of host time, which
goes on underneath; what falls due in the stepped interval fires at once (an APIC timer
that missed periods fires once, as a late tick does; the PIT and RTC catch up as their
poll does).  Only a paused partition may be stepped, so that no VP sees time jump while it
runs.
"""

from __future__ import annotations

from time import perf_counter_ns

from proto import messages as m
from proto.codes import HvPartitionState, HvStatus, HypercallInput, result_value
from proto.fields import GPA_LIMIT
from proto.io_messages import MAX_IO_BYTES
from proto.memory import PAGE_SHIFT

from hypervisor.partitions import Partition

PAGE = 1 << PAGE_SHIFT
# The largest single clock step: a day (the RTC's calendar and the reference counter take
# any, but a typo of a few digits should not send a partition years ahead).
MAX_CLOCK_STEP_NS = 86_400 * 1_000_000_000


class IoRequests:
    def __init__(self, *, table, outbox, memory, intercepts, registers, interrupts, forwarding) -> None:
        self._table = table
        self._outbox = outbox
        self._memory = memory
        self._intercepts = intercepts
        self._registers = registers
        self._interrupts = interrupts
        self._forwarding = forwarding
        # One handler per operation of proto.io_messages.IO_OPS.
        self._ops = {"read": self._read, "write": self._write, "get_reg": self._get_reg, "set_reg": self._set_reg,
                     "hypercall_gpa": self._hypercall_gpa, "irqs_apic": self._irqs_apic,
                     "irqs_pic": self._irqs_pic, "clock_step": self._clock_step}

    def on_io_request(self, identity: bytes, peer, msg: m.IoRequest, t_in: int) -> None:
        part = self._table.get(msg.partition)
        if part is None:
            return self._refuse(identity, "UNKNOWN_PARTITION", f"no partition {msg.partition}")
        if part.state is HvPartitionState.FINALIZED:  # no VP, no memory: nothing to reach
            return self._refuse(identity, "CONFLICT", f"partition {part.id} is stopped")
        if msg.vp >= len(part.vps):
            return self._refuse(identity, "UNKNOWN_VP", f"partition {part.id} has no VP {msg.vp}")
        self._ops[msg.op](identity, part, part.vps[msg.vp], msg)

    def _refuse(self, identity: bytes, code: str, text: str) -> None:
        self._outbox.error(identity, m.IoRequest.TYPE, code, text)

    def _reply(self, identity: bytes, msg, value: int = 0, data: bytes = b"", fault: int = 0,
               dropped: int = 0) -> None:
        self._outbox.send(identity, m.IoReply(msg.seq, fault, value, data, dropped))

    # -- guest memory -------------------------------------------------------------------------

    def _ram(self, part: Partition, gpa: int, length: int) -> list[tuple[int, int]] | str:
        """The RAM file's (offset, length) pieces of [gpa, gpa + length), page by page
        through the partition's SLAT, or why not."""
        if gpa + length > GPA_LIMIT:
            return f"GPA {gpa:#x}+{length:#x} is beyond 52 bits"
        pieces, at, end = [], gpa, gpa + length
        while at < end:
            n = min(end, (at | (PAGE - 1)) + 1) - at
            off = self._memory.ram_offset(part.id, at)
            if off is None:
                return f"GPA {at:#x} is not mapped in partition {part.id}"
            pieces.append((off, n))
            at += n
        return pieces

    def _read_ram(self, part: Partition, pieces) -> bytes:
        pool = self._memory.slats[part.id].ram
        return b"".join(bytes(pool[off:off + n]) for off, n in pieces)

    def _write_ram(self, part: Partition, pieces, data: bytes) -> None:
        pool, at = self._memory.slats[part.id].ram, 0
        for off, n in pieces:
            pool[off:off + n] = data[at:at + n]
            at += n

    def _read(self, identity, part, vp, msg) -> None:
        if msg.b > MAX_IO_BYTES:
            return self._refuse(identity, "INVALID_FIELD", f"read of {msg.b} bytes: at most {MAX_IO_BYTES} at once")
        pieces = self._ram(part, msg.a, msg.b)
        if isinstance(pieces, str):
            return self._refuse(identity, "UNMAPPED_GPA", pieces)
        self._reply(identity, msg, data=self._read_ram(part, pieces))

    def _write(self, identity, part, vp, msg) -> None:
        pieces = self._ram(part, msg.a, len(msg.data))
        if isinstance(pieces, str):
            return self._refuse(identity, "UNMAPPED_GPA", pieces)
        self._write_ram(part, pieces, msg.data)
        self._reply(identity, msg)

    # -- VP registers ---------------------------------------------------------------------------

    def _get_reg(self, identity, part, vp, msg) -> None:
        value = self._registers.read(part, vp, msg.a)
        if value is None:
            return self._refuse(identity, "INVALID_FIELD", f"register {msg.a:#x} is not one this hypervisor keeps")
        self._reply(identity, msg, value=value & 0xFFFFFFFFFFFFFFFF)

    def _set_reg(self, identity, part, vp, msg) -> None:
        if not self._registers.write(part, vp, msg.a, msg.b):
            return self._refuse(identity, "INVALID_FIELD", f"register {msg.a:#x} is read-only or not kept")
        self._reply(identity, msg)

    # -- a hypercall the guest's way ------------------------------------------------------------

    def _hypercall_gpa(self, identity, part, vp, msg) -> None:
        """RCX = ``a``; RDX, R8 = ``b``, ``c``: a fast call's input values, else the input
        and output parameter pages' GPAs.  The input block is read from guest memory (to
        the end of its page: a block may not cross one), the output written back there.

        TLFS "Hypercall Interface" › "Alignment Requirements": GPAs are 8-byte aligned
        (else INVALID_ALIGNMENT); a page the partition cannot read or write makes a memory
        intercept instead of running the call — io answers UNMAPPED_GPA.  io checks both
        pages before every call, where the TLFS ignores the pointer of a call that has no
        input or no output: give such a call any mapped page."""
        control, rdx, r8 = msg.a, msg.b, msg.c
        out_pieces = None
        if HypercallInput.parse(control).fast:
            data = rdx.to_bytes(8, "little") + r8.to_bytes(8, "little")
        else:
            if rdx % 8 or r8 % 8:
                # TLFS "Hypercall Interface": parameter blocks are 8-byte aligned.
                status = result_value(HvStatus.HV_STATUS_INVALID_ALIGNMENT, 0)
                return self._reply(identity, msg, value=status)
            in_pieces = self._ram(part, rdx, PAGE - (rdx & (PAGE - 1)))
            out_pieces = self._ram(part, r8, PAGE - (r8 & (PAGE - 1)))
            for pieces in (in_pieces, out_pieces):
                if isinstance(pieces, str):
                    return self._refuse(identity, "UNMAPPED_GPA", pieces)
            data = self._read_ram(part, in_pieces)
        result, output, fault = self._intercepts.run_hypercall(part, vp, control, data)
        if output and out_pieces is not None:
            # What does not fit before the page's end is not written (the TLFS forbids a
            # block that crosses a page); the reply carries all of it.
            (off, room), = out_pieces
            self._write_ram(part, [(off, min(room, len(output)))], output[:room])
        self._reply(identity, msg, value=result, data=output, fault=fault)

    # -- interrupts -----------------------------------------------------------------------------

    def _irqs_apic(self, identity, part, vp, msg) -> None:
        vectors, dropped = vp.delivered.take()
        self._reply(identity, msg, data=vectors, dropped=dropped)

    def _irqs_pic(self, identity, part, vp, msg) -> None:
        vectors, dropped = part.pic_output.take()
        self._reply(identity, msg, data=vectors, dropped=dropped)

    # -- virtual time ---------------------------------------------------------------------------

    def _clock_step(self, identity, part, vp, msg) -> None:
        ns = msg.a
        if not part.cpu.paused:
            return self._refuse(identity, "CONFLICT", f"partition {part.id} is running: pause it first (ctl pause)")
        if ns > MAX_CLOCK_STEP_NS:
            return self._refuse(identity, "INVALID_FIELD", f"a step of {ns} ns is more than a day")
        part.clock_offset_ns += ns  # the reference counter
        for each in part.vps:  # the local APIC timers: their deadlines come ns closer
            if each.apic.timer_deadline_ns is not None:
                each.apic.timer_deadline_ns -= ns
        self._interrupts.fire_timers(perf_counter_ns())
        if part.worker is not None and self._forwarding.query(
                identity, part, part.worker, message=lambda ref: m.WorkerClockStep(ref, ns)):
            return  # the worker's worker_query_reply answers
        self._reply(identity, msg, value=part.clock_offset_ns)
