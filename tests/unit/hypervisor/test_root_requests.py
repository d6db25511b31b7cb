"""The root's requests, in-process: io on a VP's behalf, partition control, console and input,
worker queries, trace subscriptions, status."""

from __future__ import annotations

import pytest

from proto import messages as m
from proto.codes import HvMsr, HypercallCode as C, X86Exception, control_value
from proto.exits import NO_PATH, Exit
from proto.stats import PathStats
from proto.status import HypervisorStatus
from hypervisor.scheduler import VpState
from tests.unit.hypervisor.fake_stack import COM1, REGS, ROOT, stamps, vp_id, worker_id

V10, V11, V20 = vp_id(1, 0), vp_id(1, 1), vp_id(2, 0)
W1, W2 = worker_id(1), worker_id(2)


def execute(stack, op: str, a: int = 0, b: int = 0, partition: int = 1, vp: int = 0, data: bytes = b""):
    return stack.send(ROOT, m.ExecuteRequest(77, partition, vp, op, a, b, data))


def error_of(sent, who=ROOT) -> str:
    return sent.one(who, m.ErrorReply).code


# -- io: one instruction on a VP's behalf ----------------------------------------------------------


def test_io_on_a_claimed_port_takes_the_vps_path_and_the_root_gets_the_resume(two):
    notify = execute(two, "inb", COM1 + 5).one(W1, m.PortNotify)
    out = two.send(W1, m.AccessComplete(notify.ref, 0x60, stamps(4)))
    r = out.one(ROOT, m.VpResume)
    assert (r.seq, r.rax, r.path) == (77, 0x60, Exit.IO_PORT.code) and not out.to(V10)
    assert two.vp(1).exits[Exit.IO_PORT] == 1
    assert two.vp(1).state is VpState.RUNNING  # the VP itself never stopped


def test_io_on_a_stopped_partition_is_refused_not_answered_all_ones(two):
    """Issue 9: `io` on a stopped partition answered `OK 0xff`: nothing had executed."""
    assert two.send(ROOT, m.PartitionControl(1, "stop")).one(ROOT, m.Ack)
    out = execute(two, "inb", COM1 + 5)
    assert out.one(ROOT, m.ErrorReply).code == "CONFLICT" and not out.to(W1)


def test_io_on_an_unclaimed_port_and_on_unmapped_memory(two):
    r = execute(two, "inw", 0x80).one(ROOT, m.VpResume)
    assert (r.rax, r.path) == (0xFFFF, Exit.IO_UNCLAIMED.code)
    r = execute(two, "readl", 0xD000_0000).one(ROOT, m.VpResume)
    assert (r.fault, r.path) == (X86Exception.GP, Exit.UNMAPPED_GPA.code)
    assert two.vp(1).faults == 1


def test_io_reads_and_writes_guest_ram_through_the_partitions_slat(two):
    assert execute(two, "writel", 0x1004, 0xCAFEF00D).one(ROOT, m.VpResume).path == NO_PATH
    r = execute(two, "readl", 0x1004).one(ROOT, m.VpResume)
    assert (r.rax, r.path) == (0xCAFEF00D, NO_PATH)
    assert execute(two, "readq", 0x1004, partition=2).one(ROOT, m.VpResume).rax == 0  # not partition 1's RAM
    assert sum(two.vp(1).exits.values()) == 0


def test_io_on_the_apic_and_a_workers_mmio(two):
    r = execute(two, "readl", 0xFEE00020, vp=1).one(ROOT, m.VpResume)
    assert (r.rax, r.path) == (1 << 24, Exit.APIC.code)
    notify = execute(two, "writew", 0xB8000, 0x0741).one(W1, m.MmioNotify)
    assert two.send(W1, m.AccessComplete(notify.ref, 0, stamps())).one(ROOT, m.VpResume).path == Exit.MMIO.code


def test_io_cpuid_msrs_and_hypercalls_are_answered_uncounted(two):
    r = execute(two, "cpuid", 0x40000001).one(ROOT, m.VpResume)
    assert (r.rax, r.path) == (0x31237648, NO_PATH)  # "Hv#1"
    assert execute(two, "rdmsr", HvMsr.HV_X64_MSR_VP_INDEX, vp=1).one(ROOT, m.VpResume).rax == 1
    assert execute(two, "wrmsr", 0x12345, 1).one(ROOT, m.VpResume).fault == X86Exception.GP
    r = execute(two, "hypercall", control_value(C.HvCallGetPartitionId), partition=2).one(ROOT, m.VpResume)
    assert r.fault == X86Exception.UD  # partition 2 has no hypercall page
    assert sum(two.vp(1).exits.values()) == 0 and sum(two.vp(2).exits.values()) == 0


@pytest.mark.parametrize("op, a, b, why", [
    ("outb", 0x10000, 0, "port"), ("outb", 0x80, 0x100, "does not fit"), ("writew", 0, 0x10000, "does not fit"),
    ("readb", 1 << 52, 0, "52 bits"), ("cpuid", 1 << 32, 0, "32-bit"), ("rdmsr", 1 << 32, 0, "32-bit"),
])
def test_io_operands_out_of_range_are_invalid_fields(two, op, a, b, why):
    err = execute(two, op, a, b).one(ROOT, m.ErrorReply)
    assert err.code == "INVALID_FIELD" and why in err.message


def test_io_on_a_partition_or_vp_that_does_not_exist(two):
    assert error_of(execute(two, "inb", 0x80, partition=9)) == "UNKNOWN_PARTITION"
    assert error_of(execute(two, "inb", 0x80, vp=5)) == "UNKNOWN_VP"


# -- partition control ----------------------------------------------------------------------------


def control(stack, action: str, partition: int = 1):
    return stack.send(ROOT, m.PartitionControl(partition, action))


def test_a_paused_partition_finishes_its_exits_but_runs_again_only_when_resumed(two):
    assert control(two, "pause").one(ROOT, m.Ack)
    assert two.hv.status().partition(1).state == "paused" and two.part(1).cpu.paused
    assert not two.exit(V10, m.CpuidIntercept(1, 0, 0, stamps(), REGS)).to(V10)  # its resume waits
    assert two.vp(1).state is VpState.READY
    assert two.exit(V20, m.CpuidIntercept(2, 0, 0, stamps(), REGS)).one(V20, m.VpResume)  # others run on
    out = control(two, "resume")
    assert out.one(V10, m.VpResume).seq == 1 and out.one(ROOT, m.Ack)
    assert two.hv.status().partition(1).state == "active"


def test_a_reset_restarts_every_vp_and_the_workers_devices(two):
    assert not two.exit(V11, m.HaltIntercept(3, stamps(), REGS))
    two.exit(V10, m.MsrIntercept(4, HvMsr.HV_X64_MSR_GUEST_OS_ID, True, 1, stamps(), REGS))
    out = control(two, "reset")
    assert out.one(W1, m.DeviceReset) and out.one(ROOT, m.Ack)
    woken = out.one(V11, m.VpResume)  # it was halted: reset at once, registers at their INIT values
    assert (woken.fault, woken.rax, woken.regs) == (m.FAULT_RESET, 1, (m.RFLAGS_FIXED, 0))
    assert two.part(1).guest_os_id == 0 and two.part(1).resets == 1
    r = two.exit(V10, m.CpuidIntercept(5, 0, 0, stamps(), REGS)).one(V10, m.VpResume)  # at its next resume
    assert (r.fault, r.rax) == (m.FAULT_RESET, 1)
    assert two.vp(1).faults == 0  # a reset is not a fault


def test_the_chipset_can_ask_for_a_reset_too(two):
    out = two.send(W1, m.ResetRequest("i8042 pulse"))
    assert out.one(W1, m.DeviceReset) and two.part(1).resets == 1


def test_a_stopped_partition_returns_its_pages_and_takes_no_more_control_or_peers(two):
    owned = two.hv.memory.owned(1)
    assert control(two, "stop").one(ROOT, m.Ack)
    assert two.hv.memory.owned(1) == 0 and two.hv.memory.counters["released"] == owned
    assert two.hv.status().partition(1).state == "finalized"
    assert error_of(control(two, "resume")) == "CONFLICT"
    assert error_of(two.hello(b"late", "worker", 1), b"late") == "UNKNOWN_PARTITION"
    assert not two.exit(V10, m.CpuidIntercept(6, 0, 0, stamps(), REGS)).to(V10)  # never dispatched again


def test_control_of_an_unknown_partition(two):
    assert error_of(control(two, "pause", 9)) == "UNKNOWN_PARTITION"


# -- console, input, worker questions --------------------------------------------------------------


def test_console_output_goes_to_the_partitions_subscribers_until_they_are_gone(two):
    two.hello(b"con", "root")
    assert two.send(b"con", m.ConsoleSubscribe(1)).one(b"con", m.Ack)
    assert two.send(W1, m.ConsoleOutput(b"hello\r\n")).one(b"con", m.ConsoleData).data == b"hello\r\n"
    assert not two.send(W2, m.ConsoleOutput(b"other")).to(b"con")
    assert error_of(two.send(b"con", m.ConsoleSubscribe(9)), b"con") == "UNKNOWN_PARTITION"
    two.router.gone.add(b"con")
    two.send(W1, m.ConsoleOutput(b"bye"))
    assert b"con" not in two.part(1).console_watchers


def test_input_goes_to_the_partitions_worker(two):
    out = two.send(ROOT, m.InputRequest(1, "keyboard", b"\x1e\x9e"))
    assert out.one(W1, m.DeviceInput).data == b"\x1e\x9e" and out.one(ROOT, m.Ack)
    two.router.gone.add(W1)
    assert error_of(two.send(ROOT, m.InputRequest(1, "console", b"x"))) == "UNKNOWN_PARTITION"
    assert error_of(two.send(ROOT, m.InputRequest(9, "console", b"x"))) == "UNKNOWN_PARTITION"


def test_input_for_a_partition_without_a_worker(stack):
    stack.partition(vps=1, worker=False)
    assert "has no worker" in stack.send(ROOT, m.InputRequest(1, "console", b"x")).one(ROOT, m.ErrorReply).message


def test_a_worker_query_is_answered_by_its_worker_and_only_once(two):
    q = two.send(ROOT, m.WorkerQueryRequest(1, "devices")).one(W1, m.WorkerQuery)
    assert not two.send(W2, m.WorkerQueryReply(q.ref, {"x": 2})).to(ROOT)  # not partition 2's to answer
    assert two.send(W1, m.WorkerQueryReply(q.ref, {"x": 1})).one(ROOT, m.WorkerQueryReply).result == {"x": 1}
    assert not two.send(W1, m.WorkerQueryReply(q.ref, {"x": 1})).to(ROOT)
    assert two.hv.counters["stale_completions"] == 2


def test_a_worker_query_times_out_and_a_gone_worker_is_reported(two):
    two.send(ROOT, m.WorkerQueryRequest(1, "screen")).one(W1, m.WorkerQuery)
    for q in two.hv.forwarding.queries.values():
        q.deadline_ns = 0
    two.hv._housekeeping()
    assert error_of(two.run()) == "STALE"
    two.router.gone.add(W2)
    assert error_of(two.send(ROOT, m.WorkerQueryRequest(2, "screen"))) == "UNKNOWN_PARTITION"
    assert not two.hv.forwarding.queries


def test_trace_subscriptions_name_an_existing_partition_or_all(two):
    assert two.send(ROOT, m.TraceSubscribe(0)).one(ROOT, m.Ack)
    assert error_of(two.send(ROOT, m.TraceSubscribe(9))) == "UNKNOWN_PARTITION"
    ev = two.exit(V20, m.IoPortIntercept(8, 0x80, 1, True, 5, stamps(), REGS)).one(ROOT, m.TraceEvent)
    assert (ev.partition, ev.reason, ev.write, ev.a, ev.b) == (2, "io_unclaimed", True, 0x80, 5)


# -- status ---------------------------------------------------------------------------------------


def test_status_is_the_typed_status_on_the_wire(two):
    two.exit(V10, m.CpuidIntercept(9, 0, 0, stamps(), REGS))
    reply = two.send(ROOT, m.StatusRequest()).one(ROOT, m.StatusReply)
    st = HypervisorStatus.from_wire(reply.status)
    assert list(reply.status) == ["pid", "session", "uptime_s", "counters", "hypercalls", "peers", "pending",
                                  "tracers", "scheduler", "memory", "tlb", "partitions"]
    p1 = st.partition(1)
    assert [vp.state for vp in p1.vps] == ["running", "running"] and p1.vps[0].exits["cpuid"] == 1
    assert p1.vps[0].sched.state == "running" and p1.ranges == [(COM1, 8), (0x60, 1)]
    assert st.peers == 6 and st.counters["messages"] == two.hv.counters["messages"]  # this request included
    assert m.StatusReply(st.to_wire()).encode() == reply.encode()


def test_a_brief_status_is_the_full_one_without_histograms_and_tlb_walk(two):
    """What supervision reads 4 times a second (issue 12): everything a full status has but
    the partitions' latency histograms and the TLBs' per-LP walk, which grew with the
    partitions and the LPs."""
    stats = PathStats()
    stats.record((0, 10, 30))
    two.exit(V10, m.CpuidIntercept(9, 0, 0, stamps(), REGS))
    two.send(V10, m.VpStats({Exit.CPUID.value: stats.to_wire()}, {"interrupts": 2}))
    full = HypervisorStatus.from_wire(two.send(ROOT, m.StatusRequest()).one(ROOT, m.StatusReply).status)
    brief = HypervisorStatus.from_wire(two.send(ROOT, m.StatusRequest(brief=True)).one(ROOT, m.StatusReply).status)
    assert full.partition(1).paths["cpuid"].total.n == 1 and len(full.tlb.lps) == len(two.hv.sched.lps)
    assert all(p.paths == {} for p in brief.partitions) and brief.tlb.lps == []
    assert brief.tlb.entries == full.tlb.entries
    for b, f in zip(brief.partitions, full.partitions, strict=True):
        assert (b.id, b.state, b.unresponsive, b.ranges, b.guest) == (f.id, f.state, f.unresponsive, f.ranges, f.guest)
        assert [(v.state, v.exits, v.guest) for v in b.vps] == [(v.state, v.exits, v.guest) for v in f.vps]
    assert brief.partition(1).vps[0].guest == {"interrupts": 2}
    assert brief.memory.partitions == full.memory.partitions
