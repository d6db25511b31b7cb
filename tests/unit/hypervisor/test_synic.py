"""The SynIC (TLFS "Inter-Partition Communication": SynIC MSRs, SIM and SIEF pages, message
delivery), HvCallPostMessage / HvCallSignalEvent, and the vsp peer's messages — driven
through the hypervisor's real loop (fake_stack.py)."""

from __future__ import annotations

import struct

import pytest

from proto import messages as m
from proto import synic_messages as sm
from proto.codes import (
    HV_CHILD_ENLIGHTENED_PRIVILEGES,
    HV_STIMER_PRIVILEGES,
    HV_SYNIC_PRIVILEGES,
    HV_TSC_PAGE_PRIVILEGES,
    HvMsr,
    HvStatus as St,
    HypercallCode as C,
    HypercallInput,
    X86Exception,
    control_value,
)
from proto.hvcall import HV_INPUT_POST_MESSAGE, HV_INPUT_SIGNAL_EVENT
from hypervisor.synic import partition_status
from tests.unit.hypervisor.fake_stack import REGS, Stack, vp_id

ALL = int(HV_CHILD_ENLIGHTENED_PRIVILEGES | HV_SYNIC_PRIVILEGES | HV_STIMER_PRIVILEGES | HV_TSC_PAGE_PRIVILEGES)
VSP = b"vsp"
SIMP_GPA, SIEFP_GPA = 0x5000, 0x6000
SINT0 = 0x40000090
VECTOR = 0x52
HEADER = struct.Struct("<IBBHQ")


@pytest.fixture
def syn(stack) -> Stack:
    """Partition 1 with every SynIC enlightenment (2 VPs), partition 2 with none; a vsp."""
    assert stack.partition(privileges=ALL) == 1
    assert stack.partition(vps=1, privileges=0, recommendations=0) == 2
    assert isinstance(stack.hello(VSP, "vsp").one(VSP), m.HelloReply)
    return stack


def wrmsr(stack: Stack, pid: int, msr: int, value: int, vp: int = 0) -> m.VpResume:
    return stack.exit(vp_id(pid, vp), m.MsrIntercept(stack.seq(), msr, True, value, (1,), REGS)).one(
        vp_id(pid, vp), m.VpResume)


def rdmsr(stack: Stack, pid: int, msr: int, vp: int = 0) -> tuple[int, int]:
    r = stack.exit(vp_id(pid, vp), m.MsrIntercept(stack.seq(), msr, False, 0, (1,), REGS)).one(vp_id(pid, vp),
                                                                                               m.VpResume)
    return r.fault, r.rax | r.rdx << 32


def ram(stack: Stack, pid: int):
    return stack.hv.memory.slats[pid].ram


def slot(stack: Stack, pid: int, sint: int) -> tuple:
    off = SIMP_GPA + sint * 256
    return HEADER.unpack(ram(stack, pid)[off:off + 16]) + (bytes(ram(stack, pid)[off + 16:off + 256]),)


def enable_synic(stack: Stack, pid: int = 1, vp: int = 0, sint: int = 2, sint_value: int = VECTOR) -> None:
    wrmsr(stack, pid, HvMsr.HV_X64_MSR_SIMP, SIMP_GPA | 1, vp)
    wrmsr(stack, pid, HvMsr.HV_X64_MSR_SIEFP, SIEFP_GPA | 1, vp)
    wrmsr(stack, pid, SINT0 + sint, sint_value, vp)
    wrmsr(stack, pid, HvMsr.HV_X64_MSR_SCONTROL, 1, vp)


def post(stack: Stack, pid: int = 1, vp: int = 0, sint: int = 2, mtype: int = 1, payload: bytes = b"hello") -> int:
    return stack.send(VSP, sm.SynicPost(pid, vp, sint, mtype, payload)).one(VSP, sm.SynicPostResult).status


def guest_call(stack: Stack, pid: int, code: int, data: bytes, fast: bool = False) -> int:
    r = stack.exit(vp_id(pid), m.HypercallIntercept(stack.seq(), control_value(code, fast), data, (1,), REGS))
    return r.one(vp_id(pid), m.VpResume).rax & 0xFFFF


# -- TLFS SynIC MSRs -------------------------------------------------------------------------


def test_synic_msrs_are_gp_without_access_synic_msrs(syn):
    """TLFS SynIC MSRs: every one needs AccessSynicMsrs (CPUID 0x40000003 EAX bit 2)."""
    for msr in (HvMsr.HV_X64_MSR_SCONTROL, HvMsr.HV_X64_MSR_SVERSION, HvMsr.HV_X64_MSR_SIMP, SINT0 + 3):
        assert rdmsr(syn, 2, msr)[0] == X86Exception.GP
        assert wrmsr(syn, 2, msr, 0x10000).fault == X86Exception.GP


def test_reset_values_sversion_and_eom(syn):
    """TLFS: SCONTROL/SIMP/SIEFP reset to 0, SINTx to 0x10000 (masked); SVERSION reads 1
    and is read-only; EOM reads 0."""
    assert rdmsr(syn, 1, HvMsr.HV_X64_MSR_SCONTROL) == (0, 0)
    assert rdmsr(syn, 1, HvMsr.HV_X64_MSR_SIMP) == (0, 0)
    assert rdmsr(syn, 1, SINT0 + 15) == (0, 0x10000)
    assert rdmsr(syn, 1, HvMsr.HV_X64_MSR_SVERSION) == (0, 1)
    assert wrmsr(syn, 1, HvMsr.HV_X64_MSR_SVERSION, 2).fault == X86Exception.GP
    assert rdmsr(syn, 1, HvMsr.HV_X64_MSR_EOM) == (0, 0)


def test_an_unmasked_sint_with_a_vector_below_16_is_gp(syn):
    """TLFS SINTx: vectors 0–15 are illegal; a masked SINT is taken (the reset value has
    vector 0: KVM's reading, vmbus-synic.md §6.2)."""
    assert wrmsr(syn, 1, SINT0, 0x0F).fault == X86Exception.GP
    assert wrmsr(syn, 1, SINT0, 0x10000).fault == 0
    assert wrmsr(syn, 1, SINT0, 0x10 | 1 << 17).fault == 0
    assert rdmsr(syn, 1, SINT0) == (0, 0x10 | 1 << 17)


def test_enabling_the_simp_clears_the_page(syn):
    ram(syn, 1)[SIMP_GPA:SIMP_GPA + 4] = b"junk"
    wrmsr(syn, 1, HvMsr.HV_X64_MSR_SIMP, SIMP_GPA | 1)
    assert bytes(ram(syn, 1)[SIMP_GPA:SIMP_GPA + 4]) == bytes(4)
    assert rdmsr(syn, 1, HvMsr.HV_X64_MSR_SIMP) == (0, SIMP_GPA | 1)


# -- TLFS message delivery: slots, MessagePending, EOM -------------------------------------------


def test_a_post_is_written_into_its_slot_and_asserts_the_sint(syn):
    enable_synic(syn)
    assert post(syn, payload=b"abc") == St.HV_STATUS_SUCCESS
    mtype, size, flags, _, origin, payload = slot(syn, 1, 2)
    assert (mtype, size, flags, payload[:3]) == (1, 3, 0, b"abc")
    assert syn.vp(1).apic.irr >> VECTOR & 1


def test_a_busy_slot_sets_message_pending_and_eom_delivers_the_next(syn):
    """TLFS message buffers: a busy slot (MessageType ≠ 0) gets MessagePending; the guest
    empties it and writes EOM, and the queued message comes."""
    enable_synic(syn)
    assert post(syn, payload=b"one") == St.HV_STATUS_SUCCESS
    assert post(syn, payload=b"two") == St.HV_STATUS_SUCCESS
    assert slot(syn, 1, 2)[2] & 1  # MessagePending
    assert slot(syn, 1, 2)[5][:3] == b"one"
    ram(syn, 1)[SIMP_GPA + 512:SIMP_GPA + 516] = bytes(4)  # the guest: MessageType = None
    wrmsr(syn, 1, HvMsr.HV_X64_MSR_EOM, 0)
    assert slot(syn, 1, 2)[5][:3] == b"two" and slot(syn, 1, 2)[2] == 0
    c = partition_status(syn.part(1))
    assert (c["messages_delivered"], c["slots_busy"], c["eom"], c["queued"]) == (2, 1, 1, 0)


@pytest.mark.parametrize("by_msr", [False, True])
def test_the_eoi_of_a_sints_vector_delivers_its_waiting_message(syn, by_msr, monkeypatch):
    """TLFS (KVM's kvm_hv_synic_send_eoi): a message waiting behind a busy slot is
    re-delivered when the guest EOIs the SINT's vector, EOM or not; the EOI of another
    vector moves nothing."""
    monkeypatch.setattr(syn.hv.synic, "housekeeping", lambda: None)  # (its 100 ms rescan would too)
    enable_synic(syn)
    enable_synic(syn, sint=3, sint_value=VECTOR + 1)
    apic = syn.vp(1).apic
    apic.svr |= 1 << 8
    assert post(syn, payload=b"one") == St.HV_STATUS_SUCCESS and post(syn, payload=b"two") == St.HV_STATUS_SUCCESS
    assert apic.inject(VECTOR) is False and apic.isr >> VECTOR & 1  # the guest takes SINT 2
    ram(syn, 1)[SIMP_GPA + 512:SIMP_GPA + 516] = bytes(4)  # copies it out: MessageType = None, no EOM

    def eoi():
        if by_msr:
            wrmsr(syn, 1, HvMsr.HV_X64_MSR_EOI, 0)
        else:
            syn.exit(vp_id(1, 0), m.MmioIntercept(syn.seq(), 0xFEE000B0, 4, True, 0, (1,), REGS)).one(
                vp_id(1, 0), m.VpResume)

    apic.isr |= 1 << (VECTOR + 2)  # first a vector above it, of no SINT: its EOI moves nothing
    eoi()
    assert slot(syn, 1, 2)[0] == 0 and syn.vp(1).synic.queued() == 1
    eoi()  # SINT 2's vector
    assert slot(syn, 1, 2)[5][:3] == b"two"
    c = partition_status(syn.part(1))  # (asserted: the resume of that exit may have injected it already)
    assert (c["eoi_rescans"], c["eom"], c["queued"], c["sint_asserted"]) == (1, 0, 0, 2)


def test_an_eom_with_nothing_queued_is_harmless_and_an_out_of_turn_one_too(syn):
    enable_synic(syn)
    assert post(syn, payload=b"one") == St.HV_STATUS_SUCCESS
    wrmsr(syn, 1, HvMsr.HV_X64_MSR_EOM, 0)  # slot still busy: nothing moves
    assert slot(syn, 1, 2)[5][:3] == b"one"
    wrmsr(syn, 2 - 1, HvMsr.HV_X64_MSR_EOM, 0, vp=1)  # a VP whose SynIC is off
    assert syn.hv.counters["handler_errors"] == 0


def test_posts_are_refused_with_tlfs_statuses(syn):
    assert post(syn) == St.HV_STATUS_INVALID_SYNIC_STATE  # SynIC off
    enable_synic(syn)
    assert post(syn, sint=3) == St.HV_STATUS_INVALID_SYNIC_STATE  # SINT3 masked
    assert post(syn, sint=16) == St.HV_STATUS_INVALID_PARAMETER
    assert post(syn, payload=bytes(241)) == St.HV_STATUS_INVALID_PARAMETER
    assert post(syn, mtype=0x80000010) == St.HV_STATUS_INVALID_PARAMETER  # hypervisor types
    assert post(syn, mtype=0) == St.HV_STATUS_INVALID_PARAMETER
    assert post(syn, vp=2) == St.HV_STATUS_INVALID_VP_INDEX
    assert post(syn, pid=9) == St.HV_STATUS_INVALID_PARTITION_ID
    results = [post(syn) for _ in range(18)]  # 1 in the slot, 16 queued, then no buffers
    assert results[:17] == [St.HV_STATUS_SUCCESS] * 17 and results[17] == St.HV_STATUS_INSUFFICIENT_BUFFERS


def test_polling_mode_delivers_without_an_interrupt(syn):
    enable_synic(syn, sint_value=VECTOR | 1 << 18)
    assert post(syn) == St.HV_STATUS_SUCCESS
    assert slot(syn, 1, 2)[0] == 1 and not syn.vp(1).apic.irr


def test_auto_eoi_sints_are_ended_by_the_apic(syn):
    enable_synic(syn, sint_value=VECTOR | 1 << 17)
    apic = syn.vp(1).apic
    assert apic.auto_eoi >> VECTOR & 1
    apic.svr |= 1 << 8
    assert post(syn) == St.HV_STATUS_SUCCESS
    assert apic.inject(VECTOR) is True and not apic.isr


# -- TLFS event flags -----------------------------------------------------------------------------


def test_a_signal_sets_its_flag_and_asserts_only_when_it_was_clear(syn):
    enable_synic(syn)
    r = syn.send(VSP, sm.SynicSignal(1, 0, 2, 9)).one(VSP, sm.SynicSignalResult)
    assert r.status == St.HV_STATUS_SUCCESS
    assert ram(syn, 1)[SIEFP_GPA + 2 * 256 + 1] == 0x02
    syn.vp(1).apic.irr = 0
    assert syn.send(VSP, sm.SynicSignal(1, 0, 2, 9)).one(VSP, sm.SynicSignalResult).status == 0
    assert not syn.vp(1).apic.irr  # already set: no interrupt (TLFS)
    assert syn.send(VSP, sm.SynicSignal(1, 0, 2, 2048)).one(VSP, sm.SynicSignalResult).status \
        == St.HV_STATUS_INVALID_PARAMETER
    assert syn.send(VSP, sm.SynicSignal(1, 0, 5, 1)).one(VSP, sm.SynicSignalResult).status \
        == St.HV_STATUS_INVALID_SYNIC_STATE


# -- HvCallPostMessage / HvCallSignalEvent ----------------------------------------------------------


def post_input(conn: int = 4, mtype: int = 1, payload: bytes = b"\x0e\0\0\0", size: int | None = None) -> bytes:
    size = len(payload) if size is None else size
    return HV_INPUT_POST_MESSAGE.pack(conn, 0, mtype, size) + payload.ljust(240, b"\0")


def test_post_message_reaches_the_vsp_only_on_a_connected_id(syn):
    """TLFS HvCallPostMessage: an unknown connection is INVALID_CONNECTION_ID."""
    syn.enable_hypercalls(vp_id(1))
    assert guest_call(syn, 1, C.HvCallPostMessage, post_input()) == St.HV_STATUS_INVALID_CONNECTION_ID
    assert isinstance(syn.send(VSP, sm.SynicConnect(1, 4, "message")).one(VSP), m.Ack)
    sent = syn.exit(vp_id(1), m.HypercallIntercept(syn.seq(), control_value(C.HvCallPostMessage), post_input(),
                                                   (1,), REGS))
    assert sent.one(vp_id(1), m.VpResume).rax & 0xFFFF == St.HV_STATUS_SUCCESS
    msg = sent.one(VSP, sm.SynicMessageToRoot)
    assert (msg.partition, msg.vp, msg.connection_id, msg.message_type, msg.payload) == (1, 0, 4, 1, b"\x0e\0\0\0")


def test_post_message_checks_type_size_and_input(syn):
    syn.enable_hypercalls(vp_id(1))
    syn.send(VSP, sm.SynicConnect(1, 4, "message"))
    assert guest_call(syn, 1, C.HvCallPostMessage, post_input(size=241)) == St.HV_STATUS_INVALID_PARAMETER
    assert guest_call(syn, 1, C.HvCallPostMessage, post_input(mtype=0x80000000)) == St.HV_STATUS_INVALID_PARAMETER
    assert guest_call(syn, 1, C.HvCallPostMessage, post_input(mtype=0)) == St.HV_STATUS_INVALID_PARAMETER
    assert guest_call(syn, 1, C.HvCallPostMessage, post_input()[:20], fast=False) == St.HV_STATUS_SUCCESS
    assert guest_call(syn, 1, C.HvCallPostMessage, post_input(payload=bytes(8))[:20]) \
        == St.HV_STATUS_INVALID_HYPERCALL_INPUT  # PayloadSize 8, 4 bytes given
    assert guest_call(syn, 1, C.HvCallPostMessage, post_input()[:16], fast=True) \
        == St.HV_STATUS_INVALID_HYPERCALL_INPUT
    assert guest_call(syn, 1, C.HvCallPostMessage, post_input(conn=1 << 24)) == St.HV_STATUS_INVALID_HYPERCALL_INPUT


def test_post_message_without_the_privilege_is_access_denied(syn):
    """TLFS: PostMessages / SignalEvents (CPUID 0x40000003 EBX bits 4, 5), checked first."""
    assert syn.partition(vps=1) == 3  # the hypercall page, no SynIC
    syn.send(VSP, sm.SynicConnect(3, 4, "message"))
    syn.enable_hypercalls(vp_id(3))
    assert guest_call(syn, 3, C.HvCallPostMessage, post_input()) == St.HV_STATUS_ACCESS_DENIED
    assert guest_call(syn, 3, C.HvCallSignalEvent, HV_INPUT_SIGNAL_EVENT.pack(2, 0, 0), fast=True) \
        == St.HV_STATUS_ACCESS_DENIED


def test_a_flood_of_posts_gets_insufficient_buffers(syn, monkeypatch):
    monkeypatch.setattr("hypervisor.synic_ports.MESSAGE_REFILL_PER_S", 0)
    syn.enable_hypercalls(vp_id(1))
    syn.send(VSP, sm.SynicConnect(1, 4, "message"))
    results = [guest_call(syn, 1, C.HvCallPostMessage, post_input()) for _ in range(200)]
    assert St.HV_STATUS_INSUFFICIENT_BUFFERS in results and results[0] == St.HV_STATUS_SUCCESS


def test_signal_event_fast_reaches_the_vsp_and_a_flood_is_coalesced(syn, monkeypatch):
    """TLFS HvCallSignalEvent: fast, ConnectionId and FlagNumber in RDX; never fails for
    lack of resources."""
    monkeypatch.setattr("hypervisor.synic_ports.EVENT_REFILL_PER_S", 0)
    syn.enable_hypercalls(vp_id(1))
    data = HV_INPUT_SIGNAL_EVENT.pack(0x2001, 0, 0)
    assert guest_call(syn, 1, C.HvCallSignalEvent, data, fast=True) == St.HV_STATUS_INVALID_CONNECTION_ID
    syn.send(VSP, sm.SynicConnect(1, 0x2001, "event"))
    sent = syn.exit(vp_id(1), m.HypercallIntercept(syn.seq(), control_value(C.HvCallSignalEvent, True), data, (1,),
                                                   REGS))
    assert sent.one(VSP, sm.SynicEventToRoot) == sm.SynicEventToRoot(1, 0, 0x2001, 0)
    assert guest_call(syn, 1, C.HvCallSignalEvent, HV_INPUT_SIGNAL_EVENT.pack(0x2001, 0, 1), fast=True) \
        == St.HV_STATUS_INVALID_HYPERCALL_INPUT  # RsvdZ
    # A flood between two housekeepings (every 100 ms): the budget, then one pending flag.
    ports, part, vp = syn.hv.synic_ports, syn.part(1), syn.vp(1)
    hc = HypercallInput.parse(control_value(C.HvCallSignalEvent, True))
    before = syn.hv.counters["synic_events_to_root"]
    assert {ports.signal_event(part, vp, hc, (0x2001, 0, 0), data) for _ in range(1000)} == {St.HV_STATUS_SUCCESS}
    assert syn.hv.counters["synic_events_to_root"] - before == 256 - 1  # the budget (one went above)
    syn.hv._housekeeping()
    assert syn.hv.counters["synic_events_to_root"] - before == 256 and not ports._deferred


# -- the vsp peer ---------------------------------------------------------------------------------


def test_one_vsp_per_run_and_only_the_vsp_may_post(syn):
    refused = syn.hello(b"vsp2", "vsp")
    assert refused.one(b"vsp2", m.ErrorReply).code == "CONFLICT"
    err = syn.send(vp_id(1), sm.SynicPost(1, 0, 2, 1, b"x")).one(vp_id(1), m.ErrorReply)
    assert err.code == "NOT_PERMITTED"
    assert syn.hello(b"vsp3", "vsp", partition=1).one(b"vsp3", m.ErrorReply).code == "NOT_PERMITTED"


def test_connect_refusals_are_error_replies(syn):
    assert syn.send(VSP, sm.SynicConnect(7, 4, "message")).one(VSP, m.ErrorReply).code == "UNKNOWN_PARTITION"
    assert syn.send(VSP, sm.SynicConnect(1, 1 << 24, "message")).one(VSP, m.ErrorReply).code == "INVALID_FIELD"
    assert isinstance(syn.send(VSP, sm.SynicConnect(1, 4, "message")).one(VSP), m.Ack)
    assert syn.send(VSP, sm.SynicConnect(1, 4, "event")).one(VSP, m.ErrorReply).code == "CONFLICT"
    assert isinstance(syn.send(VSP, sm.SynicDisconnect(1, 4)).one(VSP), m.Ack)
    assert syn.send(VSP, sm.SynicDisconnect(1, 4)).one(VSP, m.ErrorReply).code == "STALE"


def test_a_vsp_that_goes_takes_its_connections(syn):
    syn.enable_hypercalls(vp_id(1))
    syn.send(VSP, sm.SynicConnect(1, 4, "message"))
    syn.router.dropped.append(VSP)
    syn.hv._housekeeping()
    assert guest_call(syn, 1, C.HvCallPostMessage, post_input()) == St.HV_STATUS_INVALID_CONNECTION_ID
    assert isinstance(syn.hello(b"vsp-again", "vsp").one(b"vsp-again"), m.HelloReply)


def test_gpa_map_gives_only_ram_of_the_partition_named(syn):
    ok = syn.send(VSP, sm.GpaMapRequest(1, ((2, 4),), True)).one(VSP, sm.GpaMapReply)
    assert ok.status == St.HV_STATUS_SUCCESS and ok.ram.endswith("mem-1.bin") and ok.file_pages == ((2, 4),)
    for pages in (((15, 2),), ((0x100, 1),), ((0xFF, 1),)):  # past RAM (16 pages), past the space
        bad = syn.send(VSP, sm.GpaMapRequest(1, pages, False)).one(VSP, sm.GpaMapReply)
        assert (bad.status, bad.ram, bad.file_pages) == (St.HV_STATUS_INVALID_PARAMETER, "", ())
    assert syn.send(VSP, sm.GpaMapRequest(5, ((0, 1),), False)).one(VSP, sm.GpaMapReply).status \
        == St.HV_STATUS_INVALID_PARTITION_ID


def test_the_vsp_is_told_when_the_root_unmaps_pages_it_was_granted(syn):
    """HvCallUnmapGpaPages of granted pages: a gpa_unmapped with exactly those pages (the
    VSP then revokes its GPADLs over them); pages never granted: nothing."""
    from proto.gpa_messages import GpaUnmapped
    from proto.hvcall import HV_INPUT_UNMAP_GPA_PAGES
    assert syn.send(VSP, sm.GpaMapRequest(1, ((2, 4),), True)).one(VSP, sm.GpaMapReply).status == 0
    sent = syn.send(b"root", m.HypercallIntercept(syn.seq(), control_value(C.HvCallUnmapGpaPages, rep_count=3),
                                                  HV_INPUT_UNMAP_GPA_PAGES.pack(1, 4, 0), (1,)))
    assert sent.one(b"root", m.VpResume).rax & 0xFFFF == St.HV_STATUS_SUCCESS
    assert sent.one(VSP, GpaUnmapped) == GpaUnmapped(1, ((4, 2),))  # 4 and 5 were granted, 6 not
    sent = syn.send(b"root", m.HypercallIntercept(syn.seq(), control_value(C.HvCallUnmapGpaPages, rep_count=2),
                                                  HV_INPUT_UNMAP_GPA_PAGES.pack(1, 8, 0), (1,)))
    assert not [x for x in sent.to(VSP) if isinstance(x, GpaUnmapped)]
    assert syn.hv.counters["gpa_unmaps_to_vsp"] == 1


def test_a_reset_puts_the_synic_back_to_its_reset_values(syn):
    enable_synic(syn)
    post(syn)
    syn.hv.dispatcher.reset(syn.part(1))
    s = syn.vp(1).synic
    assert (s.scontrol, s.simp, s.sints[2], s.queued()) == (0, 0, 0x10000, 0)


# -- TLFS synthetic timers ---------------------------------------------------------------------------

STIMER0_CONFIG, STIMER0_COUNT = 0x400000B0, 0x400000B1
TIMER_EXPIRED = 0x80000010


def fire_all(stack: Stack, after_ns: int) -> None:
    """Wait ``after_ns``, then fire what the hypervisor's loop would (it is not running here)."""
    import time
    time.sleep(after_ns / 1e9)
    stack.hv.synic.fire_timers(time.perf_counter_ns())


def test_stimer_msrs_need_access_synthetic_timer_msrs_and_direct_mode_is_advertised(syn):
    """TLFS synthetic timers: CPUID 0x40000003 EAX bit 3; EDX bit 19 for direct mode."""
    assert rdmsr(syn, 2, STIMER0_CONFIG)[0] == X86Exception.GP
    from hypervisor import cpuid
    assert cpuid.cpuid(syn.part(1), 0, 0x40000003, 0)[3] >> 19 & 1
    assert cpuid.cpuid(syn.part(2), 0, 0x40000003, 0)[3] == 0


def test_a_periodic_stimer_posts_timer_expired_messages_to_its_sint(syn):
    enable_synic(syn, sint=3)
    wrmsr(syn, 1, STIMER0_COUNT, 10_000)  # 1 ms
    wrmsr(syn, 1, STIMER0_CONFIG, 1 | 1 << 1 | 3 << 16)  # enable, periodic, SINT3
    assert syn.hv.synic.next_timer_ns is not None
    fire_all(syn, 1_000_000)
    mtype, size, _, _, _, payload = slot(syn, 1, 3)
    index, _, expiration, delivery = struct.unpack_from("<IIQQ", payload)
    assert (mtype, size, index) == (TIMER_EXPIRED, 24, 0) and delivery >= expiration - 1
    assert syn.vp(1).apic.irr >> VECTOR & 1
    fire_all(syn, 2_000_000)  # the slot is still full: that tick is missed, not queued twice
    t = syn.vp(1).synic.stimers[0]
    # (The loop may have fired it once more itself on a slow machine.)
    assert t.enabled and t.counters["fired"] >= 2 and syn.vp(1).synic.queued() <= 1


def test_a_one_shot_stimer_in_direct_mode_asserts_its_vector_and_disables_itself(syn):
    wrmsr(syn, 1, STIMER0_CONFIG, 1 << 3 | 0x61 << 4 | 1 << 12)  # auto-enable, vector 0x61, direct
    wrmsr(syn, 1, STIMER0_COUNT, syn.part(1).reference_time_100ns() + 5000)  # 0.5 ms from now
    assert rdmsr(syn, 1, STIMER0_CONFIG)[1] & 1  # AutoEnable set Enable
    fire_all(syn, 1_000_000)
    assert syn.vp(1).apic.irr >> 0x61 & 1
    assert not rdmsr(syn, 1, STIMER0_CONFIG)[1] & 1 and syn.hv.synic.next_timer_ns is None


def test_count_zero_stops_a_timer_and_sint_zero_without_direct_mode_cannot_enable(syn):
    wrmsr(syn, 1, STIMER0_COUNT, 10_000)
    wrmsr(syn, 1, STIMER0_CONFIG, 1 | 1 << 1)  # SINT 0, not direct: Enable cleared (TLFS)
    assert rdmsr(syn, 1, STIMER0_CONFIG)[1] & 1 == 0
    wrmsr(syn, 1, STIMER0_CONFIG, 1 | 1 << 1 | 2 << 16)
    wrmsr(syn, 1, STIMER0_COUNT, 0)
    assert rdmsr(syn, 1, STIMER0_CONFIG)[1] & 1 == 0 and syn.hv.synic.next_timer_ns is None


def _periodic(syn, lazy: bool):
    """STIMER0 of partition 1's VP 0: 1 ms periodic into SINT 3 (lazy or not); its state
    and the hypervisor's VP, for expire() at chosen times."""
    enable_synic(syn, sint=3)
    wrmsr(syn, 1, STIMER0_COUNT, 10_000)
    wrmsr(syn, 1, STIMER0_CONFIG, 1 | 1 << 1 | (1 << 2 if lazy else 0) | 3 << 16)
    return syn.vp(1).synic.stimers[0], syn.vp(1)


def _expire(syn, t, vp, now):
    from hypervisor import stimer
    stimer.expire(syn.part(1), vp, 0, t, now, syn.hv.synic)


def _free_slot(syn):
    ram(syn, 1)[SIMP_GPA + 3 * 256:SIMP_GPA + 3 * 256 + 4] = bytes(4)  # the guest took the message


def test_a_lazy_timer_waits_for_its_vp_and_is_skipped_if_it_comes_back_just_before_the_next(syn):
    """TLFS "Periodic Timers": a lazy timer's signal is deferred until the VP is available,
    and skipped entirely when that is only shortly before the next expiry."""
    from hypervisor.scheduler import VpState
    t, vp = _periodic(syn, lazy=True)
    period, due = 1_000_000, t.due_ns
    vp.sched.state = VpState.READY  # waiting for a logical processor
    _expire(syn, t, vp, due + 10_000)
    assert t.deferred and t.counters["deferred"] == 1 and t.counters["fired"] == 0
    assert t.deadline_ns == due + 10_000 + 200_000 and slot(syn, 1, 3)[0] == 0
    vp.sched.state = VpState.RUNNING  # back 0.3 ms late, 0.7 ms before the next: delivered now
    _expire(syn, t, vp, due + 300_000)
    assert slot(syn, 1, 3)[0] == TIMER_EXPIRED and t.counters["fired"] == 1 and not t.deferred
    assert t.due_ns == due + period and t.deadline_ns == t.due_ns  # in phase again
    _free_slot(syn)
    vp.sched.state = VpState.INTERCEPT  # suspended in an intercept
    _expire(syn, t, vp, due + period + 1000)
    vp.sched.state = VpState.HALTED  # available only 0.1 ms before the next expiry: skipped
    _expire(syn, t, vp, due + 2 * period - 100_000)
    assert slot(syn, 1, 3)[0] == 0 and t.counters["skipped_lazy"] == 1 and t.counters["fired"] == 1
    assert t.due_ns == due + 2 * period and t.counters["deferred"] == 2


def test_a_late_non_lazy_timer_catches_up_at_a_modulated_period_and_skips_beyond(syn):
    """TLFS: without lazy, missed periods are made up by shortening the period; when too
    many were missed, some are skipped."""
    t, vp = _periodic(syn, lazy=False)
    period, due = 1_000_000, t.due_ns
    now = due + 2 * period + period // 2  # 2.5 periods late: 2 more ticks were due
    _expire(syn, t, vp, now)
    assert t.counters["fired"] == 1 and t.counters["caught_up"] == 1 and t.counters["missed"] == 0
    assert t.due_ns == due + period and t.deadline_ns == now + period // 2  # sooner than the period
    _free_slot(syn)
    now = due + 20 * period  # far behind: MAX_CATCH_UP are made up, the rest skipped
    _expire(syn, t, vp, now)
    from hypervisor.stimer import MAX_CATCH_UP
    behind = (now - t.due_ns) // period + 1
    assert behind == MAX_CATCH_UP and t.counters["missed"] == 20 - 1 - MAX_CATCH_UP
    assert t.due_ns <= now < t.due_ns + MAX_CATCH_UP * period


def test_a_period_below_the_minimum_is_clamped_like_the_apic_timer(syn):
    from hypervisor.apic import MIN_TIMER_PERIOD_NS
    from time import perf_counter_ns
    enable_synic(syn, sint=3)
    before = perf_counter_ns()
    wrmsr(syn, 1, STIMER0_COUNT, 1)  # 100 ns
    wrmsr(syn, 1, STIMER0_CONFIG, 1 | 1 << 1 | 3 << 16)
    t = syn.vp(1).synic.stimers[0]
    assert t.deadline_ns - before >= MIN_TIMER_PERIOD_NS and t.counters["clamped"] == 1


# -- TLFS partition reference TSC page -----------------------------------------------------------------


def test_the_reference_tsc_page_gives_the_reference_time_without_an_exit(syn):
    from time import perf_counter_ns
    from proto.synic_messages import reference_time
    assert rdmsr(syn, 2, HvMsr.HV_X64_MSR_REFERENCE_TSC)[0] == X86Exception.GP
    wrmsr(syn, 1, HvMsr.HV_X64_MSR_REFERENCE_TSC, 0x7000 | 1)
    assert rdmsr(syn, 1, HvMsr.HV_X64_MSR_REFERENCE_TSC) == (0, 0x7001)
    page = bytes(ram(syn, 1)[0x7000:0x7018])
    assert int.from_bytes(page[:4], "little") != 0  # TscSequence: valid
    before = syn.part(1).reference_time_100ns()
    by_page = reference_time(page, perf_counter_ns())
    after = syn.part(1).reference_time_100ns()
    assert before - 1 <= by_page <= after + 1  # the same clock, to within its 100 ns unit


# -- a hostile vsp and a hostile guest: refused, never a handler error ----------------------------


def test_random_vsp_messages_and_guest_synic_writes_never_raise(syn):
    """Every vsp message with well-formed random fields (the fuzzer's values), and SynIC
    MSR writes and hypercalls of random values from the guest: each is answered, and the
    strict stack re-raises any handler error."""
    import random

    from benchmarks.fuzz_sequence import Values

    rng = random.Random(10)
    values = Values(rng, [1, 2, 3, 0])
    enable_synic(syn)
    syn.enable_hypercalls(vp_id(1))
    for cls in (sm.SynicConnect, sm.SynicDisconnect, sm.SynicPost, sm.SynicSignal, sm.GpaMapRequest) * 60:
        msg = cls(*(values.well_formed(check, name) for check, name in zip(cls.CHECKS, cls.FIELD_NAMES)))
        assert syn.send(VSP, msg).to(VSP), msg  # answered
    msrs = [HvMsr.HV_X64_MSR_SCONTROL, HvMsr.HV_X64_MSR_SIMP, HvMsr.HV_X64_MSR_SIEFP, HvMsr.HV_X64_MSR_EOM,
            HvMsr.HV_X64_MSR_REFERENCE_TSC, *range(SINT0, SINT0 + 16), *range(STIMER0_CONFIG, STIMER0_CONFIG + 8)]
    for _ in range(300):
        value = rng.choice((0, 1, 0x10000, 0xFFFFFFFFFFFFFFFF, rng.getrandbits(64), 0xF000 | 1, 0x10_0000_0001))
        wrmsr(syn, 1, rng.choice(msrs), value)
        code = rng.choice((C.HvCallPostMessage, C.HvCallSignalEvent))
        guest_call(syn, 1, code, rng.randbytes(rng.choice((0, 7, 8, 16, 256, 300))), fast=rng.random() < 0.3)
    syn.hv.synic.fire_timers(1 << 62)  # every armed timer expires at once
    assert syn.hv.counters["handler_errors"] == 0


def test_a_stopped_partitions_timers_stop_and_its_vps_are_not_woken(syn):
    wrmsr(syn, 1, STIMER0_CONFIG, 1 << 3 | 0x61 << 4 | 1 << 12)  # direct mode, auto-enable
    # Armed 1 s ahead: 0.5 ms once passed before the WRMSR under load, and a count already in
    # the past expires at once (TLFS), before the stop this test is about.
    wrmsr(syn, 1, STIMER0_COUNT, syn.part(1).reference_time_100ns() + 10_000_000)
    assert syn.hv.synic.next_timer_ns is not None
    assert isinstance(syn.send(b"root", m.PartitionControl(1, "stop")).one(b"root"), m.Ack)
    syn.hv.synic.fire_timers(1 << 62)  # whatever was armed would expire now
    assert not syn.vp(1).apic.irr and syn.hv.synic.next_timer_ns is None
    assert post(syn) == St.HV_STATUS_INVALID_PARTITION_ID


def test_a_stimer_write_finds_the_next_timer_without_walking_every_vp(syn, monkeypatch):
    """Issue 12: every synthetic timer MSR write walked every timer of every VP of every
    partition; now only a write that moved the earliest deadline does."""
    walks = []
    walk = syn.hv.synic.timers_changed
    monkeypatch.setattr(syn.hv.synic, "timers_changed", lambda: (walks.append(1), walk()))
    late, early = 0x400000B0, 0x400000B2  # STIMER0_CONFIG, STIMER1_CONFIG (COUNT is CONFIG + 1)
    wrmsr(syn, 1, late + 1, 40_000_000)  # 4 s, periodic into SINT 3
    wrmsr(syn, 1, late, 1 | 1 << 1 | 3 << 16)
    assert syn.hv.synic.next_timer_ns == syn.vp(1).synic.stimers[0].deadline_ns and not walks
    wrmsr(syn, 1, early + 1, 10_000_000, vp=1)  # 1 s, on the other VP
    wrmsr(syn, 1, early, 1 | 1 << 1 | 3 << 16, vp=1)
    first = syn.vp(1, 1).synic.stimers[1].deadline_ns
    assert syn.hv.synic.next_timer_ns == first and not walks
    wrmsr(syn, 1, late + 1, 30_000_000)  # the later one moves, still later: no walk
    assert syn.hv.synic.next_timer_ns == first and not walks
    wrmsr(syn, 1, early + 1, 0, vp=1)  # the earliest stops: look again
    assert walks and syn.hv.synic.next_timer_ns == syn.vp(1).synic.stimers[0].deadline_ns


def test_after_move_keeps_the_earliest_deadline_or_asks_for_a_walk():
    from hypervisor.deadlines import after_move

    assert after_move(100, 200, 200) == (False, 100)  # nothing moved (an EOI)
    assert after_move(100, 200, 50) == (False, 50)  # sooner than the earliest
    assert after_move(100, 200, 300) == (False, 100)  # a later one moved later
    assert after_move(None, None, 70) == (False, 70)  # the first timer
    assert after_move(100, 100, 300)[0] and after_move(100, 100, None)[0]  # the earliest moved
    assert after_move(100, 300, None) == (False, 100)  # a later one stopped
