"""The report's pieces: tables, one exit total, one path order and stage breakdowns, all in
proto.exits' vocabulary, read from the typed status (proto.status)."""

from __future__ import annotations

import io
from types import SimpleNamespace

from proto.exits import EMULATED_STAGES, Exit
from proto.stats import PathStats
from root.report import Output, exit_totals, path_order, path_rows, stage_rows, table


def stats(*stamps_list) -> PathStats:
    st = PathStats()
    for stamps in stamps_list:
        st.record(stamps)
    return st


def test_a_table_pads_each_column_to_its_widest_cell():
    assert table(["a", "bb"], [["xyz", "1"], ["q", "100"]]).splitlines() == [
        "a     bb", "---  ---", "xyz    1", "q    100"]
    assert table(["a", "b"], [["1", "2"]], "rl").splitlines()[2] == "1  2"


def test_exits_are_added_up_over_the_vps_in_the_order_the_status_has_them():
    part = SimpleNamespace(vps=[SimpleNamespace(exits={"io_port": 3, "cpuid": 1}),
                                SimpleNamespace(exits={"io_port": 2, "halt": 5})])
    assert list(exit_totals(part).items()) == [("io_port", 5), ("cpuid", 1), ("halt", 5)]


def test_paths_are_listed_in_the_vocabularys_order_and_unknown_ones_last():
    assert path_order(["mystery", "hypercall", "cpuid", "io_port"]) == ["io_port", "cpuid", "hypercall", "mystery"]


def test_path_rows_are_labelled_by_the_vocabulary():
    rows = path_rows({"cpuid": stats((0, 1000, 3000)), "odd": stats((0, 5000))})
    assert [r[0] for r in rows] == [Exit.CPUID.label, "odd"]
    assert rows[0][1:] == ["1", rows[0][2], rows[0][3], "3.0"]


def test_stage_rows_name_each_stage_and_end_with_the_total():
    stamps = tuple(range(0, 8000, 1000))  # 7 stages of 1 µs
    rows = stage_rows({"io_port": stats(stamps)}, "io_port")
    assert [r[0] for r in rows] == [*EMULATED_STAGES, "total"]
    assert rows[-1][-1] == "100%" and rows[0][-1] == "14%"
    assert stage_rows({"io_port": stats((0, 1, 2))}, "io_port") == [], "stages that are not the vocabulary's"
    assert stage_rows({}, "io_port") == []


def test_output_writes_to_the_stream_it_is_given_or_to_stdout_at_the_time(capsys):
    stream = io.StringIO()
    Output(stream).console("alpha", "hello")
    assert stream.getvalue() == "         alpha | hello\n"
    Output().print("now")
    assert capsys.readouterr().out == "now\n"


def test_the_interrupt_line_says_which_ticks_were_lost_and_which_the_idle_tick_skipped():
    from root.report import interrupt_line

    def part(**guest):
        vp = SimpleNamespace(interrupts=SimpleNamespace(injected=5, by_vector={"0x20": 5}))
        return SimpleNamespace(vps=[vp], guest={"interrupts": 5, "handler_exits": 5, "ticks": 300,
                                                "tick_interrupts": 5, **guest})

    assert interrupt_line(part()).endswith("; 300 timer ticks")
    assert interrupt_line(part(lost_ticks=2, idle_ticks=293)).endswith(
        "; 300 timer ticks (5 taken, 2 lost, 293 with the tick stopped)")
    assert interrupt_line(part(idle_ticks=295)).endswith("; 300 timer ticks (5 taken, 295 with the tick stopped)")
