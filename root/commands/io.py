"""``io RUN PARTITION [--vp N] OP…``: execute instructions on behalf of a VP, through the
hypervisor (and the worker, for device ports), as QEMU's qtest does; one result per line.
With no operations it reads them from standard input, one per line.  The pytest plugin's
``run.io`` uses :func:`parse_ops` and :func:`run_op` too, so both answer alike."""

from __future__ import annotations

import argparse
import sys

from proto.codes import HvMsr, HvStatus, HypercallCode, X86Exception, control_value
from proto.errors import Refused
from proto.messages import EXECUTE_OPS
from root.client import RootClient
from root.commands.common import complain
from root.rundir import live_run

NAME = "io"
HELP = "execute instructions on behalf of a VP (like QEMU's qtest)"

IO_ARITY = {"inb": 1, "inw": 1, "inl": 1, "outb": 2, "outw": 2, "outl": 2,
            "readb": 1, "readw": 1, "readl": 1, "readq": 1, "writeb": 2, "writew": 2, "writel": 2, "writeq": 2,
            "cpuid": (1, 2), "rdmsr": 1, "wrmsr": 2, "hypercall": (1, 2)}


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("partition")
    p.add_argument("ops", nargs=argparse.REMAINDER,
                   help="inb|inw|inl PORT, outb|outw|outl PORT VALUE, cpuid LEAF [SUBLEAF], rdmsr MSR, "
                        "wrmsr MSR VALUE, hypercall CONTROL|NAME [INPUT_HEX]; none: read them from stdin")
    p.add_argument("--vp", type=int, default=0)


def parse_number(token: str) -> int:
    try:
        return int(token, 0)
    except ValueError:
        pass
    for enum in (HvMsr, HypercallCode):
        if token in enum.__members__:
            return int(enum[token])
    raise ValueError(f"{token!r} is not a number or a TLFS name")


def parse_ops(tokens: list[str]) -> list[tuple[str, list[str]]]:
    """Split ``inb 0x3fd outb 0x3ff 0x41 …`` into operations."""
    ops, i = [], 0
    while i < len(tokens):
        op = tokens[i]
        if op not in IO_ARITY:
            raise ValueError(f"unknown operation {op!r} (known: {', '.join(EXECUTE_OPS)})")
        j = i + 1
        while j < len(tokens) and tokens[j] not in IO_ARITY:
            j += 1
        operands = tokens[i + 1:j]
        arity = IO_ARITY[op]
        lo, hi = arity if isinstance(arity, tuple) else (arity, arity)
        if not lo <= len(operands) <= hi:
            raise ValueError(f"{op} takes {lo}{'–' + str(hi) if hi != lo else ''} operand(s), got {len(operands)}")
        ops.append((op, operands))
        i = j
    return ops


def run_op(root: RootClient, partition: int, vp: int, op: str, operands: list[str]) -> str:
    """One operation on behalf of ``vp``; its result line (``OK …`` or ``FAULT #GP``)."""
    if op == "hypercall":
        control = parse_number(operands[0])
        if operands[0] in HypercallCode.__members__:
            control = control_value(control)
        data = bytes.fromhex(operands[1]) if len(operands) > 1 else b""
        r = root.io(partition, vp, op, control, 0, data)
    else:
        nums = [parse_number(t) for t in operands]
        a = nums[0]
        b = nums[1] if len(nums) > 1 else 0
        r = root.io(partition, vp, op, a, b)
    if r.fault:
        return f"FAULT #{X86Exception(r.fault).name}"
    if op.startswith("in") or op.startswith("read"):
        return f"OK {r.rax:#x}"
    if op == "cpuid":
        return f"OK eax={r.rax:#010x} ebx={r.rbx:#010x} ecx={r.rcx:#010x} edx={r.rdx:#010x}"
    if op == "rdmsr":
        return f"OK {(r.rdx << 32) | r.rax:#x}"
    if op == "hypercall":
        status = r.rax & 0xFFFF
        try:
            sname = HvStatus(status).name
        except ValueError:
            sname = f"{status:#x}"
        reps = (r.rax >> 32) & 0xFFF
        return f"OK {sname} reps={reps}" + (f" output={r.output.hex()}" if r.output else "")
    return "OK"


def run(args) -> int:
    run, man = live_run(args.run)
    parts = man.get("partitions", {})
    if args.partition not in parts:
        complain(NAME, f"run {run.name} has no partition {args.partition!r} (it has {', '.join(parts)})")
        return 2
    if args.partition in man.get("stopped_partitions", []):
        complain(NAME, f"partition {args.partition} of run {run.name} was stopped: nothing executed")
        return 1
    ops_args = list(args.ops)
    # `--vp N` may come after the partition, before the operations (argparse leaves it in
    # the REMAINDER there).
    while ops_args[:1] == ["--vp"] and len(ops_args) > 1:
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
        for op, operands in ops:
            try:
                print(run_op(root, parts[args.partition]["id"], args.vp, op, operands), flush=True)
            except (ValueError, Refused) as e:
                print(f"ERR {e}", flush=True)
                failed += 1
    return 1 if failed else 0
