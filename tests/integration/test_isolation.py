"""Partition isolation, attacked (issue 9): each finding of the probe, tried again from a
process with a partition's (or its worker's) credentials and descriptors — see
:mod:`tests.attack` — must now fail.

Before issue 9 every process ran as the launcher's user (root here), the secret was in the
hypervisor's environment and every partition mapped one page pool shared by all: each of
these attacks went through.
"""

from __future__ import annotations

import os

import pytest

from tests import attack
from tests.support import alive, short_run_root, start_run, wait_until

from proto import confine, seccomp
from proto import tlb as tlb_layout

pytestmark = pytest.mark.integration

TOPOLOGY = """\
[run]
name = "iso"
duration_s = 0
logical_processors = 2

[[partition]]
name = "alpha"
vps = 1
memory_mb = 2
chipset = "minimal"
workloads = ["cpuid"]

[[partition]]
name = "beta"
vps = 1
memory_mb = 2
workloads = ["cpuid"]
disk = { size_mb = 1 }
"""


class Run:
    def __init__(self, live) -> None:
        self.live = live
        self.dir = live.path
        man = live.manifest()
        self.man = man
        self.ids = {n: p["id"] for n, p in man["partitions"].items()}
        self.pid = {k: v["pid"] for k, v in man["processes"].items()}

    @property
    def hv(self) -> int:
        return self.pid["hypervisor:hv"]

    def part(self, name: str) -> int:
        return self.pid[f"partition:{name}"]

    def worker(self, name: str) -> int:
        return self.pid[f"worker:{name}"]

    def path(self, name: str) -> str:
        return str(self.dir / name)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("per-process uids need root (CI runs as root); not root, a run is at most "
                    "'namespaces' (the last test)")
    cfg = tmp_path_factory.mktemp("iso") / "iso.toml"
    cfg.write_text(TOPOLOGY)
    live = start_run(str(cfg), short_run_root())
    try:
        wait_until(lambda: "hvstack guest kernel" in live.console("alpha")
                   and "hvstack guest kernel" in live.console("beta"), 30, what="both guests to boot")
        yield Run(live)
    finally:
        pids = live.pids()
        live.stop()
        wait_until(lambda: not alive(pids), 10, what="every process gone")


def confined(run: Run):
    """Every process a guest could take over: both partitions and both workers."""
    return [run.part("alpha"), run.worker("alpha"), run.part("beta"), run.worker("beta")]


# -- who they are ----------------------------------------------------------------------------


def test_each_worker_and_partition_runs_under_a_uid_of_its_own_without_privileges(run):
    assert run.man["isolation"] == "uids"
    uids = set()
    for pid in confined(run):
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        uid = {int(x) for x in status["Uid"].split()}
        gid = {int(x) for x in status["Gid"].split()}
        assert len(uid) == 1 and 0 not in uid and len(gid) == 1 and 0 not in gid, status["Uid"]
        assert status["Groups"].strip() == "", "no supplementary groups"
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
        assert status["NoNewPrivs"] == "1"
        with open(f"/proc/{pid}/limits") as f:
            [nproc] = [line.split()[2:4] for line in f if line.startswith("Max processes")]
        assert nproc == [str(confine.MAX_TASKS)] * 2, "a fork bomb stops at the process's own uid"
        uids |= uid
    assert len(uids) == 4, "two partitions' workers and partitions: four uids"


def test_no_secret_is_in_any_processs_environment_or_command_line(run):
    secret = run.live.secret()
    from proto.auth import peer_token
    tokens = [peer_token(secret, role, i) for role in ("worker", "vp") for i in run.ids.values()]
    for pid in [run.hv, *confined(run)]:
        for what in ("environ", "cmdline"):
            with open(f"/proc/{pid}/{what}", "rb") as f:
                data = f.read()
            for s in [secret, *tokens]:
                assert s.encode() not in data, f"a secret in /proc/{pid}/{what}"


def test_status_says_which_isolation_level_is_in_force(run):
    r = run.live.launch("status", run.live.name)
    assert r.returncode == 0, r.stderr
    assert any(line.startswith("isolation: uids: each worker and partition under a uid of its own")
               for line in r.stdout.splitlines()), r.stdout


def test_a_partition_cannot_signal_the_hypervisor_or_another_partitions_processes(run):
    for target in (run.hv, run.live.manifest()["launcher_pid"], run.part("beta"), run.worker("beta"),
                   run.worker("alpha")):
        assert attack.as_process(run.part("alpha"), attack.signal_process(target)) == ("refused", "EPERM")


def test_a_partition_cannot_trace_or_read_another_partitions_processes(run):
    for target in (run.part("beta"), run.worker("beta"), run.worker("alpha"), run.hv):
        assert attack.as_process(run.part("alpha"), attack.ptrace_attach(target)) == ("refused", "EPERM")
        assert attack.as_process(run.part("alpha"), attack.vm_read(target)) == ("refused", "EPERM")


@pytest.mark.skipif(not seccomp.available(), reason="no seccomp filter can be installed here")
def test_every_worker_and_partition_runs_under_the_seccomp_filter_and_status_says_so(run):
    for pid in confined(run):
        assert seccomp.in_force(pid), pid
    assert not seccomp.in_force(run.hv)
    r = run.live.launch("status", run.live.name)
    assert "seccomp: in force in all 4 worker and partition processes" in r.stdout, r.stdout


def test_over_ipc_a_partition_has_no_network(run):
    """An ipc run's workers and partitions are each in an empty network namespace: no
    TCP service of the host (another run's tcp endpoint, anything on 127.0.0.1) is reachable."""
    import socket
    srv = socket.create_server(("127.0.0.1", 0))
    try:
        port = srv.getsockname()[1]
        assert attack.as_process(os.getpid(), attack.connect_tcp(port)) == ("ok", "connected")  # the host's
        mine = os.readlink("/proc/self/ns/net")
        for pid in confined(run):
            assert os.readlink(f"/proc/{pid}/ns/net") != mine, pid
        for pid in (run.part("alpha"), run.worker("alpha")):
            assert attack.as_process(pid, attack.connect_tcp(port)) == ("refused", "ENETUNREACH")
    finally:
        srv.close()
    r = run.live.launch("status", run.live.name)
    assert "network: 4 of 4 worker and partition processes in an empty network namespace" in r.stdout, r.stdout


# -- the run secret ---------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["partition", "worker"])
def test_a_partition_cannot_read_the_run_secret_from_the_run_directory(run, who):
    pid = run.part("alpha") if who == "partition" else run.worker("alpha")
    assert attack.as_process(pid, attack.read_file(run.path("secret"))) == ("refused", "EACCES")


def test_a_partition_cannot_read_the_hypervisors_environment(run):
    assert attack.as_process(run.part("alpha"), attack.read_file(f"/proc/{run.hv}/environ")) == ("refused", "EACCES")


def test_a_partition_cannot_read_the_hypervisors_memory(run):
    kind, why = attack.as_process(run.part("alpha"), attack.read_hypervisor_memory(run.hv))
    assert (kind, why) == ("refused", "EACCES")


def test_the_hypervisors_command_line_holds_no_secret(run):
    kind, cmdline = attack.as_process(run.part("alpha"), attack.read_file(f"/proc/{run.hv}/cmdline"))
    assert kind == "ok" and "--secret-fd" in cmdline  # world-readable, as on any Linux
    assert run.live.secret() not in cmdline


def test_a_partition_cannot_reach_the_hypervisors_socket_to_speak_as_root(run):
    """Pausing another partition as root needs the secret (above) and a connection: a
    partition has only the connections it made before it was confined."""
    sock = run.path("hv.sock")
    assert attack.as_process(os.getpid(), attack.connect_unix(sock)) == ("ok", "connected")  # root may
    assert attack.as_process(run.part("alpha"), attack.connect_unix(sock)) == ("refused", "EACCES")
    assert attack.as_process(run.worker("alpha"), attack.connect_unix(sock)) == ("refused", "EACCES")


# -- guest memory -----------------------------------------------------------------------------


def _mark(run: Run, name: str, marker: bytes) -> None:
    """Put ``marker`` into the last page of partition ``name``'s RAM (the root's write)."""
    path = run.path(f"mem-{run.ids[name]}.bin")
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, marker, os.fstat(fd).st_size - 4096)
    finally:
        os.close(fd)


def test_a_partition_cannot_read_or_write_another_partitions_ram(run):
    alpha, beta = run.ids["alpha"], run.ids["beta"]
    mine, theirs = os.urandom(16), os.urandom(16)
    _mark(run, "alpha", mine)
    _mark(run, "beta", theirs)
    [ram] = attack.fds_named(run.part("alpha"), f"mem-{alpha}.bin")[:1]
    # What alpha's process maps is its own memory and nothing else.
    assert attack.as_process(run.part("alpha"), attack.scan_for(ram, mine), [ram]) == \
        ("ok", {"size": 2 << 20, "found": True})
    assert attack.as_process(run.part("alpha"), attack.scan_for(ram, theirs), [ram]) == \
        ("ok", {"size": 2 << 20, "found": False})
    for pid in (run.part("alpha"), run.worker("alpha")):
        assert attack.as_process(pid, attack.open_rw(run.path(f"mem-{beta}.bin"))) == ("refused", "EACCES")
        assert attack.as_process(pid, attack.read_file(run.path(f"mem-{beta}.bin"))) == ("refused", "EACCES")
    assert not attack.fds_named(run.part("alpha"), f"mem-{beta}.bin")
    assert not os.path.exists(run.path("memory.pool")), "no pool file shared by partitions"


def test_a_partition_cannot_rewrite_its_slat(run):
    alpha = run.ids["alpha"]
    [slat] = attack.fds_named(run.part("alpha"), f"slat-{alpha}.bin")[:1]
    pid = run.part("alpha")
    assert attack.as_process(pid, attack.reopen_rw(slat), [slat]) == ("refused", "EACCES")
    assert attack.as_process(pid, attack.map_shared_writable(slat), [slat]) == ("refused", "EACCES")
    assert attack.as_process(pid, attack.open_rw(run.path(f"slat-{alpha}.bin"))) == ("refused", "EACCES")
    assert attack.as_process(pid, attack.open_rw(run.path(f"slat-{run.ids['beta']}.bin"))) == ("refused", "EACCES")


def test_a_partition_cannot_open_the_tlb_files(run):
    alpha, beta = run.ids["alpha"], run.ids["beta"]
    for lp in range(2):
        for p in (alpha, beta):
            assert attack.as_process(run.part("alpha"), attack.open_rw(run.path(f"tlb-p{p}-lp{lp}.bin"))) \
                == ("refused", "EACCES")
        # It holds its own TLB on each LP (it fills it), never another partition's.
        assert attack.fds_named(run.part("alpha"), f"tlb-p{alpha}-lp{lp}.bin")
        assert not attack.fds_named(run.part("alpha"), f"tlb-p{beta}-lp{lp}.bin")


def test_a_partition_that_cuts_its_tlb_file_short_cannot_take_the_hypervisor_down(run):
    """Its TLB and RAM views are read-write (its VPs fill the one: proto.tlb says why, and
    why an entry cannot reach another partition's pages).  Before, truncating either made
    the hypervisor's mapping of it raise SIGBUS at the next status or access: the
    hypervisor, and every partition with it, gone.  Now the seccomp filter refuses the
    truncation, and were it missing the hypervisor reads TLB files through pread."""
    alpha = run.ids["alpha"]
    [tlb] = attack.fds_named(run.part("alpha"), f"tlb-p{alpha}-lp0.bin")[:1]
    [ram] = attack.fds_named(run.part("alpha"), f"mem-{alpha}.bin")[:1]
    if seccomp.in_force(run.part("alpha")):
        for fd in (tlb, ram):
            assert attack.as_process(run.part("alpha"), attack.truncate(fd), [fd]) == ("refused", "EPERM")
    assert attack.as_process(run.part("alpha"), attack.truncate(tlb), [tlb], filtered=False) == ("ok", "truncated")
    path = run.path(f"tlb-p{alpha}-lp0.bin")
    try:
        r = run.live.launch("status", run.live.name)  # the hypervisor reads every TLB file
        assert r.returncode == 0, r.stderr
        assert alive([run.hv]) and alive([run.part("beta")])
    finally:
        os.truncate(path, tlb_layout.FILE_SIZE)  # alpha's VPs map it: give them their file back


# -- disks ------------------------------------------------------------------------------------


def test_a_partition_cannot_open_another_partitions_disk_image(run):
    image = run.path("disk-beta.img")
    assert attack.fds_named(run.worker("beta"), "disk-beta.img"), "beta's worker holds its own image"
    for pid in (run.part("alpha"), run.worker("alpha"), run.part("beta")):
        assert attack.as_process(pid, attack.open_rw(image)) == ("refused", "EACCES")
    assert oct(os.stat(image).st_mode & 0o777) == "0o600"


# -- not root: the namespaces level ---------------------------------------------------------


@pytest.mark.skipif(not confine.user_namespaces_available(), reason="no user namespaces here")
def test_not_root_each_worker_and_partition_hides_the_runs_root_in_namespaces_of_its_own(tmp_path, monkeypatch):
    """What a run gets where it cannot have uids (run here as root, asked for the weaker
    level): the run's files are out of sight of every worker and partition process."""
    monkeypatch.setenv("HVSTACK_ISOLATION", "namespaces")
    cfg = tmp_path / "iso.toml"
    cfg.write_text(TOPOLOGY)
    live = start_run(str(cfg), short_run_root())
    try:
        wait_until(lambda: "hvstack guest kernel" in live.console("alpha")
                   and "hvstack guest kernel" in live.console("beta"), 30, what="both guests to boot")
        man = live.manifest()
        assert man["isolation"] == "namespaces"
        mine = os.readlink("/proc/self/ns/user")
        secret = live.path / "secret"
        assert secret.exists()
        for name, info in man["processes"].items():
            if name.startswith("hypervisor"):
                continue
            pid = info["pid"]
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
            assert int(status["CapEff"], 16) == 0 and status["NoNewPrivs"] == "1", name
            assert os.readlink(f"/proc/{pid}/ns/user") != mine, name
            # The run directory as the process sees it: covered.
            assert not os.path.exists(f"/proc/{pid}/root{secret}"), name
            assert not os.path.exists(f"/proc/{pid}/root{live.path / 'hv.sock'}"), name
        r = live.launch("status", live.name)
        assert "isolation: namespaces:" in r.stdout, r.stdout + r.stderr
        assert "network: 4 of 4 worker and partition processes in an empty network namespace" in r.stdout
        if seccomp.available():
            assert "seccomp: in force in all 4 worker and partition processes" in r.stdout, r.stdout
            _same_uid_processes_cannot_reach_each_other(man, tmp_path)
    finally:
        pids = live.pids()
        live.stop()
        wait_until(lambda: not alive(pids), 10, what="every process gone")


def _same_uid_processes_cannot_reach_each_other(man: dict, tmp_path) -> None:
    """At this level every process has one uid, and the kernel lets a process signal any
    process of its uid: the seccomp filter is what refuses it.  The attacker is confined
    as alpha's partition process is (its own namespaces, no capabilities, the filter)."""
    hide = tmp_path / "hidden"
    hide.mkdir()
    procs = {name: info["pid"] for name, info in man["processes"].items()}
    beta, beta_worker = procs["partition:beta"], procs["worker:beta"]
    for target in (beta, beta_worker, procs["hypervisor:hv"], man["launcher_pid"]):
        assert seccomp.in_force(procs["partition:alpha"])
        assert attack.as_namespaced(str(hide), attack.signal_process(target)) == ("refused", "EPERM")
        assert attack.as_namespaced(str(hide), attack.ptrace_attach(target)) == ("refused", "EPERM")
        assert attack.as_namespaced(str(hide), attack.vm_read(target)) == ("refused", "EPERM")
    # Without the filter the same process could signal beta's: the test can fail.
    assert attack.as_namespaced(str(hide), attack.signal_process(beta), filtered=False) == ("ok", "signalled")
    # Its SLAT: the file is the process's own uid's, but 0400, and the filter keeps it so.
    alpha = procs["partition:alpha"]
    [slat] = attack.fds_named(alpha, f"slat-{man['partitions']['alpha']['id']}.bin")[:1]
    assert attack.as_namespaced(str(hide), attack.reopen_rw(slat), fds_of=(alpha, [slat])) == ("refused", "EACCES")
    assert attack.as_namespaced(str(hide), attack.chmod_writable(slat), fds_of=(alpha, [slat])) == ("refused", "EPERM")
