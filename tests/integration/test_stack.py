"""The stack end to end: real processes, real ZeroMQ endpoints, real files."""

from __future__ import annotations

import json
import os
import signal
from time import perf_counter_ns

import pytest
import zmq

from proto import messages as m
from root.client import RootClient
from proto.errors import Refused
from proto.stats import PathStats
from proto.transport import connect

from tests.support import alive, wait_until

pytestmark = pytest.mark.integration
ONE = "tests/configs/one.toml"


def root(run) -> RootClient:
    return RootClient(run.manifest()["endpoint"], run.secret())


def partition_id(run, name="alpha") -> int:
    return run.manifest()["partitions"][name]["id"]


def test_the_banner_arrives_on_the_console(live):
    # The worker writes console bytes out in batches, so wait for the whole line.
    banner = wait_until(lambda: "enlightenments:" in live.console("alpha") and live.console("alpha"), 20,
                        what="the banner on the console file")
    assert "hvstack guest kernel" in banner and "Microsoft Hv (Hv#1)" in banner


def test_io_writes_and_reads_back_the_uart_scratch_register(live):
    # The guest's portio workload writes the same register: pause it while we use it.
    assert live.launch("ctl", live.name, "pause", "alpha").returncode == 0
    try:
        r = live.launch("io", live.name, "alpha", "outb", "0x3ff", "0x5a", "inb", "0x3ff")
    finally:
        assert live.launch("ctl", live.name, "resume", "alpha").returncode == 0
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["OK", "OK 0x5a"]


def test_io_reads_operations_from_stdin(live):
    r = live.launch("io", live.name, "alpha", stdin="cpuid 0x40000001\nrdmsr HV_X64_MSR_VP_INDEX\ninb 0x1234\n")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("OK eax=0x31237648")  # "Hv#1"
    assert lines[1] == "OK 0x0"
    assert lines[2] == "OK 0xff"  # nothing claims port 0x1234


def test_io_hypercalls_carry_the_partitions_privileges(live):
    # Before the guest enables its hypercall page a hypercall is #UD (TLFS): wait for it.
    with root(live) as client:
        wait_until(lambda: client.status()["partitions"][0]["hypercalls_enabled"], 20,
                   what="the guest's hypercall page enabled")
    r = live.launch("io", live.name, "alpha", "hypercall", "HvCallCreatePartition", "hypercall", "0x7777")
    assert r.stdout.splitlines() == ["OK HV_STATUS_ACCESS_DENIED reps=0", "OK HV_STATUS_INVALID_HYPERCALL_CODE reps=0"]


def test_io_on_a_partition_the_run_does_not_have_fails_clearly(live):
    r = live.launch("io", live.name, "nosuch", "inb", "0x3f8")
    assert r.returncode == 2 and "no partition 'nosuch'" in r.stderr


def test_every_stage_stamp_is_monotonic_and_the_stages_add_up(live):
    with root(live) as client:
        pid = partition_id(live)
        for _ in range(50):
            t0 = perf_counter_ns()
            reply = client.io(pid, 0, "inb", 0x3FD)
            t_end = perf_counter_ns()
            stamps = (t0, *reply.stamps, t_end)
            # root out, hv in, hv notify out, worker in, worker done, hv complete in, hv resume out, root in
            assert len(stamps) == 8
            assert all(a <= b for a, b in zip(stamps, stamps[1:])), stamps
            stages = [b - a for a, b in zip(stamps, stamps[1:])]
            assert sum(stages) == t_end - t0
        # The guest's own histograms agree: stage means add up to the total mean.
        def io_stats():
            paths = client.status()["partitions"][0]["paths"]
            return paths.get("io_port")
        st = PathStats.from_wire(wait_until(io_stats, 10, what="guest io_port statistics"))
        assert len(st.stages) == 7
        assert sum(h.total for h in st.stages) == st.total.total


def test_the_console_fills_the_uarts_fifo_by_string_io_one_exit_for_many_bytes(live):
    """The guest's console lines go out by REP OUTSB (partitions/drivers/serial.py): one
    io_string exit per FIFO's worth, measured as its own path, its stages adding up."""
    wait_until(lambda: "enlightenments:" in live.console("alpha"), 20, what="the banner")
    with root(live) as client:
        def measured():
            part = client.status()["partitions"][0]
            return part if "io_string" in part["paths"] else None
        part = wait_until(measured, 10, what="the io_string path in status")
    exits = part["vps"][0]["exits"]
    st = PathStats.from_wire(part["paths"]["io_string"])
    # The banner alone is over 60 bytes: at most 16 a string exit, so a few exits carried them.
    assert exits["io_string"] >= 4 and st.total.n >= 4
    assert len(st.stages) == 7 and sum(h.total for h in st.stages) == st.total.total
    assert len(live.console("alpha")) > 16 * exits["io_string"] // 2  # many bytes per exit, not one


@pytest.mark.timing
def test_hypercall_and_cpuid_round_trips_are_faster_than_emulated_io(live):
    with root(live) as client:
        def enough():
            paths = client.status()["partitions"][0]["paths"]
            return all(p in paths and paths[p]["t"]["n"] >= 2000 for p in ("io_port", "cpuid", "hypercall")) and paths
        paths = wait_until(enough, 30, 0.25, what="2000 samples per path")
    p50 = {p: PathStats.from_wire(paths[p]).total.percentile(50) for p in ("io_port", "cpuid", "hypercall")}
    assert p50["cpuid"] < p50["io_port"], p50
    assert p50["hypercall"] < p50["io_port"], p50


def test_garbage_from_a_stranger_crashes_nothing_and_the_run_goes_on(live):
    endpoint = live.manifest()["endpoint"]
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    try:
        for junk in (b"", b"\xc1\xc1", os.urandom(300), m.StatusRequest().encode(),
                     m.IoPortIntercept(1, 0x3F8, 1, True, 0x41, (1,)).encode()):
            s.send(junk)
            assert s.poll(5000), "the hypervisor answers a stranger with an error"
            reply = m.decode(s.recv())
            assert isinstance(reply, m.ErrorReply)
            assert reply.code in ("MALFORMED", "UNKNOWN_TYPE", "NOT_AUTHENTICATED")
        s.send_multipart([b"two", b"frames"])
        assert s.poll(5000) and isinstance(m.decode(s.recv()), m.ErrorReply)
    finally:
        s.close()
    with root(live) as client:
        status = client.status()
    assert status["counters"]["malformed"] >= 3 and status["counters"]["not_authenticated"] >= 2
    assert live.proc.poll() is None
    r = live.launch("io", live.name, "alpha", "inb", "0x3ff")
    assert r.returncode == 0, r.stderr


def test_a_bad_token_or_another_partitions_identity_is_refused(live):
    endpoint = live.manifest()["endpoint"]
    with pytest.raises(Refused, match="NOT_AUTHENTICATED"):
        connect(endpoint, "root", 0, 0, token="0" * 40)
    # The partition's own token does not make it the root, nor another partition.
    from proto.auth import peer_token
    token = peer_token(live.secret(), "vp", partition_id(live))
    with pytest.raises(Refused, match="NOT_AUTHENTICATED"):
        connect(endpoint, "root", 0, 0, token=token)
    with pytest.raises(Refused, match="NOT_AUTHENTICATED"):
        connect(endpoint, "vp", partition_id(live) + 1, 0, token=token)
    with root(live) as client:
        assert client.status()["counters"]["refused_hellos"] >= 3


def test_each_role_may_send_only_its_own_messages(live):
    from proto.auth import peer_token
    endpoint = live.manifest()["endpoint"]
    # A partition of our own, so that nothing here touches the running one.
    with root(live) as client:
        pid = client.create_partition(0, 0, 0xFFFFFFFF, 1)
        client.start_vps(pid, 1)
    token = lambda role: peer_token(live.secret(), role, pid)  # noqa: E731
    worker = connect(endpoint, "worker", pid, 0, token=token("worker"))
    vp = connect(endpoint, "vp", pid, 0, token=token("vp"))
    try:
        with pytest.raises(Refused, match="NOT_PERMITTED"):
            worker.request(m.StatusRequest())
        with pytest.raises(Refused, match="NOT_PERMITTED"):
            vp.request(m.InstallIntercept(((0x60, 1),), ()))
        with pytest.raises(Refused, match="STALE"):
            worker.request(m.AccessComplete(12345, 0, ()))
        # The running partition's worker and VP cannot be replaced.
        wait_until(lambda: "hvstack guest kernel" in live.console("alpha"), 20, what="boot")
        alpha = partition_id(live)
        with pytest.raises(Refused, match="CONFLICT"):
            connect(endpoint, "worker", alpha, 0, token=peer_token(live.secret(), "worker", alpha))
        with pytest.raises(Refused, match="CONFLICT"):
            connect(endpoint, "vp", alpha, 0, token=peer_token(live.secret(), "vp", alpha))
        # A VP of a partition without a worker: its port I/O reads all-ones at once.
        reply = vp.request(m.IoPortIntercept(1, 0x3F8, 1, False, 0, (perf_counter_ns(),)))
        assert reply.rax == 0xFF and len(reply.stamps) == 3
    finally:
        worker.close()
        vp.close()


def test_status_shows_partitions_vps_and_processes(live):
    wait_until(lambda: "hvstack guest kernel" in live.console("alpha"), 20, what="boot")
    r = live.launch("status", live.name, "--json")
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    part = status["partitions"][0]
    assert part["state"] == "active" and part["worker"] and part["vps"][0]["state"] in ("running", "intercept")
    procs = {row[0]: row for row in status["processes"]}
    assert {"launcher", "hypervisor:hv", "worker:alpha", "partition:alpha"} <= set(procs)
    r = live.launch("status", live.name)
    assert "partition alpha" in r.stdout and "RSS" in r.stdout


def test_ls_lists_the_live_run_and_stop_ends_it(live):
    r = live.launch("ls")
    assert live.name in r.stdout
    pids = live.pids()
    r = live.launch("stop", live.name)
    assert r.returncode == 0, r.stderr
    assert "ended" in r.stdout
    wait_until(lambda: not alive(pids), 10, what="every process gone")
    man = live.manifest()
    assert man["state"] == "ended" and "launch.py stop" in man["ended"]["reason"]
    r = live.launch("status", live.name)
    assert r.returncode == 1 and "not running" in r.stderr
    r = live.launch("io", live.name, "alpha", "inb", "0x3f8")
    assert r.returncode == 1 and "not running" in r.stderr


def test_sigkill_of_the_worker_ends_the_run_and_leaves_no_process(live):
    wait_until(lambda: "hvstack guest kernel" in live.console("alpha"), 20, what="boot")
    pids = live.pids()
    worker = live.manifest()["processes"]["worker:alpha"]["pid"]
    os.kill(worker, signal.SIGKILL)
    live.proc.wait(30)
    assert live.proc.returncode == 1
    wait_until(lambda: not alive(pids), 10, what="every process gone")
    ended = live.manifest()["ended"]
    assert "worker alpha" in ended["reason"] and "SIGKILL" in ended["reason"]
    assert ended["left_running"] == []


def test_sigint_to_the_launcher_ends_the_run_cleanly(live):
    wait_until(lambda: "hvstack guest kernel" in live.console("alpha"), 20, what="boot")
    pids = live.pids()
    live.proc.send_signal(signal.SIGINT)
    live.proc.wait(30)
    wait_until(lambda: not alive(pids), 10, what="every process gone")
    assert live.manifest()["ended"]["reason"].startswith("SIGINT")


def test_sigkill_of_the_launcher_takes_its_processes_with_it(live):
    wait_until(lambda: "hvstack guest kernel" in live.console("alpha"), 20, what="boot")
    pids = live.pids()
    live.proc.kill()
    live.proc.wait(10)
    wait_until(lambda: not alive(pids), 10, what="every process gone")
