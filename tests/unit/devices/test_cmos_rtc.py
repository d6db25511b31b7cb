"""CMOS RTC (MC146818A) in virtual time: a FakeClock and a fixed wall clock."""

from __future__ import annotations

import calendar
import os

import pytest

from tests.unit.devices.support import RecordingIrqLine, plug
from worker.backends import NvramFile
from worker.devices.base import Device, FakeClock, IoError
from worker.devices.cmos_rtc import NVRAM_SIZE, CmosRtc, CmosRtcConfig
from worker.devices.cmos_rtc_time import civil_from_days, days_from_civil

INDEX, DATA = 0x70, 0x71
SEC, ALARM_SEC, MIN, ALARM_MIN, HOUR, ALARM_HOUR = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05
DOW, DOM, MONTH, YEAR, CENTURY = 0x06, 0x07, 0x08, 0x09, 0x32
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
SET, PIE, AIE, UIE, DM, H24 = 0x80, 0x40, 0x20, 0x10, 0x04, 0x02
IRQF, PF, AF, UF = 0x80, 0x40, 0x20, 0x10
UIP = 0x80

MS = 1_000_000
S = 1_000_000_000
START_NS = 5 * S  # the monotonic clock's value when the device is made


def posix(year, month, day, hour=0, minute=0, second=0) -> int:
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))


def make_rtc(wall=posix(2024, 2, 29, 13, 45, 30), nvram_path=None, clock=None):
    clock = clock or FakeClock(START_NS)
    irq = RecordingIrqLine()
    nvram = NvramFile(nvram_path, NVRAM_SIZE) if nvram_path is not None else None
    rtc = CmosRtc(CmosRtcConfig(), irq, clock, lambda: wall, nvram)
    return rtc, clock, irq


def read(rtc, index):
    assert rtc.io_write(INDEX, 1, index) is None
    value = rtc.io_read(DATA, 1)
    assert isinstance(value, int)
    return value


def write(rtc, index, value):
    assert rtc.io_write(INDEX, 1, index) is None
    assert rtc.io_write(DATA, 1, value) is None


def time_regs(rtc):
    return [read(rtc, i) for i in (SEC, MIN, HOUR, DOW, DOM, MONTH, YEAR, CENTURY)]


def set_reg_b(rtc, bits, on=True):
    b = read(rtc, REG_B)
    write(rtc, REG_B, b | bits if on else b & ~bits)


def count_flag_events(rtc, clock, flag, duration_ns):
    """Follow poll() deadlines for ``duration_ns``; count register C reads showing ``flag``."""
    read(rtc, REG_C)  # start from clear flags
    end = clock.now_ns() + duration_ns
    count = 0
    while True:
        deadline = rtc.poll(clock.now_ns())
        assert deadline is not None and deadline > clock.now_ns()
        if deadline > end:
            return count
        clock.advance(deadline - clock.now_ns())
        rtc.poll(clock.now_ns())
        if read(rtc, REG_C) & flag:
            count += 1


def test_the_device_satisfies_the_device_protocol():
    rtc, _, _ = make_rtc()
    assert isinstance(rtc, Device)
    assert [(r.base, r.count) for r in rtc.port_ranges()] == [(0x70, 2)]


def test_calendar_arithmetic_agrees_with_the_python_calendar():
    dates = [(1970, 1, 1), (2000, 2, 29), (2024, 12, 31), (1899, 3, 1), (2100, 3, 1)]
    for year, month, day in dates:
        days = days_from_civil(year, month, day)
        assert days * 86400 == posix(year, month, day)
        assert civil_from_days(days) == (year, month, day)


def test_it_reads_a_known_date_in_bcd():
    rtc, _, _ = make_rtc()  # Thursday 2024-02-29 13:45:30
    assert time_regs(rtc) == [0x30, 0x45, 0x13, 5, 0x29, 0x02, 0x24, 0x20]


def test_it_reads_a_known_date_in_binary():
    rtc, _, _ = make_rtc()
    set_reg_b(rtc, DM)
    assert time_regs(rtc) == [30, 45, 13, 5, 29, 2, 24, 20]


def test_register_d_reports_valid_ram_and_time_and_a_holds_the_bios_defaults():
    rtc, _, _ = make_rtc(wall=posix(2024, 2, 29, 13, 45, 30) + 0.5)  # not in an update cycle
    assert read(rtc, REG_D) == 0x80
    assert read(rtc, REG_A) == 0x26
    assert read(rtc, REG_B) == H24


def test_twelve_hour_mode_puts_pm_in_bit_7_in_bcd_and_binary():
    rtc, _, _ = make_rtc()
    set_reg_b(rtc, H24, on=False)
    assert read(rtc, HOUR) == 0x81  # 1 PM, BCD
    set_reg_b(rtc, DM)
    assert read(rtc, HOUR) == 0x81  # 1 PM, binary


def test_twelve_hour_mode_shows_midnight_as_12_am_and_noon_as_12_pm():
    rtc, _, _ = make_rtc(wall=posix(2024, 1, 1, 0, 0, 0))
    set_reg_b(rtc, H24, on=False)
    assert read(rtc, HOUR) == 0x12
    rtc, _, _ = make_rtc(wall=posix(2024, 1, 1, 12, 0, 0))
    set_reg_b(rtc, H24, on=False)
    assert read(rtc, HOUR) == 0x92


def test_twenty_four_hour_mode_shows_afternoon_hours_without_pm_bit():
    rtc, _, _ = make_rtc(wall=posix(2024, 1, 1, 23, 0, 0))
    assert read(rtc, HOUR) == 0x23


def test_time_advances_with_the_clock_across_a_minute():
    rtc, clock, _ = make_rtc(wall=posix(2024, 5, 6, 7, 8, 59))
    clock.advance(1 * S)
    assert time_regs(rtc)[:3] == [0x00, 0x09, 0x07]


def test_time_advances_across_a_day_month_and_year_rollover_with_the_weekday():
    rtc, clock, _ = make_rtc(wall=posix(2023, 12, 31, 23, 59, 58))  # a Sunday
    assert read(rtc, DOW) == 1
    clock.advance(2 * S)
    assert time_regs(rtc) == [0x00, 0x00, 0x00, 2, 0x01, 0x01, 0x24, 0x20]


def test_february_rolls_into_the_29th_only_in_a_leap_year():
    rtc, clock, _ = make_rtc(wall=posix(2023, 2, 28, 23, 59, 59))
    clock.advance(1 * S)
    assert (read(rtc, DOM), read(rtc, MONTH)) == (0x01, 0x03)
    rtc, clock, _ = make_rtc(wall=posix(2024, 2, 28, 23, 59, 59))
    clock.advance(1 * S)
    assert (read(rtc, DOM), read(rtc, MONTH)) == (0x29, 0x02)


def test_the_century_register_rolls_over_with_the_year():
    rtc, clock, _ = make_rtc(wall=posix(2099, 12, 31, 23, 59, 59))
    clock.advance(1 * S)
    assert (read(rtc, YEAR), read(rtc, CENTURY)) == (0x00, 0x21)


def test_a_fractional_wall_clock_start_makes_the_first_update_come_early():
    rtc, clock, _ = make_rtc(wall=posix(2024, 1, 1) + 0.75)
    clock.advance(250 * MS - 1)
    assert read(rtc, SEC) == 0x00
    clock.advance(1)
    assert read(rtc, SEC) == 0x01


def test_uip_rises_244_us_before_the_update_and_stays_through_the_update_cycle():
    """MC146818A datasheet, "Update Cycle" / AC characteristics: tBUC = 244 us before the
    update, tUC = 1984 us of update cycle; UIP is high for both (≈ 2228 us a second)."""
    rtc, clock, _ = make_rtc(wall=posix(2024, 1, 1) + 0.5)  # next update 500 ms away
    assert not read(rtc, REG_A) & UIP
    clock.advance(500 * MS - 244_141)
    assert not read(rtc, REG_A) & UIP
    clock.advance(1)
    assert read(rtc, REG_A) & UIP
    clock.advance(244_139)
    assert read(rtc, REG_A) & UIP
    assert read(rtc, SEC) == 0x00
    clock.advance(1)  # the update cycle begins: the new second, UIP still high
    assert read(rtc, REG_A) & UIP
    assert read(rtc, SEC) == 0x01
    clock.advance(1_983_641)  # 65 cycles of 32.768 kHz = 1983.642 us
    assert read(rtc, REG_A) & UIP
    clock.advance(1)
    assert not read(rtc, REG_A) & UIP
    assert read(rtc, SEC) == 0x01


def test_uip_is_high_about_2228_us_of_every_second():
    """A poller sampling register A every 10 us sees UIP for tBUC + tUC of each second."""
    rtc, clock, _ = make_rtc(wall=posix(2024, 1, 1) + 0.5)
    clock.advance(400 * MS)
    high = 0
    for _ in range(200 * 1000 // 10):  # 200 ms around the update, in 10 us steps
        clock.advance(10_000)
        high += bool(read(rtc, REG_A) & UIP)
    assert high * 10 in range(2220, 2240)


def test_uip_stays_clear_while_set_holds_the_clock():
    rtc, clock, _ = make_rtc(wall=posix(2024, 1, 1) + 0.5)
    set_reg_b(rtc, SET)
    clock.advance(500 * MS - 1000)
    assert not read(rtc, REG_A) & UIP


def test_set_freezes_updates_and_the_written_time_then_runs():
    rtc, clock, _ = make_rtc()
    set_reg_b(rtc, SET)
    for index, value in [(SEC, 0x58), (MIN, 0x59), (HOUR, 0x23), (DOW, 0x07),
                         (DOM, 0x31), (MONTH, 0x12), (YEAR, 0x99), (CENTURY, 0x19)]:
        write(rtc, index, value)
    clock.advance(5 * S)
    assert time_regs(rtc) == [0x58, 0x59, 0x23, 0x07, 0x31, 0x12, 0x99, 0x19]
    set_reg_b(rtc, SET, on=False)
    clock.advance(2 * S)
    assert time_regs(rtc) == [0x00, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00, 0x20]


def test_date_registers_written_under_set_are_taken_together_not_one_by_one():
    # 2024-02-10 -> 2024-03-31: day 31 is written while the month still says February.
    rtc, clock, _ = make_rtc(wall=posix(2024, 2, 10, 12, 0, 0))
    set_reg_b(rtc, SET)
    write(rtc, DOM, 0x31)
    write(rtc, MONTH, 0x03)
    set_reg_b(rtc, SET, on=False)
    assert (read(rtc, DOM), read(rtc, MONTH)) == (0x31, 0x03)


def test_setting_set_clears_uie():
    rtc, _, _ = make_rtc()
    set_reg_b(rtc, UIE)
    set_reg_b(rtc, SET)
    assert read(rtc, REG_B) & UIE == 0


def test_a_time_register_written_while_counting_takes_effect_and_keeps_counting():
    rtc, clock, _ = make_rtc(wall=posix(2024, 2, 29, 13, 45, 30))
    write(rtc, MIN, 0x10)
    assert time_regs(rtc)[:3] == [0x30, 0x10, 0x13]
    clock.advance(1 * S)
    assert read(rtc, SEC) == 0x31


def test_divider_reset_stops_the_clock_and_the_first_update_comes_500_ms_after_release():
    rtc, clock, _ = make_rtc(wall=posix(2024, 1, 1) + 0.1)
    write(rtc, REG_A, 0x76)  # DV = 111: chain held in reset
    clock.advance(3 * S)
    assert read(rtc, SEC) == 0x00
    write(rtc, REG_A, 0x26)
    clock.advance(500 * MS - 1)
    assert read(rtc, SEC) == 0x00
    clock.advance(1)
    assert read(rtc, SEC) == 0x01


def test_periodic_interrupt_fires_1024_times_in_one_virtual_second_at_rate_6():
    rtc, clock, _ = make_rtc(wall=posix(2024, 1, 1) + 0.123)
    set_reg_b(rtc, PIE)
    assert count_flag_events(rtc, clock, PF, 1 * S) == 1024


def test_periodic_interrupt_fires_twice_in_one_virtual_second_at_rate_15():
    rtc, clock, _ = make_rtc(wall=posix(2024, 1, 1) + 0.3)
    write(rtc, REG_A, 0x2F)
    set_reg_b(rtc, PIE)
    assert count_flag_events(rtc, clock, PF, 1 * S) == 2


def test_pf_is_set_even_when_pie_is_clear_but_irq8_stays_low():
    rtc, clock, irq = make_rtc()
    clock.advance(10 * MS)
    assert read(rtc, REG_C) == PF
    assert not irq.level


def test_periodic_interrupt_raises_irq8_and_register_c_read_clears_irqf_and_lowers_it():
    rtc, clock, irq = make_rtc()
    set_reg_b(rtc, PIE)
    read(rtc, REG_C)
    clock.advance(rtc.poll(clock.now_ns()) - clock.now_ns())
    rtc.poll(clock.now_ns())
    assert irq.level
    assert read(rtc, REG_C) == IRQF | PF
    assert not irq.level
    assert read(rtc, REG_C) == 0


def test_rate_select_zero_disables_the_periodic_interrupt():
    rtc, clock, _ = make_rtc()
    write(rtc, REG_A, 0x20)
    set_reg_b(rtc, PIE)
    read(rtc, REG_C)
    assert rtc.poll(clock.now_ns()) is None
    clock.advance(2 * S)
    assert read(rtc, REG_C) & PF == 0


def test_poll_returns_none_when_no_interrupt_is_enabled():
    rtc, clock, _ = make_rtc()
    assert rtc.poll(clock.now_ns()) is None


def test_update_ended_interrupt_fires_once_per_second():
    rtc, clock, _ = make_rtc(wall=posix(2024, 1, 1) + 0.4)
    set_reg_b(rtc, UIE)
    assert count_flag_events(rtc, clock, UF, 3 * S) == 3


def test_update_ended_interrupt_deadline_is_the_next_second_boundary():
    rtc, clock, irq = make_rtc(wall=posix(2024, 1, 1) + 0.375)
    set_reg_b(rtc, UIE)
    read(rtc, REG_C)
    assert rtc.poll(clock.now_ns()) == clock.now_ns() + 625 * MS
    clock.advance(625 * MS)
    rtc.poll(clock.now_ns())
    assert irq.level


def test_alarm_fires_at_the_right_second():
    rtc, clock, irq = make_rtc(wall=posix(2024, 2, 29, 13, 45, 30))
    write(rtc, ALARM_SEC, 0x33)
    write(rtc, ALARM_MIN, 0x45)
    write(rtc, ALARM_HOUR, 0x13)
    set_reg_b(rtc, AIE)
    read(rtc, REG_C)
    deadline = rtc.poll(clock.now_ns())
    assert deadline == clock.now_ns() + 3 * S
    clock.advance(3 * S - 1)
    rtc.poll(clock.now_ns())
    assert not irq.level
    clock.advance(1)
    rtc.poll(clock.now_ns())
    assert irq.level
    assert read(rtc, SEC) == 0x33
    assert read(rtc, REG_C) & (IRQF | AF) == IRQF | AF


def test_alarm_found_lazily_when_the_guest_reads_register_c_late():
    rtc, clock, _ = make_rtc(wall=posix(2024, 2, 29, 13, 45, 30))
    write(rtc, ALARM_SEC, 0x00)
    write(rtc, ALARM_MIN, 0x00)
    write(rtc, ALARM_HOUR, 0x02)  # 02:00:00 tomorrow
    read(rtc, REG_C)
    clock.advance(13 * 3600 * S)
    assert read(rtc, REG_C) & AF


def test_alarm_with_dont_care_hours_and_minutes_fires_at_each_minute_start():
    rtc, clock, _ = make_rtc(wall=posix(2024, 2, 29, 13, 45, 30))
    write(rtc, ALARM_SEC, 0x00)
    write(rtc, ALARM_MIN, 0xC0)
    write(rtc, ALARM_HOUR, 0xFF)
    set_reg_b(rtc, AIE)
    read(rtc, REG_C)
    assert rtc.poll(clock.now_ns()) == clock.now_ns() + 30 * S
    clock.advance(30 * S)
    assert read(rtc, REG_C) & AF
    assert rtc.poll(clock.now_ns()) == clock.now_ns() + 60 * S


def test_alarm_with_all_dont_care_bytes_fires_every_second():
    rtc, clock, _ = make_rtc(wall=posix(2024, 1, 1) + 0.5)
    for index in (ALARM_SEC, ALARM_MIN, ALARM_HOUR):
        write(rtc, index, 0xC0)
    set_reg_b(rtc, AIE)
    assert count_flag_events(rtc, clock, AF, 4 * S) == 4


def test_alarm_hours_compare_with_the_pm_bit_in_twelve_hour_mode():
    rtc, clock, _ = make_rtc(wall=posix(2024, 2, 29, 13, 59, 59))
    set_reg_b(rtc, H24, on=False)
    write(rtc, ALARM_SEC, 0x00)
    write(rtc, ALARM_MIN, 0x00)
    write(rtc, ALARM_HOUR, 0x82)  # 2 PM
    read(rtc, REG_C)
    clock.advance(1 * S)
    assert read(rtc, REG_C) & AF


def test_an_alarm_that_can_never_match_has_no_deadline():
    rtc, clock, _ = make_rtc()
    write(rtc, ALARM_SEC, 0x60)  # 60 seconds never shows
    set_reg_b(rtc, AIE)
    assert rtc.poll(clock.now_ns()) is None


def test_setting_an_enable_with_its_flag_already_set_raises_irq8_at_once():
    rtc, clock, irq = make_rtc()
    clock.advance(2 * S)
    assert not irq.level
    set_reg_b(rtc, UIE)
    assert irq.level


def test_nvram_bytes_read_back_and_index_port_bit_7_masks_nmi_without_moving_the_index():
    rtc, _, _ = make_rtc()
    write(rtc, 0x40, 0xA5)
    rtc.io_write(INDEX, 1, 0x80 | 0x40)
    assert rtc.nmi_disabled
    assert rtc.io_read(DATA, 1) == 0xA5
    rtc.io_write(INDEX, 1, 0x40)
    assert not rtc.nmi_disabled


def test_the_index_port_reads_as_all_ones():
    rtc, _, _ = make_rtc()
    rtc.io_write(INDEX, 1, 0x0B)
    assert rtc.io_read(INDEX, 1) == 0xFF


def test_registers_c_and_d_ignore_writes_and_uip_is_read_only():
    rtc, _, _ = make_rtc(wall=posix(2024, 2, 29, 13, 45, 30) + 0.5)  # not in an update cycle
    write(rtc, REG_C, 0xF0)
    write(rtc, REG_D, 0x00)
    write(rtc, REG_A, 0xA6)
    assert read(rtc, REG_C) == 0
    assert read(rtc, REG_D) == 0x80
    assert read(rtc, REG_A) == 0x26


def test_nvram_persists_across_two_device_instances_on_one_file(tmp_path):
    path = str(tmp_path / "cmos.bin")
    rtc, _, _ = make_rtc(nvram_path=path)
    assert os.path.getsize(path) == NVRAM_SIZE
    write(rtc, 0x0E, 0x11)
    write(rtc, 0x7F, 0x22)
    rtc.write_nvram(0x30, b"\x00\x7c")
    again, _, _ = make_rtc(nvram_path=path)
    assert (read(again, 0x0E), read(again, 0x7F), read(again, 0x31)) == (0x11, 0x22, 0x7C)
    assert os.path.getsize(path) == NVRAM_SIZE
    assert [p.name for p in tmp_path.iterdir()] == ["cmos.bin"]  # no temp file left


def test_a_bad_nvram_file_size_is_refused_naming_the_path(tmp_path):
    path = tmp_path / "cmos.bin"
    path.write_bytes(bytes(128))
    with pytest.raises(ValueError, match="cmos.bin"):
        make_rtc(nvram_path=str(path))


def test_the_century_slot_is_clock_state_not_nvram(tmp_path):
    path = str(tmp_path / "cmos.bin")
    rtc, _, _ = make_rtc(nvram_path=path)
    assert read(rtc, CENTURY) == 0x20
    assert open(path, "rb").read() == bytes(NVRAM_SIZE)


def test_accesses_wider_than_a_byte_are_refused_and_counted():
    rtc, _, _ = make_rtc()
    bus = plug(rtc)
    bus.io_write(INDEX, 1, REG_B)
    assert bus.io_read(DATA, 2) is IoError.INVALID_ACCESS_SIZE
    assert bus.io_write(INDEX, 4, REG_C) is IoError.INVALID_ACCESS_SIZE
    assert bus.io_write(DATA, 2, 0xFF) is IoError.INVALID_ACCESS_SIZE
    assert (rtc.stats.missed_reads, rtc.stats.missed_writes) == (1, 2)
    assert rtc.io_read(DATA, 1) == H24  # the refused writes changed neither index nor B


def test_reset_clears_interrupt_enables_and_flags_but_keeps_time_and_nvram():
    rtc, clock, irq = make_rtc()
    write(rtc, 0x50, 0x42)
    set_reg_b(rtc, PIE | UIE | DM)
    clock.advance(2 * S)
    rtc.poll(clock.now_ns())
    assert irq.level
    rtc.reset()
    assert not irq.level
    assert read(rtc, REG_B) == H24 | DM
    assert read(rtc, REG_C) == 0
    assert read(rtc, SEC) == 32
    assert read(rtc, 0x50) == 0x42


def test_save_then_restore_into_a_fresh_device_resumes_the_same_state():
    rtc, clock, _ = make_rtc(wall=posix(2024, 2, 29, 13, 45, 30) + 0.25)
    write(rtc, 0x20, 0x99)
    write(rtc, ALARM_SEC, 0x45)
    write(rtc, DOW, 0x03)
    set_reg_b(rtc, DM | UIE)
    clock.advance(800 * MS)  # one update: 13:45:31.05, UF pending
    saved = rtc.save()

    other_clock = FakeClock(123 * S)
    fresh, _, irq = make_rtc(wall=posix(1999, 1, 1), clock=other_clock)
    fresh.restore(saved)
    assert irq.level
    assert time_regs(fresh) == time_regs(rtc) == [31, 45, 13, 3, 29, 2, 24, 20]
    assert read(fresh, 0x20) == 0x99
    assert read(fresh, ALARM_SEC) == 0x45
    assert read(fresh, REG_B) == DM | UIE | H24
    # The phase within the second survives: the next update is 950 ms away in both.
    assert fresh.poll(other_clock.now_ns()) - other_clock.now_ns() == 950 * MS
    other_clock.advance(950 * MS)
    assert read(fresh, SEC) == 32
    assert read(fresh, REG_C) & (IRQF | UF) == IRQF | UF


def test_saved_state_survives_a_msgpack_round_trip():
    msgpack = pytest.importorskip("msgpack")
    rtc, _, _ = make_rtc()
    write(rtc, 0x40, 0x12)
    saved = rtc.save()
    fresh, _, _ = make_rtc(wall=0)
    fresh.restore(msgpack.unpackb(msgpack.packb(saved)))
    assert time_regs(fresh) == time_regs(rtc)
    assert read(fresh, 0x40) == 0x12


def test_restore_re_derives_irq8_from_the_saved_flags():
    rtc, clock, irq = make_rtc()
    set_reg_b(rtc, UIE)
    clock.advance(1 * S)
    rtc.poll(clock.now_ns())
    saved = rtc.save()
    fresh, _, fresh_irq = make_rtc()
    fresh.restore(saved)
    assert fresh_irq.level


def test_restore_rejects_a_malformed_state_and_keeps_the_old_one():
    rtc, _, _ = make_rtc()
    write(rtc, 0x20, 0x77)
    good = rtc.save()
    for bad in [
        {**good, "version": 99},
        {**good, "index": 0x80},
        {**good, "nvram": b"\x00" * 10},
        {**good, "held": [0] * 7},
        {**good, "divider_phase_ns": -1},
        {**good, "flags": 0x80},
        {k: v for k, v in good.items() if k != "time_s"},
        "not a dict",
    ]:
        with pytest.raises(ValueError):
            rtc.restore(bad)
    assert read(rtc, 0x20) == 0x77


def test_restore_writes_the_restored_nvram_to_the_file(tmp_path):
    source, _, _ = make_rtc()
    write(source, 0x60, 0x5A)
    path = str(tmp_path / "cmos.bin")
    target, _, _ = make_rtc(nvram_path=path)
    target.restore(source.save())
    assert open(path, "rb").read()[0x60 - 0x0E] == 0x5A
