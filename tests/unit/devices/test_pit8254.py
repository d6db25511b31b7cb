"""The i8254 PIT in virtual time: modes, access modes, latches, read-back, IRQ0 edges, gate."""

from __future__ import annotations

import pytest

from tests.unit.devices.support import RecordingIrqLine, plug
from worker.devices.base import Device, FakeClock, IoError
from worker.devices.pit8254 import Pit8254, Pit8254Config

HZ = 1_193_182
SECOND = 1_000_000_000
CONTROL = 0x43


def ns_of_tick(tick: int) -> int:
    """The first nanosecond at which PIT clock pulse ``tick`` has happened."""
    return -(-tick * SECOND // HZ)


def tick_of(ns: int) -> int:
    return ns * HZ // SECOND


class Rig:
    """A PIT on a FakeClock, with helpers that speak in PIT clock ticks."""

    def __init__(self, config: Pit8254Config | None = None, start_ns: int = 0) -> None:
        self.clock = FakeClock(start_ns)
        self.t0 = start_ns
        self.irq = RecordingIrqLine()
        self.pit = Pit8254(config or Pit8254Config(), self.irq, self.clock)

    def at(self, tick: int) -> None:
        """Move virtual time to the first ns of ``tick``."""
        self.clock.advance(self.t0 + ns_of_tick(tick) - self.clock.now_ns())

    def wr(self, port: int, value: int) -> None:
        assert self.pit.io_write(port, 1, value) is None

    def rd(self, port: int) -> int:
        value = self.pit.io_read(port, 1)
        assert isinstance(value, int)
        return value

    def control(self, channel: int, mode: int, rw: int = 3, bcd: bool = False) -> None:
        self.wr(CONTROL, (channel << 6) | (rw << 4) | (mode << 1) | int(bcd))

    def program(self, channel: int, mode: int, count: int, bcd: bool = False) -> None:
        """Control word (LSB then MSB) and the initial count."""
        self.control(channel, mode, bcd=bcd)
        self.write_count(channel, count)

    def write_count(self, channel: int, count: int) -> None:
        self.wr(0x40 + channel, count & 0xFF)
        self.wr(0x40 + channel, count >> 8)

    def count(self, channel: int) -> int:
        lsb = self.rd(0x40 + channel)
        return lsb | (self.rd(0x40 + channel) << 8)

    def latch(self, channel: int) -> None:
        self.wr(CONTROL, channel << 6)

    def status(self, channel: int) -> int:
        self.wr(CONTROL, 0xE0 | (2 << channel))  # read-back: status only
        return self.rd(0x40 + channel)

    def out(self, channel: int) -> bool:
        return self.pit.output(channel)

    def out_at(self, channel: int, ticks: list[int]) -> list[bool]:
        levels = []
        for tick in ticks:
            self.at(tick)
            levels.append(self.out(channel))
        return levels

    def counts_at(self, channel: int, ticks: list[int]) -> list[int]:
        values = []
        for tick in ticks:
            self.at(tick)
            values.append(self.count(channel))
        return values

    def gate2(self, high: bool) -> None:
        self.wr(0x61, 0x01 if high else 0x00)

    def run_polls_until(self, end_ns: int) -> None:
        """What the worker does: poll, sleep until the deadline, repeat."""
        deadline = self.pit.poll(self.clock.now_ns())
        while deadline is not None and deadline <= end_ns:
            self.clock.advance(deadline - self.clock.now_ns())
            deadline = self.pit.poll(self.clock.now_ns())
        self.clock.advance(end_ns - self.clock.now_ns())
        self.pit.poll(end_ns)


@pytest.fixture
def rig() -> Rig:
    return Rig()


# --- wiring ------------------------------------------------------------------------------


def test_the_pit_satisfies_the_device_protocol_and_lists_its_ports(rig: Rig) -> None:
    assert isinstance(rig.pit, Device)
    ports = {p for r in rig.pit.port_ranges() for p in range(r.base, r.last + 1)}
    assert ports == {0x40, 0x41, 0x42, 0x43, 0x61}


def test_without_port61_the_gate_and_out2_are_reached_by_method() -> None:
    rig = Rig(Pit8254Config(port61=False))
    assert {r.base for r in rig.pit.port_ranges()} == {0x40}
    bus = plug(rig.pit)
    assert bus.io_read(0x61, 1) is IoError.INVALID_REGISTER
    assert bus.stats.unclaimed_reads == 1  # another device may own 0x61
    rig.program(2, 0, 10)
    rig.pit.set_gate(2, True)
    rig.at(10)
    assert not rig.out(2)
    rig.at(11)
    assert rig.out(2)


# --- mode 0 ------------------------------------------------------------------------------


def test_mode0_out_rises_n_plus_one_clocks_after_the_count_is_written(rig: Rig) -> None:
    rig.program(0, 0, 100)
    assert rig.out_at(0, [0, 1, 100, 101, 5000]) == [False, False, False, True, True]


def test_mode0_counts_down_from_the_load_and_wraps_after_zero(rig: Rig) -> None:
    rig.program(0, 0, 100)
    assert rig.counts_at(0, [1, 51, 100, 101, 102]) == [100, 50, 1, 0, 0xFFFF]


def test_mode0_raises_irq0_once_at_terminal_count(rig: Rig) -> None:
    rig.program(0, 0, 1000)
    rig.irq.levels.clear()
    rig.run_polls_until(ns_of_tick(100_000))
    assert rig.irq.levels == [True]
    assert rig.pit.counters.irq0_edges == 1


def test_mode0_poll_deadline_is_the_terminal_count(rig: Rig) -> None:
    rig.program(0, 0, 1000)
    rig.at(1)
    assert rig.pit.poll(rig.clock.now_ns()) == ns_of_tick(1001)
    rig.at(1001)
    assert rig.pit.poll(rig.clock.now_ns()) is None


def test_mode0_writing_a_new_count_sets_out_low_and_restarts(rig: Rig) -> None:
    rig.program(0, 0, 10)
    rig.at(20)
    assert rig.out(0)
    rig.wr(0x40, 50)  # first byte: counting stops, OUT low at once
    assert not rig.out(0)
    rig.at(30)
    rig.wr(0x40, 0)  # second byte: loaded on the next clock
    assert rig.out_at(0, [31, 80, 81]) == [False, False, True]


# --- mode 1 ------------------------------------------------------------------------------


def test_mode1_one_shot_goes_low_after_the_gate_trigger_for_n_clocks(rig: Rig) -> None:
    rig.program(2, 1, 10)
    assert rig.out(2)
    rig.at(20)
    rig.gate2(True)
    assert rig.out_at(2, [20, 21, 30, 31]) == [True, False, False, True]


def test_mode1_is_retriggerable(rig: Rig) -> None:
    rig.program(2, 1, 10)
    rig.gate2(True)  # tick 0: loads at 1, would end at 11
    rig.at(5)
    rig.gate2(False)
    rig.at(6)
    rig.gate2(True)  # retrigger: reloads at 7
    assert rig.out_at(2, [11, 16, 17]) == [False, False, True]


# --- mode 2 ------------------------------------------------------------------------------


def test_mode2_out_is_low_for_one_clock_each_period(rig: Rig) -> None:
    rig.program(0, 2, 10)
    assert rig.out_at(0, [0, 1, 9, 10, 11, 19, 20, 21]) == [
        True, True, True, False, True, True, False, True]


def test_mode2_counts_from_n_down_to_one_and_reloads(rig: Rig) -> None:
    rig.program(0, 2, 10)
    assert rig.counts_at(0, [1, 9, 10, 11, 12]) == [10, 2, 1, 10, 9]


def test_mode2_poll_deadlines_follow_every_out_change(rig: Rig) -> None:
    rig.program(0, 2, 10)
    deadlines = []
    for _ in range(5):
        deadline = rig.pit.poll(rig.clock.now_ns())
        deadlines.append(tick_of(deadline))
        rig.clock.advance(deadline - rig.clock.now_ns())
    assert deadlines == [1, 10, 11, 20, 21]  # the load, then fall/rise each period


def test_mode2_a_new_count_takes_effect_at_the_end_of_the_period(rig: Rig) -> None:
    rig.program(0, 2, 10)
    rig.at(5)
    rig.write_count(0, 20)
    assert rig.status(0) & 0x40  # NULL COUNT until the reload
    assert rig.out_at(0, [10, 11, 29, 30, 31]) == [False, True, True, False, True]
    rig.at(31)
    assert not rig.status(0) & 0x40


# --- mode 3 ------------------------------------------------------------------------------


def test_mode3_even_count_is_a_square_wave_counting_by_two(rig: Rig) -> None:
    rig.program(0, 3, 10)
    ticks = [1, 2, 5, 6, 7, 10, 11]
    assert rig.out_at(0, ticks) == [True, True, True, False, False, False, True]
    rig2 = Rig()
    rig2.program(0, 3, 10)
    assert rig2.counts_at(0, ticks) == [10, 8, 2, 10, 8, 2, 10]


def test_mode3_odd_count_is_high_one_clock_longer_than_low(rig: Rig) -> None:
    rig.program(0, 3, 5)
    ticks = [1, 2, 3, 4, 5, 6]
    assert rig.out_at(0, ticks) == [True, True, True, False, False, True]
    rig2 = Rig()
    rig2.program(0, 3, 5)
    assert rig2.counts_at(0, ticks) == [4, 2, 0, 4, 2, 4]


def test_mode3_a_new_count_takes_effect_at_the_end_of_the_half_cycle(rig: Rig) -> None:
    rig.program(0, 3, 10)
    rig.at(3)
    rig.write_count(0, 4)  # high half ends at 6, then halves of 2
    assert rig.out_at(0, [5, 6, 7, 8, 9, 10, 12]) == [True, False, False, True, True, False, True]


# --- modes 4 and 5 -----------------------------------------------------------------------


def test_mode4_strobes_low_for_one_clock_n_plus_one_clocks_after_the_write(rig: Rig) -> None:
    rig.program(0, 4, 10)
    assert rig.out_at(0, [0, 10, 11, 12, 100]) == [True, True, False, True, True]


def test_mode5_strobes_low_n_clocks_after_the_gate_trigger(rig: Rig) -> None:
    rig.program(2, 5, 10)
    rig.at(20)
    assert rig.out(2)
    rig.gate2(True)
    assert rig.out_at(2, [30, 31, 32]) == [True, False, True]


# --- access modes, latches, read-back, BCD ----------------------------------------------


def test_lsb_only_access_writes_and_reads_the_low_byte(rig: Rig) -> None:
    rig.control(0, 2, rw=1)
    rig.wr(0x40, 0x34)
    rig.at(1)
    assert rig.rd(0x40) == 0x34
    assert rig.rd(0x40) == 0x34  # no flip-flop in LSB-only mode
    rig.at(0x34)
    assert rig.out(0) is False  # period 0x34 = 52


def test_msb_only_access_writes_and_reads_the_high_byte(rig: Rig) -> None:
    rig.control(0, 2, rw=2)
    rig.wr(0x40, 0x12)
    rig.at(1)
    assert rig.rd(0x40) == 0x12
    rig.at(0x1200)
    assert rig.out(0) is False


def test_lsb_msb_access_alternates_bytes(rig: Rig) -> None:
    rig.program(0, 2, 0x1234)
    rig.at(1)
    assert rig.rd(0x40) == 0x34
    assert rig.rd(0x40) == 0x12


def test_a_latched_count_does_not_change_until_read_and_reading_releases_it(rig: Rig) -> None:
    rig.program(0, 2, 1000)
    rig.at(101)
    rig.latch(0)
    rig.at(500)
    assert rig.count(0) == 900
    assert rig.count(0) == 501  # released: the live count again


def test_a_second_latch_before_the_read_is_ignored(rig: Rig) -> None:
    rig.program(0, 2, 1000)
    rig.at(101)
    rig.latch(0)
    rig.at(200)
    rig.latch(0)
    assert rig.count(0) == 900


def test_status_byte_reports_out_null_count_rw_mode_and_bcd(rig: Rig) -> None:
    rig.control(0, 0)
    assert rig.status(0) == 0x40 | 0x30  # OUT low, NULL COUNT, LSB/MSB, mode 0
    rig.write_count(0, 5)
    rig.at(1)
    assert rig.status(0) == 0x30  # loaded
    rig.at(6)
    assert rig.status(0) == 0x80 | 0x30
    rig.control(1, 3, rw=1, bcd=True)
    assert rig.status(1) == 0x80 | 0x40 | 0x10 | 0x06 | 0x01


def test_read_back_latches_status_and_count_of_several_channels(rig: Rig) -> None:
    rig.program(0, 2, 1000)
    rig.gate2(True)
    rig.program(2, 0, 50)
    rig.at(101)
    rig.wr(CONTROL, 0xC0 | 0x08 | 0x02)  # count and status, counters 2 and 0
    rig.at(300)
    assert rig.rd(0x40) == 0x80 | 0x30 | 0x04  # status first
    assert rig.count(0) == 900
    assert rig.rd(0x42) == 0x80 | 0x30
    assert rig.count(2) == (50 - 100) % 0x10000


def test_read_back_of_the_count_alone_leaves_the_status_unlatched(rig: Rig) -> None:
    rig.program(0, 2, 1000)
    rig.at(101)
    rig.wr(CONTROL, 0xD0 | 0x02)  # count only
    rig.at(300)
    assert rig.count(0) == 900


def test_bcd_counts_in_decimal_digits(rig: Rig) -> None:
    rig.program(0, 2, 0x1000, bcd=True)  # 1000 decimal
    assert rig.counts_at(0, [1, 2, 501]) == [0x1000, 0x0999, 0x0500]
    assert rig.out_at(0, [999, 1000, 1001]) == [True, False, True]


def test_bcd_count_zero_means_ten_thousand(rig: Rig) -> None:
    rig.program(0, 0, 0, bcd=True)
    assert rig.counts_at(0, [2]) == [0x9999]
    assert rig.out_at(0, [10_000, 10_001]) == [False, True]


def test_binary_count_zero_means_65536(rig: Rig) -> None:
    rig.program(0, 2, 0)
    assert rig.out_at(0, [65_535, 65_536, 65_537]) == [True, False, True]


# --- IRQ0 --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [2, 3])
def test_channel0_at_100hz_gives_100_edges_in_a_virtual_second(rig: Rig, mode: int) -> None:
    rig.program(0, mode, 11932)  # 1193182 / 100, rounded
    start_edges = rig.pit.counters.irq0_edges
    rig.irq.levels.clear()
    rig.run_polls_until(SECOND)
    edges = rig.irq.rising_edges(initial=True)
    assert 99 <= edges <= 101
    assert edges == (tick_of(SECOND) - 1) // 11932  # periods end at 1 + k*N
    assert rig.pit.counters.irq0_edges - start_edges == edges
    assert rig.pit.counters.missed_ticks == 0


def test_no_time_is_lost_when_polled_at_irregular_times(rig: Rig) -> None:
    rig.program(0, 2, 11932)
    start_edges = rig.pit.counters.irq0_edges
    step = 3_333_331  # ns, shorter than a period and prime to it
    while rig.clock.now_ns() + step <= 10 * SECOND:
        rig.clock.advance(step)
        rig.pit.poll(rig.clock.now_ns())
    rig.clock.advance(10 * SECOND - rig.clock.now_ns())
    rig.pit.poll(rig.clock.now_ns())
    assert rig.pit.counters.irq0_edges - start_edges == (tick_of(10 * SECOND) - 1) // 11932
    assert rig.pit.counters.missed_ticks == 0
    phase = (tick_of(10 * SECOND) - 1) % 11932
    assert rig.count(0) == 11932 - phase


def test_a_long_gap_delivers_one_edge_and_counts_the_rest_as_missed(rig: Rig) -> None:
    rig.program(0, 2, 11932)
    rig.pit.poll(0)
    rig.irq.levels.clear()
    edges_before = rig.pit.counters.irq0_edges
    rig.clock.advance(SECOND)
    rig.pit.poll(SECOND)
    assert rig.irq.levels == [False, True]  # one fresh rising edge for the PIC to latch
    assert rig.pit.counters.irq0_edges - edges_before == 1
    periods = (tick_of(SECOND) - 1) // 11932
    assert rig.pit.counters.missed_ticks == periods - 1


def test_a_late_edge_whose_out_already_fell_is_held_high_until_the_next_edge(rig: Rig) -> None:
    rig.program(0, 3, 100)  # high on ticks 1-50, low 51-100, rises at 101, 201, ...
    rig.pit.poll(0)
    rig.irq.levels.clear()
    rig.at(260)  # rises at 101 and 201 happened; OUT is low now
    rig.pit.poll(rig.clock.now_ns())
    assert rig.irq.levels == [False, True]
    assert rig.pit.counters.missed_ticks == 1
    rig.at(270)
    rig.pit.poll(rig.clock.now_ns())
    assert rig.irq.level is True  # still held for the PIC
    assert rig.pit.poll(rig.clock.now_ns()) == ns_of_tick(301)
    rig.at(301)
    rig.pit.poll(rig.clock.now_ns())
    assert rig.irq.levels == [False, True, False, True]
    rig.at(351)
    rig.pit.poll(rig.clock.now_ns())
    assert rig.irq.level is False  # back to following OUT


def test_programming_mode2_after_mode0_raises_out_at_once(rig: Rig) -> None:
    rig.control(0, 0)
    rig.irq.levels.clear()
    rig.control(0, 2)
    assert rig.irq.levels == [True]


# --- gate on channel 2 -------------------------------------------------------------------


def test_gate2_low_pauses_mode0_counting_and_high_resumes_it(rig: Rig) -> None:
    rig.gate2(True)
    rig.program(2, 0, 100)
    rig.at(31)
    rig.gate2(False)
    assert rig.counts_at(2, [31, 80]) == [70, 70]
    rig.gate2(True)
    assert rig.counts_at(2, [100]) == [50]
    assert rig.out_at(2, [149, 150]) == [False, True]


def test_gate2_low_forces_mode2_out_high_and_rising_gate_restarts_the_period(rig: Rig) -> None:
    rig.gate2(True)
    rig.program(2, 2, 10)
    rig.at(10)
    assert not rig.out(2)
    rig.gate2(False)
    assert rig.out(2)
    rig.at(15)
    rig.gate2(True)  # reload on the next clock, 16
    assert rig.out_at(2, [24, 25, 26]) == [True, False, True]


def test_a_count_written_while_gate2_is_low_waits_for_the_gate_in_mode2(rig: Rig) -> None:
    rig.program(2, 2, 10)
    rig.at(50)
    assert rig.status(2) & 0x40  # not loaded
    rig.gate2(True)
    assert rig.out_at(2, [60, 61]) == [False, True]


def test_port61_shows_gate_speaker_out2_and_a_refresh_toggle(rig: Rig) -> None:
    assert rig.rd(0x61) == 0x00
    rig.wr(0x61, 0xFF)  # read-only bits ignored
    assert rig.rd(0x61) & 0xCF == 0x0F
    rig.program(2, 0, 10)
    rig.at(10)
    assert rig.rd(0x61) & 0x20 == 0
    rig.at(11)
    assert rig.rd(0x61) & 0x20 == 0x20
    rig.at(18)
    assert rig.rd(0x61) & 0x10 == 0x10
    rig.at(36)
    assert rig.rd(0x61) & 0x10 == 0


# --- guest mistakes ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [2, 4])
@pytest.mark.parametrize("port", [0x40, 0x41, 0x42, 0x43, 0x61])
def test_wider_accesses_are_refused_and_counted(rig: Rig, port: int, size: int) -> None:
    bus = plug(rig.pit)
    assert bus.io_read(port, size) is IoError.INVALID_ACCESS_SIZE
    assert bus.io_write(port, size, 0x34) is IoError.INVALID_ACCESS_SIZE
    assert rig.pit.stats.missed_reads == 1 and rig.pit.stats.missed_writes == 1


def test_reading_the_control_word_register_is_an_invalid_register(rig: Rig) -> None:
    bus = plug(rig.pit)
    assert bus.io_read(CONTROL, 1) is IoError.INVALID_REGISTER
    assert rig.pit.stats.missed_reads == 1


# --- lifecycle ---------------------------------------------------------------------------


def assert_plain(value: object) -> None:
    """Only what msgpack carries: dicts with str keys, lists, ints, bools, str, None."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str)
            assert_plain(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain(item)
    else:
        assert value is None or isinstance(value, (bool, int, str))


def test_save_is_plain_data_with_a_version(rig: Rig) -> None:
    rig.program(0, 2, 1000)
    rig.at(10)
    saved = rig.pit.save()
    assert_plain(saved)
    assert saved["version"] == 1


def test_a_restored_pit_continues_the_count_on_another_clock(rig: Rig) -> None:
    rig.program(0, 2, 1000)
    rig.gate2(True)
    rig.program(2, 3, 333)
    rig.at(250)
    rig.clock.advance(300)  # part of a tick, which must not be lost
    rig.latch(0)
    assert rig.rd(0x40) == (1000 - 249) & 0xFF  # the MSB is left for after the restore
    saved = rig.pit.save()

    other = Rig(start_ns=7 * SECOND + 12345)
    other.pit.restore(saved)
    assert other.pit.save() == saved
    assert other.rd(0x40) == (1000 - 249) >> 8
    assert rig.rd(0x40) == (1000 - 249) >> 8
    for step in (500, 700, 838, 1_000_000, 9_999_999):
        rig.clock.advance(step)
        other.clock.advance(step)
        assert rig.count(0) == other.count(0)
        assert rig.count(2) == other.count(2)
        assert rig.pit.poll(rig.clock.now_ns()) - rig.clock.now_ns() == (
            other.pit.poll(other.clock.now_ns()) - other.clock.now_ns())
    assert other.irq.level == rig.irq.level


@pytest.mark.parametrize("mutate", [
    lambda s: s.update(version=2),
    lambda s: s.update(elapsed_ns=-1),
    lambda s: s.update(port61=0x10),
    lambda s: s["channels"].pop(),
    lambda s: s["channels"][0].update(mode=8),
    lambda s: s["channels"][0].update(rw=0),
    lambda s: s["channels"][0].update(segment="running"),
    lambda s: s["channels"][0].update(n=0),
    lambda s: s["channels"][0].update(last_tick=10**9),
    lambda s: s["channels"][0].update(out="high"),
    lambda s: s["channels"][1].update(gate=False),
    lambda s: s["channels"][2].update(gate=True),
    lambda s: s["channels"][0].pop("cr"),
])
def test_restore_rejects_bad_state_and_changes_nothing(rig: Rig, mutate) -> None:
    rig.program(0, 2, 1000)
    rig.at(10)
    before = rig.pit.save()
    bad = rig.pit.save()
    mutate(bad)
    with pytest.raises(ValueError):
        rig.pit.restore(bad)
    assert rig.pit.save() == before


def test_reset_stops_the_counters_and_lowers_irq0(rig: Rig) -> None:
    rig.program(0, 2, 100)
    rig.at(50)
    assert rig.irq.level
    rig.pit.reset()
    assert not rig.irq.level
    assert rig.status(0) == 0x40 | 0x30
    assert rig.pit.poll(rig.clock.now_ns()) is None
