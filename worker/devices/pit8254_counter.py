"""One counter of the Intel 8254 as a value: its registers, and its OUT waveform and counting
element as closed-form functions of the PIT clock tick.

The chip (:mod:`worker.devices.pit8254`) holds three of these and decodes the ports, the
control word and the GATE inputs; everything about how one counter counts, in modes 0-5,
is here, so it can be read (and checked on restore) on its own.  Names are the datasheet's:
CR (count register), CE (counting element), OL (output latch), NULL COUNT, OUT, GATE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from worker.devices.state import Byte, Mask, OneOf, Range

# Control word RW1,RW0
RW_LATCH = 0  # counter latch command
RW_LSB = 1
RW_MSB = 2
RW_LSB_MSB = 3

# What the counting element is doing.
IDLE = "idle"  # not counting; CE and OUT frozen (no count, or stopped by a write or GATE)
SUSPENDED = "suspended"  # mode 0/4 with GATE low: frozen, resumes where it was on GATE high
ONESHOT = "oneshot"  # modes 0, 1, 4, 5: CE counts down from `n` at `origin`, OUT acts once
PERIODIC = "periodic"  # modes 2, 3: period `n` clocks starting at `origin`
SEGMENTS = (IDLE, SUSPENDED, ONESHOT, PERIODIC)


def to_bcd(value: int) -> int:
    """0..9999 as four BCD digits."""
    return sum(((value // 10**i) % 10) << (4 * i) for i in range(4))


def from_bcd(raw: int) -> int:
    """Four BCD digits as a number; digits above 9 are taken at face value, as a counter would."""
    return sum(((raw >> (4 * i)) & 0xF) * 10**i for i in range(4))


@dataclass
class ChannelState:
    """One counter.  Ticks are absolute PIT clock numbers since the device's epoch."""

    # Control word
    rw: Annotated[int, Range(RW_LSB, RW_LSB_MSB)] = RW_LSB_MSB
    mode: Annotated[int, Range(0, 7)] = 0  # M2..M0 as written
    bcd: bool = False
    # CR and the byte flip-flops
    cr: Annotated[int, Mask(0xFFFF)] = 0
    cr_valid: bool = False  # a whole initial count was written since the control word
    null_count: bool = True  # CR written but not yet loaded into CE
    cr_lsb: Byte = 0
    write_msb_next: bool = False
    read_msb_next: bool = False
    count_latch: Annotated[int, Mask(0xFFFF)] | None = None  # OL holding a latched count
    status_latch: Byte | None = None
    gate: bool = True
    # The counting element
    segment: Annotated[str, OneOf(*SEGMENTS)] = IDLE
    origin: int = 0
    n: int = 0  # ONESHOT: CE at origin (0 means the full modulus); PERIODIC: period
    fired: bool = False  # ONESHOT/SUSPENDED: the terminal count was reached before origin
    idle_ce: int = 0  # IDLE/SUSPENDED: frozen CE
    idle_out: bool = False  # IDLE/SUSPENDED: frozen OUT
    load_tick: int | None = None  # the clock pulse at which CR is copied into CE
    load_into_low: bool = False  # mode 3: that load starts a low half-cycle
    # Edge accounting: OUT as of last_tick
    last_tick: Annotated[int, Range(0, None)] = 0
    out: bool = False

    # --- decoded -------------------------------------------------------------------------
    @property
    def op_mode(self) -> int:
        return self.mode - 4 if self.mode >= 6 else self.mode

    @property
    def modulus(self) -> int:
        return 10_000 if self.bcd else 0x10000

    def initial_count(self) -> int:
        """CR as a number of clocks: 0 means the full 65536 (10000 in BCD)."""
        value = from_bcd(self.cr) % 10_000 if self.bcd else self.cr
        return value or self.modulus

    def status(self) -> int:
        return (
            (0x80 if self.out else 0)
            | (0x40 if self.null_count else 0)
            | (self.rw << 4)
            | (self.mode << 1)
            | (1 if self.bcd else 0)
        )

    # --- the waveform as a function of the tick -----------------------------------------
    def _terminal(self) -> int:
        return self.origin + (self.n or self.modulus)

    def out_at(self, t: int) -> bool:
        if self.segment in (IDLE, SUSPENDED):
            return self.idle_out
        if self.segment == ONESHOT:
            if self.fired:
                return True
            if self.op_mode in (0, 1):
                return t >= self._terminal()  # high at terminal count and stays high
            return t != self._terminal()  # modes 4, 5: low for one clock at terminal count
        phase = (t - self.origin) % self.n
        if self.op_mode == 2:
            return phase != self.n - 1  # low for the one clock when CE is 1
        return phase < (self.n + 1) // 2  # mode 3: high for ceil(n/2), low for floor(n/2)

    def ce_at(self, t: int) -> int:
        if self.segment in (IDLE, SUSPENDED):
            return self.idle_ce
        if self.segment == ONESHOT:
            return (self.n - (t - self.origin)) % self.modulus  # keeps wrapping after 0
        phase = (t - self.origin) % self.n
        if self.op_mode == 2:
            return (self.n - phase) % self.modulus
        # Mode 3 counts by two each half-cycle, from n (even) or n - 1 (odd n: the datasheet
        # loads "initial count minus one" and holds the expired count one extra clock in the
        # high half).
        half = (self.n + 1) // 2
        step = phase if phase < half else phase - half
        return ((self.n & ~1) - 2 * step) % self.modulus

    def rising_edges(self, after: int, upto: int) -> int:
        """Rising edges of OUT at ticks in (after, upto], within the current segment."""
        if upto <= after or self.segment in (IDLE, SUSPENDED):
            return 0
        if self.segment == ONESHOT:
            if self.fired:
                return 0
            rise = self._terminal() + (0 if self.op_mode in (0, 1) else 1)
            return 1 if after < rise <= upto else 0
        if self.n < 2:
            return 0  # count 1 is illegal in modes 2 and 3: OUT never toggles here
        after = max(after, self.origin)
        # A period starts (OUT rises) at origin + k*n for k >= 1.
        return (upto - self.origin) // self.n - (after - self.origin) // self.n

    def next_change(self, t: int) -> int | None:
        """The first tick after t at which OUT changes, within the current segment."""
        if self.segment in (IDLE, SUSPENDED):
            return None
        if self.segment == ONESHOT:
            if self.fired:
                return None
            terminal = self._terminal()
            if self.op_mode in (0, 1):
                return terminal if terminal > t else None
            if t < terminal:
                return terminal
            return terminal + 1 if t == terminal else None
        if self.n < 2:
            return None
        phase = (t - self.origin) % self.n
        if self.op_mode == 2:
            return t + (self.n - 1 - phase) if phase < self.n - 1 else t + 1
        half = (self.n + 1) // 2
        return t + (half - phase) if phase < half else t + (self.n - phase)

    # --- state changes -------------------------------------------------------------------
    def freeze(self, t: int, segment: str = IDLE) -> None:
        """Stop the counting element at tick t, keeping CE and OUT."""
        fired = self.segment == ONESHOT and (self.fired or t >= self._terminal())
        if self.segment == SUSPENDED:
            fired = self.fired
        ce, out = self.ce_at(t), self.out_at(t)
        if self.op_mode in (4, 5) and fired:
            out = True  # a strobe cut short by GATE ends now rather than one clock later
        self.segment, self.idle_ce, self.idle_out, self.fired = segment, ce, out, fired

    def load(self, t: int) -> None:
        """Copy CR into CE at clock pulse t (the datasheet's "loaded on the next CLK pulse")."""
        count = self.initial_count()
        self.null_count = False
        self.load_tick = None
        self.fired = False
        mode = self.op_mode
        if mode in (0, 4) and not self.gate:
            # Loaded, but counting waits for GATE.
            self.segment, self.idle_ce, self.idle_out = SUSPENDED, count % self.modulus, mode == 4
        elif mode in (2, 3) and not self.gate:
            self.segment, self.idle_ce, self.idle_out = IDLE, count % self.modulus, True
        elif mode in (2, 3):
            self.segment, self.n = PERIODIC, count
            # A mode 3 reload at the end of a high half starts a low half: place the origin
            # half a period back so the closed form lands in the low half.
            self.origin = t - (count + 1) // 2 if mode == 3 and self.load_into_low else t
        else:
            self.segment, self.origin, self.n = ONESHOT, t, count % self.modulus
        self.load_into_low = False

    def advance(self, to: int) -> int:
        """Bring OUT accounting up to tick ``to``; returns the rising edges seen on the way."""
        edges = 0
        while self.load_tick is not None and self.load_tick <= to:
            at = self.load_tick
            edges += self.rising_edges(self.last_tick, at - 1)
            before = self.out_at(at - 1)
            self.load(at)
            self.out = self.out_at(at)
            if self.out and not before:
                edges += 1
            self.last_tick = at
        edges += self.rising_edges(self.last_tick, to)
        self.last_tick = to
        self.out = self.out_at(to)
        return edges

    def settle(self, t: int) -> int:
        """After an immediate change at tick t: 1 if OUT rose, else 0."""
        out = self.out_at(t)
        rose = out and not self.out
        self.out = out
        return 1 if rose else 0

    def next_boundary(self, t: int) -> tuple[int, bool]:
        """When a periodic counter picks up a new CR: (tick, starts a low half)."""
        phase = (t - self.origin) % self.n
        if self.op_mode == 2:
            return t - phase + self.n, False  # end of the current period
        half = (self.n + 1) // 2
        if phase < half:
            return t - phase + half, True  # end of the current high half
        return t - phase + self.n, False


def check_channel(channel: ChannelState, index: int, tick: int) -> None:
    """What a saved channel must hold beyond its fields' types, at the saved ``tick``."""
    where = f"PIT saved state: channel {index}"
    modulus = channel.modulus
    if not 0 <= channel.idle_ce < modulus:
        raise ValueError(f"{where}: idle_ce={channel.idle_ce} is out of range")
    if channel.last_tick > tick:
        raise ValueError(f"{where}: last_tick={channel.last_tick} is after the saved time")
    if channel.load_tick is not None and channel.load_tick <= channel.last_tick:
        raise ValueError(f"{where}: load_tick={channel.load_tick} is not after last_tick")
    low = 1 if channel.segment == PERIODIC else 0
    high = modulus if channel.segment == PERIODIC else modulus - 1
    if not low <= channel.n <= high:
        raise ValueError(f"{where}: n={channel.n} is out of range")
    if channel.segment == PERIODIC and channel.op_mode not in (2, 3):
        raise ValueError(f"{where}: a periodic segment in mode {channel.mode}")
    if channel.segment in (ONESHOT, SUSPENDED) and channel.op_mode not in (0, 1, 4, 5):
        raise ValueError(f"{where}: a one-shot segment in mode {channel.mode}")
    if channel.out != channel.out_at(channel.last_tick):
        raise ValueError(f"{where}: OUT disagrees with the counting state")
