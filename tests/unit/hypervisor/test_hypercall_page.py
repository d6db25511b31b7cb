"""The hypervisor writes the hypercall page's code when HV_X64_MSR_HYPERCALL enables it
(hypervisor/hypercall_page.py): an OUT to the port the real-CPU backends take as the
hypercall, then RET; nothing is written where the page is not the partition's RAM."""

from __future__ import annotations

from proto import messages as m
from proto.codes import HYPERCALL_PAGE_PORT, HvMsr
from hypervisor.hypercall_page import HYPERCALL_PAGE_CODE
from tests.unit.hypervisor.fake_stack import RAM_PAGES, REGS, ROOT, Stack, vp_id

V10 = vp_id(1, 0)
GPA = (RAM_PAGES - 1) << 12  # the last page of the fake stack's RAM


def page(s: Stack, gpa: int) -> bytes:
    return bytes(s.hv.memory.slats[1].ram[gpa:gpa + 4096])


def test_enabling_the_page_writes_out_to_the_hypercall_port_then_ret(tmp_path):
    s = Stack(tmp_path)
    s.hello(ROOT, "root")
    s.partition(vps=1)
    assert HYPERCALL_PAGE_CODE == bytes((0xE7, HYPERCALL_PAGE_PORT, 0xC3))
    s.exit(V10, m.MsrIntercept(s.seq(), HvMsr.HV_X64_MSR_GUEST_OS_ID, True, 1 << 63, (1,), REGS))
    s.exit(V10, m.MsrIntercept(s.seq(), HvMsr.HV_X64_MSR_HYPERCALL, True, GPA | 1, (1,), REGS))
    assert page(s, GPA).startswith(HYPERCALL_PAGE_CODE)
    assert set(page(s, GPA)[len(HYPERCALL_PAGE_CODE):]) == {0xCC}


def test_a_page_outside_ram_is_not_written_and_nothing_breaks(tmp_path):
    s = Stack(tmp_path)
    s.hello(ROOT, "root")
    s.partition(vps=1)
    s.exit(V10, m.MsrIntercept(s.seq(), HvMsr.HV_X64_MSR_GUEST_OS_ID, True, 1 << 63, (1,), REGS))
    for gpa in (0xA0000, 0xFEE00000, 0xFFFFFFFFFFFFF000):  # the legacy hole, the APIC, beyond the space
        out = s.exit(V10, m.MsrIntercept(s.seq(), HvMsr.HV_X64_MSR_HYPERCALL, True, gpa | 1, (1,), REGS))
        assert isinstance(out.one(V10), m.VpResume)
    assert not any(page(s, GPA))
