"""``io RUN PARTITION [--vp N] [--json] OP…``: drive a partition from outside, as QEMU's
qtest does: execute instructions on behalf of a VP (through the hypervisor, and the worker
for device ports and MMIO), read and write guest memory and VP registers, make hypercalls
with GPA parameter pages, watch interrupts arrive and step a paused partition's clocks.
One result per line (``OK …``, ``FAULT #UD``, or ``ERR CODE text``), or one JSON object per
line with ``--json``; with no operations it reads them from standard input.  Any ``ERR``
makes the exit status 1.  The pytest plugin's ``run.io`` uses :func:`run_ops` too, so both
answer alike."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass

from proto.codes import HvMsr, HvRegisterName, HvStatus, HypercallCode, X86Exception, control_value
from proto.errors import Refused
from proto.io_messages import MAX_IO_BYTES
from root import follow
from root.client import RootClient
from root.commands.common import complain

NAME = "io"
HELP = ("drive a partition from outside: instructions, memory, registers, hypercalls, interrupts, clocks "
        "(like QEMU's qtest)")

# Each operation and how many operands it takes: a number, or (least, most).
IO_ARITY = {"inb": 1, "inw": 1, "inl": 1, "outb": 2, "outw": 2, "outl": 2,
            "readb": 1, "readw": 1, "readl": 1, "readq": 1, "writeb": 2, "writew": 2, "writel": 2, "writeq": 2,
            "cpuid": (1, 2), "rdmsr": 1, "wrmsr": 2, "hypercall": (1, 2),
            "read": 2, "write": 2, "getreg": 1, "setreg": 2, "hypercall_gpa": 3,
            "irqs": (0, 1), "wait_irq": (1, 3), "clock_step": 1}
SOURCES = ("apic", "pic")  # where interrupts are watched: delivered to the VP, or at the PIC's output
VP_PREFIX = re.compile(r"^vp(\d+):(\w+)$")
MAX_READ_BYTES = 16 << 20  # one `read` (printed as hex: twice that in characters)
WAIT_DEFAULT_S = 5.0
WAIT_POLL_S = 0.005
OPERATIONS_HELP = (
    "inb|inw|inl PORT, outb|outw|outl PORT VALUE, readb..readq GPA, writeb..writeq GPA VALUE, "
    "cpuid LEAF [SUBLEAF], rdmsr MSR, wrmsr MSR VALUE, hypercall CONTROL|NAME [INPUT_HEX], "
    "read GPA LEN, write GPA HEX, getreg REG, setreg REG VALUE, hypercall_gpa CONTROL|NAME IN_GPA OUT_GPA, "
    "irqs [apic|pic], wait_irq VECTOR [TIMEOUT_S] [apic|pic], clock_step NS; "
    "vpN:OP runs one operation on VP N; none: read them from stdin")


@dataclass
class Op:
    name: str
    operands: list[str]
    vp: int | None = None  # from a vpN: prefix; else the command's --vp


class IoError(Exception):
    """An operation that cannot be done, as ``ERR CODE text``."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code, self.text = code, text


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("partition")
    p.add_argument("ops", nargs=argparse.REMAINDER, help=OPERATIONS_HELP)
    p.add_argument("--vp", type=int, default=0)
    p.add_argument("--json", action="store_true", help="one JSON object per operation")


def parse_number(token: str) -> int:
    try:
        return int(token, 0)
    except ValueError:
        pass
    for enum in (HvMsr, HypercallCode, HvRegisterName):
        if token in enum.__members__:
            return int(enum[token])
    raise ValueError(f"{token!r} is not a number or a TLFS name")


def _op_of(token: str) -> tuple[str, int | None] | None:
    if token in IO_ARITY:
        return token, None
    match = VP_PREFIX.match(token)
    if match and match.group(2) in IO_ARITY:
        return match.group(2), int(match.group(1))
    return None


def parse_ops(tokens: list[str]) -> list[Op]:
    """Split ``inb 0x3fd vp1:outb 0x3ff 0x41 …`` into operations."""
    ops, i = [], 0
    while i < len(tokens):
        head = _op_of(tokens[i])
        if head is None:
            raise ValueError(f"unknown operation {tokens[i]!r} (known: {', '.join(IO_ARITY)})")
        j = i + 1
        while j < len(tokens) and _op_of(tokens[j]) is None:
            j += 1
        name, operands = head[0], tokens[i + 1:j]
        arity = IO_ARITY[name]
        lo, hi = arity if isinstance(arity, tuple) else (arity, arity)
        if not lo <= len(operands) <= hi:
            raise ValueError(f"{name} takes {lo}{'–' + str(hi) if hi != lo else ''} operand(s), got {len(operands)}")
        ops.append(Op(name, operands, head[1]))
        i = j
    return ops


def _status(result: int) -> dict:
    status = result & 0xFFFF
    try:
        name = HvStatus(status).name
    except ValueError:
        name = f"{status:#x}"
    return {"status": name, "reps": (result >> 32) & 0xFFF}


def _fault(fault: int) -> dict:
    try:
        return {"fault": f"#{X86Exception(fault).name}"}
    except ValueError:
        return {"fault": f"vector {fault:#x}"}


def _control(token: str) -> int:
    control = parse_number(token)
    return control_value(control) if token in HypercallCode.__members__ else control


class IoSession:
    """The operations of one ``io`` call against one partition.  ``wait_irq`` takes the
    vector it waited for out of the log; whatever else it saw is kept for the next
    ``irqs`` of the same session, so nothing seen is lost."""

    def __init__(self, client: RootClient, partition: int, vp: int = 0) -> None:
        self.client, self.partition, self.vp = client, partition, vp
        self.kept: dict[tuple[int, str], list[int]] = {}
        self.dropped: dict[tuple[int, str], int] = {}

    def run(self, op: Op) -> dict:
        """One operation; its result as a dict (``ok`` False with ``error`` for an ERR)."""
        vp = self.vp if op.vp is None else op.vp
        head = {"op": op.name, "vp": vp}
        try:
            return head | {"ok": True} | self._run(vp, op.name, op.operands)
        except Refused as e:
            return head | {"ok": False, "error": e.code, "message": e.reason}
        except IoError as e:
            return head | {"ok": False, "error": e.code, "message": e.text}
        except ValueError as e:
            return head | {"ok": False, "error": "INVALID_OPERAND", "message": str(e)}

    def _io(self, vp: int, op: str, a: int = 0, b: int = 0, c: int = 0, data: bytes = b""):
        return self.client.io_request(self.partition, vp, op, a, b, c, data)

    def _run(self, vp: int, name: str, operands: list[str]) -> dict:
        if name in ("hypercall", "hypercall_gpa"):
            control = _control(operands[0])
            if name == "hypercall":
                data = bytes.fromhex(operands[1]) if len(operands) > 1 else b""
                r = self.client.io(self.partition, vp, name, control, 0, data)
                fault, result, output = r.fault, r.rax, r.output
            else:
                r = self._io(vp, name, control, parse_number(operands[1]), parse_number(operands[2]))
                fault, result, output = r.fault, r.value, r.data
            if fault:
                return _fault(fault)
            return _status(result) | ({"output": output.hex()} if output else {})
        if name == "read":
            gpa, length = parse_number(operands[0]), parse_number(operands[1])
            if length > MAX_READ_BYTES:
                raise ValueError(f"read of {length} bytes: at most {MAX_READ_BYTES} in one operation")
            data = b"".join(self._io(vp, "read", gpa + at, min(MAX_IO_BYTES, length - at)).data
                            for at in range(0, length, MAX_IO_BYTES))
            return {"data": data.hex()}
        if name == "write":
            gpa, data = parse_number(operands[0]), bytes.fromhex(operands[1])
            for at in range(0, len(data), MAX_IO_BYTES):
                self._io(vp, "write", gpa + at, data=data[at:at + MAX_IO_BYTES])
            return {}
        if name == "getreg":
            return {"value": self._io(vp, "get_reg", parse_number(operands[0])).value}
        if name == "setreg":
            self._io(vp, "set_reg", parse_number(operands[0]), parse_number(operands[1]))
            return {}
        if name == "irqs":
            source = self._source(operands[0] if operands else "apic")
            vectors, dropped = self._take(vp, source)
            return {"source": source, "vectors": vectors, "dropped": dropped}
        if name == "wait_irq":
            return self._wait_irq(vp, operands)
        if name == "clock_step":
            r = self._io(vp, "clock_step", parse_number(operands[0]))
            offset = r.value if hasattr(r, "value") else r.result.get("clock_offset_ns", 0)
            return {"clock_offset_ns": offset}
        nums = [parse_number(t) for t in operands]
        r = self.client.io(self.partition, vp, name, nums[0], nums[1] if len(nums) > 1 else 0)
        if r.fault:
            return _fault(r.fault)
        if name.startswith("in") or name.startswith("read"):
            return {"value": r.rax}
        if name == "cpuid":
            return {"eax": r.rax, "ebx": r.rbx, "ecx": r.rcx, "edx": r.rdx}
        if name == "rdmsr":
            return {"value": (r.rdx << 32) | r.rax}
        return {}

    @staticmethod
    def _source(token: str) -> str:
        if token not in SOURCES:
            raise ValueError(f"{token!r} is not an interrupt source ({' or '.join(SOURCES)})")
        return token

    def _take(self, vp: int, source: str) -> tuple[list[int], int]:
        """What arrived since the last look: kept vectors first, then the log's."""
        r = self._io(vp, "irqs_" + source)
        key = (vp, source)
        vectors = self.kept.pop(key, []) + list(r.data)
        return vectors, self.dropped.pop(key, 0) + r.dropped

    def _wait_irq(self, vp: int, operands: list[str]) -> dict:
        vector = parse_number(operands[0])
        rest = operands[1:]
        source = "apic"
        if rest and rest[-1] in SOURCES:
            source = rest.pop()
        if len(rest) > 1:
            raise ValueError(f"wait_irq takes VECTOR [TIMEOUT_S] [{'|'.join(SOURCES)}], got {' '.join(operands)}")
        timeout = float(rest[0]) if rest else WAIT_DEFAULT_S
        if not 0 <= vector <= 0xFF or not 0 < timeout <= 3600:
            raise ValueError("wait_irq takes a vector 0..0xff and a timeout of up to 3600 s")
        key, start = (vp, source), time.monotonic()
        while True:
            vectors, dropped = self._take(vp, source)
            if vector in vectors:
                vectors.remove(vector)
                self.kept[key], self.dropped[key] = vectors, dropped
                return {"source": source, "vector": vector,
                        "waited_ms": round((time.monotonic() - start) * 1000, 1)}
            self.kept[key], self.dropped[key] = vectors, dropped
            if time.monotonic() - start >= timeout:
                where = f"VP {vp}" if source == "apic" else "the PIC's output"
                raise IoError("TIMEOUT", f"vector {vector:#x} did not arrive at {where} in {timeout:g} s")
            time.sleep(WAIT_POLL_S)


def result_line(result: dict) -> str:
    """The text form of one result."""
    if not result["ok"]:
        return f"ERR {result['error']} {result['message']}"
    if "fault" in result:
        return f"FAULT {result['fault']}"
    op = result["op"]
    if "status" in result:
        return f"OK {result['status']} reps={result['reps']}" + (f" output={result['output']}" if "output" in result
                                                                  else "")
    if op == "cpuid":
        return "OK " + " ".join(f"{r}={result[r]:#010x}" for r in ("eax", "ebx", "ecx", "edx"))
    if op == "read":
        return f"OK {result['data']}"
    if op == "irqs":
        return " ".join(["OK", *(f"{v:#x}" for v in result["vectors"])]) + (
            f" dropped={result['dropped']}" if result["dropped"] else "")
    if op == "wait_irq":
        return f"OK {result['vector']:#x}"
    if op == "clock_step":
        return f"OK offset_ns={result['clock_offset_ns']}"
    if "value" in result:
        return f"OK {result['value']:#x}"
    return "OK"


def run_ops(client: RootClient, partition: int, vp: int, tokens: list[str]) -> list[dict]:
    """Parse and run ``tokens`` (ValueError if they do not parse); one result each."""
    session = IoSession(client, partition, vp)
    return [session.run(op) for op in parse_ops(tokens)]


def run(args) -> int:
    run, man = follow.live_partition(args.run, args.partition)
    parts = man.get("partitions", {})
    if args.partition not in parts:
        complain(NAME, f"run {run.name} has no partition {args.partition!r} (it has {', '.join(parts)})")
        return 2
    if args.partition in man.get("stopped_partitions", []):
        complain(NAME, f"partition {args.partition} of run {run.name} was stopped: nothing executed")
        return 1
    ops_args = list(args.ops)
    # Options may come after the partition, before the operations (argparse leaves them in
    # the REMAINDER there).
    while ops_args[:1] == ["--json"] or (ops_args[:1] == ["--vp"] and len(ops_args) > 1):
        if ops_args[0] == "--json":
            args.json = True
            del ops_args[:1]
            continue
        try:
            args.vp = int(ops_args[1], 0)
        except ValueError:
            complain(NAME, f"--vp {ops_args[1]!r} is not a number")
            return 2
        del ops_args[:2]
    tokens = ops_args or [t for line in sys.stdin for t in line.split("#")[0].split()]
    try:
        ops = parse_ops(tokens)
    except ValueError as e:
        complain(NAME, str(e))
        return 2
    failed = 0
    with RootClient(man["endpoint"], run.secret(), server_key=man.get("server_key")) as root:
        session = IoSession(root, parts[args.partition]["id"], args.vp)
        for op in ops:
            result = session.run(op)
            failed += not result["ok"]
            print(json.dumps(result) if args.json else result_line(result), flush=True)
    return 1 if failed else 0
