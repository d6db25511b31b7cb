"""Live migration's dirty log (issue 13): every GuestMemory write marks its pages, a
harvest gives each marked mapped page once and clears it, and the pages the hypervisor
writes itself are found from its saved state."""

from __future__ import annotations

import pytest

from hypervisor.memory import MemoryManager
from proto.memory import PAGE_SIZE, GuestMemory, dirty_path
from root.migration import DirtyLog, create_dirty_log, hypervisor_pages


@pytest.fixture
def partition(tmp_path):
    mm = MemoryManager(str(tmp_path), 32)
    mm.deposit(1, [9, 4, 5, 6])
    mm.map(1, 0, [9, 4], 8)
    mm.map(1, 4, [5, 6], 8)  # pages 0-1 and 4-5 mapped of 8
    create_dirty_log(tmp_path, 1)
    mapped = bytearray(8)
    for p in (0, 1, 4, 5):
        mapped[p] = 1
    return tmp_path, mm, mapped


def test_every_write_path_marks_its_pages_and_a_harvest_clears_them(partition):
    d, mm, mapped = partition
    mem = GuestMemory(str(mm.slats[1].ram_path), str(mm.slats[1].path), dirty_path(d, 1))
    log = DirtyLog(d, 1, mapped)
    assert log.harvest() == []
    mem.write(PAGE_SIZE - 2, b"abcd")  # across a page boundary: both pages
    mem.write_int(4 * PAGE_SIZE + 8, 4, 7)
    assert log.harvest() == [0, 1, 4]
    assert log.harvest() == []  # cleared
    mem.fetch_and_u8(5 * PAGE_SIZE, 0x0F)
    mem.write_int(5 * PAGE_SIZE + PAGE_SIZE - 2, 2, 1)
    assert log.harvest() == [5]
    mem.close()
    log.close()


def test_a_log_a_process_scribbles_on_gives_only_mapped_pages(partition):
    d, mm, mapped = partition
    with open(dirty_path(d, 1), "r+b") as f:
        f.write(bytes([0xFF] * 8))  # a partition process marking everything, with garbage
    log = DirtyLog(d, 1, mapped)
    assert log.harvest() == [0, 1, 4, 5]
    log.close()


def test_a_memory_without_a_log_marks_nothing_and_a_short_log_is_refused(partition, tmp_path):
    d, mm, mapped = partition
    GuestMemory(str(mm.slats[1].ram_path), str(mm.slats[1].path)).write(0, b"x")
    assert DirtyLog(d, 1, mapped).harvest() == []
    short = tmp_path / "short.bin"
    short.write_bytes(b"\0" * 3)
    with pytest.raises(ValueError, match="dirty log of 3 bytes"):
        GuestMemory(str(mm.slats[1].ram_path), str(mm.slats[1].path), str(short))


def test_the_pages_the_hypervisor_writes_come_from_its_enabled_msrs():
    sections = {"hypervisor": {"hypercall_msr": 0x9F001, "reference_tsc": 0x5000},  # TSC page not enabled
                "vps": [{"assist_page": 0x7001, "synic": {"simp": 0x8001, "siefp": 0}}]}
    assert hypervisor_pages(sections) == {0x9F, 0x7, 0x8}
