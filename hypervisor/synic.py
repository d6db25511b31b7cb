"""The synthetic interrupt controller (SynIC), per VP: TLFS "Inter-Partition Communication".

Each VP has SCONTROL, SVERSION, SIEFP, SIMP, EOM and SINT0–15 (the MSR rows are in
``msrs.py``; their state is a :class:`SynicVp` on the VP).  What a write sets in motion, and
every delivery, is the :class:`Synic` component's:

* **Messages** go into the VP's SIM page (SIMP): 16 slots of 256 bytes, one per SINT
  (``HV_MESSAGE``: MessageType u32 @0, PayloadSize u8 @4, MessageFlags u8 @5 — bit 0
  MessagePending —, reserved u16 @6, OriginationId u64 @8, payload ≤ 240 bytes @16).  A
  message is queued per VP and SINT (at most :data:`MAX_QUEUED_PER_SINT`, the TLFS's 16
  message buffers of a port); it is copied into its slot when the slot is empty
  (MessageType 0), and the SINT is asserted.  A busy slot gets MessagePending set and the
  message waits: the guest's EOM write (HV_X64_MSR_EOM), the next message queued, or the
  hypervisor's housekeeping (every 100 ms, for a guest that cleared its slot without EOM)
  delivers it.
* **Event flags** are in the SIEF page (SIEFP): 2048 flags per SINT (SINT s owns bytes
  s*256…s*256+255).  Setting a flag that was clear asserts the SINT; setting one already
  set asserts nothing (TLFS).
* **Asserting a SINT** is ``Interrupts.assert_vector`` — the one entry point to the VP's
  local APIC — unless the SINT is masked (then nothing: the message waits in its slot) or
  in polling mode (unmasked, but no interrupt: the guest polls).  AutoEOI SINTs are told
  to the APIC (``Apic.auto_eoi``), which then does their EOI itself.

The hypervisor writes the pages through the partition's RAM file (its view of the memory
manager's mapping), only where the SLAT maps RAM: a SIMP or SIEFP whose GPFN is not RAM
leaves the page inaccessible (TLFS), and messages for it wait.  Guest RAM is the guest's to
scribble on: every value read back from a slot is only a MessageType word compared with 0.

Connections to the root's VMBus server (the ``vsp`` peer) and the two hypercalls are in
:mod:`hypervisor.synic_ports`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from time import perf_counter_ns

from proto.atomic import fetch_or_u8
from proto.codes import HvStatus
from proto.memory import PAGE_SHIFT
from proto.synic_messages import (
    HV_EVENT_FLAGS_PER_SINT,
    HV_MESSAGE_FLAG_PENDING,
    HV_MESSAGE_HEADER,
    HV_MESSAGE_PAYLOAD_BYTES,
    HV_MESSAGE_SIZE,
    HV_SYNIC_SINT_COUNT,
    SINT_AUTO_EOI,
    SINT_MASKED,
    SINT_POLLING,
    SINT_VECTOR_MASK,
)

from hypervisor import stimer, tsc_page
from hypervisor.deadlines import after_move
from hypervisor.stimer import HV_STIMER_COUNT, StimerState

HV_SYNIC_VERSION_1 = 1  # SVERSION reads this (TLFS, Linux HV_SYNIC_VERSION_1)
SCONTROL_ENABLE = 1 << 0
# SINTx: vector, masked, AutoEOI, polling (TLFS); the rest kept as zero.
SINT_WRITABLE = SINT_VECTOR_MASK | SINT_MASKED | SINT_AUTO_EOI | SINT_POLLING
SINT_RESET = SINT_MASKED
PAGE_GPFN_MASK = 0xFFFFFFFFFFFFF000
MESSAGE_FLAGS_OFFSET = 5
# TLFS: a port gets 16 message buffers; a sender beyond them gets INSUFFICIENT_BUFFERS.
MAX_QUEUED_PER_SINT = 16
S = HvStatus


@dataclass(slots=True)
class QueuedMessage:
    message_type: int
    payload: bytes
    origin: int  # OriginationId: the sender (port id, or 0 for the hypervisor)
    queued_ns: int


@dataclass
class SynicVp:
    """One VP's SynIC registers and message queues; reset values per the TLFS."""

    scontrol: int = 0
    siefp: int = 0
    simp: int = 0
    sints: list[int] = field(default_factory=lambda: [SINT_RESET] * HV_SYNIC_SINT_COUNT)
    queues: list[deque] = field(default_factory=lambda: [deque() for _ in range(HV_SYNIC_SINT_COUNT)])
    # What MSR writes set in motion, for Synic.after_wrmsr (synic_msrs.py fills it).
    actions: set = field(default_factory=set)
    # The synthetic timers STIMER0–3 (stimer.py).
    stimers: list = field(default_factory=lambda: [StimerState() for _ in range(HV_STIMER_COUNT)])
    # (old, new) deadlines of the timers MSR writes moved, for after_wrmsr ("stimer_moved").
    stimer_moves: list = field(default_factory=list)
    counters: dict = field(default_factory=lambda: {
        "messages_posted": 0,  # queued for a slot (by the vsp, a timer)
        "messages_delivered": 0,  # copied into a slot
        "slots_busy": 0,  # a delivery found its slot full: MessagePending set
        "signals": 0,  # event flags set that were clear
        "signals_coalesced": 0,  # event flags set that were already set (no interrupt)
        "eom": 0,
        "eoi_rescans": 0,  # EOIs of a SINT's vector that looked for its waiting messages
        "sint_asserted": 0,
        "refused": 0,  # posts and signals refused (masked SINT, SynIC off, queue full)
    })

    @property
    def enabled(self) -> bool:
        return bool(self.scontrol & SCONTROL_ENABLE)

    def page(self, reg: int) -> int | None:
        """The GPA of the SIMP or SIEFP page, None while disabled."""
        return reg & PAGE_GPFN_MASK if reg & 1 and self.enabled else None

    def sint_ready(self, sint: int) -> bool:
        """Whether SINT ``sint`` takes messages and events: SynIC enabled and the SINT
        unmasked (polling counts as unmasked, TLFS)."""
        return self.enabled and not self.sints[sint] & SINT_MASKED

    def queued(self) -> int:
        return sum(len(q) for q in self.queues)

    def auto_eoi_vectors(self) -> int:
        """The 256-bit mask of vectors whose SINT asks for AutoEOI."""
        mask = 0
        for v in self.sints:
            if v & SINT_AUTO_EOI and not v & SINT_MASKED:
                mask |= 1 << (v & SINT_VECTOR_MASK)
        return mask


class Synic:
    """Delivery into the SIM and SIEF pages of every partition's VPs, and the synthetic
    timers' expiry.

    ``memory``: the memory manager (its RAM views); ``assert_vector(vp, vector, t)``: the
    interrupt path's one entry point to a VP's local APIC."""

    def __init__(self, table, memory, assert_vector) -> None:
        self._table = table
        self._memory = memory
        self._assert_vector = assert_vector
        self.next_timer_ns: int | None = None  # the earliest synthetic timer deadline

    # -- guest memory ---------------------------------------------------------------------------

    def _ram(self, part, gpa: int, size: int):
        """The partition's RAM view and the offset of ``gpa`` in it, or (None, 0) when the
        range is not mapped RAM (one page at most: SIM slots and SIEF blocks never cross)."""
        off = self._memory.ram_offset(part.id, gpa)
        if off is None or (gpa >> PAGE_SHIFT) != ((gpa + size - 1) >> PAGE_SHIFT):
            return None, 0
        return self._memory.slats[part.id].ram, off

    def clear_page(self, part, gpa: int) -> None:
        """Zero a SIM or SIEF page as the guest enables it (KVM does; the TLFS zeroes it
        at VP creation, which a fresh guest page already is)."""
        ram, off = self._ram(part, gpa, 1)
        if ram is not None:
            ram[off & PAGE_GPFN_MASK:(off & PAGE_GPFN_MASK) + (1 << PAGE_SHIFT)] = bytes(1 << PAGE_SHIFT)

    # -- messages -------------------------------------------------------------------------------

    def post(self, part, vp, sint: int, message_type: int, payload: bytes, origin: int = 0,
             now: int | None = None) -> int:
        """Queue a message for SINT ``sint`` of ``vp`` and deliver what its slot takes.
        HV_STATUS_SUCCESS, or INVALID_SYNIC_STATE (SynIC off, SINT masked, SIMP disabled),
        INSUFFICIENT_BUFFERS (the SINT's queue is full), INVALID_PARAMETER (a bad SINT,
        type or size)."""
        s = vp.synic
        if not 0 <= sint < HV_SYNIC_SINT_COUNT or len(payload) > HV_MESSAGE_PAYLOAD_BYTES \
                or message_type == 0 or message_type >> 32:
            s.counters["refused"] += 1
            return S.HV_STATUS_INVALID_PARAMETER
        if not s.sint_ready(sint) or s.page(s.simp) is None:
            s.counters["refused"] += 1
            return S.HV_STATUS_INVALID_SYNIC_STATE
        queue = s.queues[sint]
        if len(queue) >= MAX_QUEUED_PER_SINT:
            s.counters["refused"] += 1
            return S.HV_STATUS_INSUFFICIENT_BUFFERS
        queue.append(QueuedMessage(message_type, bytes(payload), origin, now or perf_counter_ns()))
        s.counters["messages_posted"] += 1
        self.scan(part, vp, sint)
        return S.HV_STATUS_SUCCESS

    def scan(self, part, vp, sint: int) -> None:
        """Deliver SINT ``sint``'s oldest queued message if its slot is empty; if the slot
        is busy, set its MessagePending flag and leave the message queued."""
        s = vp.synic
        queue = s.queues[sint]
        if not queue:
            return
        base = s.page(s.simp)
        if base is None or s.sints[sint] & SINT_MASKED:
            return  # waits until the guest enables the page and unmasks the SINT
        ram, off = self._ram(part, base + sint * HV_MESSAGE_SIZE, HV_MESSAGE_SIZE)
        if ram is None:
            return  # the page is not RAM: inaccessible (TLFS); the message waits
        if int.from_bytes(ram[off:off + 4], "little") != 0:
            flags = ram[off + MESSAGE_FLAGS_OFFSET]
            if not flags & HV_MESSAGE_FLAG_PENDING:
                ram[off + MESSAGE_FLAGS_OFFSET] = flags | HV_MESSAGE_FLAG_PENDING
                s.counters["slots_busy"] += 1
            return
        msg = queue.popleft()
        pending = HV_MESSAGE_FLAG_PENDING if queue else 0
        header = HV_MESSAGE_HEADER.pack(msg.message_type, len(msg.payload), pending, 0, msg.origin)
        # The payload and the rest of the header first, MessageType last: a guest polling
        # the slot sees a type only once the message under it is whole.
        ram[off + 16:off + 16 + len(msg.payload)] = msg.payload
        ram[off + 4:off + 16] = header[4:]
        ram[off:off + 4] = header[:4]
        s.counters["messages_delivered"] += 1
        self.assert_sint(vp, sint, msg.queued_ns)

    def rescan(self, part, vp) -> None:
        """Every SINT of the VP with messages waiting (EOM, an enable, housekeeping)."""
        for sint, queue in enumerate(vp.synic.queues):
            if queue:
                self.scan(part, vp, sint)

    def assert_sint(self, vp, sint: int, t: int | None = None) -> None:
        value = vp.synic.sints[sint]
        if value & (SINT_MASKED | SINT_POLLING):
            return  # masked: lost (the slot holds the message); polling: the guest looks
        vp.synic.counters["sint_asserted"] += 1
        self._assert_vector(vp, value & SINT_VECTOR_MASK, t)

    # -- event flags ------------------------------------------------------------------------------

    def signal(self, part, vp, sint: int, flag: int, t: int | None = None) -> int:
        """Set event flag ``flag`` of SINT ``sint`` in ``vp``'s SIEF page; assert the SINT
        if the flag was clear.  HV_STATUS_SUCCESS, INVALID_PARAMETER (SINT or flag out of
        range), INVALID_SYNIC_STATE (SynIC off, SINT masked, SIEFP disabled or not RAM).
        ``t``: when the signal reached the hypervisor — the interrupt's first stamp, so
        that the VP's handler can tell how long the SINT took to reach it."""
        s = vp.synic
        if not 0 <= sint < HV_SYNIC_SINT_COUNT or not 0 <= flag < HV_EVENT_FLAGS_PER_SINT:
            s.counters["refused"] += 1
            return S.HV_STATUS_INVALID_PARAMETER
        base = s.page(s.siefp)
        if not s.sint_ready(sint) or base is None:
            s.counters["refused"] += 1
            return S.HV_STATUS_INVALID_SYNIC_STATE
        gpa = base + sint * 256 + flag // 8
        ram, off = self._ram(part, gpa, 1)
        if ram is None:
            s.counters["refused"] += 1
            return S.HV_STATUS_INVALID_SYNIC_STATE
        bit = 1 << (flag % 8)
        # LOCK OR: the guest clears flags with LOCK AND from its own process (proto.atomic).
        if fetch_or_u8(ram, off, bit) & bit:
            s.counters["signals_coalesced"] += 1
            return S.HV_STATUS_SUCCESS
        s.counters["signals"] += 1
        self.assert_sint(vp, sint, t)
        return S.HV_STATUS_SUCCESS

    def after_eoi(self, part, vp) -> None:
        """The guest ended an interrupt (APIC EOI register or HV_X64_MSR_EOI): if it was a
        SINT's vector, the messages waiting for that SINT's slot are delivered now (TLFS:
        a pending message is re-delivered after the EOI, as after EOM; KVM's
        ``kvm_hv_synic_send_eoi``) — a guest that frees its slot and ends the interrupt
        without writing EOM is not left waiting for the housekeeping rescan.  (Event flags
        need nothing: a flag set while the vector was in service asserted it again, and
        the APIC's IRR holds it until the EOI.)"""
        vector, vp.apic.ended = vp.apic.ended, None
        s = vp.synic
        if vector is None or not s.enabled or not any(s.queues):
            return  # (every EOI of every interrupt comes here: nothing waits, nearly always)
        for sint, queue in enumerate(s.queues):
            if queue and s.sints[sint] & SINT_VECTOR_MASK == vector:
                s.counters["eoi_rescans"] += 1
                self.scan(part, vp, sint)

    # -- after an MSR write (msrs.py changed the registers) --------------------------------------

    def after_wrmsr(self, part, vp) -> None:
        """What a SynIC register write set in motion (``synic_msrs.py`` recorded it): a
        page enabled is cleared, AutoEOI follows the SINTs, an EOM or an enable or an
        unmask delivers what waits."""
        s = vp.synic
        self.after_eoi(part, vp)  # (HV_X64_MSR_EOI: it clears what the EOI ended)
        if not s.actions:
            return
        actions, s.actions = s.actions, set()
        if "clear_simp" in actions:
            self.clear_page(part, s.simp & PAGE_GPFN_MASK)
        if "clear_siefp" in actions:
            self.clear_page(part, s.siefp & PAGE_GPFN_MASK)
        if "sints" in actions:
            vp.apic.auto_eoi = s.auto_eoi_vectors()
        if "rescan" in actions:
            self.rescan(part, vp)
        if "tsc_page" in actions and part.reference_tsc & tsc_page.REFERENCE_TSC_ENABLE:
            ram, off = self._ram(part, part.reference_tsc & PAGE_GPFN_MASK, tsc_page.HV_REFERENCE_TSC_PAGE.size)
            if ram is not None:  # a GPFN that is not RAM: nothing to publish (TLFS: inaccessible)
                tsc_page.publish(ram, off, part)
        moves, s.stimer_moves = s.stimer_moves, []
        if "stimer" in actions:  # (a restore: every timer anew)
            self.timers_changed()
        elif "stimer_moved" in actions:  # a timer's MSR write: no walk unless it was the earliest
            for old, new in moves:
                walk, self.next_timer_ns = after_move(self.next_timer_ns, old, new)
                if walk:
                    self.timers_changed()
                    break

    # -- synthetic timers (stimer.py) ------------------------------------------------------------

    def assert_direct(self, vp, vector: int, t: int) -> None:
        """A direct-mode synthetic timer: its vector, straight to the local APIC."""
        vp.synic.counters["sint_asserted"] += 1
        self._assert_vector(vp, vector, t)

    def _running(self):
        """The partitions whose timers run: not stopped (``ctl stop`` gives everything
        back; a stopped partition's VPs must not be woken)."""
        return (part for part in self._table if not part.cpu.stopped)

    def timers_changed(self) -> None:
        deadlines = [t.deadline_ns for part in self._running() for vp in part.vps for t in vp.synic.stimers
                     if t.deadline_ns is not None]
        self.next_timer_ns = min(deadlines) if deadlines else None

    def fire_timers(self, now: int) -> None:
        """Every synthetic timer whose deadline passed expires (stimer.expire)."""
        for part in self._running():
            for vp in part.vps:
                for index, t in enumerate(vp.synic.stimers):
                    if t.deadline_ns is not None and now >= t.deadline_ns:
                        stimer.expire(part, vp, index, t, now, self)
        self.timers_changed()

    def housekeeping(self) -> None:
        """Deliver what waits behind slots the guest emptied without writing EOM."""
        for part in self._running():
            for vp in part.vps:
                if vp.synic.queued():
                    self.rescan(part, vp)


def partition_status(part) -> dict[str, int]:
    """The partition's SynIC and synthetic timer counters, summed over its VPs, and the
    messages waiting (``status``, ``top``)."""
    out: dict[str, int] = {}
    for vp in part.vps:
        for k, v in vp.synic.counters.items():
            out[k] = out.get(k, 0) + v
        for t in vp.synic.stimers:
            for k, v in t.counters.items():
                out["stimer_" + k] = out.get("stimer_" + k, 0) + v
    out["queued"] = sum(vp.synic.queued() for vp in part.vps)
    return out
