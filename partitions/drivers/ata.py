"""ATA PIO on the primary channel: READ/WRITE SECTORS, FLUSH CACHE.

With interrupts the driver waits for IRQ14 in HLT, as a real driver sleeps; the status read
after each interrupt acknowledges it.  A sector's data moves as Linux's ata_sff_data_xfer32
moves it: REP INSD / REP OUTSD on the data port (32-bit elements, which PIIX takes), one
string exit of 128 elements instead of 128 exits.
"""

from __future__ import annotations

import threading

from partitions.vp import Vp

BASE, CTRL = 0x1F0, 0x3F6
DATA, ERROR, COUNT, LBA_LO, LBA_MID, LBA_HI, DEVICE, STATUS = range(BASE, BASE + 8)
COMMAND = STATUS
ST_ERR, ST_DRQ, ST_DF, ST_DRDY, ST_BSY = 0x01, 0x08, 0x20, 0x40, 0x80
CMD_READ, CMD_WRITE, CMD_FLUSH = 0x20, 0x30, 0xE7
DEV_LBA = 0xE0
SECTOR = 512
IRQ = 14


class AtaError(Exception):
    pass


class Ata:
    def __init__(self) -> None:
        self.irq_seen = threading.Event()
        self.use_irq = False

    def handle_interrupt(self, vp: Vp) -> None:
        self.irq_seen.set()

    def _wait(self, vp: Vp, want_drq: bool) -> int:
        if self.use_irq:
            while not self.irq_seen.is_set():
                vp.hlt()
            self.irq_seen.clear()
        for _ in range(100000):
            st = vp.inb(STATUS)  # also acknowledges INTRQ
            if st == 0xFF:
                raise AtaError("no ATA controller")
            if not st & ST_BSY:
                break
        if st & (ST_ERR | ST_DF):
            raise AtaError(f"status {st:#x}, error {vp.inb(ERROR):#x}")
        if want_drq and not st & ST_DRQ:
            raise AtaError(f"status {st:#x}: no data request")
        return st

    def _command(self, vp: Vp, cmd: int, lba: int = 0, count: int = 0) -> None:
        vp.outb(DEVICE, DEV_LBA | ((lba >> 24) & 0x0F))
        vp.outb(COUNT, count & 0xFF)
        vp.outb(LBA_LO, lba & 0xFF)
        vp.outb(LBA_MID, (lba >> 8) & 0xFF)
        vp.outb(LBA_HI, (lba >> 16) & 0xFF)
        self.irq_seen.clear()
        vp.outb(COMMAND, cmd)

    def read(self, vp: Vp, lba: int, count: int) -> bytes:
        self._command(vp, CMD_READ, lba, count)
        out = bytearray()
        for _ in range(count):
            self._wait(vp, True)
            out += vp.ins(DATA, 4, SECTOR // 4)
        return bytes(out)

    def write(self, vp: Vp, lba: int, data: bytes) -> None:
        count = len(data) // SECTOR
        self._command(vp, CMD_WRITE, lba, count)
        for i in range(count):
            # The first block needs no interrupt: poll DRQ; later ones come with IRQ14.
            if i == 0:
                use, self.use_irq = self.use_irq, False
                self._wait(vp, True)
                self.use_irq = use
            else:
                self._wait(vp, True)
            vp.outs(DATA, 4, data[i * SECTOR:(i + 1) * SECTOR])
        self._wait(vp, False)

    def flush(self, vp: Vp) -> None:
        self._command(vp, CMD_FLUSH)
        self._wait(vp, False)

