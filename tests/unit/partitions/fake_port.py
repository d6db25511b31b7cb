"""A real-CPU backend driven in-process: guest RAM in temporary files, and a fake ExitPort
that answers exits from a table and records them (no hypervisor, no worker)."""

from __future__ import annotations

import threading
import time
from time import perf_counter_ns

from proto.memory import GuestMemory
from partitions.cpu.run import scratch_memory
from partitions.vp import VpStopped

def guest_memory(tmp_path) -> GuestMemory:
    return scratch_memory(tmp_path)


class FakePort:
    """What the backend calls on an exit; ``inputs`` maps a port to the values its reads
    return in turn; ``on_halt(port)`` decides what a HLT does (default: the guest is done)."""

    def __init__(self, regs, mem, inputs=None, on_halt=None, quantum_ns=10_000_000, input_delay_s=0.0) -> None:
        self.regs = regs
        self.mem = mem
        self.index = 0  # the BSP (ExitPort is a Vp: its index)
        self.counters: dict = {}
        self.stop = threading.Event()
        self._pending: list[int] = []
        self.exits: list[tuple] = []
        self.inputs = {p: list(v) for p, v in (inputs or {}).items()}
        self.on_halt = on_halt
        self.quantum_ns = quantum_ns
        self.input_delay_s = input_delay_s  # a slow device: quantum ends fall inside string I/O
        self.quantum_end = perf_counter_ns() + quantum_ns
        self.msrs: dict[int, int] = {}
        self.hypercalls: list[tuple[int, int, int]] = []
        self.boundary_wanted = False  # what ExitPort.cpu_state sets when asked inside an instruction

    interrupt_pending = property(lambda self: bool(self._pending))
    exit_wanted = property(lambda self: self.boundary_wanted or perf_counter_ns() >= self.quantum_end)
    quantum_left_ns = property(lambda self: self.quantum_end - perf_counter_ns())

    def take_interrupt(self) -> int:
        return self._pending.pop(0)

    def quantum_exit(self) -> None:
        self.boundary_wanted = False
        self.exits.append(("quantum",))
        if self.stop.is_set():
            raise VpStopped()
        self.quantum_end = perf_counter_ns() + self.quantum_ns

    def port_in(self, port: int, size: int) -> int:
        self.exits.append(("in", port, size))
        time.sleep(self.input_delay_s)
        values = self.inputs.get(port)
        return values.pop(0) if values else 0

    def port_out(self, port: int, size: int, value: int) -> None:
        self.exits.append(("out", port, size, value))

    def port_in_string(self, port: int, size: int, count: int) -> bytes:
        self.exits.append(("ins", port, size, count))
        time.sleep(self.input_delay_s)
        values = self.inputs.get(port) or []
        taken, self.inputs[port] = values[:count], values[count:]
        return b"".join(v.to_bytes(size, "little") for v in taken + [0] * (count - len(taken)))

    def port_out_string(self, port: int, size: int, data: bytes) -> None:
        self.exits.append(("outs", port, size, data))

    def cpuid(self, leaf: int, subleaf: int):
        self.exits.append(("cpuid", leaf, subleaf))
        return (leaf + 1, 0x11, 0x22, 0x33)

    def msr_read(self, msr: int) -> int:
        self.exits.append(("rdmsr", msr))
        return self.msrs.get(msr, 0)

    def msr_write(self, msr: int, value: int) -> None:
        self.exits.append(("wrmsr", msr, value))
        self.msrs[msr] = value

    def mmio_read(self, gpa: int, size: int) -> int:
        self.exits.append(("mmio_read", gpa, size))
        return 0x12345678 & ((1 << (8 * size)) - 1)

    def mmio_write(self, gpa: int, size: int, value: int) -> None:
        self.exits.append(("mmio_write", gpa, size, value))

    def hypercall_from_page(self, control: int, input_gpa: int, output_gpa: int) -> int:
        self.hypercalls.append((control, input_gpa, output_gpa))
        return 0x2  # HV_STATUS_INVALID_HYPERCALL_CODE

    def pending_vectors(self) -> list[int]:
        return list(self._pending)

    def set_pending(self, vectors: list[int]) -> None:
        self._pending = list(vectors)

    def halt(self, interrupts_enabled: bool) -> bool:
        self.exits.append(("halt", interrupts_enabled))
        if self.on_halt is None or not self.on_halt(self):
            raise VpStopped()
        return self.interrupt_pending

    def of(self, kind: str) -> list[tuple]:
        return [e for e in self.exits if e[0] == kind]
