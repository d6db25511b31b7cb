"""i8259A pair: remap, mask, end of interrupt (as Linux's i8259.c does)."""

from __future__ import annotations

from partitions.vp import Vp

MASTER_CMD, MASTER_DATA, SLAVE_CMD, SLAVE_DATA = 0x20, 0x21, 0xA0, 0xA1
ICW1_INIT_ICW4 = 0x11
ICW4_8086 = 0x01
OCW2_EOI = 0x20
MASTER_VECTOR_BASE = 0x20
SLAVE_VECTOR_BASE = 0x28
CASCADE_IRQ = 2


def present(vp: Vp) -> bool:
    """Probe: the IMR reads back what was written (nothing on the bus reads 0xFF)."""
    vp.outb(MASTER_DATA, 0x5A)
    ok = vp.inb(MASTER_DATA) == 0x5A
    vp.outb(MASTER_DATA, 0xFF)
    return ok


def init(vp: Vp) -> None:
    """ICW1–ICW4 for both chips: vectors 0x20–0x2F, slave on IRQ2, everything masked."""
    vp.outb(MASTER_CMD, ICW1_INIT_ICW4)
    vp.outb(SLAVE_CMD, ICW1_INIT_ICW4)
    vp.outb(MASTER_DATA, MASTER_VECTOR_BASE)
    vp.outb(SLAVE_DATA, SLAVE_VECTOR_BASE)
    vp.outb(MASTER_DATA, 1 << CASCADE_IRQ)
    vp.outb(SLAVE_DATA, CASCADE_IRQ)
    vp.outb(MASTER_DATA, ICW4_8086)
    vp.outb(SLAVE_DATA, ICW4_8086)
    vp.outb(MASTER_DATA, 0xFF & ~(1 << CASCADE_IRQ))
    vp.outb(SLAVE_DATA, 0xFF)


def vector(irq: int) -> int:
    return (MASTER_VECTOR_BASE + irq) if irq < 8 else (SLAVE_VECTOR_BASE + irq - 8)


def unmask(vp: Vp, irq: int) -> None:
    port = MASTER_DATA if irq < 8 else SLAVE_DATA
    vp.outb(port, vp.inb(port) & ~(1 << (irq & 7)))


def eoi(vp: Vp, irq: int) -> None:
    """Non-specific EOI: the slave first, then the master, for IRQs 8–15."""
    if irq >= 8:
        vp.outb(SLAVE_CMD, OCW2_EOI)
    vp.outb(MASTER_CMD, OCW2_EOI)
