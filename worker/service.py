"""The VM worker's event loop: one partition's devices behind one DEALER.

It says hello as the partition's worker, installs its port ranges in the hypervisor's
intercept table, then serves ``io_notify`` → device → ``io_complete`` until told to stop.
Console bytes the UART transmits are appended to the partition's console file and sent to
the hypervisor for live watchers; they are flushed between intercepts, not inside one, so
the measured round trip does not pay for them.
"""

from __future__ import annotations

import logging
import os
import time
from time import perf_counter_ns

from proto import messages as m
from proto.errors import ProtocolError, Refused
from proto.transport import Dealer, connect

from worker.bus import PortBus
from worker.chipset import Chipset

log = logging.getLogger("worker")

IDLE_POLL_MS = 100
# Console bytes wait at most this long before they are written out.
CONSOLE_FLUSH_NS = 20_000_000


class Worker:
    def __init__(self, endpoint: str, partition_id: int, token: str, chipset: Chipset,
                 console_path: str) -> None:
        self.partition_id = partition_id
        self.chipset = chipset
        self.bus: PortBus = chipset.bus
        self.running = True
        self._console_fd = os.open(console_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._console_buf = bytearray()
        self._console_since = 0
        chipset.on_console_tx = self._console_tx
        self.dealer: Dealer = connect(endpoint, "worker", partition_id, 0, token=token)
        ranges = [[r.base, r.count] for r in self.bus.ranges()]
        self.dealer.request(m.InstallIntercept(ranges))
        log.info("worker for partition %d ready: %s", partition_id,
                 ", ".join(f"{b:#x}+{c}" for b, c in ranges))

    def _console_tx(self, data: bytes) -> None:
        if not self._console_buf:
            self._console_since = time.monotonic_ns()
        self._console_buf += data

    def _flush_console(self) -> None:
        data = bytes(self._console_buf)
        self._console_buf.clear()
        os.write(self._console_fd, data)
        self.dealer.send(m.ConsoleOutput(data).encode())

    def serve(self) -> None:
        dealer, bus = self.dealer, self.bus
        send, wait, recv = dealer.send, dealer.wait, dealer.recv
        IoNotify, IoComplete, decode = m.IoNotify, m.IoComplete, m.decode
        while self.running:
            timeout = IDLE_POLL_MS if not self._console_buf else 1
            if not wait(timeout):
                if self._console_buf:
                    self._flush_console()
                bus.poll(time.monotonic_ns())
                continue
            frame = recv(0)
            t_in = perf_counter_ns()
            try:
                msg = decode(frame)
            except ProtocolError as e:
                log.error("undecodable message from the hypervisor: %s", e)
                continue
            if msg.__class__ is IoNotify:
                if msg.write:
                    bus.io_write(msg.port, msg.size, msg.value)
                    value = 0
                else:
                    value = bus.io_read(msg.port, msg.size)
                send(IoComplete(msg.ref, value, msg.stamps + (t_in, perf_counter_ns())).encode())
            elif msg.__class__ is m.ConsoleInput:
                accepted = self.chipset.console_input(msg.data)
                if accepted < len(msg.data):
                    log.warning("UART receive FIFO full: %d of %d bytes dropped",
                                len(msg.data) - accepted, len(msg.data))
            elif msg.__class__ is m.ErrorReply:
                log.error("hypervisor refused %s: %s", m.REGISTRY.get(msg.ref_type, m.Message).__name__,
                          Refused(msg.code, msg.message))
            else:
                log.error("unexpected %s from the hypervisor", msg.NAME)
            if self._console_buf and time.monotonic_ns() - self._console_since > CONSOLE_FLUSH_NS:
                self._flush_console()
        self.close()

    def close(self) -> None:
        if self._console_buf:
            os.write(self._console_fd, bytes(self._console_buf))
            self._console_buf.clear()
        self.chipset.close()
        os.close(self._console_fd)
        self.dealer.close()
