"""The memory manager through the real processes: maps, isolation, unmapped GPAs."""

from __future__ import annotations

import array
from pathlib import Path

import pytest

from proto import messages as m
from proto.auth import peer_token
from root.client import RootClient
from proto.errors import Refused
from proto.memory import PAGE_SIZE, SLAT_INVALID
from proto.transport import connect

from tests.support import alive, short_run_root, start_run, wait_until

pytestmark = pytest.mark.integration

TOPOLOGY = """\
[run]
name = "mem"
duration_s = 0

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
chipset = "minimal"
workloads = ["cpuid"]
"""


@pytest.fixture
def run(tmp_path):
    cfg = tmp_path / "mem.toml"
    cfg.write_text(TOPOLOGY)
    live = start_run(str(cfg), short_run_root())
    try:
        # Both guests booted: their boot-time probes (alpha's VGA probe is an unmapped-GPA
        # exit) are behind us before a test counts anything.
        for name in ("alpha", "beta"):
            wait_until(lambda: "hvstack guest kernel" in live.console(name), 30, what=f"{name} boot")
        yield live
    finally:
        pids = live.pids()
        live.stop()
        wait_until(lambda: not alive(pids), 10, what="every process gone")


def slat(run, name: str) -> array.array:
    status = root(run).status()["memory"]
    pid = run.manifest()["partitions"][name]["id"]
    table = array.array("I")
    table.frombytes(Path(status["partitions"][str(pid)]["slat"]).read_bytes())
    return table


def root(run) -> RootClient:
    return RootClient(run.manifest()["endpoint"], run.secret())


def test_contiguous_guest_memory_lies_on_scattered_host_pages_of_its_own(run):
    a, b = slat(run, "alpha"), slat(run, "beta")
    ram_a = [e for e in a if e != SLAT_INVALID]
    ram_b = [e for e in b if e != SLAT_INVALID]
    assert len(ram_a) == len(ram_b) == 512 - 96  # 2 MiB less the legacy hole
    assert all(e == SLAT_INVALID for e in a[0xA0:0x100])
    assert not set(ram_a) & set(ram_b), "no host page is in two partitions"
    assert sum(1 for x, y in zip(ram_a, ram_a[1:]) if y == x + 1) < len(ram_a) // 2, "host pages are scattered"


def test_guest_ram_written_through_io_lands_in_the_host_page_the_slat_names(run):
    r = run.launch("io", run.name, "alpha", "writel", "0x5008", "0xcafef00d", "readl", "0x5008")
    assert r.stdout.splitlines() == ["OK", "OK 0xcafef00d"], r.stderr
    host = slat(run, "alpha")[5]
    pool = Path(root(run).status()["memory"]["pool"]).read_bytes()
    assert pool[host * PAGE_SIZE + 8:host * PAGE_SIZE + 12] == (0xCAFEF00D).to_bytes(4, "little")
    # The same GPA in the other partition is another page.
    r = run.launch("io", run.name, "beta", "readl", "0x5008")
    assert r.stdout.strip() == "OK 0x0"


def test_an_access_outside_ram_that_no_device_claims_faults_and_is_counted(run):
    before = root(run).status()["partitions"][0]["unmapped_gpa"]  # the guest's VGA probe was one
    r = run.launch("io", run.name, "alpha", "readl", "0x300000", "writeb", "0xa0000", "1")
    assert r.stdout.splitlines() == ["FAULT #GP", "FAULT #GP"]
    assert root(run).status()["partitions"][0]["unmapped_gpa"] == before + 2


def test_a_worker_asking_for_another_partitions_memory_is_refused_and_counted(run):
    man = run.manifest()
    alpha, beta = man["partitions"]["alpha"]["id"], man["partitions"]["beta"]["id"]
    # A second hello as alpha's worker is refused; a new partition's worker is a stranger
    # with a valid token of its own.
    client = root(run)
    gamma = client.create_partition(0, 0, 0xFFFFFFFF, 1, None, 16)
    worker = connect(man["endpoint"], "worker", gamma, 0, token=peer_token(run.secret(), "worker", gamma))
    try:
        with pytest.raises(Refused, match="NOT_PERMITTED"):
            worker.request(m.MemoryRequest(alpha))
        with pytest.raises(Refused, match="NOT_PERMITTED"):
            worker.request(m.MemoryRequest(beta))
        own = worker.request(m.MemoryRequest(gamma))
        assert own.slat.endswith(f"slat-{gamma}.bin")
    finally:
        worker.close()
    assert client.status()["counters"]["isolation_refusals"] == 2


def test_a_stopped_partitions_pages_go_back_to_the_pool(run):
    client = root(run)
    before = client.status()["memory"]["root_pages"]
    client.control(run.manifest()["partitions"]["beta"]["id"], "stop")
    after = client.status()["memory"]["root_pages"]
    assert after - before == 512 - 96  # every page beta was given: 2 MiB less the legacy hole
