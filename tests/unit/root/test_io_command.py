"""`io`'s parsing, sessions and output, against a fake hypervisor client."""

from __future__ import annotations

import pytest

from proto import messages as m
from proto.codes import HvRegisterName as R, HvStatus, HypercallCode as C, control_value
from proto.errors import Refused
from root.commands.io import IoSession, parse_ops, result_line


class FakeClient:
    """Answers io_request from a script: a dict of op → list of replies (or Refused)."""

    def __init__(self, **script) -> None:
        self.script = {op: list(replies) for op, replies in script.items()}
        self.calls: list[tuple] = []

    def io_request(self, partition, vp, op, a=0, b=0, c=0, data=b""):
        self.calls.append((partition, vp, op, a, b, c, data))
        reply = self.script[op].pop(0) if len(self.script[op]) > 1 else self.script[op][0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def io(self, partition, vp, op, a=0, b=0, data=b""):
        self.calls.append((partition, vp, op, a, b, data))
        return m.VpResume(1, 0, 0x5A, 0, 0, 0, b"", (), 0, (), 0, 0, 0)


def io_reply(value=0, data=b"", fault=0, dropped=0):
    return m.IoReply(1, fault, value, data, dropped)


def lines(client, *tokens, vp=0):
    session = IoSession(client, 3, vp)
    return [result_line(session.run(op)) for op in parse_ops([str(t) for t in tokens])]


def test_a_vp_prefix_picks_the_vp_of_one_operation():
    ops = parse_ops(["inb", "0x3fd", "vp65:rdmsr", "HV_X64_MSR_VP_INDEX", "irqs", "pic"])
    assert [(o.name, o.vp, o.operands) for o in ops] == [("inb", None, ["0x3fd"]),
                                                         ("rdmsr", 65, ["HV_X64_MSR_VP_INDEX"]),
                                                         ("irqs", None, ["pic"])]
    with pytest.raises(ValueError):
        parse_ops(["vp1:dance"])
    with pytest.raises(ValueError):
        parse_ops(["read", "0x1000"])


def test_bulk_memory_is_moved_in_chunks_and_printed_as_hex():
    client = FakeClient(read=[io_reply(data=b"\x01\x02")], write=[io_reply()])
    assert lines(client, "read", "0x1000", "2", "write", "0x2000", "cafe") == ["OK 0102", "OK"]
    assert client.calls[1][2:] == ("write", 0x2000, 0, 0, b"\xca\xfe")


def test_registers_take_tlfs_names():
    client = FakeClient(get_reg=[io_reply(value=0x1000)], set_reg=[io_reply()])
    assert lines(client, "getreg", "HvX64RegisterCr3", "setreg", "HvX64RegisterRflags", "0x202") == ["OK 0x1000",
                                                                                                    "OK"]
    assert client.calls[0][3] == R.HvX64RegisterCr3 and client.calls[1][3:5] == (R.HvX64RegisterRflags, 0x202)


def test_a_gpa_hypercall_names_its_pages_and_shows_status_output_or_fault():
    ok = io_reply(value=int(HvStatus.HV_STATUS_SUCCESS), data=b"\x05" + bytes(7))
    client = FakeClient(hypercall_gpa=[ok, io_reply(fault=6)])
    assert lines(client, "hypercall_gpa", "HvCallGetPartitionId", "0x2000", "0x3000",
                 "hypercall_gpa", "0x10013", "0", "0") == ["OK HV_STATUS_SUCCESS reps=0 output=0500000000000000",
                                                          "FAULT #UD"]
    assert client.calls[0][3:6] == (control_value(C.HvCallGetPartitionId), 0x2000, 0x3000)


def test_errors_are_err_code_text_lines():
    client = FakeClient(read=[Refused("UNMAPPED_GPA", "GPA 0x10000000 is not mapped in partition 3")])
    assert lines(client, "read", "0x10000000", "8", "getreg", "nonsense") == [
        "ERR UNMAPPED_GPA GPA 0x10000000 is not mapped in partition 3",
        "ERR INVALID_OPERAND 'nonsense' is not a number or a TLFS name"]


def test_wait_irq_takes_its_vector_and_keeps_the_rest_for_the_next_look():
    client = FakeClient(irqs_apic=[io_reply(data=b"\x30"), io_reply(data=b"\x24\x20\x31", dropped=2),
                                   io_reply(data=b"")])
    assert lines(client, "wait_irq", "0x20", "1", "irqs") == ["OK 0x20", "OK 0x30 0x24 0x31 dropped=2"]


def test_wait_irq_times_out_with_an_err():
    client = FakeClient(irqs_pic=[io_reply(data=b"")])
    assert lines(client, "wait_irq", "0x20", "0.05", "pic") == [
        "ERR TIMEOUT vector 0x20 did not arrive at the PIC's output in 0.05 s"]
    assert all(call[2] == "irqs_pic" for call in client.calls)


def test_clock_step_reports_the_offset_the_worker_or_the_hypervisor_gives():
    client = FakeClient(clock_step=[m.WorkerQueryReply(1, {"clock_offset_ns": 20_000_000})])
    assert lines(client, "clock_step", "20000000") == ["OK offset_ns=20000000"]
    client = FakeClient(clock_step=[io_reply(value=5)])
    assert lines(client, "clock_step", "5") == ["OK offset_ns=5"]


def test_wait_irq_operands_are_checked():
    client = FakeClient(irqs_apic=[io_reply()])
    assert [line.split()[1] for line in lines(client, "wait_irq", "0x20", "1", "2", "wait_irq", "0x120",
                                              "wait_irq", "0x20", "soon")] == ["INVALID_OPERAND"] * 3
    assert client.calls == []
