"""National Semiconductor PC16550D / 16550A UART, as the COM ports of a PC.

Register and bit names are the datasheet's, in :mod:`worker.devices.uart16550_spec`.  Peer
implementations consulted for behaviour (not code): QEMU ``hw/char/serial.c``, openvmm
``serial_16550``, rust-vmm ``vm-superio``.

What is modelled
----------------
* All eleven registers behind eight ports, DLAB (LCR bit 7) switching offsets 0/1 to the
  divisor latch.
* 16-byte receive and transmit FIFOs (FCR bit 0), FIFO resets, receiver trigger levels
  1/4/8/14; in 16450 (non-FIFO) mode both "FIFOs" hold one byte (RBR, THR).
* Transmission in virtual time, in whole *ticks* of 1/18 ns (see ``char_ticks``), so
  back-to-back characters never lose or gain time to rounding.
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
* **Data bits are not masked** to the word length: the console sink and the loopback receiver
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

``save()`` is :class:`Uart16550State` as plain data, its times relative (:class:`SavedTimes`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from worker.devices.backends import ConsoleSink
from worker.devices.base import ChipsetDevice, Clock, DeviceStats, IrqLine, PortRange
from worker.devices.config import Uart16550Config
from worker.devices.state import load_state, save_state
from worker.devices.uart16550_spec import (
    BAUD_BASE,
    FIFO_DEPTH,
    TICKS_PER_NS,
    TIMEOUT_CHARS,
    Fcr,
    Ier,
    Iir,
    IirId,
    Lcr,
    Lsr,
    Mcr,
    Msr,
    Register,
    SavedTimes,
    Uart16550State,
    char_ticks,
    check_state,
    msr_deltas,
    msr_inputs,
    pending_interrupt,
)

__all__ = ["BAUD_BASE", "FIFO_DEPTH", "Fcr", "Ier", "Iir", "IirId", "Lcr", "Lsr", "Mcr", "Msr",
           "Register", "SAVE_VERSION", "TICKS_PER_NS", "Uart16550", "Uart16550Config",
           "Uart16550State", "Uart16550Stats"]

SAVE_VERSION = 1
_NEVER = 1 << 200  # a deadline that never comes


@dataclass
class Uart16550Stats(DeviceStats):
    tx_bytes: int = 0  # characters that left the transmitter for the console (not loopback)
    rx_bytes: int = 0  # characters that entered the receiver FIFO (pushed or looped back)
    overruns: int = 0  # characters lost to a full receiver
    tx_dropped: int = 0  # THR writes lost to a full THR/TX FIFO


class Uart16550(ChipsetDevice):
    """A PC16550D UART behind eight I/O ports.

    ``console`` receives transmitted bytes (never in loopback mode), written at most once
    per access or poll, after the state is consistent.
    """

    def __init__(self, config: Uart16550Config, irq: IrqLine, clock: Clock,
                 console: ConsoleSink) -> None:
        self.config = config
        self.name = config.name
        self.stats = Uart16550Stats()
        self.irq = irq
        self._clock = clock
        self._console = console
        self._now = clock.now_ns() * TICKS_PER_NS  # ticks up to which the state is current
        self._deadline = _NEVER  # when the transmitter or receiver timeout next needs a look
        self._tx_out = bytearray()  # transmitted, not yet handed to the console
        # Indexed by register offset.  LSR and MSR writes (factory test) are ignored.
        self._readers = (self._read_rbr, self._read_ier, self._read_iir,
                         lambda: self.state.lcr, lambda: self.state.mcr, self._read_lsr,
                         self._read_msr, lambda: self.state.scr)
        self._writers = (self._write_thr, self._write_ier, self._write_fcr, self._write_lcr,
                         self._write_mcr, lambda value: None, lambda value: None,
                         self._write_scr)
        self._install(Uart16550State(rx_last=self._now))
        self._sync()

    def _install(self, state: Uart16550State) -> None:
        """Make ``state`` current, with what is derived from it."""
        self.state = state
        self._char = char_ticks(state.lcr, state.dll | (state.dlm << 8))  # ticks a character

    # ---------------------------------------------------------------- Device interface

    def port_ranges(self) -> list[PortRange]:
        return [PortRange(self.config.base, 8)]

    def io_read(self, port: int, size: int) -> int:
        self._catch_up()
        value = self._readers[port - self.config.base]()
        self._sync()
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        self._catch_up()
        self._writers[port - self.config.base](value & 0xFF)
        self._sync()

    def poll(self, now_ns: int) -> int | None:
        """Catch up with ``now_ns``; return the next deadline in ns, or None.

        The deadline is when the character in the shift register finishes or, if the
        received-data interrupt is enabled, when the character timeout would fire.
        """
        self._catch_up(now_ns * TICKS_PER_NS)
        self._sync()  # leaves self._deadline current
        return self.deadline_after_access()

    def deadline_after_access(self, clock=None) -> int | None:
        """``poll``'s deadline without its catch-up (nor a clock read): every access ends
        with ``_sync``, so after one the state is current to that access's time.  Should
        the deadline fall between then and now, it is in the past and the worker polls at
        once.  (Saves the UART's second catch-up per access: 55.7k → 50.5k instructions.)"""
        s = self.state
        # The timeout needs no wake-up while its interrupt is disabled: a read catches up.
        deadline = self._deadline if s.ier & Ier.ERBFI else s.tsr_done if s.tsr_busy else _NEVER
        return None if deadline == _NEVER else -(-deadline // TICKS_PER_NS)

    def reset(self) -> None:
        """Power-on reset: registers to their reset values, FIFOs and shift register empty.

        The modem inputs (the outside world) and the stats counters are kept.
        """
        self._catch_up()
        self._install(Uart16550State(modem_inputs=self.state.modem_inputs, rx_last=self._now))
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
        s = self.state
        if s.mcr & Mcr.LOOP or not data:
            self._sync()
            return 0
        free = self._rx_capacity() - len(s.rx_fifo)
        taken = min(free, len(data))
        if taken:
            s.rx_fifo += data[:taken]
            s.rx_flags += bytes(taken)
            if not s.rx_timeout_pending:
                s.rx_last = self._now
            self.stats.rx_bytes += taken
        if lossy and taken < len(data):
            for byte in data[taken:]:
                self._receive(byte, 0, self._now)
            taken = len(data)
        self._sync()
        return taken

    def push_rx_char(self, value: int, *, parity_error: bool = False,
                     framing_error: bool = False, break_interrupt: bool = False) -> bool:
        """Receive one character with error conditions; False when there is no room.

        A break is received as a 0x00 character with ``break_interrupt`` (and, as a break
        holds the line low past the stop bit, usually ``framing_error``).
        """
        if not 0 <= value <= 0xFF:
            raise ValueError(f"character {value} is not a byte")
        self._catch_up()
        s = self.state
        if s.mcr & Mcr.LOOP or len(s.rx_fifo) >= self._rx_capacity():
            self._sync()
            return False
        flags = ((Lsr.PE if parity_error else 0) | (Lsr.FE if framing_error else 0)
                 | (Lsr.BI if break_interrupt else 0))
        self._receive(value, flags, self._now)
        self._sync()
        return True

    def set_modem_inputs(self, *, cts: bool | None = None, dsr: bool | None = None,
                         ri: bool | None = None, dcd: bool | None = None) -> None:
        """Change the CTS/DSR/RI/DCD inputs (None keeps a line); sets MSR delta bits."""
        self._catch_up()
        old = self._msr_inputs()
        lines = self.state.modem_inputs
        for wanted, bit in ((cts, Msr.CTS), (dsr, Msr.DSR), (ri, Msr.RI), (dcd, Msr.DCD)):
            if wanted is not None:
                lines = (lines | bit) if wanted else (lines & ~bit)
        self.state.modem_inputs = lines
        self._note_msr_change(old)
        self._sync()

    # ---------------------------------------------------------------- introspection

    @property
    def divisor(self) -> int:
        """The divisor in effect (a latch value of 0 counts as 65536)."""
        return (self.state.dll | (self.state.dlm << 8)) or 65536

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
        s, now = self.state, self._now
        # A relative time means something only while its timer runs; otherwise it is 0, and
        # so is the character in an idle shift register, so equal states save equal.
        times = SavedTimes(tsr_remaining_ticks=s.tsr_done - now if s.tsr_busy else 0,
                            rx_idle_ticks=now - s.rx_last if self._timeout_armed() else 0)
        return save_state(SAVE_VERSION, replace(s, tsr=s.tsr if s.tsr_busy else 0), times)

    def restore(self, saved: dict) -> None:
        """Replace the state with ``saved`` after checking all of it (ValueError if bad)."""
        state, times = load_state(saved, SAVE_VERSION, Uart16550State, SavedTimes, what="UART")
        check_state(state, times)
        # The old state is discarded, so it is not advanced; only the time base moves on.
        self._now = max(self._now, self._clock.now_ns() * TICKS_PER_NS)
        state.tsr_done = self._now + times.tsr_remaining_ticks
        state.rx_last = self._now - times.rx_idle_ticks
        self._install(state)
        self._tx_out.clear()
        self._sync()

    # ---------------------------------------------------------------- time

    def _catch_up(self, now: int | None = None) -> None:
        """Bring the state up to ``now`` (ticks; the clock's present by default)."""
        if now is None:
            now = self._clock.now_ns() * TICKS_PER_NS
        if now > self._now:
            self._now = now
            if now >= self._deadline:
                self._advance()

    def _rx_capacity(self) -> int:
        return FIFO_DEPTH if self.state.fcr & Fcr.FIFO_ENABLE else 1

    def _timeout_armed(self) -> bool:
        s = self.state
        return bool(s.fcr & Fcr.FIFO_ENABLE and s.rx_fifo and not s.rx_timeout_pending)

    def _update_deadline(self) -> None:
        s = self.state
        deadline = s.tsr_done if s.tsr_busy else _NEVER
        if self._timeout_armed():
            deadline = min(deadline, s.rx_last + TIMEOUT_CHARS * self._char)
        self._deadline = deadline

    def _advance(self) -> None:
        """Bring transmitter and receiver timeout up to ``self._now``."""
        s, now = self.state, self._now
        while s.tsr_busy and s.tsr_done <= now:
            done = s.tsr_done
            if s.mcr & Mcr.LOOP:
                self._receive(s.tsr, 0, done)
            else:
                self._tx_out.append(s.tsr)
                self.stats.tx_bytes += 1
            if s.tx_fifo:
                s.tsr = s.tx_fifo.pop(0)
                s.tsr_done = done + self._char
                if not s.tx_fifo:
                    s.thre_pending = True  # THRE rising edge
            else:
                s.tsr_busy = False
        self._check_timeout(now)
        self._update_deadline()

    def _check_timeout(self, at: int) -> None:
        if self._timeout_armed() and self.state.rx_last + TIMEOUT_CHARS * self._char <= at:
            self.state.rx_timeout_pending = True

    def _receive(self, value: int, flags: int, at: int) -> None:
        """A character has arrived in the receive shift register at time ``at``."""
        self._check_timeout(at)
        s = self.state
        fifo_mode = s.fcr & Fcr.FIFO_ENABLE
        if fifo_mode:
            if len(s.rx_fifo) >= FIFO_DEPTH:
                # The FIFO keeps its contents; the new character is lost.
                s.lsr_errors |= Lsr.OE
                self.stats.overruns += 1
                return
        elif s.rx_fifo:
            # 16450 mode: the unread RBR is destroyed by the new character.
            s.lsr_errors |= Lsr.OE
            self.stats.overruns += 1
            s.rx_fifo.clear()
            s.rx_flags.clear()
        s.rx_fifo.append(value)
        s.rx_flags.append(flags)
        if flags:
            if fifo_mode:
                s.rx_fifo_error = True
            if len(s.rx_fifo) == 1:
                s.lsr_errors |= flags
        if not s.rx_timeout_pending:
            s.rx_last = at
        self.stats.rx_bytes += 1

    # ---------------------------------------------------------------- interrupts

    def _irq_wanted(self) -> bool:
        # On a PC, OUT2 gates the UART's INTR onto the ISA IRQ line.
        return self.state.mcr & Mcr.OUT2 != 0 and pending_interrupt(self.state) != IirId.NONE

    def _sync(self) -> None:
        """After any change: catch up on deadlines, hand out TX bytes, drive the IRQ."""
        self._update_deadline()
        if self._deadline <= self._now:
            self._advance()
        if self._tx_out:
            data = bytes(self._tx_out)
            self._tx_out.clear()
            self._console.write(data)
        self._sync_irq()

    # ---------------------------------------------------------------- registers

    def _msr_inputs(self) -> int:
        return msr_inputs(self.state.mcr, self.state.modem_inputs)

    def _note_msr_change(self, old: int) -> None:
        self.state.msr_deltas |= msr_deltas(old, self._msr_inputs())

    def _read_rbr(self) -> int:
        s = self.state
        if s.lcr & Lcr.DLAB:
            return s.dll
        if s.rx_fifo:
            s.rbr = s.rx_fifo.pop(0)
            s.rx_flags.pop(0)
            if s.rx_flags and s.rx_flags[0]:
                s.lsr_errors |= s.rx_flags[0]  # the next character's errors reach the top
        # Reading the FIFO clears a character timeout and restarts its timer.
        s.rx_timeout_pending = False
        s.rx_last = self._now
        return s.rbr

    def _read_ier(self) -> int:
        return self.state.dlm if self.state.lcr & Lcr.DLAB else self.state.ier

    def _read_iir(self) -> int:
        source = pending_interrupt(self.state)
        if source == IirId.THR_EMPTY:
            self.state.thre_pending = False
        if self.state.fcr & Fcr.FIFO_ENABLE:
            return source | Iir.FIFOS_ENABLED
        return source

    def _read_lsr(self) -> int:
        s = self.state
        value = s.lsr_errors
        if s.rx_fifo:
            value |= Lsr.DR
        if not s.tx_fifo:
            value |= Lsr.THRE
            if not s.tsr_busy:
                value |= Lsr.TEMT
        if s.rx_fifo_error:
            value |= Lsr.RCVR_FIFO_ERROR
            if not any(s.rx_flags):  # no erroneous character is left in the FIFO
                s.rx_fifo_error = False
        s.lsr_errors = 0
        return value

    def _read_msr(self) -> int:
        value = self._msr_inputs() | self.state.msr_deltas
        self.state.msr_deltas = 0
        return value

    def _write_thr(self, value: int) -> None:
        s = self.state
        if s.lcr & Lcr.DLAB:
            s.dll = value
            self._char = char_ticks(s.lcr, value | (s.dlm << 8))
            return
        s.thre_pending = False
        if not s.tsr_busy:
            # THR -> TSR at once; THR is empty again.
            s.tsr = value
            s.tsr_busy = True
            s.tsr_done = self._now + self._char
            s.thre_pending = True
        elif s.fcr & Fcr.FIFO_ENABLE:
            if len(s.tx_fifo) < FIFO_DEPTH:
                s.tx_fifo.append(value)
            else:
                self.stats.tx_dropped += 1
        elif s.tx_fifo:
            s.tx_fifo[0] = value
            self.stats.tx_dropped += 1
        else:
            s.tx_fifo.append(value)

    def _write_ier(self, value: int) -> None:
        s = self.state
        if s.lcr & Lcr.DLAB:
            s.dlm = value
            self._char = char_ticks(s.lcr, s.dll | (value << 8))
            return
        value &= Ier.MASK
        if value & Ier.ETBEI:
            if not s.ier & Ier.ETBEI and not s.tx_fifo:
                s.thre_pending = True
        else:
            s.thre_pending = False
        s.ier = value

    def _write_fcr(self, value: int) -> None:
        s = self.state
        enable = value & Fcr.FIFO_ENABLE
        if enable != s.fcr & Fcr.FIFO_ENABLE:
            # Changing FCR0 resets both FIFOs; the next THRE interrupt is immediate.
            self._clear_rx_fifo()
            s.tx_fifo.clear()
            s.thre_pending = True
        if not enable:
            s.fcr = 0  # the other bits are only programmed together with FCR0
            return
        s.fcr = value & Fcr.STORED
        if value & Fcr.RCVR_FIFO_RESET:
            self._clear_rx_fifo()
        if value & Fcr.XMIT_FIFO_RESET and s.tx_fifo:
            s.tx_fifo.clear()  # the shift register keeps its character
            s.thre_pending = True

    def _clear_rx_fifo(self) -> None:
        s = self.state
        s.rx_fifo.clear()
        s.rx_flags.clear()
        s.rx_timeout_pending = False

    def _write_lcr(self, value: int) -> None:
        s = self.state
        s.lcr = value
        self._char = char_ticks(value, s.dll | (s.dlm << 8))

    def _write_mcr(self, value: int) -> None:
        old = self._msr_inputs()
        self.state.mcr = value & Mcr.MASK
        self._note_msr_change(old)

    def _write_scr(self, value: int) -> None:
        self.state.scr = value
