"""Per-partition, per-LP TLBs: tagged entries, flushes by kind, the flush/switch hypercalls, the page walk."""

from __future__ import annotations

import struct
import threading

import pytest

from proto import tlb as layout
from proto.codes import HvStatus, HypercallCode as C, X86Exception, control_value
from proto.memory import GuestMemory
from proto.tlb import LpTlb
from hypervisor.hypercalls import Caller, Hypercalls
from hypervisor.memory import MemoryManager
from hypervisor.partitions import PartitionTable, VirtualProcessor
from hypervisor.tlb import Tlbs
from partitions.vp import NEVER, GuestFault, Vp
from partitions.workloads import PageTables

S = HvStatus
A, B = 0x41000, 0x42000  # two address spaces (CR3 values)


@pytest.fixture
def tlbs(tmp_path):
    return Tlbs(str(tmp_path), 2)


def lps(tlbs, partition: int = 1):
    """The partition's TLB on each LP as its VPs map it (the files created on first use)."""
    views = tlbs.__dict__.setdefault("_test_views", {})
    if partition not in views:
        views[partition] = [LpTlb(p) for p in tlbs.paths_of(partition)]
    return views[partition]


def test_a_partition_has_tlb_files_of_its_own_0600(tlbs, tmp_path):
    import os, stat
    one, two = tlbs.paths_of(1), tlbs.paths_of(2)
    assert len(one) == 2 and not set(one) & set(two)
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in one + two)


def test_entries_a_partition_plants_under_another_tag_count_as_its_own(tlbs):
    lps(tlbs, 1)[0].fill(2, A, 0x400, 0x77)  # partition 1 writes a tag of partition 2's
    assert tlbs.status().lps[0].valid == {"1": 1}
    assert tlbs.flush_partition(2) == 0  # partition 2's own TLB is untouched by it


def test_a_partition_that_truncates_or_scribbles_on_its_tlb_file_cannot_make_the_hypervisor_fault(tlbs):
    """The partition's view is read-write (its VPs fill it): it may cut the file short or
    write garbage.  The hypervisor reads and clears through pread/pwrite, so a flush or a
    status answers (a short file is entries that are not valid) where a mapping of the
    truncated file would have raised SIGBUS in the hypervisor."""
    import os
    t = lps(tlbs, 1)[0]
    t.fill(1, A, 0x400, 0x77)
    path = tlbs.paths_of(1)[0]
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, layout.offset(1))  # entry 0 stays, the rest is gone
        assert tlbs.status().lps[0].valid in ({}, {"1": 1})
        assert tlbs.flush_lp(0, "mov_cr3") in (0, 1)
        assert tlbs.flush_partition(1) == 0
        os.ftruncate(fd, 0)
        assert tlbs.status().lps[0].valid == {} and tlbs.flush_lp(0, "invlpg") == 0
        os.pwrite(fd, b"\xff" * layout.FILE_SIZE, 0)  # every field garbage, every entry "valid"
        assert tlbs.status().lps[0].valid == {"1": layout.ENTRIES}  # counted for the file's owner
        assert tlbs.flush_lp(0, "mov_cr3") == layout.ENTRIES
    finally:
        os.close(fd)


def test_a_translation_hits_only_under_its_own_tag(tlbs):
    t = lps(tlbs)[0]
    assert t.lookup(1, A, 0x400) is None
    assert not t.fill(1, A, 0x400, 0x77)
    assert t.lookup(1, A, 0x400) == 0x77
    assert t.lookup(2, A, 0x400) is None  # another partition
    assert t.lookup(1, B, 0x400) is None  # another address space
    assert lps(tlbs)[1].lookup(1, A, 0x400) is None  # another LP
    assert t.fills == 1


def test_a_fill_into_a_taken_slot_evicts(tlbs):
    t = lps(tlbs)[0]
    t.fill(1, A, 0x400, 1)
    other = next(v for v in range(0x401, 0x1000) if layout.slot(1, A, v) == layout.slot(1, A, 0x400))
    assert t.fill(1, A, other, 2)
    assert t.lookup(1, A, 0x400) is None and t.lookup(1, A, other) == 2


def fill_both(tlbs):
    for one, two in zip(lps(tlbs, 1), lps(tlbs, 2)):
        for vpn in range(0x400, 0x404):
            one.fill(1, A, vpn, vpn)
            two.fill(2, B, vpn + 0x10, vpn)


def valid(tlbs, lp: int) -> dict:
    return tlbs.status().lps[lp].valid


def test_a_whole_lp_flush_takes_every_partitions_entries_on_that_lp_only(tlbs):
    fill_both(tlbs)
    assert valid(tlbs, 0) == {"1": 4, "2": 4}
    assert tlbs.flush_lp(0, "mov_cr3") == 8
    assert valid(tlbs, 0) == {} and valid(tlbs, 1) == {"1": 4, "2": 4}
    st = tlbs.status().lps[0]
    assert st.flushes["mov_cr3"] == 1 and st.cleared == 8 and st.fills == 8


def test_a_partition_flush_takes_only_that_partitions_entries_on_every_lp(tlbs):
    fill_both(tlbs)
    lps(tlbs)[0].fill(1, B, 0x500, 9)
    assert tlbs.flush_partition(1, A) == 8  # address space A only, both LPs
    assert valid(tlbs, 0) == {"1": 1, "2": 4} and valid(tlbs, 1) == {"2": 4}
    assert tlbs.flush_partition(1, None) == 1  # every address space
    assert valid(tlbs, 0) == {"2": 4}
    assert tlbs.flush_partition(1, None, [(0x402, 2)], kind="address_list") == 0


def hypercalls(tlbs, tmp_path):
    hc = Hypercalls(PartitionTable(), MemoryManager(str(tmp_path / "mem"), 16), tlbs)
    callers = []
    for _ in range(2):
        part = hc.table.create()
        vp = VirtualProcessor(0)
        part.vps.append(vp)
        callers.append(Caller(part, vp, 0))
    return hc, callers


def call(hc, caller, control, data=b""):
    rax, out = hc.dispatch(caller, control, data)
    return S(rax & 0xFFFF), (rax >> 32) & 0xFFF


def test_flush_hypercalls_never_touch_another_partitions_entries(tlbs, tmp_path):
    (tmp_path / "mem").mkdir()
    hc, (one, two) = hypercalls(tlbs, tmp_path)
    assert (one.partition.id, two.partition.id) == (1, 2)
    fill_both(tlbs)
    flush_all = struct.pack("<QQQ", 0, 0b11, 0)  # all processors, all address spaces
    assert call(hc, two, control_value(C.HvCallFlushVirtualAddressSpace), flush_all) == (S.HV_STATUS_SUCCESS, 0)
    assert valid(tlbs, 0) == {"1": 4} and valid(tlbs, 1) == {"1": 4}
    # The list: pages 0x401 and 0x402 (bits 11:0 = one additional page) of address space A.
    data = struct.pack("<QQQQ", A, 0, 1, 0x401 << 12 | 1)
    status, reps = call(hc, one, control_value(C.HvCallFlushVirtualAddressList, rep_count=1), data)
    assert (status, reps) == (S.HV_STATUS_SUCCESS, 1)
    assert valid(tlbs, 0) == {"1": 2} and lps(tlbs)[0].lookup(1, A, 0x403) == 0x403
    assert lps(tlbs)[0].lookup(1, A, 0x401) is None and lps(tlbs)[0].lookup(1, A, 0x402) is None
    st = tlbs.status().lps[0].flushes
    assert st["address_space"] == 1 and st["address_list"] == 1 and st["mov_cr3"] == 0


def test_flush_input_is_checked(tlbs, tmp_path):
    (tmp_path / "mem").mkdir()
    hc, (one, _) = hypercalls(tlbs, tmp_path)
    flush = control_value(C.HvCallFlushVirtualAddressSpace)
    assert call(hc, one, flush, bytes(16))[0] == S.HV_STATUS_INVALID_HYPERCALL_INPUT
    assert call(hc, one, flush, struct.pack("<QQQ", A, 1 << 4, 0))[0] == S.HV_STATUS_INVALID_PARAMETER
    short_list = struct.pack("<QQQQ", A, 0, 1, 0x400000)
    assert call(hc, one, control_value(C.HvCallFlushVirtualAddressList, rep_count=2), short_list)[0] \
        == S.HV_STATUS_INVALID_HYPERCALL_INPUT


def test_switch_address_space_sets_cr3_without_a_flush(tlbs, tmp_path):
    (tmp_path / "mem").mkdir()
    hc, (one, _) = hypercalls(tlbs, tmp_path)
    fill_both(tlbs)
    assert call(hc, one, control_value(C.HvCallSwitchVirtualAddressSpace, fast=True), B.to_bytes(8, "little"))[0] \
        == S.HV_STATUS_SUCCESS
    assert one.vp.cr3 == B and valid(tlbs, 0) == {"1": 4, "2": 4}


# -- the page walk, in a VP over real guest memory ------------------------------------------


class NoExits:
    """A dealer for a VP that must not exit."""

    def send(self, frame):
        raise AssertionError("the VP exited")

    recv_ready = send

    def wait(self, timeout_ms):
        return False  # nothing posted (the VP looks at its preemption points)


@pytest.fixture
def vp(tmp_path, tlbs):
    mm = MemoryManager(str(tmp_path), 256)
    mm.deposit(1, list(range(128)))
    mm.map(1, 0, list(range(128)), 128)
    mem = GuestMemory(str(mm.slats[1].ram_path), str(mm.slats[1].path))
    v = Vp(NoExits(), 0, mem, threading.Event(), partition=1, tlbs=lps(tlbs))
    v._quantum_end = NEVER
    return v


GVA = 0x0000_7F00_0000_0000


def test_the_walk_finds_the_guest_page_tables_and_fills_the_lps_tlb(vp, tlbs):
    pt = PageTables(vp, (0x40000, 0x50000))
    cr3 = pt.page()
    pt.map(cr3, GVA, 0x60000)
    pt.map(cr3, GVA + 0x1000, 0x61000)
    vp.cr3 = cr3
    vp.write(0x60FFC, 4, 0x11223344)
    vp.write(0x61000, 4, 0x55667788)
    assert vp.vread(GVA + 0xFFC, 8) == 0x5566778811223344  # across the page boundary
    c = vp.counters
    assert (c["tlb_misses"], c["tlb_walk_reads"], c["tlb_hits"]) == (2, 8, 0)
    vp.vwrite(GVA + 8, 8, 0xABCDEF)
    assert vp.read(0x60008, 8) == 0xABCDEF and c["tlb_hits"] == 1
    assert lps(tlbs)[0].lookup(1, cr3, GVA >> 12) == 0x60 and lps(tlbs)[1].lookup(1, cr3, GVA >> 12) is None
    vp.lp = 1  # dispatched on the other LP: its TLB is cold
    vp.vread(GVA, 4)
    assert c["tlb_misses"] == 3
    tlbs.flush_lp(1, "invlpg")
    vp.vread(GVA, 4)
    assert c["tlb_misses"] == 4 and c["tlb_walk_reads"] == 16


def test_a_non_present_entry_is_a_page_fault(vp):
    pt = PageTables(vp, (0x40000, 0x50000))
    vp.cr3 = pt.page()
    pt.map(vp.cr3, GVA, 0x60000)
    with pytest.raises(GuestFault) as e:
        vp.vread(GVA + 0x1000, 4)  # same page table, entry not present
    assert e.value.vector == X86Exception.PF
    with pytest.raises(GuestFault) as e:
        vp.vread(0x1000, 4)  # nothing mapped in the PML4 slot
    assert e.value.vector == X86Exception.PF
    with pytest.raises(GuestFault) as e:
        vp.vread(1 << 47, 4)  # not canonical
    assert e.value.vector == X86Exception.GP


def test_a_translation_planted_in_the_partitions_own_tlb_reaches_only_its_own_ram(vp, tlbs):
    """What writing its (read-write) TLB view gains a guest: a guest-physical page of its
    choosing, as its own page tables would give it.  The page still goes through the SLAT:
    one beyond the partition's RAM is not RAM (an exit), never another partition's bytes."""
    vp.cr3 = 0x40000
    lps(tlbs)[0].fill(1, vp.cr3, GVA >> 12, 0x60)  # planted, no page tables behind it
    vp.write(0x60010, 4, 0x1234)
    assert vp.vread(GVA + 0x10, 4) == 0x1234  # its own page, as a page table could map
    lps(tlbs)[0].fill(1, vp.cr3, (GVA >> 12) + 1, 0x1000)  # far beyond its 128 mapped pages
    with pytest.raises(AssertionError, match="the VP exited"):
        vp.vread(GVA + 0x1000, 4)  # an access to a GPA that is not RAM: the hypervisor's to judge
