"""How the MC146818A's time and alarm registers spell a moment: BCD or binary, 12- or 24-hour,
and the calendar behind the date registers.

The RTC (:mod:`worker.devices.cmos_rtc`) keeps time as seconds since 1970-01-01 in the
guest's calendar; these pure functions turn such a count into the eight time register bytes
(seconds, minutes, hours, day of week, day of month, month, year, century: the RTC's
``TIME_SLOTS`` order) and back, and find the next second the alarm bytes match.  ``binary``
is register B's DM bit, ``h24`` its 24/12 bit.
"""

from __future__ import annotations

HOURS_PM = 0x80  # bit 7 of the hours bytes in 12-hour mode
ALARM_DONT_CARE = 0xC0  # an alarm byte 11xxxxxx matches any value
SECONDS_PER_DAY = 86_400


# --- calendar arithmetic (proleptic Gregorian, any year; Howard Hinnant's algorithms) ---


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01.  ``month`` may be outside 1..12 and ``day`` outside the month:
    both are carried over, which is how out-of-range register values are normalised."""
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    y = year - (1 if month <= 2 else 0)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468 + (day - 1)


def civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a count of days since 1970-01-01."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    return year, month, day


def _weekday(days: int) -> int:
    """0 = Sunday for a count of days since 1970-01-01 (a Thursday)."""
    return (days + 4) % 7


def render(t: int, binary: bool, h24: bool, dow_offset: int) -> list[int]:
    """The time registers showing RTC second ``t``; the day-of-week register is the true
    weekday plus ``dow_offset`` (the guest may set any weekday)."""
    days, time_of_day = divmod(t, SECONDS_PER_DAY)
    year, month, day = civil_from_days(days)
    year %= 10_000  # century and year registers hold 0..99 each
    return [
        _encode(time_of_day % 60, binary),
        _encode(time_of_day // 60 % 60, binary),
        _encode_hours(time_of_day // 3600, binary, h24),
        _encode((_weekday(days) + dow_offset) % 7 + 1, binary),
        _encode(day, binary),
        _encode(month, binary),
        _encode(year % 100, binary),
        _encode(year // 100, binary),
    ]


def decode(raw: list[int], binary: bool, h24: bool) -> tuple[int, int]:
    """(RTC seconds, day-of-week offset) from time register bytes.  Out-of-range values are
    carried over (the 31st of February is the 3rd of March)."""
    seconds, minutes, _, dow, day, month, year, century = (_decode(b, binary) for b in raw)
    hours = _decode_hours(raw[2], binary, h24)
    days = days_from_civil(century * 100 + year, month, day)
    t = days * SECONDS_PER_DAY + hours * 3600 + minutes * 60 + seconds
    # Keep the day-of-week register as written, whatever the date says.
    dow_offset = (dow - 1 - _weekday(t // SECONDS_PER_DAY)) % 7
    return t, dow_offset


def next_alarm_after(t: int, alarm: tuple[int, int, int], binary: bool, h24: bool) -> int | None:
    """First RTC second after ``t`` whose hours, minutes and seconds bytes match the alarm
    bytes ``(hours, minutes, seconds)`` (11xxxxxx matching anything), or None if no time of
    day can match."""
    alarm_hours, alarm_minutes, alarm_seconds = alarm
    hours = [h for h in range(24) if _alarm_matches(alarm_hours, _encode_hours(h, binary, h24))]
    minutes = [m for m in range(60) if _alarm_matches(alarm_minutes, _encode(m, binary))]
    seconds = [x for x in range(60) if _alarm_matches(alarm_seconds, _encode(x, binary))]
    if not (hours and minutes and seconds):
        return None
    day_start = t - t % SECONDS_PER_DAY
    time_of_day = t % SECONDS_PER_DAY
    now_minute = time_of_day // 60
    for h in hours:
        if h < now_minute // 60:
            continue
        for m in minutes:
            if h * 60 + m < now_minute:
                continue
            for x in seconds:
                candidate = h * 3600 + m * 60 + x
                if candidate > time_of_day:
                    return day_start + candidate
    # Nothing later today: the first match of tomorrow.
    return day_start + SECONDS_PER_DAY + hours[0] * 3600 + minutes[0] * 60 + seconds[0]


def _encode_hours(hour: int, binary: bool, h24: bool) -> int:
    if h24:
        return _encode(hour, binary)
    # 12-hour mode: 12, 1 .. 11 with PM in bit 7 (midnight is 12 AM, noon 12 PM).
    return _encode(hour % 12 or 12, binary) | (HOURS_PM if hour >= 12 else 0)


def _decode_hours(byte: int, binary: bool, h24: bool) -> int:
    if h24:
        return _decode(byte, binary)
    return _decode(byte & ~HOURS_PM, binary) % 12 + (12 if byte & HOURS_PM else 0)


def _encode(value: int, binary: bool) -> int:
    if binary:
        return value & 0xFF
    return (value // 10 % 10) << 4 | value % 10


def _decode(byte: int, binary: bool) -> int:
    if binary:
        return byte
    return (byte >> 4) * 10 + (byte & 0x0F)  # invalid digits are taken at face value


def _alarm_matches(alarm: int, value: int) -> bool:
    return alarm & ALARM_DONT_CARE == ALARM_DONT_CARE or alarm == value
