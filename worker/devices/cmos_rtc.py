"""The CMOS real-time clock of a PC/AT: a Motorola MC146818A (Dallas DS12887/DS12C887) at
ports 0x70 (index, bit 7 = NMI disable) and 0x71 (data), interrupting on IRQ8.

Register map (index written to 0x70, value through 0x71)::

    0x00 seconds     0x01 alarm seconds   0x02 minutes   0x03 alarm minutes
    0x04 hours       0x05 alarm hours     0x06 day of week (1 = Sunday)
    0x07 day of month 0x08 month          0x09 year (00-99)
    0x0A register A  UIP | DV2-DV0 | RS3-RS0
    0x0B register B  SET | PIE | AIE | UIE | SQWE | DM | 24/12 | DSE
    0x0C register C  IRQF | PF | AF | UF   (read-only; a read clears it)
    0x0D register D  VRT                   (read-only)
    0x0E-0x7F        114 bytes of battery-backed RAM, except 0x32: the century (DS12C887)

How time is kept.  No register is ticked by a timer.  While the clock counts (divider
DV = 010 and SET = 0) the time is a number of seconds since 1970-01-01 in the guest's
calendar, anchored to a moment of the :class:`Clock`: ``rtc_s`` at ``rtc_ns``, and the
registers are rendered from it on every read.  Updates happen at the divider chain's second
boundaries ``divider_ns + k * 1 s``; the periodic ticks are taps of the same 32.768 kHz chain.
Every access first catches up with the clock (``_advance``): it sets PF, UF and AF if a tick,
an update or a matching update happened since the last access, so nothing needs a timer
except the wake-up ``poll()`` reports for an enabled interrupt.

While the clock is stopped (SET = 1, or the divider is off or held in reset) the eight time
registers are plain bytes (``held``), exactly what the guest wrote; they are decoded back into
seconds when counting resumes.  Out-of-range values are normalised arithmetically then
(e.g. the 31st of February is the 3rd of March), where the chip's behaviour is undefined.

Policies (where the datasheet leaves room, or a VM differs from a board):

* The clock starts from ``wall_clock()`` (POSIX seconds, read as UTC: pass a callable that
  adds an offset for a local-time RTC).  Only the NVRAM is kept across restarts, not the time.
* Changing DM or 24/12 while counting re-renders the time in the new format (the chip would
  leave the old bytes in place); the alarm bytes are never converted.
* DSE is stored but the 1980s US daylight-saving jumps are not made.  SQWE is stored; the SQW
  pin is connected to nothing on a PC.
* ``reset()`` is the chip's RESET pin (a partition reset), not a power cycle: the battery keeps
  time, NVRAM, register A and the SET/DM/24/12/DSE bits; PIE, AIE, UIE, SQWE and the flags clear.
* NVRAM persistence is the store's (:class:`~worker.devices.backends.NvramStore`; the worker's
  file store is :class:`worker.backends.NvramFile`): the device loads the 114 bytes once, hands
  it each guest write of a changed byte, and the whole image on ``restore``.  The byte for
  index 0x32 is unused (the century is clock state).
* ``save()`` is relative to the moment of saving (time, phase within the second);
  ``restore()`` anchors it to the clock's present, so the guest's time does not jump by however
  long the state sat on disk and no clock origin is shared between processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Callable

from worker.devices.backends import MemoryNvram, NvramStore
from worker.devices.base import ChipsetDevice, Clock, DeviceStats, IrqLine, PortRange
from worker.devices.cmos_rtc_time import decode, next_alarm_after, render
from worker.devices.config import CmosRtcConfig
from worker.devices.state import LIVE, Byte, Length, Mask, Range, load_state, save_state

SAVE_VERSION = 1

# Register indices.
REG_SECONDS = 0x00
REG_ALARM_SECONDS = 0x01
REG_MINUTES = 0x02
REG_ALARM_MINUTES = 0x03
REG_HOURS = 0x04
REG_ALARM_HOURS = 0x05
REG_DAY_OF_WEEK = 0x06
REG_DAY_OF_MONTH = 0x07
REG_MONTH = 0x08
REG_YEAR = 0x09
REG_A = 0x0A
REG_B = 0x0B
REG_C = 0x0C
REG_D = 0x0D
REG_CENTURY = 0x32

NVRAM_FIRST = 0x0E
NVRAM_SIZE = 0x80 - NVRAM_FIRST  # 114 bytes

# Register A.
REG_A_UIP = 0x80
REG_A_DV_MASK = 0x70
REG_A_DV_32768 = 0x20  # DV2-DV0 = 010: the only pattern that keeps time
REG_A_RS_MASK = 0x0F

# Register B.
REG_B_SET = 0x80
REG_B_PIE = 0x40
REG_B_AIE = 0x20
REG_B_UIE = 0x10
REG_B_SQWE = 0x08
REG_B_DM = 0x04  # 1 = binary, 0 = BCD
REG_B_24H = 0x02  # 1 = 24-hour, 0 = 12-hour
REG_B_DSE = 0x01

# Register C.
REG_C_IRQF = 0x80
REG_C_PF = 0x40
REG_C_AF = 0x20
REG_C_UF = 0x10

# Register D.
REG_D_VRT = 0x80

# Power-on values a BIOS would program: 32.768 kHz time base, 1024 Hz rate; BCD, 24-hour.
REG_A_DEFAULT = REG_A_DV_32768 | 0x06
REG_B_DEFAULT = REG_B_24H

NS_PER_S = 1_000_000_000
TIMEBASE_HZ = 32_768
# MC146818A datasheet, "Update Cycle" and its AC table: UIP rises tBUC = 244 us (8 cycles of
# the 32.768 kHz base) before an update begins and stays high for the update cycle itself,
# tUC = 1984 us (65 cycles), so ≈ 2228 us of every second.  The time registers turn at the
# start of the update cycle here (the chip leaves them undefined during it), so a guest that
# waits for UIP to fall, as QEMU's rtc-test and BIOSes do, reads the new second.
UIP_LEAD_NS = 8 * NS_PER_S // TIMEBASE_HZ
UPDATE_CYCLE_NS = 65 * NS_PER_S // TIMEBASE_HZ
# Leaving divider reset (DV = 11x) puts the chain half-way through a second.
DIVIDER_RESTART_NS = NS_PER_S // 2

# Slots of the time registers in ``held``, in register order.
TIME_SLOTS = {
    REG_SECONDS: 0,
    REG_MINUTES: 1,
    REG_HOURS: 2,
    REG_DAY_OF_WEEK: 3,
    REG_DAY_OF_MONTH: 4,
    REG_MONTH: 5,
    REG_YEAR: 6,
    REG_CENTURY: 7,
}


# --- configuration and state ---


def _default_held() -> list[int]:
    return [0] * len(TIME_SLOTS)


def _default_nvram() -> bytearray:
    return bytearray(NVRAM_SIZE)


@dataclass
class CmosRtcState:
    index: Annotated[int, Mask(0x7F)] = 0
    nmi_disabled: bool = False
    reg_a: Annotated[int, Mask(0x7F)] = REG_A_DEFAULT  # without UIP, which is computed
    reg_b: Byte = REG_B_DEFAULT
    flags: Annotated[int, Mask(REG_C_PF | REG_C_AF | REG_C_UF)] = 0  # IRQF is computed
    alarm_seconds: Byte = 0
    alarm_minutes: Byte = 0
    alarm_hours: Byte = 0
    # Day-of-week register minus the true weekday, mod 7 (the guest may set any weekday).
    dow_offset: Annotated[int, Range(0, 6)] = 0
    # The time registers as raw bytes while the clock is stopped (see TIME_SLOTS).
    held: Annotated[list[Byte], Length(exactly=len(TIME_SLOTS))] = field(
        default_factory=_default_held)
    nvram: Annotated[bytearray, Length(exactly=NVRAM_SIZE)] = field(default_factory=_default_nvram)
    # Clock-anchored (ns of the Clock), saved relative as _SavedTime:
    # while counting, the RTC showed ``rtc_s`` at clock time ``rtc_ns``, a second boundary;
    rtc_s: int = field(default=0, metadata=LIVE)
    rtc_ns: int = field(default=0, metadata=LIVE)
    # the clock time of one second boundary of the divider chain (all others are 1 s apart);
    divider_ns: int = field(default=0, metadata=LIVE)
    # the clock time up to which ticks, updates and alarms have been turned into flags.
    last_ns: int = field(default=0, metadata=LIVE)


@dataclass
class _SavedTime:
    """The clock as of the save: the RTC's time, and how far into its second the divider
    chain was (so the next update comes as late after the restore as it would have)."""

    time_s: int = 0
    divider_phase_ns: Annotated[int, Range(0, NS_PER_S - 1)] = 0


class CmosRtc(ChipsetDevice):
    """MC146818A RTC + 114 bytes of NVRAM, interrupting on ``irq``.

    ``clock`` is monotonic time for the interrupts and UIP; ``wall_clock()`` returns the
    host's current time as POSIX seconds and is read once, to start the clock.  ``nvram``
    keeps the NVRAM bytes (in memory, by default).
    """

    name = "cmos_rtc"

    def __init__(
        self,
        config: CmosRtcConfig,
        irq: IrqLine,
        clock: Clock,
        wall_clock: Callable[[], float | int],
        nvram: NvramStore | None = None,
    ) -> None:
        self.config = config
        self.irq = irq
        self.clock = clock
        self.stats = DeviceStats()
        self._nvram = nvram if nvram is not None else MemoryNvram(NVRAM_SIZE)
        self.state = CmosRtcState()
        self._start_clock(wall_clock())
        stored = self._nvram.load()
        if len(stored) != NVRAM_SIZE:
            raise ValueError(f"the CMOS NVRAM store holds {len(stored)} bytes, not {NVRAM_SIZE}")
        self.state.nvram = bytearray(stored)
        self._sync_irq(force=True)

    # --- the Device interface ---

    def port_ranges(self) -> list[PortRange]:
        return [PortRange(self.config.base, 2)]

    def io_read(self, port: int, size: int) -> int:
        if port == self.config.base:
            # The index register is write-only; nothing drives the bus on a read.
            return 0xFF
        now = self._now()
        self._advance(now)
        value = self._read_register(self.state.index, now)
        self._sync_irq()
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == self.config.base:
            # Bit 7 is the NMI mask on the board, not part of the RTC's 7-bit address.
            self.state.nmi_disabled = bool(value & 0x80)
            self.state.index = value & 0x7F
            return
        now = self._now()
        self._advance(now)
        self._write_register(self.state.index, value, now)
        self._sync_irq()

    def reset(self) -> None:
        """The RESET pin: a partition reset.  Time, NVRAM and the format bits survive."""
        now = self._now()
        self._advance(now)
        s = self.state
        s.reg_b &= ~(REG_B_PIE | REG_B_AIE | REG_B_UIE | REG_B_SQWE)
        s.flags = 0
        s.index = 0
        s.nmi_disabled = False
        self._sync_irq()

    def poll(self, now_ns: int) -> int | None:
        """Catch up to ``now_ns``; return when the next enabled interrupt event is due."""
        now = max(now_ns, self.state.last_ns)
        self._advance(now)
        self._sync_irq()
        s = self.state
        deadlines = []
        if s.reg_b & REG_B_PIE:
            tick = self._next_periodic_ns(now)
            if tick is not None:
                deadlines.append(tick)
        if self._counting() and s.reg_b & (REG_B_UIE | REG_B_AIE):
            next_update_ns = self._boundary_at_or_before(now) + NS_PER_S
            if s.reg_b & REG_B_UIE:
                deadlines.append(next_update_ns)
            if s.reg_b & REG_B_AIE:
                alarm_s = self._next_alarm_after(self._time_s(now))
                if alarm_s is not None:
                    deadlines.append(next_update_ns + (alarm_s - self._time_s(now) - 1) * NS_PER_S)
        return min(deadlines) if deadlines else None

    def save(self) -> dict:
        now = self._now()
        self._advance(now)
        time = _SavedTime(self._time_s(now), (now - self.state.divider_ns) % NS_PER_S)
        return save_state(SAVE_VERSION, self.state, time)

    def restore(self, saved: dict) -> None:
        new, time = load_state(saved, SAVE_VERSION, CmosRtcState, _SavedTime, what="CMOS RTC")
        now = self._now()
        # Re-anchor the saved relative times to this clock's present.
        new.divider_ns = now - time.divider_phase_ns
        new.rtc_s = time.time_s
        new.rtc_ns = new.divider_ns
        new.last_ns = now
        self.state = new
        self._nvram.replace(bytes(new.nvram))
        self._sync_irq(force=True)

    # --- host-side helpers for the worker ---

    @property
    def nmi_disabled(self) -> bool:
        return self.state.nmi_disabled

    @property
    def nvram(self) -> bytes:
        """A copy of the 114 NVRAM bytes (index 0x0E is offset 0)."""
        return bytes(self.state.nvram)

    def write_nvram(self, index: int, data: bytes) -> None:
        """Host-side write of CMOS bytes starting at register ``index`` (e.g. the memory size
        a BIOS reads at 0x30/0x31); persisted like guest writes."""
        if index < NVRAM_FIRST or index + len(data) > 0x80:
            raise ValueError(f"CMOS bytes {index:#x}+{len(data)} are outside 0x0e..0x7f")
        now = self._now()
        self._advance(now)
        for i, byte in enumerate(data):
            self._write_register(index + i, byte & 0xFF, now)  # 0x32 goes to the century
        self._sync_irq()

    # --- registers ---

    def _read_register(self, index: int, now: int) -> int:
        s = self.state
        if index in TIME_SLOTS:
            return self._time_registers(now)[TIME_SLOTS[index]]
        if index == REG_ALARM_SECONDS:
            return s.alarm_seconds
        if index == REG_ALARM_MINUTES:
            return s.alarm_minutes
        if index == REG_ALARM_HOURS:
            return s.alarm_hours
        if index == REG_A:
            return s.reg_a | (REG_A_UIP if self._update_in_progress(now) else 0)
        if index == REG_B:
            return s.reg_b
        if index == REG_C:
            value = s.flags | (REG_C_IRQF if self._irq_wanted() else 0)
            s.flags = 0  # all flags clear on a read; the caller lowers IRQ8
            return value
        if index == REG_D:
            return REG_D_VRT  # the battery is never flat
        return s.nvram[index - NVRAM_FIRST]

    def _write_register(self, index: int, value: int, now: int) -> None:
        s = self.state
        if index in TIME_SLOTS:
            self._write_time_register(TIME_SLOTS[index], value, now)
        elif index == REG_ALARM_SECONDS:
            s.alarm_seconds = value
        elif index == REG_ALARM_MINUTES:
            s.alarm_minutes = value
        elif index == REG_ALARM_HOURS:
            s.alarm_hours = value
        elif index == REG_A:
            self._write_control(value & ~REG_A_UIP, s.reg_b, now)  # UIP is read-only
        elif index == REG_B:
            if value & REG_B_SET and not s.reg_b & REG_B_SET:
                value &= ~REG_B_UIE  # "the SET bit going high clears the UIE bit"
            self._write_control(s.reg_a, value, now)
        elif index in (REG_C, REG_D):
            pass  # read-only
        else:
            self._write_nvram_byte(index, value)

    def _write_control(self, reg_a: int, reg_b: int, now: int) -> None:
        """Write registers A and B, stopping or starting the clock as DV and SET say."""
        s = self.state
        was_counting = self._counting()
        divider_was_on = self._divider_on()
        if was_counting:
            # Freeze the time in the format it is shown in now, as the chip's bytes would be.
            s.held = self._render(self._time_s(now))
        s.reg_a = reg_a
        s.reg_b = reg_b
        if self._divider_on() and not divider_was_on:
            # Leaving reset (or oscillator off): "the next update occurs 500 ms" later.
            s.divider_ns = now - DIVIDER_RESTART_NS
        if self._counting() and not was_counting:
            s.rtc_s, s.dow_offset = self._decode(s.held)
            s.rtc_ns = self._boundary_at_or_before(now)

    def _write_time_register(self, slot: int, value: int, now: int) -> None:
        s = self.state
        if not self._counting():
            s.held[slot] = value
            return
        # Writing one register while the clock runs: the others keep their values, the
        # sub-second phase is untouched, and counting goes on from the new time.
        raw = self._render(self._time_s(now))
        raw[slot] = value
        s.rtc_s, s.dow_offset = self._decode(raw)
        s.rtc_ns = self._boundary_at_or_before(now)

    def _time_registers(self, now: int) -> list[int]:
        if self._counting():
            return self._render(self._time_s(now))
        return list(self.state.held)

    # --- time keeping ---

    def _now(self) -> int:
        # The clock never goes back, but a stale poll(now_ns) may have run ahead of it.
        return max(self.clock.now_ns(), self.state.last_ns)

    def _start_clock(self, wall: float | int) -> None:
        # Split before scaling: x - floor(x) is exact for a float, wall * 1e9 is not.
        seconds = math.floor(wall)
        into_second_ns = round((wall - seconds) * NS_PER_S)
        if into_second_ns >= NS_PER_S:  # 0.9999999999 rounds up to the next second
            seconds, into_second_ns = seconds + 1, into_second_ns - NS_PER_S
        now = self.clock.now_ns()
        s = self.state
        # Align the divider's seconds with the host's, so updates come when its seconds turn.
        s.divider_ns = now - into_second_ns
        s.rtc_s = seconds
        s.rtc_ns = s.divider_ns
        s.last_ns = now

    def _divider_on(self) -> bool:
        return self.state.reg_a & REG_A_DV_MASK == REG_A_DV_32768

    def _counting(self) -> bool:
        return self._divider_on() and not self.state.reg_b & REG_B_SET

    def _time_s(self, t: int) -> int:
        s = self.state
        if not self._counting():
            return s.rtc_s
        return s.rtc_s + (t - s.rtc_ns) // NS_PER_S

    def _boundary_at_or_before(self, t: int) -> int:
        d = self.state.divider_ns
        return d + (t - d) // NS_PER_S * NS_PER_S

    def _update_in_progress(self, now: int) -> bool:
        if not self._counting():
            return False  # SET clears UIP; a stopped divider makes no updates
        phase = (now - self.state.divider_ns) % NS_PER_S
        # Before the first update after a divider restart the phase starts at 500 ms, so
        # the tail of an update that never happened is never seen.
        return phase >= NS_PER_S - UIP_LEAD_NS or phase < UPDATE_CYCLE_NS

    def _periodic_cycles(self) -> int | None:
        """Periodic interrupt period in 32.768 kHz cycles, None when RS = 0 or no divider."""
        rs = self.state.reg_a & REG_A_RS_MASK
        if rs == 0 or not self._divider_on():
            return None
        if rs <= 2:
            rs += 7  # RS 1 and 2 repeat the 256 Hz and 128 Hz taps of RS 8 and 9
        return 1 << (rs - 1)

    def _periodic_ticks(self, t: int, period: int) -> int:
        """How many periodic ticks the chain has made by clock time ``t``."""
        cycles = (t - self.state.divider_ns) * TIMEBASE_HZ // NS_PER_S
        return cycles // period

    def _next_periodic_ns(self, now: int) -> int | None:
        period = self._periodic_cycles()
        if period is None:
            return None
        n = self._periodic_ticks(now, period) + 1
        # First ns at which n * period cycles have elapsed (ceil division).
        return self.state.divider_ns + -(-n * period * NS_PER_S // TIMEBASE_HZ)

    def _advance(self, now: int) -> None:
        """Turn what happened in (last_ns, now] into PF, UF and AF."""
        s = self.state
        if now <= s.last_ns:
            return
        period = self._periodic_cycles()
        if period is not None and self._periodic_ticks(now, period) > self._periodic_ticks(
            s.last_ns, period
        ):
            s.flags |= REG_C_PF  # set whatever PIE says; PIE only gates IRQF
        if self._counting():
            before, after = self._time_s(s.last_ns), self._time_s(now)
            if after > before:
                s.flags |= REG_C_UF
                alarm = self._next_alarm_after(before)
                if alarm is not None and alarm <= after:
                    s.flags |= REG_C_AF
        s.last_ns = now

    # --- the time registers' format (cmos_rtc_time) ---

    def _format(self) -> tuple[bool, bool]:
        """(binary, 24-hour): register B's DM and 24/12 bits."""
        return bool(self.state.reg_b & REG_B_DM), bool(self.state.reg_b & REG_B_24H)

    def _render(self, t: int) -> list[int]:
        return render(t, *self._format(), self.state.dow_offset)

    def _decode(self, raw: list[int]) -> tuple[int, int]:
        return decode(raw, *self._format())

    def _next_alarm_after(self, t: int) -> int | None:
        s = self.state
        return next_alarm_after(t, (s.alarm_hours, s.alarm_minutes, s.alarm_seconds), *self._format())

    # --- IRQ ---

    def _irq_wanted(self) -> bool:
        s = self.state
        enabled = (
            (REG_C_PF if s.reg_b & REG_B_PIE else 0)
            | (REG_C_AF if s.reg_b & REG_B_AIE else 0)
            | (REG_C_UF if s.reg_b & REG_B_UIE else 0)
        )
        return bool(s.flags & enabled)  # IRQF = PF.PIE + AF.AIE + UF.UIE

    # --- NVRAM ---

    def _write_nvram_byte(self, index: int, value: int) -> None:
        offset = index - NVRAM_FIRST
        if self.state.nvram[offset] == value:
            return  # BIOSes rewrite the same bytes often; spare the store
        self.state.nvram[offset] = value
        self._nvram.write_byte(offset, value)
