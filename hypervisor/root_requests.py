"""What the root asks of the hypervisor once partitions run: execute an instruction on a VP's
behalf (``io``), pause, resume, reset or stop a partition, push console or keyboard input,
ask a worker (``screen``, ``devices``), and subscribe to console output and trace events.

A request naming a partition that does not exist gets UNKNOWN_PARTITION; one naming a VP
it does not have, UNKNOWN_VP; an operand out of range for its instruction, INVALID_FIELD.
Console output streams to subscribers best-effort: a slow one loses bytes, a gone one its
subscription.
"""

from __future__ import annotations

import logging

from proto import messages as m
from proto.codes import HvPartitionState
from proto.fields import GPA_LIMIT

from hypervisor import cpuid
from hypervisor.intercepts import ALL_ONES, ExitContext
from hypervisor.partitions import Partition
from hypervisor.scheduler import VpState

log = logging.getLogger("hypervisor")

_IO_SIZES = {"b": 1, "w": 2, "l": 4, "q": 8}
_PORT_OPS = frozenset(("inb", "inw", "inl", "outb", "outw", "outl"))
_MMIO_OPS = frozenset(("readb", "readw", "readl", "readq", "writeb", "writew", "writel", "writeq"))


class RootRequests:
    def __init__(self, *, table, router, outbox, intercepts, dispatcher, forwarding, tracer, memory,
                 interrupts) -> None:
        self._table = table
        self._router = router
        self._outbox = outbox
        self._intercepts = intercepts
        self._dispatcher = dispatcher
        self._sched = dispatcher.sched
        self._forwarding = forwarding
        self._tracer = tracer
        self._memory = memory
        self._interrupts = interrupts

    def _target(self, identity: bytes, msg, partition_id: int) -> Partition | None:
        part = self._table.get(partition_id)
        if part is None:
            self._outbox.error(identity, msg.TYPE, "UNKNOWN_PARTITION", f"no partition {partition_id}")
        return part

    def _worker_of(self, identity: bytes, msg, part: Partition) -> bytes | None:
        if part.worker is None:
            self._outbox.error(identity, msg.TYPE, "UNKNOWN_PARTITION", f"partition {part.id} has no worker")
        return part.worker

    # -- one instruction on a VP's behalf (QEMU's qtest idea) ------------------------------------

    def on_execute_request(self, identity: bytes, peer, msg: m.ExecuteRequest, t_in: int) -> None:
        """The reply is the vp_resume the VP would have got.  Port and MMIO accesses take
        the VP's exit path (counted, traced, forwarded to the worker as the VP's own would
        be); CPUID, MSRs and hypercalls are answered here, uncounted."""
        part = self._target(identity, msg, msg.partition)
        if part is None:
            return
        if part.state is HvPartitionState.FINALIZED:  # no VP, no worker: nothing would execute
            return self._outbox.error(identity, msg.TYPE, "CONFLICT", f"partition {part.id} is stopped")
        if msg.vp >= len(part.vps):
            return self._outbox.error(identity, msg.TYPE, "UNKNOWN_VP", f"partition {part.id} has no VP {msg.vp}")
        vp = part.vps[msg.vp]
        ctx = ExitContext(identity, part, vp, msg.seq, (t_in,), t_in)
        op = msg.op
        if op in _PORT_OPS:
            size = _IO_SIZES[op[-1]]
            if msg.a > 0xFFFF:
                return self._outbox.error(identity, msg.TYPE, "INVALID_FIELD", f"port {msg.a:#x} is outside 0..0xffff")
            write = op.startswith("out")
            if write and msg.b > ALL_ONES[size]:
                return self._outbox.error(identity, msg.TYPE, "INVALID_FIELD", f"{msg.b:#x} does not fit {op}")
            ctx.addr, ctx.size, ctx.write, ctx.value = msg.a, size, write, msg.b if write else 0
            self._intercepts.io_port(ctx)
        elif op in _MMIO_OPS:
            size = _IO_SIZES[op[-1]]
            write = op.startswith("write")
            if write and msg.b > ALL_ONES[size]:
                return self._outbox.error(identity, msg.TYPE, "INVALID_FIELD", f"{msg.b:#x} does not fit {op}")
            if msg.a + size > GPA_LIMIT:
                return self._outbox.error(identity, msg.TYPE, "INVALID_FIELD", f"GPA {msg.a:#x} is beyond 52 bits")
            ctx.addr, ctx.size, ctx.write, ctx.value = msg.a, size, write, msg.b if write else 0
            self._intercepts.mmio(ctx)
        elif op == "cpuid":
            if msg.a > 0xFFFFFFFF or msg.b > 0xFFFFFFFF:
                return self._outbox.error(identity, msg.TYPE, "INVALID_FIELD", "CPUID leaf and subleaf are 32-bit")
            self._dispatcher.resume(ctx, *cpuid.cpuid(part, vp.index, msg.a, msg.b))
        elif op in ("rdmsr", "wrmsr"):
            if msg.a > 0xFFFFFFFF:
                return self._outbox.error(identity, msg.TYPE, "INVALID_FIELD", "MSR numbers are 32-bit")
            fault, value = self._intercepts.rdwrmsr(part, vp, msg.a, op == "wrmsr", msg.b)
            self._dispatcher.resume(ctx, value & 0xFFFFFFFF, 0, 0, value >> 32, fault)
        else:  # hypercall: executed with the partition's privileges, as its VP would
            result, output, fault = self._intercepts.run_hypercall(part, vp, msg.a, msg.input)
            self._dispatcher.resume(ctx, result, fault=fault, output=output)

    # -- partition control -----------------------------------------------------------------------

    def on_partition_control(self, identity: bytes, peer, msg: m.PartitionControl, t_in: int) -> None:
        part = self._target(identity, msg, msg.partition)
        if part is None:
            return
        if part.state is HvPartitionState.FINALIZED:
            return self._outbox.error(identity, msg.TYPE, "CONFLICT", f"partition {part.id} is stopped")
        if msg.action == "pause":
            self._sched.pause(part.cpu, True)
        elif msg.action == "resume":
            self._sched.pause(part.cpu, False)
        elif msg.action == "reset":
            self._dispatcher.reset(part)
        else:
            self._stop(part)
        log.info("partition %d: %s", part.id, msg.action)
        self._outbox.send(identity, m.Ack(msg.TYPE))

    def _stop(self, part: Partition) -> None:
        """``ctl stop``: the VPs are never dispatched again (the root ends the processes),
        and everything the partition held goes back at once — its LPs, even from a VP that
        never exits; its place in the ready queue; its accesses and questions waiting for
        its worker; its APIC timers and pending interrupts; its pages."""
        part.cpu.paused = part.cpu.stopped = True
        held = [vp.sched.lp for vp in part.vps if vp.state is VpState.RUNNING]
        for vp in part.vps:
            self._sched.remove(vp.sched)
            vp.next_resume = vp.next_frame = vp.halt_seq = None
            vp.interrupts.clear()
            vp.apic.timer_deadline_ns = None
        self._interrupts.timers_changed()
        dropped = self._forwarding.drop_partition(part)
        part.state = HvPartitionState.FINALIZED
        released = self._memory.release(part.id)
        log.info("partition %d: stopped; LPs %s, %d pending accesses and %d pages given back", part.id,
                 held or "none", dropped, released)
        self._sched.dispatch_now()  # the LPs it held go to the others at once

    # -- console, input, worker questions ------------------------------------------------------

    def on_console_subscribe(self, identity: bytes, peer, msg: m.ConsoleSubscribe, t_in: int) -> None:
        part = self._target(identity, msg, msg.partition)
        if part is not None:
            part.console_watchers.add(identity)
            self._outbox.send(identity, m.Ack(msg.TYPE))

    def on_console_output(self, identity: bytes, peer, msg: m.ConsoleOutput, t_in: int) -> None:
        """From the worker: the guest's UART transmitted ``data``; on to the subscribers."""
        part = peer.partition
        if not part.console_watchers:
            return
        frame = m.ConsoleData(part.id, msg.data).encode()
        for watcher in list(part.console_watchers):
            if self._router.offer(watcher, frame) == "gone":
                part.console_watchers.discard(watcher)

    def on_input_request(self, identity: bytes, peer, msg: m.InputRequest, t_in: int) -> None:
        part = self._target(identity, msg, msg.partition)
        worker = part and self._worker_of(identity, msg, part)
        if worker is None:
            return
        if part.servicing:  # its devices are being handed to a new worker: nobody may take input now
            return self._outbox.error(identity, msg.TYPE, "CONFLICT", f"partition {part.id}'s worker is being replaced")
        if not self._router.send(worker, m.DeviceInput(msg.device, msg.data).encode()):
            return self._outbox.error(identity, msg.TYPE, "UNKNOWN_PARTITION", f"partition {part.id}'s worker is gone")
        self._outbox.send(identity, m.Ack(msg.TYPE))

    def on_worker_query_request(self, identity: bytes, peer, msg: m.WorkerQueryRequest, t_in: int) -> None:
        part = self._target(identity, msg, msg.partition)
        worker = part and self._worker_of(identity, msg, part)
        if worker is None:
            return
        if not self._forwarding.query(identity, part, worker, msg.query):
            self._outbox.error(identity, msg.TYPE, "UNKNOWN_PARTITION", f"partition {part.id}'s worker is gone")

    def on_trace_subscribe(self, identity: bytes, peer, msg: m.TraceSubscribe, t_in: int) -> None:
        if msg.partition and self._target(identity, msg, msg.partition) is None:
            return
        self._tracer.subscribe(identity, msg.partition)
        self._outbox.send(identity, m.Ack(msg.TYPE))
