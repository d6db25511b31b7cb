"""The 16550 UART driver: polled at boot, interrupt-driven once the PIC is up.

Interrupt-driven transmit as Linux's 8250 driver does it: bytes go into a transmit ring;
when the transmitter is idle the writer primes the FIFO, and each THR-empty interrupt
refills up to 16 bytes — by one REP OUTSB, one exit, where Linux writes THR byte by byte.
Received bytes are read in the same handler.
"""

from __future__ import annotations

from collections import deque

from partitions.spinlock import SpinLock
from partitions.vp import Vp

COM1 = 0x3F8
THR = RBR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR, MCR, LSR, SCR = 3, 4, 5, 7
LSR_DR, LSR_THRE = 0x01, 0x20
LCR_DLAB, LCR_8N1 = 0x80, 0x03
FCR_ENABLE_CLEAR_14 = 0xC7
MCR_DTR_RTS_OUT2 = 0x0B
IER_RDA, IER_THRE = 0x01, 0x02
IIR_NO_INTERRUPT = 0x01
IIR_ID_MASK = 0x0E
IIR_THRE, IIR_RDA, IIR_TIMEOUT, IIR_RLS = 0x02, 0x04, 0x0C, 0x06
FIFO_DEPTH = 16
IRQ = 4


class Serial:
    def __init__(self, base: int = COM1) -> None:
        self.base = base
        self.interrupts = False
        self.lock = SpinLock()
        self.tx: deque[int] = deque()
        self.tx_busy = False
        self.rx = bytearray()

    def init(self, vp: Vp) -> None:
        b = self.base
        vp.outb(b + IER, 0)
        vp.outb(b + LCR, LCR_DLAB)
        vp.outb(b + DLL, 1)  # 115200 baud
        vp.outb(b + DLM, 0)
        vp.outb(b + LCR, LCR_8N1)
        vp.outb(b + FCR, FCR_ENABLE_CLEAR_14)
        vp.outb(b + MCR, MCR_DTR_RTS_OUT2)

    def enable_interrupts(self, vp: Vp) -> None:
        self.interrupts = True
        vp.outb(self.base + IER, IER_RDA | IER_THRE)

    def write(self, vp: Vp, text: str) -> None:
        data = text.replace("\n", "\r\n").encode()
        if not self.interrupts:
            with self.lock.held(vp):
                self._write_polled(vp, data)
            return
        with vp.interrupts_disabled(), self.lock.held(vp):
            self.tx.extend(data)
            if not self.tx_busy:
                self.tx_busy = True
                self._fill_fifo(vp)

    def _write_polled(self, vp: Vp, data: bytes) -> None:
        """Wait for THRE, then fill the 16-byte FIFO."""
        i = 0
        while i < len(data):
            while not vp.inb(self.base + LSR) & LSR_THRE:
                vp.pause()
            vp.outs(self.base + THR, 1, data[i:i + FIFO_DEPTH])
            i += FIFO_DEPTH

    def _fill_fifo(self, vp: Vp) -> None:
        """Up to a FIFO's worth of the transmit ring, by one REP OUTSB (one exit, not one
        per byte: the FIFO takes 16 bytes at THRE, and a driver that knows it may write
        them as a string)."""
        tx = self.tx
        vp.outs(self.base + THR, 1, bytes([tx.popleft() for _ in range(min(FIFO_DEPTH, len(tx)))]))

    def handle_interrupt(self, vp: Vp) -> None:
        """IRQ4: service every pending source, by IIR priority, until IIR says none."""
        for _ in range(8):
            iir = vp.inb(self.base + IIR)
            if iir & IIR_NO_INTERRUPT:
                return
            source = iir & IIR_ID_MASK
            if source in (IIR_RDA, IIR_TIMEOUT):
                while vp.inb(self.base + LSR) & LSR_DR:
                    self.rx.append(vp.inb(self.base + RBR))
            elif source == IIR_THRE:
                with self.lock.held(vp):
                    if self.tx:
                        self._fill_fifo(vp)
                    else:
                        self.tx_busy = False
            elif source == IIR_RLS:
                vp.inb(self.base + LSR)
            else:  # modem status
                vp.inb(self.base + 6)
