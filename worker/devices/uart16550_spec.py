"""The PC16550D as data: its register map in the datasheet's names, its character timing,
the state a UART holds (with the rules a saved state must keep), and the pure functions of
register values the datasheet tabulates: interrupt priority, modem status.

Reference: *PC16550D Universal Asynchronous Receiver/Transmitter with FIFOs*, National
Semiconductor (TL/C/8652, June 1995; TI SNLS378C, rev. May 2015).  The emulator is
:mod:`worker.devices.uart16550`; this is what it and its tests name (as openvmm keeps
``serial_16550/src/spec.rs`` apart from the emulator).

Bits are plain ints in a namespace, each defined once: ``IntFlag`` arithmetic costs about a
microsecond an operation, on the path every guest access takes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Annotated

from worker.devices.state import LIVE, Byte, Mask, Range


class Register(enum.IntEnum):
    """Register offsets from the base port.  Aliases share an offset (read/write, DLAB)."""

    RBR = 0  # Receiver Buffer (read, DLAB=0)
    THR = 0  # Transmitter Holding (write, DLAB=0)
    DLL = 0  # Divisor Latch LS (DLAB=1)
    IER = 1  # Interrupt Enable (DLAB=0)
    DLM = 1  # Divisor Latch MS (DLAB=1)
    IIR = 2  # Interrupt Identification (read)
    FCR = 2  # FIFO Control (write)
    LCR = 3  # Line Control
    MCR = 4  # MODEM Control
    LSR = 5  # Line Status
    MSR = 6  # MODEM Status
    SCR = 7  # Scratch


class Ier:
    """Interrupt Enable Register."""

    ERBFI = 0x01  # received data available (and character timeout)
    ETBEI = 0x02  # transmitter holding register empty
    ELSI = 0x04  # receiver line status
    EDSSI = 0x08  # MODEM status
    MASK = 0x0F  # bits 7:4 are always 0


class Iir:
    """Interrupt Identification Register bits."""

    NO_INTERRUPT_PENDING = 0x01  # bit 0 is 0 when an interrupt is pending
    ID_MASK = 0x0E  # bits 3:1 identify the source (see IirId)
    FIFOS_ENABLED = 0xC0  # bits 7:6 are 11 when FCR bit 0 is set


class IirId:
    """IIR bits 3:0 for each source, highest priority first."""

    RECEIVER_LINE_STATUS = 0x06
    RECEIVED_DATA_AVAILABLE = 0x04
    CHARACTER_TIMEOUT = 0x0C
    THR_EMPTY = 0x02
    MODEM_STATUS = 0x00
    NONE = 0x01


class Fcr:
    """FIFO Control Register (write-only)."""

    FIFO_ENABLE = 0x01
    RCVR_FIFO_RESET = 0x02
    XMIT_FIFO_RESET = 0x04
    DMA_MODE_SELECT = 0x08
    RCVR_TRIGGER_LSB = 0x40
    RCVR_TRIGGER_MSB = 0x80
    STORED = FIFO_ENABLE | DMA_MODE_SELECT | RCVR_TRIGGER_LSB | RCVR_TRIGGER_MSB  # the rest self-clear


class Lcr:
    """Line Control Register."""

    WLS0 = 0x01  # word length select: 00=5, 01=6, 10=7, 11=8 bits
    WLS1 = 0x02
    STB = 0x04  # 2 stop bits (1.5 with 5-bit words)
    PEN = 0x08  # parity enable
    EPS = 0x10  # even parity select
    STICK_PARITY = 0x20
    SET_BREAK = 0x40
    DLAB = 0x80  # divisor latch access bit


class Mcr:
    """MODEM Control Register (bits 7:5 are always 0)."""

    DTR = 0x01
    RTS = 0x02
    OUT1 = 0x04
    OUT2 = 0x08
    LOOP = 0x10
    MASK = 0x1F


class Lsr:
    """Line Status Register."""

    DR = 0x01  # data ready
    OE = 0x02  # overrun error
    PE = 0x04  # parity error
    FE = 0x08  # framing error
    BI = 0x10  # break interrupt
    THRE = 0x20  # transmitter holding register (TX FIFO) empty
    TEMT = 0x40  # transmitter empty (THR and TSR)
    RCVR_FIFO_ERROR = 0x80  # at least one PE/FE/BI in the RX FIFO
    CHAR_ERRORS = PE | FE | BI  # errors that belong to a received character
    ERRORS = OE | CHAR_ERRORS  # latched until LSR is read


class Msr:
    """MODEM Status Register."""

    DCTS = 0x01
    DDSR = 0x02
    TERI = 0x04  # trailing edge of ring indicator
    DDCD = 0x08
    CTS = 0x10
    DSR = 0x20
    RI = 0x40
    DCD = 0x80
    DELTAS = DCTS | DDSR | TERI | DDCD
    INPUTS = CTS | DSR | RI | DCD


DEFAULT_MODEM_INPUTS = Msr.CTS | Msr.DSR | Msr.DCD  # a connected console

FIFO_DEPTH = 16
INPUT_CLOCK_HZ = 1_843_200
BAUD_BASE = INPUT_CLOCK_HZ // 16  # 115200: the baud rate with divisor 1
TICKS_PER_NS = 18  # time unit: one half bit at divisor 1 is exactly 78125 ticks
HALF_BIT_TICKS = 78_125  # 1e9 / 115200 / 2 ns * 18
TIMEOUT_CHARS = 4

RX_TRIGGER = (1, 4, 8, 14)  # indexed by FCR bits 7:6
MAX_CHAR_TICKS = 24 * 65536 * HALF_BIT_TICKS  # 12 bit times at divisor 65536


def char_ticks(lcr: int, divisor: int) -> int:
    """Length of one character in ticks for this LCR and divisor latch value.

    A character takes ``1 start + 5..8 data + parity + 1/1.5/2 stop`` bit times; a bit
    time is ``divisor / 115200`` s (1.8432 MHz input clock, 16x baud clock).  In ticks of
    1/18 ns a half bit is exactly ``divisor * 78125`` ticks.
    """
    word = 5 + (lcr & 0x03)
    half_bits = 2 * (1 + word + ((lcr >> 3) & 1))
    if lcr & Lcr.STB:
        half_bits += 3 if word == 5 else 4
    else:
        half_bits += 2
    return half_bits * (divisor or 65536) * HALF_BIT_TICKS


@dataclass
class Uart16550State:
    """What the guest can observe.  Defaults are the datasheet's reset values (the divisor
    and scratch, which it leaves undefined, are ours)."""

    ier: Annotated[int, Mask(Ier.MASK)] = 0
    lcr: Byte = 0
    mcr: Annotated[int, Mask(Mcr.MASK)] = 0
    fcr: Annotated[int, Mask(Fcr.STORED)] = 0
    dll: Byte = 1  # 115200 baud
    dlm: Byte = 0
    scr: Byte = 0
    rbr: Byte = 0  # the last character read; an empty FIFO reads it again
    lsr_errors: Annotated[int, Mask(Lsr.ERRORS)] = 0
    rx_fifo_error: bool = False  # LSR bit 7
    rx_fifo: bytearray = field(default_factory=bytearray)  # RBR alone in 16450 mode
    rx_flags: bytearray = field(default_factory=bytearray)  # PE/FE/BI of each character
    tx_fifo: bytearray = field(default_factory=bytearray)  # THR alone in 16450 mode
    tsr_busy: bool = False  # a character is in the transmitter shift register
    tsr: Byte = 0
    thre_pending: bool = False  # the THRE interrupt is armed
    rx_timeout_pending: bool = False  # the character timeout interrupt is pending
    msr_deltas: Annotated[int, Mask(Msr.DELTAS)] = 0
    modem_inputs: Annotated[int, Mask(Msr.INPUTS)] = DEFAULT_MODEM_INPUTS  # the outside world
    # Clock-anchored (ticks), saved relative as SavedTimes.
    tsr_done: int = field(default=0, metadata=LIVE)  # when the character in the TSR has left
    rx_last: int = field(default=0, metadata=LIVE)  # last receiver activity (timeout base)


@dataclass
class SavedTimes:
    """The state's clock-anchored times, saved relative to the moment of saving (remaining
    ticks of the character in the shift register, ticks since the last receiver activity),
    so a state restored on another clock resumes where it left off."""

    tsr_remaining_ticks: Annotated[int, Range(0, MAX_CHAR_TICKS)] = 0
    rx_idle_ticks: Annotated[int, Range(0, TIMEOUT_CHARS * MAX_CHAR_TICKS)] = 0


def check_state(s: Uart16550State, times: SavedTimes) -> None:
    """What a saved UART state must hold beyond its fields' types."""
    if s.fcr and not s.fcr & Fcr.FIFO_ENABLE:
        raise ValueError("saved UART state: FCR bits set without FCR0")
    depth = FIFO_DEPTH if s.fcr & Fcr.FIFO_ENABLE else 1
    for name in ("rx_fifo", "rx_flags", "tx_fifo"):
        if len(getattr(s, name)) > depth:
            raise ValueError(f"saved UART state: {name} holds more than {depth} bytes")
    if len(s.rx_flags) != len(s.rx_fifo):
        raise ValueError("saved UART state: rx_flags and rx_fifo differ in length")
    if any(f & ~Lsr.CHAR_ERRORS for f in s.rx_flags):
        raise ValueError("saved UART state: rx_flags hold bits other than PE/FE/BI")
    if s.tsr_busy and not times.tsr_remaining_ticks:
        raise ValueError("saved UART state: the shift register is busy with no time left")
    if not s.tsr_busy and (times.tsr_remaining_ticks or s.tx_fifo):
        raise ValueError("saved UART state: the shift register is idle but has time or TX data")


def pending_interrupt(s: Uart16550State) -> int:
    """The source IIR reports (:class:`IirId`), by the datasheet's priorities: receiver line
    status > received data available / character timeout > THR empty > modem status."""
    ier = s.ier
    if ier & Ier.ELSI and s.lsr_errors:
        return IirId.RECEIVER_LINE_STATUS
    if ier & Ier.ERBFI and s.rx_fifo:
        if not s.fcr & Fcr.FIFO_ENABLE or len(s.rx_fifo) >= RX_TRIGGER[s.fcr >> 6]:
            return IirId.RECEIVED_DATA_AVAILABLE
        if s.rx_timeout_pending:
            return IirId.CHARACTER_TIMEOUT
    if ier & Ier.ETBEI and s.thre_pending and not s.tx_fifo:
        return IirId.THR_EMPTY
    if ier & Ier.EDSSI and s.msr_deltas:
        return IirId.MODEM_STATUS
    return IirId.NONE


def msr_inputs(mcr: int, modem_inputs: int) -> int:
    """MSR bits 7:4: the modem inputs, or in loopback RTS/DTR/OUT1/OUT2 mirrored into
    CTS/DSR/RI/DCD."""
    if mcr & Mcr.LOOP:
        return ((Msr.CTS if mcr & Mcr.RTS else 0) | (Msr.DSR if mcr & Mcr.DTR else 0)
                | (Msr.RI if mcr & Mcr.OUT1 else 0) | (Msr.DCD if mcr & Mcr.OUT2 else 0))
    return modem_inputs


def msr_deltas(old: int, new: int) -> int:
    """The MSR delta bits a change of the inputs from ``old`` to ``new`` sets (TERI: RI fell)."""
    changed = old ^ new
    return ((Msr.DCTS if changed & Msr.CTS else 0) | (Msr.DDSR if changed & Msr.DSR else 0)
            | (Msr.TERI if old & Msr.RI and not new & Msr.RI else 0)
            | (Msr.DDCD if changed & Msr.DCD else 0))
