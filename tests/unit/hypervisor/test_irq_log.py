"""The delivered-vector logs behind `io irqs` and `wait_irq`."""

from __future__ import annotations

from hypervisor.irq_log import IrqLog
from proto.io_messages import IRQ_LOG_VECTORS


def test_a_look_takes_what_arrived_since_the_last_one_oldest_first():
    log = IrqLog()
    for v in (0x20, 0x124, 0x30):  # bit 8 (no EOI required) is not part of the vector
        log.record(v)
    assert log.take() == (b"\x20\x24\x30", 0)
    assert log.take() == (b"", 0)


def test_an_overflowing_log_keeps_the_newest_and_says_how_many_it_lost():
    log = IrqLog()
    for i in range(IRQ_LOG_VECTORS + 5):
        log.record(i)
    vectors, dropped = log.take()
    assert dropped == 5 and len(vectors) == IRQ_LOG_VECTORS and vectors[-1] == (IRQ_LOG_VECTORS + 4) & 0xFF
    log.record(1)
    assert log.take() == (b"\x01", 0)
