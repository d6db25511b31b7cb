"""launch.py trace, console and ctl against a run started elsewhere (another shell)."""

from __future__ import annotations

import csv
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from root.client import RootClient
from root.trace_format import CSV_FIELDS

from tests.support import REPO, alive, short_run_root, start_run, wait_until

pytestmark = pytest.mark.integration
ONE = "tests/configs/one.toml"
BANNER = "hvstack guest kernel"


def _booted(run):
    # The guest's workloads (and its 100 Hz tick) start after the banner.
    wait_until(lambda: "enlightenments:" in run.console("alpha"), 30, what="the guest's banner")
    return run


def _finish(run):
    pids = run.pids()
    run.stop()
    assert wait_until(lambda: not alive(pids), 15, what="every process of the run to exit") is True


@pytest.fixture(scope="module")
def shared():
    """One run for the tests that only watch it (or type into its UART)."""
    run = start_run(ONE, short_run_root())
    try:
        yield _booted(run)
    finally:
        _finish(run)


@pytest.fixture
def own():
    """A run of its own, for the tests that pause, reset, stop or end it."""
    run = start_run(ONE, short_run_root())
    try:
        yield _booted(run)
    finally:
        _finish(run)


def client(run) -> RootClient:
    return RootClient(run.manifest()["endpoint"], run.secret())


def status(run) -> dict:
    with client(run) as c:
        return c.status()


def alpha(st: dict) -> dict:
    return st["partitions"][0]


def total_exits(run) -> int:
    return sum(sum(vp["exits"].values()) for vp in alpha(status(run))["vps"])


def rx_bytes(run) -> int:
    with client(run) as c:
        return c.uart_rx_bytes(run.manifest()["partitions"]["alpha"]["id"])


class Attached:
    """A launch.py command running in the background; its output collected as it comes."""

    def __init__(self, run, *args: str, stdin=subprocess.DEVNULL) -> None:
        env = dict(os.environ, HVSTACK_RUN_DIR=run.run_root)
        self.proc = subprocess.Popen([sys.executable, str(REPO / "launch.py"), *args], cwd=REPO, env=env,
                                     stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out, self.err = bytearray(), bytearray()
        self._threads = [threading.Thread(target=self._pump, args=(s, b), daemon=True)
                         for s, b in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream, buf: bytearray) -> None:
        for chunk in iter(lambda: stream.read1(4096), b""):
            buf += chunk

    @property
    def stdout(self) -> str:
        return self.out.decode(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.decode(errors="replace")

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        for t in self._threads:
            t.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


# -- trace ---------------------------------------------------------------------------------


def _json_trace(run, *args: str, duration: float = 2.0) -> tuple[list[dict], dict]:
    r = run.launch("trace", run.name, "--duration", str(duration), "--json", *args, timeout=90)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert lines and "summary" in lines[-1], r.stdout[-2000:]
    return lines[:-1], lines[-1]["summary"]


def test_trace_json_shows_every_kind_of_exit_with_its_stages_and_a_summary(shared):
    events, summary = _json_trace(shared, duration=2.0)
    reasons = {e["reason"] for e in events}
    assert {"io_port", "cpuid", "hypercall", "interrupt"} <= reasons, reasons
    for e in events:
        assert e["partition"] == "alpha" and e["vp"] == 0
        assert 0 <= e["t"] <= 30
        stamps = e["stamps"]
        assert len(stamps) >= 2 and all(a <= b for a, b in zip(stamps, stamps[1:])), e
        assert len(e["stages_us"]) == len(stamps) - 1
        assert e["total_us"] == pytest.approx((stamps[-1] - stamps[0]) / 1000, abs=0.01)
        assert sum(e["stages_us"].values()) == pytest.approx(e["total_us"], abs=0.01 * len(stamps))
        assert e["a"].startswith("0x") and e["b"].startswith("0x")
    first = {e["reason"]: e for e in reversed(events)}
    # The worker round trip: every stage up to the completion's arrival in the hypervisor.
    assert list(first["io_port"]["stages_us"])[:5] == ["guest→hv", "hv dispatch", "hv→worker", "worker emulate",
                                                       "worker→hv"]
    assert first["io_port"]["direction"] in ("read", "write")
    assert list(first["cpuid"]["stages_us"])[0] == "guest→hv" and first["cpuid"]["direction"] is None
    assert first["cpuid"]["a"] == "0x40000001"  # the cpuid workload's leaf
    assert list(first["interrupt"]["stages_us"]) == ["worker INTA", "worker→hv", "hv queued"]
    assert any(e["a"] == "0x3ff" for e in events if e["reason"] == "io_port")  # the portio workload
    # The summary counts what was printed, by reason, as perf kvm stat report does.
    assert summary["total_samples"] == len(events)
    assert {r: v["samples"] for r, v in summary["reasons"].items()} == \
        {r: sum(1 for e in events if e["reason"] == r) for r in reasons}
    for v in summary["reasons"].values():
        assert v["min_us"] <= v["p50_us"] <= v["max_us"] and v["min_us"] <= v["avg_us"] <= v["max_us"]
        assert v["p50_us"] <= v["p99_us"] <= v["max_us"]
    assert summary["total_time_us"] == pytest.approx(sum(e["total_us"] for e in events), rel=1e-3)
    assert summary["duration_s"] >= 2.0


def test_trace_reason_filters_and_partition_selects(shared):
    events, summary = _json_trace(shared, "--reason", "cpuid", "--reason", "interrupt", "--partition", "alpha",
                                  duration=1.5)
    assert {e["reason"] for e in events} == {"cpuid", "interrupt"}
    assert set(summary["reasons"]) == {"cpuid", "interrupt"}
    assert summary["reasons_filter"] == ["cpuid", "interrupt"] and summary["partition"] == "alpha"


def test_trace_csv_has_a_header_then_the_summary_after_a_blank_line(shared):
    r = shared.launch("trace", shared.name, "--duration", "1", "--csv", timeout=90)
    assert r.returncode == 0, r.stderr
    events_part, _, summary_part = r.stdout.partition("\n\n")
    rows = list(csv.reader(events_part.splitlines()))
    assert tuple(rows[0]) == CSV_FIELDS
    assert len(rows) > 10 and all(len(row) == len(CSV_FIELDS) for row in rows)
    io = next(dict(zip(rows[0], row)) for row in rows[1:] if row[3] == "io_port")
    assert io["partition"] == "alpha" and io["direction"] in ("read", "write") and float(io["worker_emulate_us"]) >= 0
    summary = list(csv.DictReader(summary_part.splitlines()))
    assert summary[-1]["reason"] == "total" and int(summary[-1]["samples"]) == len(rows) - 1
    assert sum(int(s["samples"]) for s in summary[:-1]) == len(rows) - 1


def test_trace_text_lines_and_a_perf_kvm_stat_summary(shared):
    r = shared.launch("trace", shared.name, "--duration", "1", "--reason", "hypercall", timeout=90)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["time", "s", "partition"]
    events = [line for line in lines[1:] if " hypercall " in line and "alpha" in line]
    assert events and "guest→hv" in events[0]
    total = next(line for line in lines if line.startswith("Total Samples:"))
    assert total.startswith(f"Total Samples: {len(events)}, Total events handled time: ") and total.endswith(" us")
    header = next(line for line in lines if line.startswith("reason "))
    assert header.split() == ["reason", "samples", "samples%", "time%", "min", "µs", "avg", "µs", "p50", "µs",
                              "p99", "µs", "max", "µs"]


def test_trace_streams_into_a_pipe_and_ctrl_c_ends_it_cleanly_with_the_summary(shared):
    t = Attached(shared, "trace", shared.name, "--json")
    try:
        # Events arrive while it runs (flushed into the pipe), not only at the end.
        wait_until(lambda: t.stdout.count("\n") >= 20, 30, what="events streamed by a running trace")
        assert t.proc.poll() is None
        t.proc.send_signal(signal.SIGINT)
        assert t.wait(20) == 0, t.stderr
    finally:
        t.kill()
    last = json.loads(t.stdout.splitlines()[-1])
    assert last["summary"]["total_samples"] == len(t.stdout.splitlines()) - 1
    assert "Traceback" not in t.stderr


def test_trace_of_a_partition_the_run_does_not_have_fails_clearly(shared):
    r = shared.launch("trace", shared.name, "--partition", "nosuch", "--duration", "1")
    assert r.returncode == 1 and "no partition 'nosuch'" in r.stderr


def test_attaching_changes_nothing_and_the_trace_subscription_ends_with_its_client(shared):
    before = status(shared)
    assert before["tracers"] == 0
    r = shared.launch("trace", shared.name, "--duration", "1", "--json", timeout=90)
    assert r.returncode == 0, r.stderr
    c = shared.launch("console", shared.name, "alpha", "--linger", "3", stdin="", timeout=60)
    assert c.returncode == 0 and "[alpha] vp0:" in c.stdout, c.stderr
    # The hypervisor forgets the trace client at its next event after it is gone.
    after = wait_until(lambda: (s := status(shared))["tracers"] == 0 and s, 15, what="the tracer to be dropped")
    assert after["counters"]["malformed"] == before["counters"]["malformed"]
    assert after["counters"]["not_permitted"] == before["counters"]["not_permitted"]
    assert alpha(after)["worker_timeouts"] == alpha(before)["worker_timeouts"] == 0
    assert alpha(after)["state"] == "active" and shared.proc.poll() is None
    exits = total_exits(shared)
    wait_until(lambda: total_exits(shared) > exits, 15, what="the guest to go on exiting")


# -- console -------------------------------------------------------------------------------


def test_console_with_piped_input_shows_guest_output_and_feeds_the_uart(shared):
    text = b"hello from the console test\nsecond line\nx\n"  # more than a 16-byte FIFO
    rx0 = rx_bytes(shared)
    r = subprocess.run([sys.executable, str(REPO / "launch.py"), "console", shared.name, "alpha", "--linger", "2.5"],
                       cwd=REPO, env=dict(os.environ, HVSTACK_RUN_DIR=shared.run_root), input=text,
                       capture_output=True, timeout=90)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode(errors="replace")
    assert "[alpha] vp0:" in out  # the serial workload's line a second
    assert "Connected to partition alpha" in r.stderr.decode()
    # Every byte goes into the UART's receive FIFO (the worker queues what does not fit yet).
    assert wait_until(lambda: rx_bytes(shared) - rx0 >= len(text), 10, what="the bytes in the UART") is True
    assert rx_bytes(shared) - rx0 == len(text)


def test_console_on_a_terminal_is_raw_escapes_on_ctrl_bracket_and_restores_the_terminal(shared):
    import termios

    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        rx0 = rx_bytes(shared)
        p = subprocess.Popen([sys.executable, str(REPO / "launch.py"), "console", shared.name, "alpha"], cwd=REPO,
                             env=dict(os.environ, HVSTACK_RUN_DIR=shared.run_root),
                             stdin=slave, stdout=slave, stderr=slave)
        seen = bytearray()

        def read_until(pred, timeout):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not pred():
                if select.select([master], [], [], 0.1)[0]:
                    seen.extend(os.read(master, 4096))
            return pred()

        try:
            assert read_until(lambda: b"Escape character is ^]" in seen, 20), bytes(seen)
            assert read_until(lambda: termios.tcgetattr(slave)[3] & termios.ICANON == 0, 5)  # raw mode
            os.write(master, b"ab\r")
            assert wait_until(lambda: rx_bytes(shared) - rx0 >= 3, 15, what="typed bytes in the UART") is True
            assert read_until(lambda: b"[alpha] vp0:" in seen, 20), bytes(seen)
            os.write(master, b"\x1d")
            assert p.wait(15) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        assert termios.tcgetattr(slave) == before
        assert rx_bytes(shared) - rx0 == 3
    finally:
        os.close(master)
        os.close(slave)


def test_console_and_trace_exit_1_when_the_run_ends_while_attached(own):
    console = Attached(own, "console", own.name, "alpha", "--no-input")
    trace = Attached(own, "trace", own.name)
    try:
        wait_until(lambda: "Connected to partition alpha" in console.stderr, 30, what="the console to attach")
        wait_until(lambda: trace.stdout.count("\n") >= 5, 30, what="the trace to attach")
        own.stop()
        assert console.wait(20) == 1
        assert trace.wait(20) == 1
    finally:
        console.kill()
        trace.kill()
    assert f"run {own.name} ended while attached" in console.stderr
    assert f"run {own.name} ended while tracing" in trace.stderr
    assert "Total Samples:" in trace.stdout  # what it saw is still summed up


# -- ctl -------------------------------------------------------------------------------------


def test_ctl_pause_stops_the_vps_exits_and_resume_starts_them_again(own):
    wait_until(lambda: total_exits(own) > 0, 20, what="the guest to run")
    r = own.launch("ctl", own.name, "pause", "alpha")
    assert r.returncode == 0 and r.stdout.strip() == "partition alpha paused", r.stderr
    assert alpha(status(own))["state"] == "paused"
    time.sleep(0.3)  # an exit already on its way is still counted
    held = total_exits(own)
    time.sleep(1.0)  # (a VP held for 10 s gives up: keep the pause short)
    assert total_exits(own) == held
    r = own.launch("ctl", own.name, "resume", "alpha")
    assert r.returncode == 0 and r.stdout.strip() == "partition alpha resumed", r.stderr
    wait_until(lambda: total_exits(own) > held + 100, 15, what="exits after resume")
    assert alpha(status(own))["state"] == "active" and own.proc.poll() is None


def test_ctl_reset_boots_the_guest_again_on_the_console(own):
    console = Attached(own, "console", own.name, "alpha", "--no-input")
    try:
        wait_until(lambda: "Connected to partition alpha" in console.stderr, 30, what="the console to attach")
        r = own.launch("ctl", own.name, "reset", "alpha")
        assert r.returncode == 0 and r.stdout.startswith("partition alpha reset (reset #1"), r.stdout + r.stderr
        wait_until(lambda: BANNER in console.stdout, 30, what="the banner of the second boot on the console")
        console.proc.send_signal(signal.SIGINT)
        assert console.wait(20) == 0
    finally:
        console.kill()
    assert alpha(status(own))["resets"] == 1
    assert own.console("alpha").count(BANNER) == 2


def test_ctl_stop_ends_the_partitions_processes_and_then_the_run(own):
    man = own.manifest()
    mine = [man["processes"][k]["pid"] for k in ("partition:alpha", "worker:alpha")]
    everything = own.pids()
    r = own.launch("ctl", own.name, "stop", "alpha", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "partition alpha stopped" in r.stdout
    assert "every partition was stopped" in r.stdout
    assert not alive(mine)
    assert own.proc.wait(30) == 0
    ended = own.manifest()
    assert ended["state"] == "ended" and "every partition was stopped" in ended["ended"]["reason"]
    assert ended["stopped_partitions"] == ["alpha"]
    assert wait_until(lambda: not alive(everything), 15, what="every process of the run to exit") is True


def test_every_attach_command_fails_clearly_on_an_ended_run(own):
    own.stop()
    wait_until(lambda: own.manifest().get("state") == "ended", 20, what="the run to end")
    for args in (["trace", own.name, "--duration", "1"], ["console", own.name, "alpha"],
                 ["ctl", own.name, "pause", "alpha"], ["ctl", own.name, "stop", "alpha"]):
        r = own.launch(*args, timeout=30)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert f"run {own.name} is not running" in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
