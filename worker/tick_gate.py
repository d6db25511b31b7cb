"""The platform's lost-tick policy between the PIT and the PIC (issue 12): a timer tick is
not latched while the previous one is still in service.

The 8259A latches a rising edge in IRR even while the same IRQ is in service, and raises it
the moment the guest's EOI clears ISR.  On hardware that is harmless: a tick handler takes
microseconds of a 10 ms period.  Here the handler's EOI is a round trip through the
hypervisor and the worker, and with 16 VPs on 2 loaded cores a round trip took 14 ms, longer
than the period: the tick latched during the handler was taken at the EOI's own resume,
whose handler EOIed, whose resume carried the next — the VP never left its tick handler
(an interrupt storm: 830 ticks and 6 of 542 screen stores in 25 s).

So the wire from the PIT's OUT0 to IR0 drops a rising edge while IR0 is in service, as
KVM's in-kernel PIT does (it injects no new tick until the last one was acked: the
``irq_ack`` of ``kvm_pit``) with QEMU's ``lost_tick_policy=discard``: the next tick is the
next period boundary after the EOI, never the EOI itself, and a VP that cannot keep up
takes ticks less often instead of only ticks.  Hyper-V's periodic timers do the same for
missed periods (one expiry, not one per period missed).  The guest counts its ticks from
the clock, not from interrupts (``partitions/kernel.py``, as Linux's
``tick_do_update_jiffies64`` does), so its time stays right when edges are dropped.  The
PIC and PIT models stay the chips' own: only the wire between them has the policy.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TickGateCounters:
    edges_passed: int = 0
    edges_discarded: int = 0  # rising edges dropped because the last tick was in service


class TickGate:
    """An IrqLine for the PIT's OUT0 that passes levels to the PIC's IR ``irq``, except a
    rising edge while that IRQ is in service.  Keeps no state of its own beyond counters:
    whether the input is high is the PIC's, so a saved and restored PIC is all there is."""

    def __init__(self, pic, irq: int = 0) -> None:
        self._pic = pic
        self._irq = irq
        self._line = pic.irq_line(irq)
        self.counters = TickGateCounters()

    def set_level(self, high: bool) -> None:
        if high and not self._pic.input_high(self._irq):
            if self._pic.in_service(self._irq):
                self.counters.edges_discarded += 1
                return
            self.counters.edges_passed += 1
        self._line.set_level(high)
