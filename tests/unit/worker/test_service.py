"""The worker's handlers without a socket: a fake endpoint that still speaks the wire format
(every frame goes through proto.messages encode/decode, as locust's mocked_rpc does)."""

from __future__ import annotations

import logging
from collections import deque

import pytest

from proto import messages as m
from worker.backends import ConsoleLog
from worker.chipset import Chipset
from worker.devices.config import CHIPSETS
from worker.service import Worker

COM1, SCR, IER, MCR = 0x3F8, 0x3FF, 0x3F9, 0x3FC


class FakeEndpoint:
    """Frames for the worker wait in ``inbox``; what it sends is decoded into ``sent``; a
    request of a class in ``replies`` gets that reply at the end of the inbox."""

    def __init__(self, replies: dict[type, m.Message] | None = None) -> None:
        self.inbox: deque[bytes] = deque()
        self.sent: list[m.Message] = []
        self.replies = replies or {}
        self.closed = False
        self.on_idle = None  # called when the worker waits on an empty inbox

    def put(self, msg: m.Message) -> None:
        self.inbox.append(m.encode(msg))

    def send(self, frame: bytes) -> None:
        msg = m.decode(frame)
        self.sent.append(msg)
        if type(msg) in self.replies:
            self.put(self.replies[type(msg)])

    def wait(self, timeout_ms: int) -> bool:
        if not self.inbox and self.on_idle is not None:
            self.on_idle()
        return bool(self.inbox)

    def recv_ready(self) -> bytes:
        return self.inbox.popleft()

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def make_worker(tmp_path):
    made = []

    def make(chipset: str = "minimal", endpoint: FakeEndpoint | None = None, strict: bool = True):
        console = ConsoleLog(str(tmp_path / "console.log"))
        endpoint = endpoint or FakeEndpoint()
        worker = Worker(endpoint, Chipset(CHIPSETS[chipset], console), console, strict=strict)
        made.append(worker)
        return worker, endpoint

    yield make
    for worker in made:
        if not worker.dealer.closed:
            worker.close()


def port(ref: int, address: int, size: int = 1, value: int | None = None) -> m.PortNotify:
    """A port access as the hypervisor forwards it: a write when ``value`` is given."""
    return m.PortNotify(ref, 0, address, size, value is not None, value or 0, (100, 200))


def test_a_port_write_and_read_are_answered_with_access_complete(make_worker):
    worker, endpoint = make_worker()
    worker.handle(m.encode(port(1, SCR, value=0x5A)))
    worker.handle(m.encode(port(2, SCR)))
    write, read = endpoint.sent
    assert isinstance(write, m.AccessComplete) and (write.ref, write.value) == (1, 0)
    assert isinstance(read, m.AccessComplete) and (read.ref, read.value) == (2, 0x5A)


def test_the_completion_carries_the_stamps_and_adds_the_workers_two(make_worker):
    worker, endpoint = make_worker()
    worker.handle(m.encode(port(1, SCR)))
    (done,) = endpoint.sent
    assert done.stamps[:2] == (100, 200)
    assert len(done.stamps) == 4 and done.stamps[2] <= done.stamps[3]


def test_an_access_the_bus_refuses_reads_all_ones_and_is_still_completed(make_worker):
    worker, endpoint = make_worker()
    worker.handle(m.encode(port(1, COM1, size=2)))  # the UART takes bytes only
    worker.handle(m.encode(port(2, 0x80)))  # nobody's port
    assert [(c.ref, c.value) for c in endpoint.sent] == [(1, 0xFFFF), (2, 0xFF)]
    assert worker.chipset.device_stats().get("com1", "missed_reads") == 1


def test_an_interrupt_the_access_raised_is_asserted_before_its_completion(make_worker):
    worker, endpoint = make_worker("gen1")
    for ref, (address, value) in enumerate([(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01),
                                            (0x21, 0xEF),  # only IRQ4 (COM1) unmasked
                                            (MCR, 0x08)], start=1):  # OUT2 gates INTR onto IRQ4
        worker.handle(m.encode(port(ref, address, value=value)))
    assert all(isinstance(s, m.AccessComplete) for s in endpoint.sent)
    endpoint.sent.clear()
    worker.handle(m.encode(port(9, IER, value=0x02)))  # ETBEI with THR empty: THRE interrupt
    assert [type(s) for s in endpoint.sent] == [m.AssertInterrupt, m.AccessComplete]
    assert endpoint.sent[0].vector == 0x20 + 4 and endpoint.sent[1].ref == 9


def test_an_mmio_access_reaches_the_vga_buffer(make_worker):
    worker, endpoint = make_worker("gen1")
    worker.handle(m.encode(m.MmioNotify(1, 0, 0xB8000, 2, True, 0x0741, (1, 2))))
    worker.handle(m.encode(m.MmioNotify(2, 0, 0xB8000, 2, False, 0, (1, 2))))
    assert [(c.ref, c.value) for c in endpoint.sent] == [(1, 0), (2, 0x0741)]
    assert worker.chipset.screen().lines[0].startswith("A")


def test_a_frame_that_is_not_a_message_is_logged_and_not_answered(make_worker, caplog):
    worker, endpoint = make_worker()
    with caplog.at_level(logging.ERROR, logger="worker"):
        worker.handle(b"\xc1 not msgpack")
    assert endpoint.sent == [] and "undecodable" in caplog.text


def test_a_query_for_the_devices_is_answered_with_their_counters(make_worker):
    worker, endpoint = make_worker()
    worker.handle(m.encode(port(1, SCR)))
    worker.handle(m.encode(m.WorkerQuery(7, "devices")))
    reply = endpoint.sent[-1]
    assert isinstance(reply, m.WorkerQueryReply) and reply.ref == 7
    assert reply.result["com1"]["reads"] == 1 and reply.result["port_bus"]["reads"] == 1


def test_start_claims_the_chipsets_ranges_and_maps_the_partitions_memory(make_worker, tmp_path):
    (tmp_path / "pool").write_bytes(bytes(4096))
    (tmp_path / "slat").write_bytes(bytes(4))  # one page, at host page 0
    endpoint = FakeEndpoint({
        m.InstallIntercept: m.Ack(m.InstallIntercept.TYPE),
        m.MemoryRequest: m.MemoryReply(str(tmp_path / "pool"), str(tmp_path / "slat"), ()),
    })
    worker, _ = make_worker("minimal", endpoint)
    assert endpoint.sent == []  # making a Worker says nothing
    worker.start(3)
    install, memory = endpoint.sent
    assert isinstance(install, m.InstallIntercept) and [list(r) for r in install.ranges] == [[COM1, 8]]
    assert isinstance(memory, m.MemoryRequest) and memory.partition == 3
    assert worker.chipset.memory is not None and worker.chipset.memory.pages == 1


def test_start_keeps_what_comes_before_a_reply_for_serve(make_worker, tmp_path):
    """Once its ranges are installed the hypervisor may forward a guest's access (or the
    root's input) before the memory reply: start() took the next frame for the reply and
    the worker died; now the access waits and serve() answers it first."""
    (tmp_path / "pool").write_bytes(bytes(4096))
    (tmp_path / "slat").write_bytes(bytes(4))
    endpoint = FakeEndpoint({m.InstallIntercept: m.Ack(m.InstallIntercept.TYPE)})
    worker, _ = make_worker("minimal", endpoint)

    def on_memory_request():
        if isinstance(endpoint.sent[-1], m.MemoryRequest) and not endpoint.inbox:
            endpoint.put(port(7, SCR, value=0x5A))  # the guest's access comes first
            endpoint.put(m.DeviceInput("console", b"k"))
            endpoint.put(m.MemoryReply(str(tmp_path / "pool"), str(tmp_path / "slat"), ()))
    endpoint.on_idle = on_memory_request
    worker.start(3)
    assert worker.chipset.memory is not None
    endpoint.on_idle = lambda: setattr(worker, "running", False)
    worker.serve()
    [done] = [s for s in endpoint.sent if isinstance(s, m.AccessComplete)]
    assert done.ref == 7
    assert worker.chipset.bus.read(SCR, 1) == 0x5A


def test_a_start_up_request_refused_or_unanswered_says_so(make_worker):
    from proto.errors import PeerTimeout, Refused
    endpoint = FakeEndpoint({m.InstallIntercept: m.ErrorReply(m.InstallIntercept.TYPE, "CONFLICT", "taken")})
    worker, _ = make_worker("minimal", endpoint)
    with pytest.raises(Refused, match="CONFLICT"):
        worker.start(3)
    worker, _ = make_worker("minimal", FakeEndpoint())
    with pytest.raises(PeerTimeout, match="no ack to install_intercept"):
        worker._startup_request(m.InstallIntercept([], []), m.Ack, timeout_ms=50)


def test_serve_answers_until_stopped_then_closes_its_endpoint(make_worker):
    worker, endpoint = make_worker()
    endpoint.put(port(1, SCR, value=0x33))
    endpoint.put(port(2, SCR))

    def stop():
        worker.running = False

    endpoint.on_idle = stop
    worker.serve()
    assert [(c.ref, c.value) for c in endpoint.sent if isinstance(c, m.AccessComplete)] == [(1, 0), (2, 0x33)]
    assert endpoint.closed


def test_a_handler_error_is_counted_and_logged_and_the_worker_goes_on(make_worker, caplog, monkeypatch):
    worker, endpoint = make_worker(strict=False)

    def broken(*args):
        raise ZeroDivisionError("a device bug")

    monkeypatch.setattr(worker, "_bus", type("Bus", (), {"read": staticmethod(broken)})())
    for ref in range(1, 21):
        endpoint.put(port(ref, SCR))
    endpoint.put(m.WorkerQuery(99, "devices"))

    def stop():
        worker.running = False

    endpoint.on_idle = stop
    worker.serve()
    assert worker.handler_errors == 20
    assert not [c for c in endpoint.sent if isinstance(c, m.AccessComplete)]  # no made-up value
    assert [r.ref for r in endpoint.sent if isinstance(r, m.WorkerQueryReply)] == [99]  # it went on
    lines = [r for r in caplog.records if "handler error" in r.getMessage()]
    assert 1 <= len(lines) <= 5 and "port_notify from the hypervisor" in lines[0].getMessage()


def test_a_strict_worker_re_raises_a_handler_error(make_worker, monkeypatch):
    worker, endpoint = make_worker()
    monkeypatch.setattr(worker, "_control", lambda msg: 1 / 0)
    endpoint.put(m.DeviceReset())
    endpoint.on_idle = lambda: setattr(worker, "running", False)
    with pytest.raises(ZeroDivisionError):
        worker.serve()


def test_a_clock_step_moves_the_devices_time_and_raises_what_fell_due(make_worker, monkeypatch):
    """`io clock_step`: the RTC's seconds move by the step, and a PIT tick programmed for
    10 ms comes out of the PIC at once (qtest's clock_step).  Host time stands still here,
    so only the step moves the devices' clock."""
    import worker.devices.base as base
    frozen = base.time.monotonic_ns()
    monkeypatch.setattr(base.time, "monotonic_ns", lambda: frozen)
    worker, endpoint = make_worker("gen1")
    for ref, (address, value) in enumerate([(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01),
                                            (0x21, 0xFE),  # only IRQ0 (the PIT) unmasked
                                            (0x43, 0x34), (0x40, 0x9C), (0x40, 0x2E),  # 100 Hz
                                            (0x20, 0x20)], start=1):  # EOI what unmasking raised
        worker.handle(m.encode(port(ref, address, value=value)))
    worker.handle(m.encode(port(20, 0x70, value=0x00)))
    worker.handle(m.encode(port(21, 0x71)))
    seconds = endpoint.sent[-1].value
    endpoint.sent.clear()
    worker.handle(m.encode(m.WorkerClockStep(5, 3_000_000_000)))
    assert [type(s) for s in endpoint.sent] == [m.AssertInterrupt, m.WorkerQueryReply]
    assert endpoint.sent[0].vector == 0x20
    assert endpoint.sent[1].ref == 5 and endpoint.sent[1].result["clock_offset_ns"] == 3_000_000_000
    worker.handle(m.encode(port(22, 0x70, value=0x00)))
    worker.handle(m.encode(port(23, 0x71)))
    bcd = lambda v: (v >> 4) * 10 + (v & 0xF)  # noqa: E731
    assert (bcd(endpoint.sent[-1].value) - bcd(seconds)) % 60 == 3


# -- servicing: device_save, exit-consistent checkpoints -------------------------------------


def checkpointed(make_worker, tmp_path, each_exit: bool):
    import os

    from proto.saved_state import CheckpointFile
    worker, endpoint = make_worker()
    cp = CheckpointFile(os.open(tmp_path / "cp.bin", os.O_RDWR | os.O_CREAT, 0o600))
    worker.keep_checkpoints(cp, 1, "alpha", each_exit=each_exit)
    return worker, endpoint, cp


def test_device_save_saves_every_device_and_freezes_the_worker(make_worker, tmp_path):
    worker, endpoint, cp = checkpointed(make_worker, tmp_path, each_exit=False)
    worker.handle(m.encode(port(1, SCR, value=0x77)))
    worker.handle(m.encode(m.DeviceSave(5, "save")))
    reply = endpoint.sent[-1]
    assert isinstance(reply, m.WorkerQueryReply) and reply.ref == 5 and reply.result["bytes"] > 0
    assert worker.frozen
    assert cp.latest()["sections"]["worker"]["com1"]["scr"] == 0x77
    worker.handle(m.encode(m.DeviceSave(6, "thaw")))
    assert not worker.frozen


def test_each_exit_saves_before_the_completion_and_a_resend_is_not_done_twice(make_worker, tmp_path):
    worker, endpoint, cp = checkpointed(make_worker, tmp_path, each_exit=True)
    worker.handle(m.encode(port(41, SCR, value=0x33)))
    record = cp.latest()
    assert record["sections"]["worker_access"] == {"ref": 41, "value": 0}
    assert record["sections"]["worker"]["com1"]["scr"] == 0x33
    # A successor restored from it, given the same access again (its predecessor died
    # before the completion went out), answers it from the record.
    succ, out = make_worker()
    succ.chipset.restore(record["sections"]["worker"])
    succ.keep_checkpoints(cp, 1, "alpha", record["sequence"], each_exit=True,
                          last_access=record["sections"]["worker_access"])
    succ.handle(m.encode(port(41, SCR, value=0x99)))  # not carried out: already done
    assert out.sent[-1].ref == 41
    assert succ.chipset.bus.read(SCR, 1) == 0x33
    succ.handle(m.encode(port(42, SCR, value=0x44)))
    assert succ.chipset.bus.read(SCR, 1) == 0x44


def test_the_interrupts_taken_are_numbered_saved_and_sent_again_by_a_successor(make_worker, tmp_path):
    """An INTA is saved before its assert_interrupt, which ZeroMQ sends in the background:
    a worker killed in between leaves a vector the hypervisor may never have had.  Each
    record holds the last ones taken; a successor restored from it sends them again,
    ``resent``, before anything else, and numbers its own after them."""
    import os

    from proto.saved_state import CheckpointFile
    worker, endpoint = make_worker("gen1")
    cp = CheckpointFile(os.open(tmp_path / "cp.bin", os.O_RDWR | os.O_CREAT, 0o600))
    worker.keep_checkpoints(cp, 1, "alpha", each_exit=True)
    for ref, (address, value) in enumerate([(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01),
                                            (0x21, 0xEF), (MCR, 0x08)], start=1):  # IRQ4 (COM1) only
        worker.handle(m.encode(port(ref, address, value=value)))
    worker.handle(m.encode(port(9, IER, value=0x02)))  # THRE: IRQ4 taken
    [irq] = [s for s in endpoint.sent if isinstance(s, m.AssertInterrupt)]
    assert (irq.vector, irq.seq, irq.resent) == (0x24, 1, False)
    record = cp.latest()
    assert record["sections"]["worker_interrupts"] == {"seq": 1, "taken": [[0x24, 1]], "reset": None,
                                                          "device_resets": 0}
    assert record["sections"]["worker"]["pic"]["master"]["isr"] == 1 << 4  # in service: waits for its EOI

    succ, out = make_worker("gen1")
    succ.chipset.restore(record["sections"]["worker"])
    succ.keep_checkpoints(cp, 1, "alpha", record["sequence"], each_exit=True,
                          last_access=record["sections"]["worker_access"],
                          interrupts=record["sections"]["worker_interrupts"])
    assert cp.latest()["sections"]["worker_interrupts"]["taken"] == [[0x24, 1]]  # a second death resends it too
    out.on_idle = lambda: setattr(succ, "running", False)
    succ.serve()
    first = out.sent[0]
    assert isinstance(first, m.AssertInterrupt) and (first.vector, first.seq, first.resent) == (0x24, 1, True)
    # Its own go on from its predecessor's numbers; a device_save holds none to resend
    # (they all went before its answer, on the same connection).
    succ.running = True
    succ.handle(m.encode(port(20, 0x20, value=0x20)))  # the guest's EOI
    succ.handle(m.encode(port(21, IER, value=0x00)))
    succ.handle(m.encode(port(22, IER, value=0x02)))  # THRE again
    assert [(s.seq, s.resent) for s in out.sent if isinstance(s, m.AssertInterrupt)] == [(1, True), (2, False)]
    succ.handle(m.encode(m.DeviceSave(30, "save")))
    assert cp.latest()["sections"]["worker_interrupts"] == {"seq": 2, "taken": [], "reset": None, "device_resets": 0}


def test_a_reset_request_is_numbered_saved_with_its_access_and_sent_again_by_a_successor(make_worker, tmp_path):
    """The i8042's reset pulse (0xFE to port 0x64): the access that made it is saved with
    the reset before its access_complete, and ZeroMQ may drop the reset_request with the
    worker.  A successor answers that access from the record — without pulsing the line
    again — so it sends the reset again, ``resent``, in its place among the interrupts."""
    import os

    from proto.saved_state import CheckpointFile
    worker, endpoint = make_worker("gen1")
    cp = CheckpointFile(os.open(tmp_path / "cp.bin", os.O_RDWR | os.O_CREAT, 0o600))
    worker.keep_checkpoints(cp, 1, "alpha", each_exit=True)
    worker.handle(m.encode(port(1, 0x64, value=0xFE)))
    [reset] = [s for s in endpoint.sent if isinstance(s, m.ResetRequest)]
    assert (reset.seq, reset.resent) == (1, False) and "i8042" in reset.reason
    record = cp.latest()
    assert record["sections"]["worker_interrupts"] == {"seq": 1, "taken": [], "reset": [reset.reason, 1],
                                                          "device_resets": 0}
    assert record["sections"]["worker_access"] == {"ref": 1, "value": 0}

    succ, out = make_worker("gen1")
    succ.chipset.restore(record["sections"]["worker"])
    succ.keep_checkpoints(cp, 1, "alpha", record["sequence"], each_exit=True,
                          last_access=record["sections"]["worker_access"],
                          interrupts=record["sections"]["worker_interrupts"])
    out.on_idle = lambda: setattr(succ, "running", False)
    succ.serve()
    assert [(type(s), s.seq, s.resent) for s in out.sent[:1]] == [(m.ResetRequest, 1, True)]
    succ.running = True
    succ.handle(m.encode(port(1, 0x64, value=0xFE)))  # the hypervisor's resend of the access
    assert [s.ref for s in out.sent if isinstance(s, m.AccessComplete)] == [1]
    assert sum(isinstance(s, m.ResetRequest) for s in out.sent) == 1  # answered from the record: no second pulse
    # The next reset goes on from the predecessor's count; a device_save's record holds none.
    succ.handle(m.encode(port(2, 0x64, value=0xFE)))
    assert [(s.seq, s.resent) for s in out.sent if isinstance(s, m.ResetRequest)] == [(1, True), (2, False)]
    succ.handle(m.encode(m.DeviceSave(30, "save")))
    assert cp.latest()["sections"]["worker_interrupts"] == {"seq": 2, "taken": [], "reset": None, "device_resets": 0}


def test_every_record_after_an_access_holds_it_until_the_next(make_worker, tmp_path):
    """An INTA's record written after an access's completion (still in ZeroMQ's queue when
    the worker dies) says the access was done: a successor answers its resend from the
    record instead of doing it again on a state that already holds it."""
    worker, endpoint, cp = checkpointed(make_worker, tmp_path, each_exit=True)
    worker.handle(m.encode(port(41, SCR, value=0x33)))
    worker._exit_checkpoint([])  # as an INTA's record would be (the PIC's)
    record = cp.latest()
    assert record["sections"]["worker_access"] == {"ref": 41, "value": 0}
    worker.handle(m.encode(port(42, SCR, value=0x44)))
    worker._exit_checkpoint([])
    assert cp.latest()["sections"]["worker_access"] == {"ref": 42, "value": 0}
    worker.handle(m.encode(m.DeviceSave(30, "save")))  # everything completed before its answer
    assert "worker_access" not in cp.latest()["sections"]


def test_a_numbered_device_reset_is_taken_once_and_recorded_with_every_device_at_power_on(make_worker, tmp_path):
    """The record after a device_reset holds every device's power-on state (not only the
    ones an access touches) and the count; a successor restored from it lets the
    hypervisor's catch-up for that reset pass, one from an older record takes it."""
    worker, endpoint, cp = checkpointed(make_worker, tmp_path, each_exit=True)
    worker.handle(m.encode(port(1, SCR, value=0x77)))
    before = cp.latest()
    worker.handle(m.encode(m.DeviceReset(1)))
    record = cp.latest()
    assert record["sections"]["worker"]["com1"]["scr"] == 0  # power-on, though no access touched it since
    assert record["sections"]["worker_interrupts"]["device_resets"] == 1
    worker.handle(m.encode(port(2, SCR, value=0x55)))
    worker.handle(m.encode(m.DeviceReset(1)))  # the same reset again: passed
    assert worker.chipset.bus.read(SCR, 1) == 0x55
    for rec, scr in ((cp.latest(), 0x55), (before, 0)):  # from the latest record, from one before the reset
        succ, _ = make_worker()
        succ.chipset.restore(rec["sections"]["worker"])
        succ.keep_checkpoints(cp, 1, "alpha", rec["sequence"], each_exit=True,
                              interrupts=rec["sections"]["worker_interrupts"])
        succ.handle(m.encode(m.DeviceReset(1)))
        assert succ.chipset.bus.read(SCR, 1) == scr
    worker.handle(m.encode(m.DeviceReset()))  # unnumbered: always taken
    assert worker.chipset.bus.read(SCR, 1) == 0


def test_a_frozen_worker_polls_no_device_even_when_an_access_or_a_control_message_comes(make_worker, tmp_path,
                                                                                          monkeypatch):
    """Saved for a successor (device_save), the worker's devices must not run here: a PIT
    tick that falls due is raised by the successor's restored PIC, not by this worker
    after an access or a query (review finding: handle() polled the devices anyway)."""
    import os

    import worker.devices.base as base
    from proto.saved_state import CheckpointFile
    now = [base.time.monotonic_ns()]
    monkeypatch.setattr(base.time, "monotonic_ns", lambda: now[0])
    worker, endpoint = make_worker("gen1")
    worker.keep_checkpoints(CheckpointFile(os.open(tmp_path / "cp.bin", os.O_RDWR | os.O_CREAT, 0o600)), 1, "alpha")
    for ref, (address, value) in enumerate([(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01),
                                            (0x21, 0xFE),  # only IRQ0 (the PIT) unmasked
                                            (0x43, 0x34), (0x40, 0x9C), (0x40, 0x2E),  # 100 Hz
                                            (0x20, 0x20)], start=1):  # EOI what unmasking raised
        worker.handle(m.encode(port(ref, address, value=value)))
    endpoint.sent.clear()
    now[0] += 15_000_000  # a tick fell due: not frozen, the serve loop's poll (it is due) raises it
    worker.handle(m.encode(port(30, SCR, value=1)))
    worker._poll_devices()
    assert any(isinstance(s, m.AssertInterrupt) for s in endpoint.sent)
    worker.handle(m.encode(port(31, 0x20, value=0x20)))  # EOI
    worker.handle(m.encode(m.DeviceSave(5, "save")))
    assert worker.frozen
    endpoint.sent.clear()
    now[0] += 50_000_000  # five ticks fall due while frozen
    worker.handle(m.encode(port(32, SCR, value=2)))
    worker.handle(m.encode(m.WorkerQuery(6, "ping")))
    worker._poll_devices()  # as the serve loop does when the deadline it had passes
    assert [type(s) for s in endpoint.sent] == [m.AccessComplete, m.WorkerQueryReply]
    assert worker._deadline is None
    worker.handle(m.encode(m.DeviceSave(7, "thaw")))  # the handover was given up: it runs again
    assert any(isinstance(s, m.AssertInterrupt) for s in endpoint.sent)


def test_a_gen1_worker_registers_the_vga_buffer_as_coalesced_before_its_memory_request(make_worker, tmp_path):
    (tmp_path / "pool").write_bytes(bytes(4096))
    (tmp_path / "slat").write_bytes(bytes(4))
    endpoint = FakeEndpoint({
        m.InstallIntercept: m.Ack(m.InstallIntercept.TYPE),
        m.CoalescedMmioRegister: m.Ack(m.CoalescedMmioRegister.TYPE),
        m.MemoryRequest: m.MemoryReply(str(tmp_path / "pool"), str(tmp_path / "slat"), ()),
    })
    worker, _ = make_worker("gen1", endpoint)
    worker.start(3)
    install, register, memory = endpoint.sent
    assert [list(z) for z in register.zones] == [[0xB8000, 0x8000]] and isinstance(memory, m.MemoryRequest)


def test_a_coalesced_batch_is_applied_in_order_and_answered_with_nothing(make_worker):
    worker, endpoint = make_worker("gen1")
    writes = ((0xB8000, 8, int.from_bytes(b"H\x07i\x07!\x07 \x07", "little")), (0xB8004, 2, 0x073F))
    worker.handle(m.encode(m.CoalescedMmioBatch(0, writes)))
    assert endpoint.sent == [] and worker.coalesced_writes == 2
    assert worker.chipset.screen().lines[0].startswith("Hi?")
    assert worker.chipset.device_stats().get("vga", "mmio_writes") == 2


def string(ref: int, address: int, size: int = 1, count: int = 0, data: bytes | None = None) -> m.PortStringNotify:
    """A REP INS (``count`` elements) or, with ``data``, a REP OUTS, as the hypervisor forwards it."""
    if data is not None:
        count = len(data) // size
    return m.PortStringNotify(ref, 0, address, size, data is not None, count, data or b"", (100, 200))


def test_rep_outs_and_rep_ins_are_each_element_in_order_and_one_completion(make_worker):
    worker, endpoint = make_worker()
    worker.handle(m.encode(string(1, SCR, data=b"\x11\x22\x33")))
    assert worker.chipset.bus.read(SCR, 1) == 0x33  # the last element written is the one it holds
    worker.handle(m.encode(string(2, SCR, count=3)))
    outs, ins = endpoint.sent
    assert (outs.ref, outs.data) == (1, b"")
    assert (ins.ref, ins.data) == (2, b"\x33" * 3)
    assert len(ins.stamps) == 4 and ins.stamps[:2] == (100, 200)


def test_a_string_read_the_bus_refuses_is_all_ones_for_every_element(make_worker):
    worker, endpoint = make_worker()
    worker.handle(m.encode(string(1, COM1, size=2, count=3)))  # the UART takes bytes only
    worker.handle(m.encode(string(2, 0x80, count=2)))  # nobody's port
    assert [(c.ref, c.data) for c in endpoint.sent] == [(1, b"\xff" * 6), (2, b"\xff\xff")]


def test_each_exit_saves_a_string_access_with_its_data_and_a_resend_is_answered_from_the_record(make_worker,
                                                                                                 tmp_path):
    worker, endpoint, cp = checkpointed(make_worker, tmp_path, each_exit=True)
    worker.handle(m.encode(string(51, SCR, data=b"\x01\x02")))
    worker.handle(m.encode(string(52, SCR, count=2)))
    record = cp.latest()
    assert record["sections"]["worker_access"] == {"ref": 52, "value": 0, "data": b"\x02\x02"}
    succ, out = make_worker()
    succ.chipset.restore(record["sections"]["worker"])
    succ.keep_checkpoints(cp, 1, "alpha", record["sequence"], each_exit=True,
                          last_access=record["sections"]["worker_access"])
    succ.chipset.bus.write(SCR, 1, 0x77)  # were the read done again, it would read this
    succ.handle(m.encode(string(52, SCR, count=2)))
    assert (out.sent[-1].ref, out.sent[-1].data) == (52, b"\x02\x02")
