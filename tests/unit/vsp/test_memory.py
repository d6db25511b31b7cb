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
