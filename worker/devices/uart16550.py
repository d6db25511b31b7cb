"""National Semiconductor PC16550D / 16550A UART, as the COM ports of a PC.

Reference: *PC16550D Universal Asynchronous Receiver/Transmitter with FIFOs*, National
Semiconductor (TL/C/8652, June 1995; TI SNLS378C, rev. May 2015).  Register and bit names
below are the datasheet's mnemonics.  Peer implementations consulted for behaviour (not
code): QEMU ``hw/char/serial.c``, openvmm ``serial_16550``, rust-vmm ``vm-superio``.

What is modelled
----------------
* All eleven registers behind eight ports, DLAB (LCR bit 7) switching offsets 0/1 to the
  divisor latch.
* 16-byte receive and transmit FIFOs (FCR bit 0), FIFO resets, receiver trigger levels
  1/4/8/14; in 16450 (non-FIFO) mode both "FIFOs" hold one byte (RBR, THR).
* Transmission in virtual time.  A character takes ``1 start + 5..8 data + parity +
  1/1.5/2 stop`` bit times; a bit time is ``divisor / 115200`` s (1.8432 MHz input clock,
  16x baud clock).  Times are kept as integer *ticks* of 1/18 ns, in which a half bit is
  exactly ``divisor * 78125`` ticks, so back-to-back characters never lose or gain time
  to rounding.
* Interrupts with the datasheet's priorities: receiver line status > received data
  available / character timeout > THR empty > modem status.  IIR bits 7:6 read 11 in FIFO
  mode.  The IRQ output is ``(an enabled source is pending) AND MCR.OUT2``: on a PC the
  OUT2 output gates the UART's INTR onto the ISA IRQ line.  Like openvmm we use the OUT2
  *register bit* for that gate, also in loopback mode.
* Character timeout (IIR = 0xC): FIFO mode, at least one byte in the RX FIFO, no byte
  received and no RBR read for 4 character times.
* LSR: DR, OE, PE, FE, BI, THRE, TEMT and bit 7 (error in RCVR FIFO).  PE/FE/BI belong to
  the character at the top of the RX FIFO and are latched when it gets there; reading LSR
  clears OE/PE/FE/BI, and bit 7 when no erroneous character is left in the FIFO.
* MCR DTR/RTS/OUT1/OUT2/LOOP; loopback feeds the transmitter into the receiver (at the
  time the character would have finished on the wire) and mirrors RTS/DTR/OUT1/OUT2 into
  MSR CTS/DSR/RI/DCD; MSR delta bits (DCTS, DDSR, TERI, DDCD) and the modem status
  interrupt.

Choices where the datasheet leaves room
---------------------------------------
* **Divisor 0** is treated as 65536: the baud generator is a 16-bit down-counter reloaded
  from the latch, and a reload value of 0 wraps through all 65536 states.  (The datasheet
  only specifies 1..65535; QEMU, for the record, ignores a zero divisor and keeps the old
  speed.)  This keeps timing a pure function of the registers.
* **Power-on divisor** is 1 (115200 baud) and LCR is 0 (5N1) as the datasheet says; the
  datasheet leaves the divisor latch undefined after reset, and 1 lets a guest that never
  programs the port print at full speed.
* **Data bits are not masked** to the word length: ``on_tx`` and the loopback receiver
  get the byte as written (as QEMU and openvmm do), so a guest that never programs LCR
  still prints text.  The word length only sets the character time.
* **THR to TSR transfer is immediate**: when the shift register is idle a written byte
  moves straight into it, so THRE re-asserts at once and TEMT stays low for one character
  time (the real part takes 0.5-1.5 bit times).  The FIFO-mode "THRE delayed by one
  character" refinement is not modelled.
* **THRE interrupt** is armed on each rising edge of THRE, when IER.ETBEI goes 0 -> 1 while
  THRE is set, and when FCR bit 0 changes; it is cleared by reading IIR while it is the
  reported source, or by writing THR.
* **push_rx never overruns by default**: it accepts as many bytes as the RX FIFO (RBR in
  16450 mode) has room for and returns that count, so a console backend can retry the
  rest later.  ``push_rx(data, lossy=True)`` behaves like a wire instead: bytes beyond the
  free space are lost and set OE.  In loopback mode the serial input is disconnected, so
  ``push_rx`` accepts nothing.  Real overruns happen in loopback when the guest sends more
  than it reads.
* **Writes to a full THR/TX FIFO**: in FIFO mode the written byte is lost; in 16450 mode it
  replaces the byte waiting in THR.  Both count in ``stats.tx_dropped``.
* **Modem inputs** (outside loopback) default to CTS, DSR and DCD asserted: a connected
  console.  ``set_modem_inputs`` changes them and produces the delta bits.
* Writes to LSR and MSR (factory-test registers) are accepted and ignored.  Reading an
  empty RBR returns the last character read.

Save format
-----------
``save()`` returns a plain dict (ints, bools, bytes) with ``"version": 1``.  Time in it is
*relative* (remaining ticks of the character in the shift register, ticks since the last
receiver activity) so a state restored on another clock resumes where it left off.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable

from worker.devices.base import Clock, DeviceStats, IoError, IrqLine, PortRange

__all__ = [
    "BAUD_BASE",
    "FIFO_DEPTH",
    "Fcr",
    "Ier",
    "Iir",
    "IirId",
    "Lcr",
    "Lsr",
    "Mcr",
    "Msr",
    "Register",
    "SAVE_VERSION",
    "TICKS_PER_NS",
    "Uart16550",
    "Uart16550Config",
    "Uart16550Stats",
]


# --------------------------------------------------------------------------------------
# Datasheet names
# --------------------------------------------------------------------------------------


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


class Ier(enum.IntFlag):
    """Interrupt Enable Register."""

    ERBFI = 0x01  # received data available (and character timeout)
    ETBEI = 0x02  # transmitter holding register empty
    ELSI = 0x04  # receiver line status
    EDSSI = 0x08  # MODEM status


class Iir(enum.IntFlag):
    """Interrupt Identification Register bits."""

    NO_INTERRUPT_PENDING = 0x01  # bit 0 is 0 when an interrupt is pending
    ID_MASK = 0x0E  # bits 3:1 identify the source (see IirId)
    FIFOS_ENABLED = 0xC0  # bits 7:6 are 11 when FCR bit 0 is set


class IirId(enum.IntEnum):
    """IIR bits 3:0 for each source, highest priority first."""

    RECEIVER_LINE_STATUS = 0x06
    RECEIVED_DATA_AVAILABLE = 0x04
    CHARACTER_TIMEOUT = 0x0C
    THR_EMPTY = 0x02
    MODEM_STATUS = 0x00
    NONE = 0x01


class Fcr(enum.IntFlag):
    """FIFO Control Register (write-only)."""

    FIFO_ENABLE = 0x01
    RCVR_FIFO_RESET = 0x02
    XMIT_FIFO_RESET = 0x04
    DMA_MODE_SELECT = 0x08
    RCVR_TRIGGER_LSB = 0x40
    RCVR_TRIGGER_MSB = 0x80


class Lcr(enum.IntFlag):
    """Line Control Register."""

    WLS0 = 0x01  # word length select: 00=5, 01=6, 10=7, 11=8 bits
    WLS1 = 0x02
    STB = 0x04  # 2 stop bits (1.5 with 5-bit words)
    PEN = 0x08  # parity enable
    EPS = 0x10  # even parity select
    STICK_PARITY = 0x20
    SET_BREAK = 0x40
    DLAB = 0x80  # divisor latch access bit


class Mcr(enum.IntFlag):
    """MODEM Control Register (bits 7:5 are always 0)."""

    DTR = 0x01
    RTS = 0x02
    OUT1 = 0x04
    OUT2 = 0x08
    LOOP = 0x10


class Lsr(enum.IntFlag):
    """Line Status Register."""

    DR = 0x01  # data ready
    OE = 0x02  # overrun error
    PE = 0x04  # parity error
    FE = 0x08  # framing error
    BI = 0x10  # break interrupt
    THRE = 0x20  # transmitter holding register (TX FIFO) empty
    TEMT = 0x40  # transmitter empty (THR and TSR)
    RCVR_FIFO_ERROR = 0x80  # at least one PE/FE/BI in the RX FIFO


class Msr(enum.IntFlag):
    """MODEM Status Register."""

    DCTS = 0x01
    DDSR = 0x02
    TERI = 0x04  # trailing edge of ring indicator
    DDCD = 0x08
    CTS = 0x10
    DSR = 0x20
    RI = 0x40
    DCD = 0x80


# Reset values (datasheet Table "UART Reset Configuration"; divisor and scratch are ours).
RESET_IER = 0x00
RESET_IIR = 0x01
RESET_FCR = 0x00
RESET_LCR = 0x00
RESET_MCR = 0x00
RESET_LSR = 0x60  # THRE | TEMT
RESET_MSR_DELTAS = 0x00
RESET_DLL = 0x01  # undefined in the datasheet; 1 = 115200 baud
RESET_DLM = 0x00
RESET_SCR = 0x00  # undefined in the datasheet
RESET_RBR = 0x00
DEFAULT_MODEM_INPUTS = Msr.CTS | Msr.DSR | Msr.DCD  # a connected console

FIFO_DEPTH = 16
INPUT_CLOCK_HZ = 1_843_200
BAUD_BASE = INPUT_CLOCK_HZ // 16  # 115200: the baud rate with divisor 1
TICKS_PER_NS = 18  # time unit: one half bit at divisor 1 is exactly 78125 ticks
HALF_BIT_TICKS = 78_125  # 1e9 / 115200 / 2 ns * 18
TIMEOUT_CHARS = 4
SAVE_VERSION = 1

_RX_TRIGGER = (1, 4, 8, 14)  # indexed by FCR bits 7:6

# Plain ints for the hot path (IntFlag arithmetic allocates).
_IER_MASK = 0x0F
_ERBFI, _ETBEI, _ELSI, _EDSSI = 0x01, 0x02, 0x04, 0x08
_FCR_ENABLE, _FCR_RX_RESET, _FCR_TX_RESET = 0x01, 0x02, 0x04
_FCR_STORED = 0xC9  # enable, DMA mode, trigger level
_LCR_DLAB = 0x80
_MCR_MASK = 0x1F
_DTR, _RTS, _OUT1, _OUT2, _LOOP = 0x01, 0x02, 0x04, 0x08, 0x10
_DR, _OE, _PE, _FE, _BI, _THRE, _TEMT, _RXFE = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
_LSR_ERRORS = _OE | _PE | _FE | _BI
_CHAR_ERRORS = _PE | _FE | _BI
_DCTS, _DDSR, _TERI, _DDCD = 0x01, 0x02, 0x04, 0x08
_CTS, _DSR, _RI, _DCD = 0x10, 0x20, 0x40, 0x80
_MSR_INPUTS = 0xF0
_IIR_FIFO = 0xC0
_SRC_NONE, _SRC_RLS, _SRC_RDA, _SRC_CTI, _SRC_THRE, _SRC_MS = 0x01, 0x06, 0x04, 0x0C, 0x02, 0x00

_NEVER = 1 << 200  # a deadline that never comes
_MAX_CHAR_TICKS = 24 * 65536 * HALF_BIT_TICKS  # 12 bit times at divisor 65536


def char_ticks(lcr: int, divisor: int) -> int:
    """Length of one character in ticks for this LCR and divisor latch value."""
    word = 5 + (lcr & 0x03)
    half_bits = 2 * (1 + word + ((lcr >> 3) & 1))
    if lcr & 0x04:
        half_bits += 3 if word == 5 else 4
    else:
        half_bits += 2
    return half_bits * (divisor or 65536) * HALF_BIT_TICKS


# --------------------------------------------------------------------------------------
# Configuration and stats
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Uart16550Config:
    """Where the UART sits: eight ports from ``base`` and an ISA IRQ number."""

    base: int = 0x3F8
    irq: int = 4
    name: str = "com1"

    def __post_init__(self) -> None:
        PortRange(self.base, 8)  # validates the range
        if not 0 <= self.irq <= 255:
            raise ValueError(f"irq {self.irq} is out of range")
        if not self.name:
            raise ValueError("a UART needs a name")


@dataclass
class Uart16550Stats(DeviceStats):
    """DeviceStats plus UART counters.

    ``tx_bytes``: characters that left the transmitter for ``on_tx`` (not loopback);
    ``rx_bytes``: characters that entered the receiver FIFO (pushed or looped back);
    ``overruns``: characters lost to a full receiver;
    ``tx_dropped``: THR writes lost to a full THR/TX FIFO.
    """

    tx_bytes: int = 0
    rx_bytes: int = 0
    overruns: int = 0
    tx_dropped: int = 0


# --------------------------------------------------------------------------------------
# The device
# --------------------------------------------------------------------------------------


_SAVE_KEYS = frozenset(
    {
        "version",
        "ier",
        "lcr",
        "mcr",
        "fcr",
        "dll",
        "dlm",
        "scr",
        "rbr",
        "lsr_errors",
        "rx_fifo_error",
        "rx_fifo",
        "rx_flags",
        "tx_fifo",
        "tsr_busy",
        "tsr",
        "tsr_remaining_ticks",
        "thre_pending",
        "rx_timeout_pending",
        "rx_idle_ticks",
        "msr_deltas",
        "modem_inputs",
    }
)


class Uart16550:
    """A PC16550D UART behind eight I/O ports.

    ``on_tx(data)`` receives transmitted bytes (never in loopback mode), called at most
    once per access or poll, after the state is consistent.
    """

    __slots__ = (
        "name",
        "config",
        "stats",
        "_base",
        "_irq",
        "_clock",
        "_on_tx",
        "_irq_level",
        "_now",
        "_deadline",
        "_char",
        "_tx_out",
        "_readers",
        "_writers",
        # guest-visible state
        "_ier",
        "_lcr",
        "_mcr",
        "_fcr",
        "_dll",
        "_dlm",
        "_scr",
        "_rbr",
        "_lsr_err",
        "_rx_fifo_error",
        "_rx",
        "_rx_flags",
        "_rx_errors",
        "_tx",
        "_tsr_busy",
        "_tsr",
        "_tsr_done",
        "_thre_pending",
        "_timeout_pending",
        "_rx_last",
        "_msr_deltas",
        "_modem_inputs",
    )

    def __init__(
        self,
        config: Uart16550Config,
        irq_line: IrqLine,
        clock: Clock,
        on_tx: Callable[[bytes], None],
    ) -> None:
        self.config = config
        self.name = config.name
        self.stats = Uart16550Stats()
        self._base = config.base
        self._irq = irq_line
        self._clock = clock
        self._on_tx = on_tx
        self._irq_level = False
        self._now = clock.now_ns() * TICKS_PER_NS
        self._deadline = _NEVER
        self._tx_out = bytearray()
        self._readers = (
            self._read_rbr,
            self._read_ier,
            self._read_iir,
            self._read_lcr,
            self._read_mcr,
            self._read_lsr,
            self._read_msr,
            self._read_scr,
        )
        self._writers = (
            self._write_thr,
            self._write_ier,
            self._write_fcr,
            self._write_lcr,
            self._write_mcr,
            self._write_ignored,
            self._write_ignored,
            self._write_scr,
        )
        self._rx = bytearray()
        self._rx_flags = bytearray()
        self._tx = bytearray()
        self._modem_inputs = int(DEFAULT_MODEM_INPUTS)
        self._power_on()
        self._sync()

    # ---------------------------------------------------------------- Device interface

    def port_ranges(self) -> list[PortRange]:
        return [PortRange(self._base, 8)]

    def io_read(self, port: int, size: int) -> int | IoError:
        offset = port - self._base
        if not 0 <= offset < 8:
            self.stats.missed_reads += 1
            return IoError.INVALID_REGISTER
        if size != 1:
            self.stats.missed_reads += 1
            return IoError.INVALID_ACCESS_SIZE
        self.stats.reads += 1
        now = self._clock.now_ns() * TICKS_PER_NS
        if now > self._now:
            self._now = now
            if now >= self._deadline:
                self._advance()
        value = self._readers[offset]()
        self._sync()
        return value

    def io_write(self, port: int, size: int, value: int) -> IoError | None:
        offset = port - self._base
        if not 0 <= offset < 8:
            self.stats.missed_writes += 1
            return IoError.INVALID_REGISTER
        if size != 1:
            self.stats.missed_writes += 1
            return IoError.INVALID_ACCESS_SIZE
        self.stats.writes += 1
        now = self._clock.now_ns() * TICKS_PER_NS
        if now > self._now:
            self._now = now
            if now >= self._deadline:
                self._advance()
        self._writers[offset](value & 0xFF)
        self._sync()
        return None

    def poll(self, now_ns: int) -> int | None:
        """Catch up with ``now_ns``; return the next deadline in ns, or None.

        The deadline is when the character in the shift register finishes or, if the
        received-data interrupt is enabled, when the character timeout would fire.
        """
        now = now_ns * TICKS_PER_NS
        if now > self._now:
            self._now = now
            if now >= self._deadline:
                self._advance()
        self._sync()
        if self._tsr_busy:
            deadline = self._tsr_done
        else:
            deadline = _NEVER
        if self._ier & _ERBFI and self._timeout_armed():
            deadline = min(deadline, self._rx_last + TIMEOUT_CHARS * self._char)
        if deadline == _NEVER:
            return None
        return -(-deadline // TICKS_PER_NS)

    def reset(self) -> None:
        """Power-on reset: registers to their reset values, FIFOs and shift register empty.

        The modem inputs (the outside world) and the stats counters are kept.
        """
        self._catch_up()
        self._power_on()
        self._sync()

    # ---------------------------------------------------------------- backend side

    def push_rx(self, data: bytes, *, lossy: bool = False) -> int:
        """Receive ``data`` from outside; return how many bytes were taken.

        Takes at most the free space of the RX FIFO (1 byte in 16450 mode); the caller
        retries the rest.  With ``lossy=True`` the rest is lost as on a wire: OE is set and
        ``stats.overruns`` counts it (in 16450 mode each lost byte overwrites RBR, as the
        datasheet says).  In loopback mode nothing is taken.
        """
        self._catch_up()
        if self._mcr & _LOOP or not data:
            self._sync()
            return 0
        capacity = FIFO_DEPTH if self._fcr & _FCR_ENABLE else 1
        free = capacity - len(self._rx)
        taken = min(free, len(data))
        if taken:
            self._rx += data[:taken]
            self._rx_flags += bytes(taken)
            if not self._timeout_pending:
                self._rx_last = self._now
            self.stats.rx_bytes += taken
        if lossy and taken < len(data):
            for byte in data[taken:]:
                self._receive(byte, 0, self._now)
            taken = len(data)
        self._sync()
        return taken

    def push_rx_char(
        self,
        value: int,
        *,
        parity_error: bool = False,
        framing_error: bool = False,
        break_interrupt: bool = False,
    ) -> bool:
        """Receive one character with error conditions; False when there is no room.

        A break is received as a 0x00 character with ``break_interrupt`` (and, as a break
        holds the line low past the stop bit, usually ``framing_error``).
        """
        if not 0 <= value <= 0xFF:
            raise ValueError(f"character {value} is not a byte")
        self._catch_up()
        capacity = FIFO_DEPTH if self._fcr & _FCR_ENABLE else 1
        if self._mcr & _LOOP or len(self._rx) >= capacity:
            self._sync()
            return False
        flags = (_PE if parity_error else 0) | (_FE if framing_error else 0)
        flags |= _BI if break_interrupt else 0
        self._receive(value, flags, self._now)
        self._sync()
        return True

    def set_modem_inputs(
        self,
        *,
        cts: bool | None = None,
        dsr: bool | None = None,
        ri: bool | None = None,
        dcd: bool | None = None,
    ) -> None:
        """Change the CTS/DSR/RI/DCD inputs (None keeps a line); sets MSR delta bits."""
        self._catch_up()
        old = self._msr_inputs()
        lines = self._modem_inputs
        for wanted, bit in ((cts, _CTS), (dsr, _DSR), (ri, _RI), (dcd, _DCD)):
            if wanted is not None:
                lines = (lines | bit) if wanted else (lines & ~bit)
        self._modem_inputs = lines
        self._note_msr_change(old)
        self._sync()

    # ---------------------------------------------------------------- introspection

    @property
    def irq_level(self) -> bool:
        """The level last driven onto the IRQ line."""
        return self._irq_level

    @property
    def divisor(self) -> int:
        """The divisor in effect (a latch value of 0 counts as 65536)."""
        return (self._dll | (self._dlm << 8)) or 65536

    @property
    def baud(self) -> float:
        return BAUD_BASE / self.divisor

    @property
    def char_time_ns(self) -> float:
        """One character at the current LCR and divisor, in (fractional) ns."""
        return self._char / TICKS_PER_NS

    # ---------------------------------------------------------------- save / restore

    def save(self) -> dict:
        self._catch_up()
        self._sync()
        timeout_armed = self._timeout_armed()
        return {
            "version": SAVE_VERSION,
            "ier": self._ier,
            "lcr": self._lcr,
            "mcr": self._mcr,
            "fcr": self._fcr,
            "dll": self._dll,
            "dlm": self._dlm,
            "scr": self._scr,
            "rbr": self._rbr,
            "lsr_errors": self._lsr_err,
            "rx_fifo_error": self._rx_fifo_error,
            "rx_fifo": bytes(self._rx),
            "rx_flags": bytes(self._rx_flags),
            "tx_fifo": bytes(self._tx),
            "tsr_busy": self._tsr_busy,
            "tsr": self._tsr if self._tsr_busy else 0,
            "tsr_remaining_ticks": self._tsr_done - self._now if self._tsr_busy else 0,
            "thre_pending": self._thre_pending,
            "rx_timeout_pending": self._timeout_pending,
            "rx_idle_ticks": self._now - self._rx_last if timeout_armed else 0,
            "msr_deltas": self._msr_deltas,
            "modem_inputs": self._modem_inputs,
        }

    def restore(self, saved: dict) -> None:
        """Replace the state with ``saved`` after checking all of it (ValueError if bad)."""
        s = _validate(saved)
        # The old state is discarded, so it is not advanced; only the time base moves on.
        now = self._clock.now_ns() * TICKS_PER_NS
        if now > self._now:
            self._now = now
        now = self._now
        self._ier = s["ier"]
        self._lcr = s["lcr"]
        self._mcr = s["mcr"]
        self._fcr = s["fcr"]
        self._dll = s["dll"]
        self._dlm = s["dlm"]
        self._scr = s["scr"]
        self._rbr = s["rbr"]
        self._lsr_err = s["lsr_errors"]
        self._rx_fifo_error = s["rx_fifo_error"]
        self._rx = bytearray(s["rx_fifo"])
        self._rx_flags = bytearray(s["rx_flags"])
        self._rx_errors = sum(1 for f in self._rx_flags if f)
        self._tx = bytearray(s["tx_fifo"])
        self._tsr_busy = s["tsr_busy"]
        self._tsr = s["tsr"]
        self._tsr_done = now + s["tsr_remaining_ticks"]
        self._thre_pending = s["thre_pending"]
        self._timeout_pending = s["rx_timeout_pending"]
        self._rx_last = now - s["rx_idle_ticks"]
        self._msr_deltas = s["msr_deltas"]
        self._modem_inputs = s["modem_inputs"]
        self._char = char_ticks(self._lcr, self._dll | (self._dlm << 8))
        self._tx_out.clear()
        self._sync()

    # ---------------------------------------------------------------- time

    def _catch_up(self) -> None:
        now = self._clock.now_ns() * TICKS_PER_NS
        if now > self._now:
            self._now = now
            if now >= self._deadline:
                self._advance()

    def _timeout_armed(self) -> bool:
        return bool(self._fcr & _FCR_ENABLE and self._rx and not self._timeout_pending)

    def _update_deadline(self) -> None:
        deadline = self._tsr_done if self._tsr_busy else _NEVER
        if self._fcr & _FCR_ENABLE and self._rx and not self._timeout_pending:
            rx_deadline = self._rx_last + TIMEOUT_CHARS * self._char
            if rx_deadline < deadline:
                deadline = rx_deadline
        self._deadline = deadline

    def _advance(self) -> None:
        """Bring transmitter and receiver timeout up to ``self._now``."""
        now = self._now
        while self._tsr_busy and self._tsr_done <= now:
            done = self._tsr_done
            if self._mcr & _LOOP:
                self._receive(self._tsr, 0, done)
            else:
                self._tx_out.append(self._tsr)
                self.stats.tx_bytes += 1
            tx = self._tx
            if tx:
                self._tsr = tx[0]
                del tx[0]
                self._tsr_done = done + self._char
                if not tx:
                    self._thre_pending = True  # THRE rising edge
            else:
                self._tsr_busy = False
        self._check_timeout(now)
        self._update_deadline()

    def _check_timeout(self, at: int) -> None:
        if (
            not self._timeout_pending
            and self._rx
            and self._fcr & _FCR_ENABLE
            and self._rx_last + TIMEOUT_CHARS * self._char <= at
        ):
            self._timeout_pending = True

    def _receive(self, value: int, flags: int, at: int) -> None:
        """A character has arrived in the receive shift register at time ``at``."""
        self._check_timeout(at)
        rx = self._rx
        if self._fcr & _FCR_ENABLE:
            if len(rx) >= FIFO_DEPTH:
                # The FIFO keeps its contents; the new character is lost.
                self._lsr_err |= _OE
                self.stats.overruns += 1
                return
        elif rx:
            # 16450 mode: the unread RBR is destroyed by the new character.
            self._lsr_err |= _OE
            self.stats.overruns += 1
            if self._rx_flags[0]:
                self._rx_errors -= 1
            rx.clear()
            self._rx_flags.clear()
        rx.append(value)
        self._rx_flags.append(flags)
        if flags:
            self._rx_errors += 1
            if self._fcr & _FCR_ENABLE:
                self._rx_fifo_error = True
            if len(rx) == 1:
                self._lsr_err |= flags
        if not self._timeout_pending:
            self._rx_last = at
        self.stats.rx_bytes += 1

    # ---------------------------------------------------------------- interrupts

    def _pending_source(self) -> int:
        ier = self._ier
        if ier & _ELSI and self._lsr_err:
            return _SRC_RLS
        if ier & _ERBFI and self._rx:
            if self._fcr & _FCR_ENABLE:
                if len(self._rx) >= _RX_TRIGGER[self._fcr >> 6]:
                    return _SRC_RDA
                if self._timeout_pending:
                    return _SRC_CTI
            else:
                return _SRC_RDA
        if ier & _ETBEI and self._thre_pending and not self._tx:
            return _SRC_THRE
        if ier & _EDSSI and self._msr_deltas:
            return _SRC_MS
        return _SRC_NONE

    def _sync(self) -> None:
        """After any change: catch up on deadlines, hand out TX bytes, drive the IRQ."""
        self._update_deadline()
        if self._deadline <= self._now:
            self._advance()
        if self._tx_out:
            data = bytes(self._tx_out)
            self._tx_out.clear()
            self._on_tx(data)
        level = self._mcr & _OUT2 != 0 and self._pending_source() != _SRC_NONE
        if level != self._irq_level:
            self._irq_level = level
            self._irq.set_level(level)

    # ---------------------------------------------------------------- registers

    def _power_on(self) -> None:
        self._ier = RESET_IER
        self._lcr = RESET_LCR
        self._mcr = RESET_MCR
        self._fcr = RESET_FCR
        self._dll = RESET_DLL
        self._dlm = RESET_DLM
        self._scr = RESET_SCR
        self._rbr = RESET_RBR
        self._lsr_err = 0
        self._rx_fifo_error = False
        self._rx.clear()
        self._rx_flags.clear()
        self._rx_errors = 0
        self._tx.clear()
        self._tsr_busy = False
        self._tsr = 0
        self._tsr_done = 0
        self._thre_pending = False
        self._timeout_pending = False
        self._rx_last = self._now
        self._msr_deltas = RESET_MSR_DELTAS
        self._char = char_ticks(self._lcr, self._dll | (self._dlm << 8))

    def _msr_inputs(self) -> int:
        mcr = self._mcr
        if mcr & _LOOP:
            return (
                (_CTS if mcr & _RTS else 0)
                | (_DSR if mcr & _DTR else 0)
                | (_RI if mcr & _OUT1 else 0)
                | (_DCD if mcr & _OUT2 else 0)
            )
        return self._modem_inputs

    def _note_msr_change(self, old: int) -> None:
        new = self._msr_inputs()
        changed = old ^ new
        if changed:
            deltas = self._msr_deltas
            if changed & _CTS:
                deltas |= _DCTS
            if changed & _DSR:
                deltas |= _DDSR
            if old & _RI and not new & _RI:
                deltas |= _TERI
            if changed & _DCD:
                deltas |= _DDCD
            self._msr_deltas = deltas

    def _read_rbr(self) -> int:
        if self._lcr & _LCR_DLAB:
            return self._dll
        rx = self._rx
        if rx:
            self._rbr = rx[0]
            del rx[0]
            flags = self._rx_flags
            if flags[0]:
                self._rx_errors -= 1
            del flags[0]
            if flags and flags[0]:
                self._lsr_err |= flags[0]  # the next character's errors reach the top
        # Reading the FIFO clears a character timeout and restarts its timer.
        self._timeout_pending = False
        self._rx_last = self._now
        return self._rbr

    def _read_ier(self) -> int:
        if self._lcr & _LCR_DLAB:
            return self._dlm
        return self._ier

    def _read_iir(self) -> int:
        source = self._pending_source()
        if source == _SRC_THRE:
            self._thre_pending = False
        if self._fcr & _FCR_ENABLE:
            return source | _IIR_FIFO
        return source

    def _read_lcr(self) -> int:
        return self._lcr

    def _read_mcr(self) -> int:
        return self._mcr

    def _read_lsr(self) -> int:
        value = self._lsr_err
        if self._rx:
            value |= _DR
        if not self._tx:
            value |= _THRE
            if not self._tsr_busy:
                value |= _TEMT
        if self._rx_fifo_error:
            value |= _RXFE
            if not self._rx_errors:
                self._rx_fifo_error = False
        self._lsr_err = 0
        return value

    def _read_msr(self) -> int:
        value = self._msr_inputs() | self._msr_deltas
        self._msr_deltas = 0
        return value

    def _read_scr(self) -> int:
        return self._scr

    def _write_thr(self, value: int) -> None:
        if self._lcr & _LCR_DLAB:
            self._dll = value
            self._char = char_ticks(self._lcr, value | (self._dlm << 8))
            return
        self._thre_pending = False
        if not self._tsr_busy:
            # THR -> TSR at once; THR is empty again.
            self._tsr = value
            self._tsr_busy = True
            self._tsr_done = self._now + self._char
            self._thre_pending = True
        elif self._fcr & _FCR_ENABLE:
            if len(self._tx) < FIFO_DEPTH:
                self._tx.append(value)
            else:
                self.stats.tx_dropped += 1
        elif self._tx:
            self._tx[0] = value
            self.stats.tx_dropped += 1
        else:
            self._tx.append(value)

    def _write_ier(self, value: int) -> None:
        if self._lcr & _LCR_DLAB:
            self._dlm = value
            self._char = char_ticks(self._lcr, self._dll | (value << 8))
            return
        value &= _IER_MASK
        if value & _ETBEI:
            if not self._ier & _ETBEI and not self._tx:
                self._thre_pending = True
        else:
            self._thre_pending = False
        self._ier = value

    def _write_fcr(self, value: int) -> None:
        enable = value & _FCR_ENABLE
        if enable != self._fcr & _FCR_ENABLE:
            # Changing FCR0 resets both FIFOs; the next THRE interrupt is immediate.
            self._clear_rx_fifo()
            self._tx.clear()
            self._thre_pending = True
        if not enable:
            self._fcr = 0  # the other bits are only programmed together with FCR0
            return
        self._fcr = value & _FCR_STORED
        if value & _FCR_RX_RESET:
            self._clear_rx_fifo()
        if value & _FCR_TX_RESET and self._tx:
            self._tx.clear()  # the shift register keeps its character
            self._thre_pending = True

    def _clear_rx_fifo(self) -> None:
        self._rx.clear()
        self._rx_flags.clear()
        self._rx_errors = 0
        self._timeout_pending = False

    def _write_lcr(self, value: int) -> None:
        self._lcr = value
        self._char = char_ticks(value, self._dll | (self._dlm << 8))

    def _write_mcr(self, value: int) -> None:
        old = self._msr_inputs()
        self._mcr = value & _MCR_MASK
        self._note_msr_change(old)

    def _write_scr(self, value: int) -> None:
        self._scr = value

    def _write_ignored(self, value: int) -> None:
        pass


# --------------------------------------------------------------------------------------
# Validation of saved state
# --------------------------------------------------------------------------------------


def _validate(saved: object) -> dict:
    if not isinstance(saved, dict):
        raise ValueError(f"saved UART state must be a dict, not {type(saved).__name__}")
    keys = set(saved)
    if keys != _SAVE_KEYS:
        missing = sorted(_SAVE_KEYS - keys)
        unknown = sorted(map(str, keys - _SAVE_KEYS))
        raise ValueError(f"saved UART state: missing keys {missing}, unknown keys {unknown}")
    if saved["version"] != SAVE_VERSION or type(saved["version"]) is not int:
        raise ValueError(f"saved UART state version {saved['version']!r} is not {SAVE_VERSION}")

    def integer(key: str, low: int, high: int, mask: int = -1) -> int:
        value = saved[key]
        if type(value) is not int or not low <= value <= high or value & ~mask:
            raise ValueError(f"saved UART state: {key}={value!r} is not valid")
        return value

    def boolean(key: str) -> bool:
        value = saved[key]
        if type(value) is not bool:
            raise ValueError(f"saved UART state: {key}={value!r} is not a bool")
        return value

    def blob(key: str, limit: int) -> bytes:
        value = saved[key]
        if not isinstance(value, (bytes, bytearray)):
            raise ValueError(f"saved UART state: {key} is not bytes")
        if len(value) > limit:
            raise ValueError(f"saved UART state: {key} holds {len(value)} bytes, more than {limit}")
        return bytes(value)

    out: dict = {}
    for key in ("lcr", "dll", "dlm", "scr", "rbr"):
        out[key] = integer(key, 0, 0xFF)
    out["ier"] = integer("ier", 0, 0xFF, _IER_MASK)
    out["mcr"] = integer("mcr", 0, 0xFF, _MCR_MASK)
    out["fcr"] = integer("fcr", 0, 0xFF, _FCR_STORED)
    if out["fcr"] and not out["fcr"] & _FCR_ENABLE:
        raise ValueError("saved UART state: FCR bits set without FCR0")
    out["lsr_errors"] = integer("lsr_errors", 0, 0xFF, _LSR_ERRORS)
    out["msr_deltas"] = integer("msr_deltas", 0, 0xFF, 0x0F)
    out["modem_inputs"] = integer("modem_inputs", 0, 0xFF, _MSR_INPUTS)
    depth = FIFO_DEPTH if out["fcr"] & _FCR_ENABLE else 1
    out["rx_fifo"] = blob("rx_fifo", depth)
    out["rx_flags"] = blob("rx_flags", depth)
    if len(out["rx_flags"]) != len(out["rx_fifo"]):
        raise ValueError("saved UART state: rx_flags and rx_fifo differ in length")
    if any(f & ~_CHAR_ERRORS for f in out["rx_flags"]):
        raise ValueError("saved UART state: rx_flags hold bits other than PE/FE/BI")
    out["tx_fifo"] = blob("tx_fifo", depth)
    for key in ("rx_fifo_error", "tsr_busy", "thre_pending", "rx_timeout_pending"):
        out[key] = boolean(key)
    out["tsr"] = integer("tsr", 0, 0xFF)
    if out["tsr_busy"]:
        out["tsr_remaining_ticks"] = integer("tsr_remaining_ticks", 1, _MAX_CHAR_TICKS)
    else:
        out["tsr_remaining_ticks"] = integer("tsr_remaining_ticks", 0, 0)
        if out["tx_fifo"]:
            raise ValueError("saved UART state: TX FIFO holds data but the shift register is idle")
    out["rx_idle_ticks"] = integer("rx_idle_ticks", 0, TIMEOUT_CHARS * _MAX_CHAR_TICKS)
    return out
