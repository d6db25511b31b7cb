"""root/vsp/memory.py: the VSP maps only the pages a guest described, each checked against
the partition's SLAT, on mapping and on every access."""

from __future__ import annotations

import array
import mmap
import os

import pytest

from proto.memory import PAGE_SIZE, SLAT_INVALID, UnmappedGpa
from root.vsp.memory import PartitionMemory


@pytest.fixture
def mem(tmp_path):
    ram, slat = tmp_path / "mem-1.bin", tmp_path / "slat-1.bin"
    ram.write_bytes(bytes(64 * PAGE_SIZE))
    table = array.array("I", range(64))
    table[10] = SLAT_INVALID
    slat.write_bytes(table.tobytes())
    ram_fd, slat_fd = os.open(ram, os.O_RDWR), os.open(slat, os.O_RDONLY)
    m = PartitionMemory(ram_fd, slat_fd)
    yield m, ram, slat
    m.close()
    os.close(ram_fd)
    os.close(slat_fd)


def test_maps_only_the_pages_named(mem):
    m, ram, _ = mem
    g = m.map([3, 4, 5, 20])
    assert m.mapped_pages == 4 and len(g.maps) == 2  # two runs, two mmaps
    g.write(4 * PAGE_SIZE - 2, b"abcd")  # across pages 3 and 4
    assert ram.read_bytes()[4 * PAGE_SIZE - 2:4 * PAGE_SIZE + 2] == b"abcd"
    assert g.read(20 * PAGE_SIZE + 5, 3) == bytes(3)
    for gpa in (6 * PAGE_SIZE, 2 * PAGE_SIZE, 63 * PAGE_SIZE):
        with pytest.raises(UnmappedGpa):
            g.read(gpa, 1)
    with pytest.raises(UnmappedGpa):
        g.write(6 * PAGE_SIZE - 1, b"xy")  # runs off the mapped pages
    g.close()
    assert m.mapped_pages == 0
    with pytest.raises(UnmappedGpa):
        g.read(3 * PAGE_SIZE, 1)


@pytest.mark.parametrize("pfns", [[10], [9, 10, 11], [64], [1 << 40]])
def test_pages_not_ram_of_the_partition_are_refused(mem, pfns):
    m, _, _ = mem
    with pytest.raises(UnmappedGpa):
        m.map(pfns)
    assert m.mapped_pages == 0


def test_a_page_unmapped_later_is_refused_on_access(mem):
    m, _, slat = mem
    with m.mapped([30, 31]) as g:
        g.read(30 * PAGE_SIZE, 8)
        with open(slat, "r+b") as f, mmap.mmap(f.fileno(), 0) as w:
            memoryview(w).cast("I")[31] = SLAT_INVALID  # the hypervisor's HvCallUnmapGpaPages
        g.read(30 * PAGE_SIZE, 8)
        with pytest.raises(UnmappedGpa):
            g.read(31 * PAGE_SIZE, 8)
    assert m.mapped_pages == 0


def test_a_read_only_mapping_cannot_be_written(mem):
    """What the VSP only reads is mapped read-only: a write is refused (ReadOnlyGpa, an
    UnmappedGpa to the VSPs) and the host's memory protection would refuse it anyway."""
    from root.vsp.memory import ReadOnlyGpa
    m, ram, _ = mem
    ram_bytes = ram.read_bytes()
    with m.mapped([3], writable=False) as g:
        assert g.read(3 * PAGE_SIZE, 4) == bytes(4)
        with pytest.raises(ReadOnlyGpa):
            g.write(3 * PAGE_SIZE, b"x")
        with pytest.raises(TypeError):  # past the check: the map itself is read-only
            g.maps[0][0:1] = b"x"
    assert ram.read_bytes() == ram_bytes


def test_a_requests_pages_are_read_and_written_without_a_mapping_each_checked(mem):
    """storvsp's data path: pread/pwrite on the RAM file, each page checked against the
    SLAT at the time (no mmap per request), nothing mapped afterwards."""
    m, ram, _ = mem
    m.write(9 * PAGE_SIZE - 2, b"wxyz")  # across pages 8 and 9
    assert ram.read_bytes()[9 * PAGE_SIZE - 2:9 * PAGE_SIZE + 2] == b"wxyz"
    assert m.read(9 * PAGE_SIZE - 2, 4) == b"wxyz" and m.mapped_pages == 0
    for gpa, n in ((10 * PAGE_SIZE, 1), (9 * PAGE_SIZE, PAGE_SIZE + 1), (64 * PAGE_SIZE, 1), (-PAGE_SIZE, 4)):
        with pytest.raises(UnmappedGpa):
            m.read(gpa, n)
        with pytest.raises(UnmappedGpa):
            m.write(gpa, bytes(n))
    assert ram.read_bytes()[10 * PAGE_SIZE:11 * PAGE_SIZE] == bytes(PAGE_SIZE)


def test_a_run_of_pages_crossing_a_foreign_page_is_refused_whole(mem):
    """storvsp reads or writes a run of pages that follow each other with one call; every
    page of every run is checked before any: page 10 (not the partition's) in the middle
    of a run, or in a later run, refuses them all, and the RAM file is untouched."""
    from proto.vmbus_ring import GpaRange
    from root.vsp.storvsp import StorVsp
    from worker.devices.backends import MemoryDisk

    m, ram, _ = mem
    before = ram.read_bytes()
    with pytest.raises(UnmappedGpa) as e:
        m.check_runs([(8 * PAGE_SIZE, 3 * PAGE_SIZE)])
    assert e.value.args and f"{10 * PAGE_SIZE:#x}" in str(e.value)
    vsp = StorVsp(MemoryDisk(1 << 20))
    vsp.mem = m
    for pfns in ((8, 9, 10, 11), (4, 5, 10)):
        pages = GpaRange(len(pfns) * PAGE_SIZE, 0, pfns)
        with pytest.raises(UnmappedGpa):
            vsp._scatter(pages, b"x" * pages.byte_count)
        with pytest.raises(UnmappedGpa):
            vsp._gather(pages, pages.byte_count)
    assert ram.read_bytes() == before
    assert vsp._pieces(GpaRange(3 * PAGE_SIZE, 0, (4, 5, 7)), 3 * PAGE_SIZE) == [(4 * PAGE_SIZE, 2 * PAGE_SIZE),
                                                                                  (7 * PAGE_SIZE, PAGE_SIZE)]


def test_every_write_marks_the_dirty_log(tmp_path, mem):
    """Live migration: what the VSP writes into guest memory (a ring through a GPADL's
    mapping, a request's data by pwrite) is marked in the partition's dirty log; reads are not."""
    _, ram, slat = mem
    log = tmp_path / "dirty-1.bin"
    log.write_bytes(bytes(64))
    fds = [os.open(ram, os.O_RDWR), os.open(slat, os.O_RDONLY), os.open(log, os.O_RDWR)]
    m = PartitionMemory(*fds)
    try:
        g = m.map([3, 4, 5])
        g.write(4 * PAGE_SIZE - 2, b"abcd")  # pages 3 and 4
        m.write_runs([(30 * PAGE_SIZE, 2 * PAGE_SIZE)], bytes(2 * PAGE_SIZE))  # 30, 31
        m.write(40 * PAGE_SIZE + 100, b"x")
        g.read(5 * PAGE_SIZE, 8)
        m.read(50 * PAGE_SIZE, 8)
        g.close()
        assert [p for p, b in enumerate(log.read_bytes()) if b] == [3, 4, 30, 31, 40]
    finally:
        m.close()
        for fd in fds:
            os.close(fd)
