"""The VM worker's event loop: one partition's devices behind one DEALER.

It says hello as the partition's worker, installs its port and MMIO ranges in the
hypervisor's intercept table, then serves ``port_notify``/``mmio_notify`` → device →
``access_complete`` until told to stop.  Between messages it keeps the clocked devices (PIT,
RTC, UART) up to date, waking at their next deadline.

Interrupts: when an access or a timer leaves the PIC's INTR high, the worker takes the
vector (INTA) and sends ``assert_interrupt`` *before* the access's ``access_complete``, so the
hypervisor can deliver it with that very resume.  Work that does not change what the guest
sees — device polling, console output — happens after the completion is sent, so the
measured round trip does not pay for it.
"""

from __future__ import annotations

import logging
import time
from time import perf_counter_ns

from proto import messages as m
from proto.errors import ProtocolError, Refused
from proto.memory import GuestMemory
from proto.transport import Dealer, connect

from worker.backends import ConsoleLog
from worker.chipset import Chipset

log = logging.getLogger("worker")

IDLE_POLL_MS = 100
MAX_INPUT_BACKLOG = 1 << 16
# Console bytes wait at most this long before they are written out.
CONSOLE_FLUSH_NS = 20_000_000


class Worker:
    def __init__(self, endpoint: str, partition_id: int, token: str, chipset: Chipset,
                 console: ConsoleLog) -> None:
        self.partition_id = partition_id
        self.chipset = chipset
        self.running = True
        self.console = console  # what the chipset's UARTs write to
        self._deadline: int | None = None
        self._backlog: dict[str, bytearray] = {}
        self.dealer: Dealer = connect(endpoint, "worker", partition_id, 0, token=token)
        ports = [[r.base, r.count] for r in chipset.bus.ranges()]
        mmio = [[r.base, r.length] for r in chipset.mmio.ranges()]
        self.dealer.request(m.InstallIntercept(ports, mmio))
        # The partition's memory, for devices that do DMA (none of today's do).
        where = self.dealer.request(m.MemoryRequest(partition_id))
        chipset.memory = GuestMemory(where.pool, where.slat)
        log.info("worker for partition %d ready: ports %s; MMIO %s", partition_id,
                 ", ".join(f"{b:#x}+{c}" for b, c in ports), ", ".join(f"{b:#x}+{c:#x}" for b, c in mmio) or "none")

    def _flush_console(self) -> None:
        self.dealer.send(m.ConsoleOutput(self.console.take()).encode())

    def _signal_chipset(self) -> None:
        """Tell the hypervisor what the last access or timer did to the CPU's pins."""
        chipset = self.chipset
        if chipset.intr:
            now = perf_counter_ns()
            for vector, raised in chipset.take_interrupts():
                self.dealer.send(m.AssertInterrupt(vector, (raised, now)).encode())
        if chipset.reset_requested:
            self.dealer.send(m.ResetRequest(chipset.reset_requested).encode())
            chipset.reset_requested = ""

    def _feed_input(self) -> None:
        for device, backlog in self._backlog.items():
            if backlog:
                feed = self.chipset.console_input if device == "console" else self.chipset.keyboard_input
                del backlog[:feed(bytes(backlog))]

    def _poll_devices(self) -> None:
        if self._backlog:
            self._feed_input()
        self._deadline = self.chipset.bus.poll(time.monotonic_ns())
        self._signal_chipset()

    def serve(self) -> None:
        dealer, chipset = self.dealer, self.chipset
        bus, mmio = chipset.bus, chipset.mmio
        send, wait, recv = dealer.send, dealer.wait, dealer.recv_ready
        PortNotify, MmioNotify, AccessComplete, decode = m.PortNotify, m.MmioNotify, m.AccessComplete, m.decode
        self._poll_devices()
        while self.running:
            timeout = IDLE_POLL_MS
            if self.console.pending:
                timeout = 1
            if self._deadline is not None:
                timeout = max(0, min(timeout, -(-(self._deadline - time.monotonic_ns()) // 1_000_000)))
            if any(self._backlog.values()):
                timeout = min(timeout, 10)  # keep feeding input as the guest drains it
            if not wait(timeout):
                if self.console.pending:
                    self._flush_console()
                self._poll_devices()
                continue
            frame = recv()
            t_in = perf_counter_ns()
            try:
                msg = decode(frame)
            except ProtocolError as e:
                log.error("undecodable message from the hypervisor: %s", e)
                continue
            cls = msg.__class__
            if cls is PortNotify or cls is MmioNotify:
                if cls is PortNotify:
                    if msg.write:
                        bus.write(msg.port, msg.size, msg.value)
                        value = 0
                    else:
                        value = bus.read(msg.port, msg.size)
                elif msg.write:
                    mmio.write(msg.gpa, msg.size, msg.value)
                    value = 0
                else:
                    value = mmio.read(msg.gpa, msg.size)
                if chipset.intr or chipset.reset_requested:
                    self._signal_chipset()
                send(AccessComplete(msg.ref, value, msg.stamps + (t_in, perf_counter_ns())).encode())
                # After the completion: the access may have moved a device's deadline.
                self._poll_devices()
            else:
                self._control(msg)
            if self.console.pending and time.monotonic_ns() - self.console.since_ns > CONSOLE_FLUSH_NS:
                self._flush_console()
        self.close()

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
            self._signal_chipset()
        elif cls is m.DeviceReset:
            log.info("partition reset: devices to power-on")
            self.chipset.reset()
            self._poll_devices()
        elif cls is m.WorkerQuery:
            result = self.chipset.screen() if msg.query == "screen" else self.chipset.device_stats()
            self.dealer.send(m.WorkerQueryReply(msg.ref, result).encode())
        elif cls is m.ErrorReply:
            log.error("hypervisor refused %s: %s", m.REGISTRY.get(msg.ref_type, m.Message).__name__,
                      Refused(msg.code, msg.message))
        else:
            log.error("unexpected %s from the hypervisor", msg.NAME)

    def close(self) -> None:
        self.console.close()
        self.chipset.close()
        self.dealer.close()
