"""The root partition's client of the hypervisor: what launch.py and attach commands use.

It speaks for the root (the run secret proves it), so it can create partitions through
root-only hypercalls, read status, push console input and execute single instructions on a
child VP's behalf.
"""

from __future__ import annotations

from time import monotonic, perf_counter_ns
from typing import Callable

from proto import messages as m
from proto.codes import HvPartitionProperty, HvRegisterName, HvStatus, HypercallCode, control_value
from proto.errors import HvstackError, PeerTimeout, Refused
from proto.hvcall import (
    HV_GPA_PAGE_NUMBER,
    HV_INPUT_CREATE_VP,
    HV_INPUT_DEPOSIT_MEMORY,
    HV_INPUT_GET_VP_REGISTERS,
    HV_INPUT_INITIALIZE_PARTITION,
    HV_INPUT_MAP_GPA_PAGES,
    HV_INPUT_SET_PARTITION_PROPERTY,
    HV_INPUT_SET_VP_REGISTERS,
    HV_OUTPUT_CREATE_PARTITION,
    HV_REGISTER_ASSOC,
    HV_REGISTER_NAME,
    pack_rep,
)
from proto.status import DeviceCounters, ScreenSnapshot, query_result
from proto.transport import Dealer, connect


# HvCallMapGpaPages: a 24-byte header, then 8 bytes a page, in one 4 KiB input page.
MAP_PAGES_PER_CALL = (4096 - 24) // 8


class HypercallFailed(HvstackError):
    def __init__(self, code: int, status: int) -> None:
        try:
            name = HvStatus(status).name
        except ValueError:
            name = f"{status:#x}"
        try:
            call = HypercallCode(code).name
        except ValueError:
            call = f"{code:#x}"
        super().__init__(f"{call} failed: {name}")
        self.status = status


class RootClient:
    def __init__(self, endpoint: str, secret: str, timeout_ms: int = 5000, server_key: str | None = None) -> None:
        """``server_key``: a tcp endpoint's CURVE public key (the manifest's)."""
        self.timeout_ms = timeout_ms
        self.dealer: Dealer = connect(endpoint, "root", 0, 0, secret=secret, timeout_ms=timeout_ms,
                                      server_key=server_key)
        self._seq = 0

    def close(self) -> None:
        self.dealer.close()

    def __enter__(self) -> "RootClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    # -- hypercalls as the root partition ----------------------------------------------------

    def hypercall(self, code: int, data: bytes = b"") -> bytes:
        """A simple root hypercall; raises HypercallFailed unless it succeeds."""
        reply = self.dealer.request(
            m.HypercallIntercept(self._next_seq(), control_value(code), data, (perf_counter_ns(),)),
            self.timeout_ms)
        status = reply.rax & 0xFFFF
        if status != HvStatus.HV_STATUS_SUCCESS:
            raise HypercallFailed(code, status)
        return reply.output

    def create_partition(self, privileges: int, recommendations: int, spin_retry: int, vps: int,
                         cpu: dict | None = None, memory_pages: int = 0) -> int:
        """TLFS host flow: create, set properties, initialize, create the VPs.  ``cpu``
        holds reserve and limit in percent of an LP and a relative weight."""
        out = self.hypercall(HypercallCode.HvCallCreatePartition, bytes(56))
        (pid,) = HV_OUTPUT_CREATE_PARTITION.unpack_from(out)
        cpu = cpu or {}
        props = [
            (HvPartitionProperty.HvPartitionPropertyPrivilegeFlags, privileges),
            (HvPartitionProperty.HvPartitionPropertyEnlightenmentRecommendations, recommendations),
            (HvPartitionProperty.HvPartitionPropertySpinRetryCount, spin_retry),
        ]
        # Hyper-V's units for reserve and cap: thousandths of a percent.
        if "reserve" in cpu:
            props.append((HvPartitionProperty.HvPartitionPropertyCpuReserve, round(cpu["reserve"] * 1000)))
        if "limit" in cpu:
            props.append((HvPartitionProperty.HvPartitionPropertyCpuCap, round(cpu["limit"] * 1000)))
        if "weight" in cpu:
            props.append((HvPartitionProperty.HvPartitionPropertyCpuWeight, int(cpu["weight"])))
        if memory_pages:
            props.append((HvPartitionProperty.HvPartitionPropertyGpaPageCount, memory_pages))
        for prop, value in props:
            self.hypercall(HypercallCode.HvCallSetPartitionProperty,
                           HV_INPUT_SET_PARTITION_PROPERTY.pack(pid, prop, value))
        self.hypercall(HypercallCode.HvCallInitializePartition, HV_INPUT_INITIALIZE_PARTITION.pack(pid))
        for i in range(vps):
            self.hypercall(HypercallCode.HvCallCreateVp, HV_INPUT_CREATE_VP.pack(pid, i, 0, 0))
        return pid

    def set_vp_registers(self, pid: int, vp: int, registers: dict[int, int]) -> None:
        """HvCallSetVpRegisters: {HV_REGISTER_NAME: value}."""
        assoc = b"".join(HV_REGISTER_ASSOC.pack(name, value & (2**64 - 1), value >> 64)
                         for name, value in registers.items())
        self.rep_hypercall_raw(HypercallCode.HvCallSetVpRegisters, HV_INPUT_SET_VP_REGISTERS.pack(pid, vp, 0), assoc,
                               len(registers))

    def get_vp_registers(self, pid: int, vp: int, names: list[int]) -> list[int]:
        """HvCallGetVpRegisters: the 128-bit values of ``names``."""
        out = self.rep_hypercall_raw(HypercallCode.HvCallGetVpRegisters, HV_INPUT_GET_VP_REGISTERS.pack(pid, vp, 0),
                                     pack_rep(HV_REGISTER_NAME, names), len(names))
        return [int.from_bytes(out[16 * i:16 * i + 16], "little") for i in range(len(names))]

    def start_vps(self, pid: int, vps: int) -> None:
        """TLFS host flow: start each VP by clearing HvRegisterExplicitSuspend."""
        for i in range(vps):
            self.set_vp_registers(pid, i, {HvRegisterName.HvRegisterExplicitSuspend: 0})

    def rep_hypercall_raw(self, code: int, header: bytes, elements: bytes, count: int) -> bytes:
        reply = self.dealer.request(m.HypercallIntercept(
            self._next_seq(), control_value(code, rep_count=count), header + elements, (perf_counter_ns(),)),
            self.timeout_ms)
        status, reps = reply.rax & 0xFFFF, (reply.rax >> 32) & 0xFFF
        if status != HvStatus.HV_STATUS_SUCCESS or reps != count:
            raise HypercallFailed(code, status)
        return reply.output

    def rep_hypercall(self, code: int, header: bytes, elements: list[int]) -> bytes:
        """A rep hypercall over ``elements`` (u64 each), as many calls as a page of input
        takes; each call must complete all its reps."""
        per_call = (4096 - len(header)) // 8
        out = b""
        for i in range(0, len(elements), per_call):
            chunk = elements[i:i + per_call]
            data = header + pack_rep(HV_GPA_PAGE_NUMBER, chunk)
            reply = self.dealer.request(m.HypercallIntercept(
                self._next_seq(), control_value(code, rep_count=len(chunk)), data, (perf_counter_ns(),)),
                self.timeout_ms)
            status, reps = reply.rax & 0xFFFF, (reply.rax >> 32) & 0xFFF
            if status != HvStatus.HV_STATUS_SUCCESS or reps != len(chunk):
                raise HypercallFailed(code, status)
            out += reply.output
        return out

    def build_memory(self, pid: int, gpa_ranges: list[tuple[int, int]], host_pages: list[int]) -> None:
        """Give the partition ``host_pages`` (HvCallDepositMemory) and map them, in order,
        at the guest pages of ``gpa_ranges`` [(first page, count)] (HvCallMapGpaPages)."""
        self.rep_hypercall(HypercallCode.HvCallDepositMemory, HV_INPUT_DEPOSIT_MEMORY.pack(pid), host_pages)
        used = 0
        for first, count in gpa_ranges:
            # One call per page of input: each call's header names the GPA it starts at.
            for i in range(0, count, MAP_PAGES_PER_CALL):
                chunk = host_pages[used + i:used + min(count, i + MAP_PAGES_PER_CALL)]
                self.rep_hypercall(HypercallCode.HvCallMapGpaPages,
                                   HV_INPUT_MAP_GPA_PAGES.pack(pid, first + i, 0), chunk)
            used += count

    # -- attach -------------------------------------------------------------------------------

    def status(self, brief: bool = False) -> dict:
        return self.dealer.request(m.StatusRequest(brief), self.timeout_ms).status

    def status_watched(self, check: Callable[[], None], slice_ms: int = 50, brief: bool = False) -> dict:
        """A status reply, waited for in slices with ``check()`` between them: the
        supervisor's check that the run's processes live raises as soon as the hypervisor
        dies mid-request, instead of after the whole timeout (and a timeout's message)."""
        self.dealer.send(m.encode(m.StatusRequest(brief)))
        deadline = monotonic() + self.timeout_ms / 1000
        while not self.dealer.wait(slice_ms):
            check()
            if monotonic() > deadline:
                raise PeerTimeout(f"no answer from {self.dealer.endpoint} within {self.timeout_ms} ms")
        reply = m.decode(self.dealer.recv_ready())
        if isinstance(reply, m.ErrorReply):
            raise Refused(reply.code, reply.message)
        return reply.status

    def io(self, partition: int, vp: int, op: str, a: int = 0, b: int = 0, data: bytes = b"") -> m.VpResume:
        """One instruction on behalf of ``vp``; the resume it would have got."""
        reply = self.dealer.request(m.ExecuteRequest(self._next_seq(), partition, vp, op, a, b, data),
                                    self.timeout_ms)
        if not isinstance(reply, m.VpResume):
            raise Refused("UNEXPECTED", f"expected vp_resume, got {reply.NAME}")
        return reply

    def io_request(self, partition: int, vp: int, op: str, a: int = 0, b: int = 0, c: int = 0,
                   data: bytes = b"") -> m.IoReply | m.WorkerQueryReply:
        """One of io's qtest operations (:data:`proto.io_messages.IO_OPS`); ``clock_step`` on
        a partition with a worker is answered by the worker's ``worker_query_reply``."""
        reply = self.dealer.request(m.IoRequest(self._next_seq(), partition, vp, op, a, b, c, data), self.timeout_ms)
        if not isinstance(reply, (m.IoReply, m.WorkerQueryReply)):
            raise Refused("UNEXPECTED", f"expected io_reply, got {reply.NAME}")
        return reply

    def send_input(self, partition: int, device: str, data: bytes) -> None:
        """Bytes for a partition's console UART, or scancodes for its keyboard."""
        self.dealer.request(m.InputRequest(partition, device, data), self.timeout_ms)

    def worker_query(self, partition: int, query: str) -> ScreenSnapshot | DeviceCounters:
        """Ask the partition's worker: ``screen`` (a :class:`ScreenSnapshot`) or ``devices``
        (:class:`DeviceCounters`).  :class:`Refused` ``NO_DEVICE`` if it has no such thing."""
        reply = self.dealer.request(m.WorkerQueryRequest(partition, query), self.timeout_ms)
        return query_result(query, reply.result)

    def control(self, partition: int, action: str) -> None:
        """pause, resume, reset or stop a partition."""
        self.dealer.request(m.PartitionControl(partition, action), self.timeout_ms)

    def uart_rx_bytes(self, partition: int, uart: str = "com1") -> int | None:
        """How many bytes a partition's UART has taken into its receive FIFO so far (its
        worker's ``rx_bytes``); None if the worker has no such UART."""
        value = self.worker_query(partition, "devices").get(uart, "rx_bytes")
        return int(value) if value is not None else None

    # -- tracing: on a connection of its own, where events arrive unsolicited ---------------

    def trace_subscribe(self, partition: int = 0) -> None:
        """From now on a ``trace_event`` for every exit of ``partition`` (0: of every
        partition) arrives on this connection; read them with :meth:`trace_poll` and send
        nothing else on it (a reply could not be told from the events)."""
        self.dealer.request(m.TraceSubscribe(partition), self.timeout_ms)

    def trace_renew(self, partition: int = 0) -> None:
        """Subscribe again without waiting (:meth:`trace_poll` skips the ack).  The
        hypervisor forgets a subscriber it cannot send to, also when its queue is full for
        a moment; renewing now and then takes the trace back."""
        self.dealer.send(m.TraceSubscribe(partition).encode())

    def trace_poll(self, timeout_ms: int, max_events: int = 1000) -> list[m.TraceEvent]:
        """The trace events that arrived within ``timeout_ms`` (at most ``max_events``, so
        that a busy stream still returns); an error reply raises Refused."""
        out: list[m.TraceEvent] = []
        if not self.dealer.wait(timeout_ms):
            return out
        while len(out) < max_events and self.dealer.wait(0):
            msg = m.decode(self.dealer.recv(0))
            if isinstance(msg, m.TraceEvent):
                out.append(msg)
            elif isinstance(msg, m.ErrorReply):
                raise Refused(msg.code, msg.message)
        return out


class ConsoleWatcher:
    """A separate connection that receives ``console_data`` events for some partitions."""

    def __init__(self, endpoint: str, secret: str, partitions: list[int], server_key: str | None = None) -> None:
        self.dealer = connect(endpoint, "root", 0, 0, secret=secret, server_key=server_key)
        for pid in partitions:
            self.subscribe(pid)

    def subscribe(self, pid: int) -> None:
        """Console bytes of partition ``pid`` too (one created while the run runs)."""
        self.dealer.request(m.ConsoleSubscribe(pid))

    def poll(self, timeout_ms: int) -> list[tuple[int, bytes]]:
        """Console bytes that arrived within ``timeout_ms``, as (partition, data) pairs."""
        out = []
        if not self.dealer.wait(timeout_ms):
            return out
        while self.dealer.wait(0):
            msg = m.decode(self.dealer.recv(0))
            if isinstance(msg, m.ConsoleData):
                out.append((msg.partition, msg.data))
        return out

    def close(self) -> None:
        self.dealer.close()
