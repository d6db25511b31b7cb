"""The memory manager: deposit, map, unmap, withdraw, release; what it refuses."""

from __future__ import annotations

import pytest

from hypervisor.memory import ROOT, MemoryRefused, MemoryManager
from proto.memory import PAGE_SIZE, GuestMemory, UnmappedGpa


@pytest.fixture
def mm(tmp_path):
    return MemoryManager(str(tmp_path), 32)


def test_deposited_pages_map_anywhere_in_guest_physical_space(mm):
    mm.deposit(1, [7, 3, 20])
    mm.map(1, 0, [7, 3], 16)
    mm.map(1, 10, [20], 16)
    assert list(mm.slats[1].entries[:2]) == [7, 3] and mm.slats[1].entries[10] == 20
    assert mm.owned(1) == 3 and mm.slats[1].mapped == 3


def test_only_the_roots_pages_can_be_deposited(mm):
    mm.deposit(1, [5])
    with pytest.raises(MemoryRefused):
        mm.deposit(2, [5])  # partition 1's page
    with pytest.raises(MemoryRefused):
        mm.deposit(2, [32])  # beyond the pool
    assert mm.counters["refused"] == 2 and mm.owner[5] == 1


def test_a_partition_maps_only_its_own_pages_and_never_twice(mm):
    mm.deposit(1, [1])
    mm.deposit(2, [2])
    with pytest.raises(MemoryRefused):
        mm.map(1, 0, [2], 16)  # partition 2's page
    mm.map(1, 0, [1], 16)
    mm.deposit(1, [4])
    with pytest.raises(MemoryRefused):
        mm.map(1, 0, [4], 16)  # GPA page 0 is taken
    with pytest.raises(MemoryRefused):
        mm.map(1, 16, [4], 16)  # beyond the partition's space


def test_unmapped_pages_can_be_withdrawn_mapped_ones_cannot(mm):
    mm.deposit(1, [1, 2])
    mm.map(1, 0, [1, 2], 4)
    assert mm.withdraw(1, 2) == []
    mm.unmap(1, 1, 1)
    assert mm.withdraw(1, 2) == [2] and mm.owner[2] == ROOT


def test_release_returns_every_page_to_the_root(mm):
    mm.deposit(1, [1, 2, 3])
    mm.map(1, 0, [1, 2], 4)
    assert mm.release(1) == 3
    assert all(o == ROOT for o in mm.owner) and 1 not in mm.slats


def test_guest_memory_translates_through_the_slat_and_sees_unmaps_at_once(mm):
    mm.deposit(1, [9, 4])
    mm.map(1, 0, [9, 4], 4)
    mem = GuestMemory(str(mm.slats[1].ram_path), str(mm.slats[1].path))
    mem.write(PAGE_SIZE - 2, b"abcd")  # across the page boundary: two guest pages
    assert mem.read(PAGE_SIZE - 2, 4) == b"abcd"
    # the partition's own RAM file, by guest-physical page
    assert mm.read_ram(1, PAGE_SIZE - 2, 4) == b"abcd"
    assert not mem.is_mapped(2 * PAGE_SIZE)
    mm.unmap(1, 1, 1)
    with pytest.raises(UnmappedGpa):
        mem.read_int(PAGE_SIZE, 4)
    assert mm.read_ram(1, PAGE_SIZE, 2) == b"\0\0"  # an unmapped page keeps nothing


def test_each_partition_has_a_ram_file_of_its_own_holding_only_its_bytes(mm):
    import os, stat
    mm.deposit(1, [1])
    mm.deposit(2, [2])
    mm.map(1, 0, [1], 4)
    mm.map(2, 0, [2], 4)
    one = GuestMemory(str(mm.slats[1].ram_path), str(mm.slats[1].path))
    one.write(0, b"secret of one")
    assert b"secret of one" not in mm.read_ram(2, 0, 4 * PAGE_SIZE)
    for pid in (1, 2):
        assert stat.S_IMODE(os.stat(mm.slats[pid].ram_path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(mm.slats[pid].path).st_mode) == 0o400  # the owner cannot reopen it RW
    assert os.path.getsize(mm.slats[1].ram_path) == 4 * PAGE_SIZE
    mm.release(1)
    assert not mm.slats.get(1) and not os.path.exists(str(mm.dir / "mem-1.bin"))


def test_a_partition_that_truncates_its_ram_file_cannot_make_the_hypervisor_fault(mm):
    """The partition holds its RAM file read-write; if it cut it short (the seccomp filter
    refuses that), the hypervisor's pread/pwrite accesses (a root `io` read, the zeroing of
    an unmapped page) read zeros where its mapping would have raised SIGBUS."""
    import os
    mm.deposit(1, [1, 2])
    mm.map(1, 0, [1, 2], 4)
    fd = os.open(mm.slats[1].ram_path, os.O_RDWR)
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    assert mm.read_ram(1, PAGE_SIZE, 8) == bytes(8)
    mm.unmap(1, 0, 2)
    assert mm.release(1) == 2


def test_an_in_process_hypervisor_without_a_memory_dir_removes_its_own_on_exit(tmp_path, monkeypatch):
    """The memory directory the hypervisor made itself (mkdtemp) was left behind."""
    import tempfile
    from hypervisor.service import Hypervisor
    from proto.transport import Router

    import shutil
    sock_dir = tempfile.mkdtemp(prefix="hvs")  # short: an ipc path is at most 107 bytes
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        hv = Hypervisor(Router(f"ipc://{sock_dir}/hv.sock"), "s" * 32, 1, None, 16)
        made = hv.memory.dir
        assert made.parent == tmp_path and made.is_dir()
        hv.memory.slat(1, 4)  # a partition's files in it
        hv.running = False
        hv.serve()
        assert not made.exists()
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_python_m_hypervisor_needs_the_run_directory_for_memory():
    import subprocess
    import sys
    from root import REPO
    p = subprocess.run([sys.executable, "-m", "hypervisor", "--endpoint", "ipc:///nonexistent/x", "--secret-fd", "0"],
                       cwd=REPO, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--memory-dir" in p.stderr


def test_a_partition_that_truncates_its_slat_file_cannot_make_the_hypervisor_fault(mm):
    """At the namespaces level the partition has the hypervisor's uid and can reopen its
    SLAT file for writing through /proc/self/fd: cut short, a mapping of it faulted in the
    hypervisor.  The hypervisor keeps its own copy and writes through."""
    import os
    mm.deposit(1, [1, 2, 3])
    mm.map(1, 0, [1, 2], 4)
    os.truncate(mm.slats[1].path, 0)
    assert mm.ram_offset(1, PAGE_SIZE) == PAGE_SIZE  # the hypervisor's copy decides
    mm.map(1, 2, [3], 4)
    mm.unmap(1, 0, 1)
    assert mm.status().partitions["1"].mapped == 2
    assert os.path.getsize(mm.slats[1].path) == 3 * 4  # written through as far as it changed
    assert mm.release(1) == 3


def test_pages_owned_are_counted_as_they_change_hands(mm):
    """owned() (status asks it for every partition, 4 times a second) is kept as pages are
    deposited, withdrawn and released: it always equals a count of the pool."""
    def consistent():
        for p in (1, 2, 3):
            assert mm.owned(p) == mm.owner.count(p), p
        assert mm.status().root_pages == mm.owner.count(ROOT)

    mm.deposit(1, [1, 2, 3, 4])
    mm.deposit(2, [5, 6])
    with pytest.raises(MemoryRefused):
        mm.deposit(3, [7, 5])  # refused whole: 7 stays the root's
    consistent()
    mm.map(1, 0, [1], 4)
    assert mm.withdraw(1, 10) == [2, 3, 4]
    consistent()
    assert mm.release(2) == 2 and mm.owned(2) == 0
    mm.deposit(2, [9])
    consistent()
    assert mm.release(1) == 1
    consistent()
    assert [mm.owned(p) for p in (1, 2, 3)] == [0, 1, 0]
