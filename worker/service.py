"""The VM worker's event loop: one partition's devices behind one endpoint.

:class:`Worker` is handed an endpoint that has already said hello as the partition's worker
(``__main__`` connects it), so nothing in it opens a socket and a test can drive it with a
fake endpoint that still speaks the wire format.  :meth:`Worker.start` installs the
chipset's port and MMIO ranges in the hypervisor's intercept table and maps the partition's
memory; :meth:`Worker.serve` then answers ``port_notify``/``mmio_notify`` → device →
``access_complete`` (:meth:`Worker.handle`, one frame) until told to stop.  Between messages
it keeps the clocked devices (PIT, RTC, UART) up to date, waking at their next deadline.

Interrupts: when an access or a timer leaves the PIC's INTR high, the worker takes the
vector (INTA) and sends ``assert_interrupt`` *before* the access's ``access_complete``, so the
hypervisor can deliver it with that very resume.  Work that does not change what the guest
sees — device polling, console output — happens after the completion is sent, so the
measured round trip does not pay for it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from time import perf_counter_ns
from typing import Protocol

from proto import messages as m
from proto import saved_state
from proto.errors import PeerTimeout, ProtocolError, Refused
from proto.memory import GuestMemory
from proto.status import QUERY_ERROR

from worker.backends import ConsoleLog
from worker.chipset import Chipset
from worker.devices.base import ChipsetDevice, IoError, all_ones

log = logging.getLogger("worker")

IDLE_POLL_MS = 100
MAX_INPUT_BACKLOG = 1 << 16
# Console bytes wait at most this long before they are written out.
CONSOLE_FLUSH_NS = 20_000_000
HANDLER_ERROR_LOGS_PER_S = 5
STARTUP_REPLY_MS = 5000
# The interrupts taken last that every checkpoint holds for a successor to send again: a
# vector taken and never delivered stays in the PIC's ISR until the guest's EOI, so at most
# one per IRQ level (15) can be waiting for its assert_interrupt to arrive; the hypervisor
# drops the ones it had (AssertInterrupt.seq).
RESEND_TAKEN = 16


class Endpoint(Protocol):
    """What the worker needs of its connection to the hypervisor (a connected
    :class:`proto.transport.Dealer`)."""

    def send(self, frame: bytes) -> None: ...

    def wait(self, timeout_ms: int) -> bool: ...

    def recv_ready(self) -> bytes: ...

    def close(self) -> None: ...


class Worker:
    def __init__(self, dealer: Endpoint, chipset: Chipset, console: ConsoleLog, strict: bool = False) -> None:
        """``strict``: a handler's exception is re-raised after it is counted (tests)."""
        self.dealer = dealer
        self.strict = strict
        self.handler_errors = 0
        self._errors_second = 0
        self._errors_logged = 0
        self.chipset = chipset
        self.console = console  # what the chipset's UARTs write to
        self.running = True
        self._deadline: int | None = None
        self._backlog: dict[str, bytearray] = {}
        self._early: deque[bytes] = deque()  # frames that came while start() awaited a reply
        # Bound once: handle() runs for every guest access.
        self._send = dealer.send
        self._bus = chipset.bus
        self._clock_now = chipset.clock.now_ns
        # INTR's level read here, not through the ``intr`` property: 0.6k instructions a
        # test, two tests per access (cachegrind).
        self._intr_out = chipset.intr_out
        self._mmio = chipset.mmio
        # Worker servicing: the checkpoint file (proto.saved_state.CheckpointFile) and the
        # partition it is for; ``frozen`` once a device_save has saved the devices for a
        # successor (nothing changes a device from then on).
        self.checkpoints: saved_state.CheckpointFile | None = None
        self.identity: tuple[int, str] = (0, "")
        self.sequence = 0
        self.frozen = False
        self.each_exit = False
        self.coalesced_writes = 0  # stores that came in coalesced MMIO batches
        # The interrupts the devices have taken (INTA), numbered across handovers
        # (AssertInterrupt.seq), and the last RESEND_TAKEN of them as (vector, seq): each
        # checkpoint holds them, for a successor to send again (:meth:`_resend_taken`).
        self.interrupt_seq = 0
        self._taken: deque[tuple[int, int]] = deque(maxlen=RESEND_TAKEN)
        # The last reset the chipset requested as (reason, seq), from the same count
        # (ResetRequest): each checkpoint holds it too.
        self._reset: tuple[str, int] | None = None
        # The partition resets the devices have been put through (DeviceReset.resets),
        # carried across handovers in each record, so that a successor takes a reset once.
        self.device_resets = 0
        # The last access completed (its ref and value), in every ``each_exit`` record: a
        # record an interrupt or a reset wrote after it still says it was done.
        self._completed: dict | None = None

    def start(self, partition_id: int, memory: GuestMemory | None = None) -> None:
        """Claim the chipset's ranges in the hypervisor's intercept table and map the
        partition's memory (for devices that do DMA; none of today's do): ``memory`` when
        the launcher handed it over (a confined worker could not open the files the
        hypervisor names), else those files."""
        ports = [[r.base, r.count] for r in self.chipset.bus.ranges()]
        mmio = [[r.base, r.length] for r in self.chipset.mmio.ranges()]
        self._startup_request(m.InstallIntercept(ports, mmio), m.Ack)
        coalesced = [[r.base, r.length] for r in self.chipset.mmio.ranges() if r.coalesced]
        if coalesced:  # before the memory request, the hypervisor's sign that start-up is over
            self._startup_request(m.CoalescedMmioRegister(coalesced), m.Ack)
        # Asked even when the memory was handed over: the hypervisor takes it as the last
        # request of the worker's start-up (from then on it serves and is health-checked).
        where = self._startup_request(m.MemoryRequest(partition_id), m.MemoryReply)
        self.chipset.memory = memory if memory is not None else GuestMemory(where.ram, where.slat)
        log.info("worker for partition %d ready: ports %s; MMIO %s", partition_id,
                 ", ".join(f"{b:#x}+{c}" for b, c in ports),
                 ", ".join(f"{b:#x}+{c:#x}" for b, c in mmio) or "none")

    def keep_checkpoints(self, checkpoints: saved_state.CheckpointFile, partition_id: int, name: str,
                         sequence: int = 0, each_exit: bool = False, last_access: dict | None = None,
                         interrupts: dict | None = None) -> None:
        """Save the devices into ``checkpoints`` when the hypervisor asks (``device_save``)
        and, with ``each_exit`` (a partition restarted when its worker dies), at every
        completed access and every interrupt taken: see :meth:`_exit_checkpoint`.  Records
        are numbered after ``sequence``; ``last_access`` and ``interrupts`` are the
        restored record's (a successor answers its resend from the one and sends the
        other's taken interrupts again: :meth:`_resend_taken`)."""
        self.checkpoints = checkpoints
        self.identity = (partition_id, name)
        self.sequence = sequence
        self.each_exit = each_exit
        self._saved = self.chipset.save()  # each device's last saved value, by name
        self._last_access = last_access
        if interrupts is not None:
            self.interrupt_seq = interrupts["seq"]
            self._taken.extend((vector, seq) for vector, seq in interrupts["taken"])
            if interrupts.get("reset"):
                self._reset = tuple(interrupts["reset"])
            self.device_resets = interrupts.get("device_resets", 0)
        self._clocked = [d.name for d in self.chipset.devices if type(d).poll is not ChipsetDevice.poll]
        self._pic = [self.chipset.pic.name] if self.chipset.pic is not None else []
        if each_exit:  # with the restored access: a resend after a second death is answered too
            self._write(last_access)

    def checkpoint(self) -> int:
        """Every device's state, now, as the next record of the checkpoint file; its size.
        Called between messages only, so it holds the effect of every access completed so
        far and of none half done."""
        self._saved = self.chipset.save()
        # Every interrupt taken and reset requested so far reached the hypervisor before
        # the save's answer, which follows them on this connection: a successor has none
        # to send again.
        return self._write(save=True)

    def _write(self, completed: dict | None = None, save: bool = False) -> int:
        """The next record.  ``completed``: the access it completes; every later record of an
        ``each_exit`` worker holds it too, until the next — else a worker killed after an
        INTA's record, with that access's completion still in ZeroMQ's queue, would leave a
        successor that does the resent access again on a state that already holds it.
        ``save``: a device_save's record, which holds nothing for a successor to send again
        or answer (no interrupts, reset or access): all of it went before the save's answer."""
        self.sequence += 1
        if completed is not None:
            self._completed = completed
        sections = {"worker": self._saved,
                    "worker_interrupts": {"seq": self.interrupt_seq,
                                          "taken": [] if save else [list(t) for t in self._taken],
                                          "reset": list(self._reset) if self._reset and not save else None,
                                          "device_resets": self.device_resets}}
        if self._completed is not None and not save:
            sections["worker_access"] = self._completed
        data = saved_state.encode(*self.identity, sections, sequence=self.sequence)
        self.checkpoints.write(data)
        return len(data)

    def _exit_checkpoint(self, devices, completed: dict | None = None) -> None:
        """``each_exit``: the devices an event touched, saved before anyone outside hears
        of it — an access before its access_complete (with its ref and value: a successor
        given it again answers from the record instead of doing it twice), an interrupt
        taken (INTA) before its assert_interrupt.  The other devices keep their last
        saved values: what changed there since only the clock did (their time, frozen as
        in a pause) and the guest has not seen.  Costs a device's save and a record write
        (tens of µs) per access: only partitions with ``on_worker_exit = "restart"``."""
        for name in devices:
            self._saved[name] = self.chipset.by_name[name].save()
        self._write(completed)

    def _startup_request(self, msg: m.Message, reply: type, timeout_ms: int = STARTUP_REPLY_MS) -> m.Message:
        """Send a start-up request and return its reply.  The next frame is not always the
        reply: once the ranges are installed the hypervisor may forward a guest's access
        (the partition may already run) or the root's input before the memory reply.  Such
        frames are kept, in order, for :meth:`serve` to handle first (before, the reply was
        taken to be whatever came next, and the worker died on an access)."""
        self.dealer.send(msg.encode())
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.dealer.wait(max(1, int(left * 1000))):
                raise PeerTimeout(f"no {reply.NAME} to {msg.NAME} within {timeout_ms} ms")
            frame = self.dealer.recv_ready()
            try:
                got = m.decode(frame)
            except ProtocolError:
                self._early.append(frame)  # handle() logs it, as any undecodable frame
                continue
            if isinstance(got, m.ErrorReply) and got.ref_type == msg.TYPE:
                raise Refused(got.code, got.message)
            if isinstance(got, reply) and (reply is not m.Ack or got.ref_type == msg.TYPE):
                return got
            self._early.append(frame)

    def _flush_console(self) -> None:
        self.dealer.send(m.ConsoleOutput(self.console.take()).encode())

    def _signal_chipset(self) -> None:
        """Tell the hypervisor what the last access or timer did to the CPU's pins."""
        chipset = self.chipset
        if chipset.intr:
            now = perf_counter_ns()
            first = self.interrupt_seq + 1
            taken = [(vector, raised, seq) for seq, (vector, raised) in enumerate(chipset.take_interrupts(), first)]
            self.interrupt_seq += len(taken)
            if self.each_exit:  # what raised it (a clocked device, or the access) and the PIC
                self._taken.extend((vector, seq) for vector, _, seq in taken)
                self._exit_checkpoint(self._clocked + self._pic)
            for vector, raised, seq in taken:
                self.dealer.send(m.AssertInterrupt(vector, (raised, now), seq).encode())
        if chipset.reset_requested:
            self.interrupt_seq += 1
            if self.each_exit:  # saved with the access that pulsed the line (_handle_saved)
                self._reset = (chipset.reset_requested, self.interrupt_seq)
            self.dealer.send(m.ResetRequest(chipset.reset_requested, self.interrupt_seq).encode())
            chipset.reset_requested = ""

    def _feed_input(self) -> None:
        for device, backlog in list(self._backlog.items()):
            if backlog:
                feed = self.chipset.console_input if device == "console" else self.chipset.keyboard_input
                del backlog[:feed(bytes(backlog))]
            if not backlog:
                del self._backlog[device]  # so that an empty ``_backlog`` means no input waits

    def _resend_taken(self) -> None:
        """A successor's first word: the interrupts its predecessor took last, sent again
        (``resent``) before anything it raises itself.  The predecessor saved each INTA
        before its assert_interrupt, but ZeroMQ sends in the background: killed just after
        one, it may have taken a vector the hypervisor never got — one the guest will never
        EOI, which holds that IRQ and every lower one in the PIC's ISR for good (a guest
        halted for its disk interrupt then sleeps forever).  The last reset its
        predecessor requested goes again too, in its place by ``seq``: the access that
        pulsed the line, if resent, is answered from the record, not done again.  The
        hypervisor takes each only if it never got it (by ``seq``)."""
        # (Called once, as serve() starts: what ``_taken`` and ``_reset`` hold then is what
        # keep_checkpoints restored — a worker that was not restored has none.)
        now = perf_counter_ns()
        events = [(seq, m.AssertInterrupt(vector, (now, now), seq, True)) for vector, seq in self._taken]
        if self._reset is not None:
            reason, seq = self._reset
            events.append((seq, m.ResetRequest(reason, seq, True)))
        events.sort(key=lambda e: e[0])
        for _, msg in events:
            self.dealer.send(msg.encode())
        if events:
            log.info("sent again the %d interrupts and %d reset its predecessor took and requested "
                     "last (seq %d-%d)", len(self._taken), self._reset is not None, events[0][0], events[-1][0])

    def _poll_devices(self, due_only: bool = False) -> None:
        """Bring the clocked devices up to date and signal what they raised — unless the
        worker is frozen (saved for a successor by device_save): its devices no longer run
        here, whatever message comes (an access, a query, a reset).  ``due_only`` (the serve
        loop's timer): only the devices whose deadline has come (``PortBus.poll_due``),
        unless input was fed, which moves its device."""
        if self.frozen:
            self._deadline = None
            return
        if self._backlog:
            self._feed_input()
            due_only = False
        bus, now = self.chipset.bus, self._clock_now()
        self._deadline = bus.poll_due(now) if due_only else bus.poll(now)
        self._signal_chipset()

    def _after_port_access(self, port: int) -> None:
        """:meth:`_poll_devices` after a port access: only the devices it may have moved
        are polled (``PortBus.deadline_after``), unless input waits or the worker is frozen."""
        if self.frozen or self._backlog:
            return self._poll_devices()
        self._deadline = self._bus.deadline_after(port, self._clock_now)
        if self._intr_out.level or self.chipset.reset_requested:
            self._signal_chipset()

    def serve(self) -> None:
        """Answer the hypervisor until ``running`` is cleared (SIGTERM), then close."""
        wait, recv, handle, console = self.dealer.wait, self.dealer.recv_ready, self.handle, self.console
        self._resend_taken()
        self._poll_devices()
        while self._early and self.running:  # what came during start-up, in order
            frame = self._early.popleft()
            try:
                handle(frame)
            except Exception as e:
                self._handler_failed(frame, e)
        while self.running:
            timeout = IDLE_POLL_MS
            if console.pending:
                timeout = 1
            if self._deadline is not None:
                left = self._deadline - self._clock_now()
                if left <= 0:  # a device is due (it fell due while a message was handled)
                    self._poll_devices(due_only=True)
                    continue
                timeout = min(timeout, -(-left // 1_000_000))
            if self._backlog:  # input waits (_feed_input drops a drained backlog)
                timeout = min(timeout, 10)  # keep feeding input as the guest drains it
            if not wait(timeout):
                if console.pending:
                    self._flush_console()
                self._poll_devices(due_only=True)
                continue
            frame = recv()
            try:
                handle(frame)
            except Exception as e:  # one guard per message: a device's bug does not end the partition
                self._handler_failed(frame, e)
            if console.pending and time.monotonic_ns() - console.since_ns > CONSOLE_FLUSH_NS:
                self._flush_console()
        self.close()

    def handle(self, frame: bytes) -> None:
        """One frame from the hypervisor: an access to emulate, answered at once with its
        ``access_complete`` (after any interrupt it raised), or a control message."""
        t_in = perf_counter_ns()
        try:
            msg = m.decode(frame)
        except ProtocolError as e:
            log.error("undecodable message from the hypervisor: %s", e)
            return
        cls = msg.__class__
        if self.each_exit and cls in (m.PortNotify, m.MmioNotify):
            return self._handle_saved(msg, t_in)
        if cls is m.PortNotify:
            # The bus's device view, not its guest view (read/write): one call less per
            # access, 0.46k instructions (cachegrind).  A write's IoError is dropped, as
            # write() does; a read's becomes all-ones, as read() does.
            if msg.write:
                self._bus.io_write(msg.port, msg.size, msg.value)
                value = 0
            else:
                value = self._bus.io_read(msg.port, msg.size)
                if value.__class__ is IoError:
                    value = all_ones(msg.size)
        elif cls is m.MmioNotify:
            if msg.write:
                self._mmio.write(msg.gpa, msg.size, msg.value)
                value = 0
            else:
                value = self._mmio.read(msg.gpa, msg.size)
        elif cls is m.PortStringNotify:
            return self._string_access(msg, t_in)
        else:
            self._control(msg)
            return
        if self._intr_out.level or self.chipset.reset_requested:
            self._signal_chipset()
        self._send(m.AccessComplete.pack(msg.ref, value, msg.stamps + (t_in, perf_counter_ns())))
        # After the completion: the access may have moved its device's deadline.  (An MMIO
        # access polls them all: it is rare, the VGA's stores come coalesced.)
        if cls is m.PortNotify:
            self._after_port_access(msg.port)
        else:
            self._poll_devices()

    def _handle_saved(self, msg, t_in: int) -> None:
        """:meth:`handle` with ``each_exit`` checkpoints (:meth:`_exit_checkpoint`)."""
        last = self._recorded(msg.ref)
        if last is not None:
            value = last["value"]
        else:
            is_port = msg.__class__ is m.PortNotify
            bus = self._bus if is_port else self._mmio
            port = msg.port if is_port else msg.gpa
            if msg.write:
                bus.write(port, msg.size, msg.value)
                value = 0
            else:
                value = bus.read(port, msg.size)
            if self.chipset.intr or self.chipset.reset_requested:
                self._signal_chipset()
            self._save_access(bus, port, {"ref": msg.ref, "value": value})
        self._send(m.AccessComplete.pack(msg.ref, value, msg.stamps + (t_in, perf_counter_ns())))
        if msg.__class__ is m.PortNotify:
            self._after_port_access(msg.port)
        else:
            self._poll_devices()

    def _recorded(self, ref: int) -> dict | None:
        """The restored record of access ``ref``, if the hypervisor resent an access our
        predecessor completed and saved, then died before its completion went out: it is
        answered from the record, not done again.  Asked at the first access only (resends
        come first, if at all)."""
        last, self._last_access = self._last_access, None
        return last if last is not None and last["ref"] == ref else None

    def _save_access(self, bus, address: int, completed: dict) -> None:
        """``each_exit``: the device at ``address`` and the PIC saved with the access's
        completion, before the completion goes out."""
        device = bus.device_at(address)
        self._exit_checkpoint(([device.name] if device is not None else []) + self._pic, completed)

    def _string_access(self, msg: m.PortStringNotify, t_in: int) -> None:
        """REP INS/OUTS: ``count`` accesses of the port, in order, as the CPU would make them
        one by one (a read that fails reads all-ones, a write that fails is dropped), then
        one completion; with ``each_exit`` checkpoints, saved first, as :meth:`_handle_saved`."""
        last = self._recorded(msg.ref) if self.each_exit else None
        if last is not None and "data" in last:
            data = last["data"]
        else:
            bus = self._bus
            if msg.write:
                bus.write_string(msg.port, msg.size, msg.data)
                data = b""
            else:
                data = bus.read_string(msg.port, msg.size, msg.count)
            if self._intr_out.level or self.chipset.reset_requested:
                self._signal_chipset()
            if self.each_exit:
                self._save_access(bus, msg.port, {"ref": msg.ref, "value": 0, "data": data})
        self._send(m.StringAccessComplete.pack(msg.ref, data, msg.stamps + (t_in, perf_counter_ns())))
        self._after_port_access(msg.port)

    def _handler_failed(self, frame: bytes, e: Exception) -> None:
        """A handler raised: a bug of ours (the hypervisor only sends well-formed messages).
        Counted and logged — at most HANDLER_ERROR_LOGS_PER_S lines a second, the first with
        its traceback — and the loop goes on; the access it was emulating is not completed
        (the hypervisor's timeout handles it: a device that failed made up no data)."""
        self.handler_errors += 1
        second = int(time.monotonic())
        if second != self._errors_second:
            self._errors_second, self._errors_logged = second, 0
        self._errors_logged += 1
        if self._errors_logged <= HANDLER_ERROR_LOGS_PER_S:
            name = m.REGISTRY[frame[1]].NAME if len(frame) > 1 and frame[1] in m.REGISTRY else "?"
            log.error("handler error: %s from the hypervisor: %s: %s (%d so far)", name, type(e).__name__,
                      str(e)[:200], self.handler_errors, exc_info=self._errors_logged == 1)
        if self.strict:
            raise

    def _control(self, msg: m.Message) -> None:
        cls = msg.__class__
        if cls is m.DeviceInput:
            # Input waits here until the device has room (a 16-byte FIFO, a 16-key
            # buffer), as a host's input queue does; bounded, so a flood cannot grow it.
            backlog = self._backlog.setdefault(msg.device, bytearray())
            room = MAX_INPUT_BACKLOG - len(backlog)
            if room < len(msg.data):
                log.warning("%s input backlog full: %d bytes dropped", msg.device, len(msg.data) - room)
            backlog += msg.data[:max(0, room)]
            self._feed_input()
            if not self.frozen:  # what it fed may have moved a deadline (the UART's receive timeout)
                self._deadline = self._bus.poll(self.chipset.clock.now_ns())
            self._signal_chipset()
        elif cls is m.DeviceReset:
            if msg.resets and msg.resets <= self.device_resets:
                # A handover's catch-up (hypervisor/servicing.py) for a reset this worker's
                # devices were already put through (its record said so).
                return
            log.info("partition reset: devices to power-on")
            self.chipset.reset()
            self.device_resets = max(self.device_resets, msg.resets)
            if self.each_exit:
                # Every device changed, not only the ones an access or a tick touches: the
                # record must hold their power-on state, or a successor would restore the
                # untouched ones as they were before the reset.
                self._saved = self.chipset.save()
                self._write()
            self._poll_devices()
        elif cls is m.WorkerQuery:
            if msg.query == "ping":  # the hypervisor's health check: an answer is all it wants
                result = {}
            else:
                answer = self.chipset.screen() if msg.query == "screen" else self.chipset.device_stats()
                result = answer.to_wire() if answer is not None else {QUERY_ERROR: "this partition has no VGA"}
            self.dealer.send(m.WorkerQueryReply(msg.ref, result).encode())
        elif cls is m.WorkerClockStep:
            # `io clock_step`: the devices' time jumps forward; what fell due in between
            # (PIT and RTC interrupts) is raised now, as the poll catches up.
            self.chipset.clock.step(msg.ns)
            self._poll_devices()
            self.dealer.send(m.WorkerQueryReply(msg.ref, {"clock_offset_ns": self.chipset.clock.offset_ns}).encode())
        elif cls is m.CoalescedMmioBatch:
            self._coalesced_batch(msg)
        elif cls is m.DeviceSave:
            self._device_save(msg)
        elif cls is m.ErrorReply:
            log.error("hypervisor refused %s: %s", m.REGISTRY.get(msg.ref_type, m.Message).__name__,
                      Refused(msg.code, msg.message))
        else:
            log.error("unexpected %s from the hypervisor", msg.NAME)

    def _coalesced_batch(self, msg: m.CoalescedMmioBatch) -> None:
        """Stores a VP made to coalesced MMIO (checked by the hypervisor against our
        zones), applied in order and answered with nothing; the bus checks each again and
        counts a bad one as any guest mistake."""
        write = self._mmio.write
        for gpa, size, value in msg.writes:
            write(gpa, size, value)
        self.coalesced_writes += len(msg.writes)
        if self.each_exit:
            devices = {d.name for d in (self._mmio.device_at(gpa) for gpa, _, _ in msg.writes) if d is not None}
            self._exit_checkpoint(sorted(devices))
        if self.chipset.intr or self.chipset.reset_requested:
            self._signal_chipset()

    def _device_save(self, msg: m.DeviceSave) -> None:
        """Servicing (hypervisor/servicing.py): ``save`` the devices for a successor and
        freeze — no polling, so no timer interrupt is raised here that the successor's
        restored PIC would raise again — or ``thaw`` (the handover was given up)."""
        if msg.action == "thaw":
            self.frozen = False
            self._poll_devices()
            result = {"frozen": False}
        elif self.checkpoints is None:
            result = {QUERY_ERROR: "this worker keeps no checkpoint file"}
        else:
            t0 = perf_counter_ns()
            if self.console.pending:
                self._flush_console()  # what the guest wrote before the pause goes out first
            size = self.checkpoint()
            self.frozen = True
            self._deadline = None  # no device runs here now: nothing to wake for
            result = {"sequence": self.sequence, "bytes": size, "save_us": (perf_counter_ns() - t0) // 1000}
            log.info("devices saved for a successor (record %d, %d bytes); frozen", self.sequence, size)
        self.dealer.send(m.WorkerQueryReply(msg.ref, result).encode())

    def close(self) -> None:
        self.console.close()
        self.chipset.close()
        self.dealer.close()
