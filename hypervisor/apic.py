"""A VP's local APIC, emulated in the hypervisor (xAPIC MMIO page and the synthetic MSRs).

Registers per the Intel SDM vol. 3, ch. 10 (offsets in the 4 KiB page at 0xFEE00000): ID,
version, TPR, PPR, EOI, SVR, ISR, IRR, the LVT timer, its initial and current count and
divide configuration.  The TLFS adds three synthetic MSRs that reach the same state without
the MMIO decode: HV_X64_MSR_EOI, HV_X64_MSR_ICR and HV_X64_MSR_TPR.

The timer counts at :data:`APIC_TIMER_HZ` divided by the divide configuration (Hyper-V
reports its APIC timer frequency in HV_X64_MSR_APIC_FREQUENCY; 200 MHz is what it uses).
Its deadlines are driven by the hypervisor's loop through :meth:`Apic.poll`.  Its period,
periodic or one-shot, is never shorter than :data:`MIN_TIMER_PERIOD_NS`: a guest that
programs an initial count of 1 would otherwise have the loop fire its timer back to back
and pin a host core.

The VP assist page's "no EOI required" bit (TLFS virtual interrupts): when the partition
has the APIC enlightenment and the guest enabled the assist page, an edge-triggered
interrupt with nothing of lower priority in service is injected with that bit set, and the
hypervisor does the EOI itself — the guest skips its EOI exit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

APIC_BASE = 0xFEE00000
APIC_PAGE = 0x1000
APIC_TIMER_HZ = 200_000_000
# The shortest timer period a guest gets.  The TLFS names no number for the virtual APIC
# timer (tlfs/timers.md says only that a timer never fires early, which a longer period
# respects); KVM clamps a periodic local APIC timer to its module parameter
# min_timer_period_us, 200 µs by default (arch/x86/kvm/x86.c; applied by
# limit_periodic_timer_frequency() in arch/x86/kvm/lapic.c) — we take KVM's number.  KVM
# leaves one-shot timers alone because re-arming one costs the guest an exit; here the
# clamp applies to one-shot timers too: every fire costs the hypervisor's one loop a
# wake-up, and a one-shot re-armed from its own handler is a periodic timer by another name.
MIN_TIMER_PERIOD_NS = 200_000

ID, VERSION, TPR, PPR, EOI, LDR, SVR = 0x20, 0x30, 0x80, 0xA0, 0xB0, 0xD0, 0xF0
ISR0, TMR0, IRR0 = 0x100, 0x180, 0x200
ICR_LO, ICR_HI = 0x300, 0x310
LVT_TIMER, TIMER_ICR, TIMER_CCR, TIMER_DCR = 0x320, 0x380, 0x390, 0x3E0
APIC_VERSION = 0x00050014  # version 0x14, 6 LVT entries
LVT_MASKED = 1 << 16
LVT_PERIODIC = 1 << 17
SVR_ENABLE = 1 << 8
# Divide configuration register bits 3, 1:0 → divisor.
DIVIDE = {0b0000: 2, 0b0001: 4, 0b0010: 8, 0b0011: 16, 0b1000: 32, 0b1001: 64, 0b1010: 128, 0b1011: 1}


def _bits(mask: int, base: int, offset: int) -> int:
    """The 32-bit word of a 256-bit register (ISR/TMR/IRR) at ``offset``."""
    return (mask >> (32 * ((offset - base) >> 4))) & 0xFFFFFFFF


@dataclass
class Apic:
    vp_index: int
    tpr: int = 0
    svr: int = 0xFF
    isr: int = 0  # 256-bit masks
    irr: int = 0
    lvt_timer: int = LVT_MASKED
    timer_icr: int = 0
    timer_dcr: int = 0
    timer_deadline_ns: int | None = None
    assist_enabled: bool = False  # the guest enabled its VP assist page
    auto_eoi: int = 0  # 256-bit mask: vectors of SynIC SINTs with AutoEOI (the hypervisor does their EOI)
    fired_ns: dict = field(default_factory=dict)  # vector → when its timer fired (interrupt-path stamps)
    ended: int | None = None  # the vector the last EOI ended, until the SynIC looked (Synic.after_eoi)
    icr_hi: int = 0
    ipi: tuple[int, int] | None = None  # (ICR low, ICR high) of an IPI the hypervisor must send
    counters: dict = field(default_factory=lambda: {"eoi_mmio": 0, "eoi_msr": 0, "eoi_implicit": 0,
                                                    "timer_fires": 0, "accepted": 0, "ipis_sent": 0,
                                                    "timer_clamped": 0})

    # -- interrupt state ------------------------------------------------------------------

    def accept(self, vector: int) -> None:
        """An interrupt arrives (the timer, an IPI): it waits in the IRR."""
        self.irr |= 1 << vector
        self.counters["accepted"] += 1

    def _ppr(self) -> int:
        isr_class = (self.isr.bit_length() - 1) & 0xF0 if self.isr else 0
        return max(self.tpr & 0xF0, isr_class)

    def deliverable(self) -> int | None:
        """The vector the VP would take now: the highest in the IRR above the PPR."""
        if not self.irr or not self.svr & SVR_ENABLE:
            return None
        vector = self.irr.bit_length() - 1
        return vector if (vector & 0xF0) > self._ppr() else None

    def inject(self, vector: int) -> bool:
        """IRR → ISR as the VP takes ``vector``; True when no EOI is required of it."""
        self.irr &= ~(1 << vector)
        if self.auto_eoi >> vector & 1:
            # A SINT with AutoEOI (TLFS SynIC): taken and ended at once, never in service.
            self.counters["eoi_implicit"] += 1
            return True
        # TLFS: only when nothing of lower priority is in service or pending.
        no_eoi = self.assist_enabled and not self.isr and not self.irr & ((1 << vector) - 1)
        if no_eoi:
            self.counters["eoi_implicit"] += 1  # the hypervisor's EOI, with no exit
        else:
            self.isr |= 1 << vector
        return no_eoi

    def eoi(self) -> None:
        if self.isr:
            vector = self.isr.bit_length() - 1
            self.isr &= ~(1 << vector)
            self.ended = vector

    # -- the timer --------------------------------------------------------------------------

    def _programmed_ns(self) -> int:
        """The period the guest programmed (initial count times the divider)."""
        return self.timer_icr * DIVIDE.get(self.timer_dcr & 0b1011, 2) * 1_000_000_000 // APIC_TIMER_HZ

    def _period_ns(self) -> int:
        """The period the timer runs at: what the guest programmed, but at least
        MIN_TIMER_PERIOD_NS."""
        return max(MIN_TIMER_PERIOD_NS, self._programmed_ns())

    def _arm(self, now: int) -> None:
        if not self.timer_icr:
            self.timer_deadline_ns = None
            return
        if self._programmed_ns() < MIN_TIMER_PERIOD_NS:
            self.counters["timer_clamped"] += 1
        self.timer_deadline_ns = now + self._period_ns()

    def poll(self, now: int) -> bool:
        """Fire the timer if its deadline passed; True when an interrupt was accepted."""
        d = self.timer_deadline_ns
        if d is None or now < d:
            return False
        self.counters["timer_fires"] += 1
        if self.lvt_timer & LVT_PERIODIC and self.timer_icr:
            period = self._period_ns()
            missed = (now - d) // period  # coalesce, as a late tick would be
            self.timer_deadline_ns = d + (missed + 1) * period
        else:
            self.timer_deadline_ns = None
        if not self.lvt_timer & LVT_MASKED:
            self.accept(self.lvt_timer & 0xFF)
            return True
        return False

    # -- register access (MMIO page and synthetic MSRs) ------------------------------------------

    def msr_icr(self, value: int) -> None:
        """HV_X64_MSR_ICR: bits 31:0 the ICR low half, 63:32 the high half; one write sends."""
        self.icr_hi = value >> 32
        self.ipi = (value & 0xFFFFFFFF, value >> 32)

    def take_ipi(self) -> tuple[int, int] | None:
        ipi, self.ipi = self.ipi, None
        if ipi is not None:
            self.counters["ipis_sent"] += 1
        return ipi

    def read(self, offset: int, now: int) -> int:
        if offset == ID:
            return self.vp_index << 24
        if offset == VERSION:
            return APIC_VERSION
        if offset == TPR:
            return self.tpr
        if offset == PPR:
            return self._ppr()
        if offset == SVR:
            return self.svr
        if ISR0 <= offset < ISR0 + 0x80:
            return _bits(self.isr, ISR0, offset)
        if IRR0 <= offset < IRR0 + 0x80:
            return _bits(self.irr, IRR0, offset)
        if offset == LVT_TIMER:
            return self.lvt_timer
        if offset == TIMER_ICR:
            # The initial count reads back as programmed, clamped or not: it is a register,
            # and KVM also keeps the guest's value there while its timer runs at the minimum.
            return self.timer_icr
        if offset == TIMER_DCR:
            return self.timer_dcr
        if offset == ICR_HI:
            return self.icr_hi
        if offset == TIMER_CCR:
            if self.timer_deadline_ns is None:
                return 0
            left = max(0, self.timer_deadline_ns - now)
            # Counts down at the programmed rate; under a clamped period it stays at the
            # initial count for longer, never above it (which no hardware would show).
            return min(self.timer_icr, left * APIC_TIMER_HZ // (DIVIDE.get(self.timer_dcr & 0b1011, 2) * 1_000_000_000))
        return 0  # reserved registers read 0

    def write(self, offset: int, value: int, now: int) -> None:
        value &= 0xFFFFFFFF
        if offset == EOI:
            self.counters["eoi_mmio"] += 1
            self.eoi()
        elif offset == TPR:
            self.tpr = value & 0xFF
        elif offset == SVR:
            self.svr = value & 0x1FF
        elif offset == LVT_TIMER:
            self.lvt_timer = value & (0xFF | LVT_MASKED | LVT_PERIODIC)
        elif offset == TIMER_ICR:
            self.timer_icr = value
            self._arm(now)
        elif offset == TIMER_DCR:
            self.timer_dcr = value & 0b1011
        elif offset == ICR_HI:
            self.icr_hi = value
        elif offset == ICR_LO:
            # Writing the low half sends the IPI (SDM 10.6.1); the hypervisor delivers it.
            self.ipi = (value, self.icr_hi)
        # ID, version, PPR, ISR, IRR, CCR are read-only; other registers are not modelled.

    def msr_eoi(self) -> None:
        self.counters["eoi_msr"] += 1
        self.eoi()
