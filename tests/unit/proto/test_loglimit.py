"""proto.loglimit: refusals logged at a bounded rate and length."""

from __future__ import annotations

import logging

from proto.loglimit import LimitedLog, clip


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_at_most_n_lines_a_second_then_one_line_saying_how_many_were_held_back(caplog):
    clock = Clock()
    limited = LimitedLog(logging.getLogger("t"), per_second=5, clock=clock)
    with caplog.at_level(logging.WARNING, "t"):
        for i in range(1000):
            limited.warning("refused %d", i)
        assert len(caplog.records) == 5
        limited.flush()  # within the second: nothing yet
        assert len(caplog.records) == 5
        clock.t += 1.0
        limited.flush()
        assert len(caplog.records) == 6 and "995 similar line(s) suppressed" in caplog.records[-1].getMessage()
        limited.warning("refused again")
        assert caplog.records[-1].getMessage() == "refused again"
    assert limited.suppressed_total == 995


def test_a_line_is_clipped_and_made_printable(caplog):
    limited = LimitedLog(logging.getLogger("t"), max_chars=50)
    with caplog.at_level(logging.WARNING, "t"):
        limited.warning("refused %s", "A" * 10_000 + "\n\x1b[2J")
    line = caplog.records[0].getMessage()
    assert len(line) < 100 and "more characters" in line
    assert clip("a\nb\x1b") == "a\\nb\\x1b"
