"""The VP's preemption points (issue 12): a posted interrupt (``interrupt_notify``) is
taken at the next one without an exit; one read while waiting for a resume is not lost."""

from __future__ import annotations

import threading
from time import perf_counter_ns

from proto import messages as m
from proto.exits import Exit
from partitions import vp as vpmod
from partitions.vp import Vp


class Ram:
    """Guest RAM without a SLAT: every address is RAM."""

    def __init__(self) -> None:
        self.bytes = bytearray(0x10000)

    def read_int(self, gpa: int, size: int) -> int:
        return int.from_bytes(self.bytes[gpa:gpa + size], "little")

    def write_int(self, gpa: int, size: int, value: int) -> None:
        self.bytes[gpa:gpa + size] = value.to_bytes(size, "little")

    def is_mapped(self, gpa: int, size: int) -> bool:
        return True


class Dealer:
    """Frames queued for the VP to read; what it sends is kept."""

    def __init__(self) -> None:
        self.inbox: list[bytes] = []
        self.sent: list[m.Message] = []
        self.polls = 0

    def send(self, frame: bytes) -> None:
        self.sent.append(m.decode(frame))

    def wait(self, timeout_ms: int) -> bool:
        self.polls += 1
        return bool(self.inbox)

    def recv_ready(self) -> bytes:
        return self.inbox.pop(0)


def running_vp() -> tuple[Vp, Dealer, list]:
    d = Dealer()
    v = Vp(d, 0, Ram(), threading.Event())
    v._quantum_end = vpmod.NEVER
    taken = []
    v.set_handler(0x20, lambda vp, vector: taken.append(vector))
    v.if_flag = True
    return v, d, taken


def notify(vector: int) -> bytes:
    now = perf_counter_ns()
    return m.InterruptNotify(vector, (now - 3000, now - 2000, now - 1000, now)).encode()


def test_a_posted_interrupt_is_taken_at_the_next_preemption_point_after_the_poll_interval():
    v, d, taken = running_vp()
    d.inbox.append(notify(0x20))
    v._next_check = perf_counter_ns() + 10**9  # not yet time to look
    v.read(0x100, 4)
    assert taken == [] and d.polls == 0
    v._next_check = 0
    v.read(0x100, 4)
    assert taken == [0x20] and not d.sent  # no exit
    assert v.paths[Exit.INTERRUPT].total.n == 1  # line → handler, measured as a resume's would be
    assert v._next_check <= perf_counter_ns() + vpmod.NOTIFY_POLL_NS


def test_with_interrupts_disabled_it_waits_for_sti():
    v, d, taken = running_vp()
    v.cli()
    d.inbox.append(notify(0x20))
    v._next_check = 0
    v.pause()
    assert taken == []
    v.sti()
    assert taken == [0x20]


def test_a_notification_read_while_waiting_for_a_resume_is_kept():
    v, d, taken = running_vp()
    # The VP exits (CPUID) while a notification is already on its way: it arrives first.
    d.inbox.append(notify(0x20))
    d.inbox.append(m.VpResume(1, 0, 0, 0, 0, 0, b"", (), 0, (), perf_counter_ns() + 10**9, 0,
                              Exit.CPUID.code).encode())
    v.cpuid(0)
    assert taken == [0x20]


def test_the_quantum_still_ends_at_a_preemption_point():
    v, d, taken = running_vp()
    v._quantum_end = v._next_check = 0
    d.inbox.append(m.VpResume(1, 0, 0, 0, 0, 0, b"", (), 0, (), perf_counter_ns() + 10**9, 0,
                              Exit.QUANTUM.code).encode())
    v.preemption_point()
    assert [type(x) for x in d.sent] == [m.QuantumExit]
