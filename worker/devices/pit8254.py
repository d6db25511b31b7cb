"""The Intel 8254 programmable interval timer of a PC (ports 0x40-0x43), plus port 0x61.

Names follow the 8254 datasheet: CR (count register, what the guest writes), CE (counting
element, what counts down), OL (output latch, the latched count), the status byte, OUT,
GATE, NULL COUNT, and modes 0-5.  Mode bits 110 and 111 are accepted as modes 2 and 3.

Wiring on a PC: channel 0 OUT drives IRQ0 and its GATE is tied high; channel 1 (the old DRAM
refresh timer) has its GATE tied high and OUT connected to nothing; channel 2 GATE is port
0x61 bit 0 and its OUT is read back in port 0x61 bit 5 and drives the speaker (with bit 1).

Time.  The input clock is 1.193182 MHz.  Nothing is stepped: every channel describes its OUT
waveform and CE as a closed-form function of the tick number ("segment": an origin tick plus
the count in use), and state is brought up to date lazily, on every port access and in
``poll(now_ns)``.  The tick number is ``(now_ns - epoch_ns) * 1193182 // 10**9`` from a fixed
epoch, in integers, so no fraction of a tick is ever lost however often or rarely the device
is looked at.  A count written between clock pulses is loaded on the next pulse (tick + 1),
as the datasheet says.

IRQ0 delivery policy ("coalesce", the equivalent of QEMU's ``lost_tick_policy=discard``):
the line follows OUT while ``poll`` is called at the deadlines it returns.  When a poll comes
late and several OUT periods have gone by, one rising edge is delivered (the line is lowered
first if it was high, then raised) and the other periods are counted in
``counters.missed_ticks``; they are not re-injected.  Catching up (KVM's reinject, QEMU's
``delay``) would need to know when the guest acknowledged each tick, which the PIT cannot see
(the 8259 latches one edge in IRR however many arrive).  If the late edge's OUT has already
fallen again (mode 3's low half) the line is held high until the next rising edge, because a
real 8259A drops a request whose input falls before INTA and the edge would be lost.

``poll`` returns when channel 0's OUT next changes (or when a pending count load is due),
None when it never will; channels 1 and 2 drive no interrupt and are only looked at when
read.  A port write can move that deadline, so the owner calls ``poll`` again after one.

``save()`` catches up first and records the time since the epoch; ``restore()`` puts the epoch
that far before its clock's now, so the restored PIT continues at the same tick and phase
within the tick (time stands still while the VM is saved) on any clock.

Port 0x61 (PIIX "NMI status and control") is answered here when ``Pit8254Config.port61`` is
set, because its live bits are PIT signals: bit 0 GATE2 (R/W), bit 1 speaker data enable
(R/W), bits 2-3 SERR#/IOCHK# NMI enables (R/W, stored only), bit 4 refresh toggle (RO, flips
every 18 PIT clocks, about 15 us, as derived from the virtual clock), bit 5 OUT2 (RO),
bits 6-7 NMI sources (RO, always 0: nothing here raises NMIs).  With ``port61=False`` another
device owns the port and uses :meth:`Pit8254.set_gate` and :meth:`Pit8254.output`.

Reading port 0x43: the datasheet lists A1,A0=11 with RD as "No-Operation (3-State)": nothing
drives the bus, so the read returns ``IoError.INVALID_REGISTER`` and the bus supplies 0xFF.

Power-on state (undefined on the chip): every channel in mode 0, LSB-then-MSB, binary, no
count, OUT low; GATE2 low.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from worker.devices.base import ChipsetDevice, Clock, DeviceStats, IoError, IrqLine, PortRange
from worker.devices.config import PIT_HZ, Pit8254Config
from worker.devices.pit8254_counter import (
    ONESHOT,
    PERIODIC,
    RW_LATCH,
    RW_LSB,
    RW_MSB,
    SUSPENDED,
    ChannelState,
    check_channel,
    to_bcd,
)
from worker.devices.state import Length, Mask, Range, load_state, save_state

__all__ = ["PIT_HZ", "Pit8254", "Pit8254Config", "Pit8254State"]

SAVE_VERSION = 1

NS_PER_S = 1_000_000_000

COUNTER_PORT = 0x40  # 0x40-0x42: counters 0-2
CONTROL_PORT = 0x43
PORT61 = 0x61

# Port 0x61 bits
P61_GATE2 = 0x01
P61_SPEAKER = 0x02
P61_WRITABLE = 0x0F
P61_REFRESH = 0x10
P61_OUT2 = 0x20
REFRESH_TICKS = 18  # channel 1's classic refresh count: 18 clocks = 15.09 us

@dataclass
class PitCounters:
    """Metrics, not guest state (not saved)."""

    irq0_edges: int = 0  # rising edges driven on the IRQ0 line
    missed_ticks: int = 0  # channel 0 rising edges coalesced into another one


def _channels() -> list[ChannelState]:
    # Channels 0 and 1 have GATE tied high on a PC; GATE2 is port 0x61 bit 0, low at reset.
    return [ChannelState(), ChannelState(), ChannelState(gate=False)]


@dataclass
class Pit8254State:
    channels: Annotated[list[ChannelState], Length(exactly=3)] = field(default_factory=_channels)
    port61: Annotated[int, Mask(P61_WRITABLE)] = 0  # GATE2 low, speaker off
    irq_level: bool = False  # what IRQ0 is driven to (OUT, or held: see the docstring)
    irq_held: bool = False


@dataclass
class _SavedTime:
    # Time since the epoch; restore puts the epoch this far before its own now, so the PIT
    # continues from the same tick and phase (time stands still while saved).
    elapsed_ns: Annotated[int, Range(0, None)] = 0


class Pit8254(ChipsetDevice):
    """Three 8254 counters at 0x40-0x43, channel 0 wired to IRQ0 (``irq``), plus port 0x61."""

    def __init__(self, config: Pit8254Config, irq: IrqLine, clock: Clock) -> None:
        self.config = config
        self.name = self.config.name
        self.irq = irq
        self._clock = clock
        self.stats = DeviceStats()
        self.counters = PitCounters()
        self._power_on()

    @property
    def channels(self) -> list[ChannelState]:
        return self.state.channels

    # --- wiring --------------------------------------------------------------------------
    def port_ranges(self) -> list[PortRange]:
        ranges = [PortRange(COUNTER_PORT, 4)]
        if self.config.port61:
            ranges.append(PortRange(PORT61, 1))
        return ranges

    def set_gate(self, channel: int, high: bool) -> None:
        """Drive GATE of channel 2 (0 and 1 are tied high on a PC)."""
        if channel != 2:
            raise ValueError("only channel 2 has a GATE input that can change")
        now = self._catch_up(self._clock.now_ns())
        self.state.port61 = (self.state.port61 & ~P61_GATE2) | (P61_GATE2 if high else 0)
        self._set_gate(2, high, now)

    def output(self, channel: int) -> bool:
        """OUT of a channel now."""
        if channel not in (0, 1, 2):
            raise ValueError(f"channel {channel} is not 0..2")
        self._catch_up(self._clock.now_ns())
        return self.channels[channel].out

    # --- port I/O ------------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int | IoError:
        if port == CONTROL_PORT:
            return IoError.INVALID_REGISTER  # the control word cannot be read (bus floats)
        now = self._catch_up(self._clock.now_ns())
        if port == PORT61:
            refresh = P61_REFRESH if (now // REFRESH_TICKS) & 1 else 0
            out2 = P61_OUT2 if self.channels[2].out else 0
            return (self.state.port61 & P61_WRITABLE) | refresh | out2
        return self._read_counter(self.channels[port - COUNTER_PORT], now)

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        now = self._catch_up(self._clock.now_ns())
        if port == CONTROL_PORT:
            self._write_control(value, now)
        elif port == PORT61:
            self.state.port61 = value & P61_WRITABLE
            self._set_gate(2, bool(value & P61_GATE2), now)
        else:
            channel = port - COUNTER_PORT
            self._write_counter(self.channels[channel], value, now)
            self._settle(channel, now)

    def poll(self, now_ns: int) -> int | None:
        """Catch up with ``now_ns``, drive IRQ0, return when channel 0's OUT next changes."""
        self._catch_up(now_ns)
        ch0 = self.channels[0]
        deadline = ch0.next_change(ch0.last_tick)
        if ch0.load_tick is not None and (deadline is None or ch0.load_tick < deadline):
            deadline = ch0.load_tick  # a pending load may change OUT (mode 1) or the period
        return None if deadline is None else self._ns_of_tick(deadline)

    # --- lifecycle -----------------------------------------------------------------------
    def reset(self) -> None:
        self._power_on()

    def save(self) -> dict:
        now_ns = self._clock.now_ns()
        self._catch_up(now_ns)
        elapsed = max(now_ns - self._epoch_ns, self._elapsed_floor())
        return save_state(SAVE_VERSION, self.state, _SavedTime(elapsed))

    def restore(self, saved: dict) -> None:
        state, time = load_state(saved, SAVE_VERSION, Pit8254State, _SavedTime, what="PIT")
        tick = time.elapsed_ns * self.config.input_hz // NS_PER_S
        for index, channel in enumerate(state.channels):
            check_channel(channel, index, tick)
        channels = state.channels
        if channels[0].gate is not True or channels[1].gate is not True:
            raise ValueError("PIT saved state: channels 0 and 1 have GATE tied high")
        if channels[2].gate != bool(state.port61 & P61_GATE2):
            raise ValueError("PIT saved state: GATE2 disagrees with port 0x61 bit 0")
        # Validated: replace everything at once.
        self._epoch_ns = self._clock.now_ns() - time.elapsed_ns
        self._tick = tick
        self.state = state
        self._sync_irq(force=True)

    # --- internals -----------------------------------------------------------------------
    def _power_on(self) -> None:
        self._epoch_ns = self._clock.now_ns()  # tick 0
        self._tick = 0  # the tick the state is current to
        self.state = Pit8254State()
        self._sync_irq(force=True)

    def _tick_of(self, now_ns: int) -> int:
        return (now_ns - self._epoch_ns) * self.config.input_hz // NS_PER_S

    def _ns_of_tick(self, tick: int) -> int:
        """The first ns at which ``tick`` has happened (inverse of _tick_of, rounded up)."""
        hz = self.config.input_hz
        return self._epoch_ns + (tick * NS_PER_S + hz - 1) // hz

    def _elapsed_floor(self) -> int:
        """Smallest elapsed ns that maps to the current tick (the clock may have stepped back)."""
        return self._ns_of_tick(self._tick) - self._epoch_ns

    def _catch_up(self, now_ns: int) -> int:
        """Advance every channel to now; drive IRQ0.  Returns the current tick."""
        # Never go back in time, whatever the caller's clock says.
        self._tick = max(self._tick, self._tick_of(now_ns))
        for index, channel in enumerate(self.channels):
            edges = channel.advance(self._tick)
            if index == 0:
                self._deliver_irq0(edges)
        return self._tick

    def _settle(self, index: int, now: int) -> None:
        """After a write changed a channel at tick ``now``: account an immediate OUT change."""
        edges = self.channels[index].settle(now)
        if index == 0:
            self.state.irq_held = False  # the guest reprogrammed the counter: OUT rules again
            self._deliver_irq0(edges)

    def _deliver_irq0(self, edges: int) -> None:
        s = self.state
        out = self.channels[0].out
        if edges:
            self.counters.irq0_edges += 1
            self.counters.missed_ticks += edges - 1
            if s.irq_level:
                s.irq_level = False  # make room for a rising edge the PIC can latch
                self._sync_irq()
            s.irq_level = True
            s.irq_held = not out  # OUT already fell: hold the request (module docstring)
        elif not s.irq_held:
            s.irq_level = out
        self._sync_irq()

    def _irq_wanted(self) -> bool:
        return self.state.irq_level

    def _write_control(self, value: int, now: int) -> None:
        select = value >> 6
        if select == 3:
            # Read-back command: D5 = /COUNT, D4 = /STATUS, D3..D1 = counters 2..0.
            for index in range(3):
                if value & (2 << index):
                    channel = self.channels[index]
                    if not value & 0x10 and channel.status_latch is None:
                        channel.status_latch = channel.status()
                    if not value & 0x20:
                        self._latch_count(channel, now)
            return
        channel = self.channels[select]
        rw = (value >> 4) & 3
        if rw == RW_LATCH:
            self._latch_count(channel, now)
            return
        # A control word resets the counter's logic; OUT goes to its initial level at once
        # (low in mode 0, high in the others) and the counter waits for a count.
        channel.freeze(now)
        channel.rw, channel.mode, channel.bcd = rw, (value >> 1) & 7, bool(value & 1)
        channel.cr_valid = False
        channel.null_count = True
        channel.write_msb_next = channel.read_msb_next = False
        channel.count_latch = channel.status_latch = None
        channel.load_tick = None
        channel.load_into_low = False
        channel.fired = False
        channel.idle_out = channel.op_mode != 0
        self._settle(select, now)

    @staticmethod
    def _latch_count(channel: ChannelState, now: int) -> None:
        if channel.count_latch is None:  # a second latch before the read is ignored
            ce = channel.ce_at(now)
            channel.count_latch = to_bcd(ce) if channel.bcd else ce

    @staticmethod
    def _read_counter(channel: ChannelState, now: int) -> int:
        if channel.status_latch is not None:  # a latched status is read before the count
            value, channel.status_latch = channel.status_latch, None
            return value
        if channel.count_latch is not None:
            count = channel.count_latch
        else:
            ce = channel.ce_at(now)
            count = to_bcd(ce) if channel.bcd else ce
        if channel.rw == RW_LSB:
            channel.count_latch = None
            return count & 0xFF
        if channel.rw == RW_MSB:
            channel.count_latch = None
            return count >> 8
        if not channel.read_msb_next:
            channel.read_msb_next = True
            return count & 0xFF
        channel.read_msb_next = False
        channel.count_latch = None  # released once both bytes are read
        return count >> 8

    @staticmethod
    def _write_counter(channel: ChannelState, value: int, now: int) -> None:
        mode = channel.op_mode
        if channel.rw == RW_LSB:
            channel.cr = value
        elif channel.rw == RW_MSB:
            channel.cr = value << 8
        elif not channel.write_msb_next:
            channel.cr_lsb = value
            channel.write_msb_next = True
            if mode == 0:
                # Mode 0: writing the first byte stops counting and sets OUT low at once.
                channel.freeze(now)
                channel.idle_out = False
                channel.load_tick = None
            return
        else:
            channel.cr = channel.cr_lsb | (value << 8)
            channel.write_msb_next = False
        channel.cr_valid = True
        channel.null_count = True
        if mode == 0:
            channel.freeze(now)
            channel.idle_out = False
            channel.load_tick = now + 1
        elif mode == 4:
            channel.load_tick = now + 1  # counting goes on until the new count is loaded
        elif mode in (2, 3):
            if channel.segment == PERIODIC:
                # The current period (mode 3: half-cycle) is finished with the old count.
                channel.load_tick, channel.load_into_low = channel.next_boundary(now)
            elif channel.gate:
                channel.load_tick, channel.load_into_low = now + 1, False
        # Modes 1 and 5: the count waits for a GATE trigger.

    def _set_gate(self, index: int, high: bool, now: int) -> None:
        channel = self.channels[index]
        if high == channel.gate:
            return
        channel.gate = high
        mode = channel.op_mode
        if not high:
            if mode in (0, 4) and channel.segment == ONESHOT:
                channel.freeze(now, SUSPENDED)  # counting pauses; OUT unaffected
            elif mode in (2, 3):
                if channel.segment == PERIODIC:
                    channel.freeze(now)
                channel.load_tick = None
                channel.idle_out = True  # GATE low forces OUT high at once
        else:
            if mode in (0, 4) and channel.segment == SUSPENDED:
                channel.segment, channel.origin, channel.n = ONESHOT, now, channel.idle_ce
            elif mode in (1, 2, 3, 5) and channel.cr_valid:
                # A trigger: CR is (re)loaded on the next clock pulse.
                channel.load_tick, channel.load_into_low = now + 1, False
        self._settle(index, now)
