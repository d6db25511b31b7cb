"""The fuzzer's message sequence (``benchmarks/fuzz.py`` runs it against a live run): field
values from each check's spec (``proto.fields``), well-formed and not, and the seeded
sequence of (peer kind, label, message, frames) drawn from them; and the fuzz worker's
reaction to what is forwarded to it.  Nothing here touches a socket, and the sequence
reads no clock: the same seed gives the same frames."""

from __future__ import annotations

import math
import random
import time

import msgpack

from proto import messages as m
from proto.codes import HvMsr, HypercallCode, control_value
from proto.fields import I64_MIN, U64_MAX

KINDS = ("stranger", "vp", "worker", "root")
# Out of every 100 messages, from which kind of peer.
PEER_WEIGHTS = (20, 35, 25, 20)
MALFORMED = ("bad_msgpack", "truncated", "wrong_arity", "wrong_type", "out_of_range", "unknown_type",
             "oversized", "deep", "extra_frame")
# Hypercalls the fuzzed root does not make: creating partitions would only grow the table.
ROOT_SKIPS = {int(HypercallCode.HvCallCreatePartition)}
EXITS = tuple(cls for cls in m.REGISTRY.values() if "regs" in cls.FIELD_NAMES and cls is not m.VpResume)
# What each kind of peer may send (hypervisor/routes.py says so for the hypervisor); a
# stranger may only say hello.
ROLE_SENDS = {
    "stranger": (m.Hello, m.HelloProof),
    "vp": (*EXITS, m.VpStats, m.MemoryRequest),
    "worker": (m.InstallIntercept, m.AccessComplete, m.WorkerQueryReply, m.AssertInterrupt, m.ResetRequest,
               m.ConsoleOutput, m.MemoryRequest),
    "root": (m.StatusRequest, m.ExecuteRequest, m.PartitionControl, m.ConsoleSubscribe, m.InputRequest,
             m.WorkerQueryRequest, m.TraceSubscribe, m.HypercallIntercept),
}


# Root requests that reach a partition's worker, and the `io` operations that reach its
# devices and nothing else.
DEVICE_REQUESTS = (m.ExecuteRequest, m.InputRequest, m.WorkerQueryRequest)
DEVICE_OPS = ("inb", "inw", "inl", "outb", "outw", "outl", "readb", "readw", "readl", "writeb", "writew", "writel")


# ======================================================================================
# Values: well-formed from each field's spec, and the ones that are not
# ======================================================================================


class Values:
    """Field values drawn from one ``random.Random``: well-formed ones from a check's
    ``spec`` (proto.fields), with the extremes of each range often, and wrong ones."""

    def __init__(self, rng: random.Random, partitions: list[int]) -> None:
        self.r = rng
        self.partitions = partitions  # ids worth naming: the fuzz partition, the run's, none

    def uint(self, bits: int, name: str = "") -> int:
        r, top = self.r, (1 << bits) - 1
        if name == "partition" and r.random() < 0.7:
            return r.choice(self.partitions)
        roll = r.random()
        if roll < 0.3:
            return r.randint(0, min(top, 8))
        if roll < 0.5:
            return r.choice((0, 1, top, top - 1, top >> 1, (top >> 1) + 1))
        return r.randint(0, top)

    def text(self, n: int, ascii_only: bool = False) -> str:
        r = self.r
        alphabet = "0123456789abcdef-_:xyz " if ascii_only or r.random() < 0.7 else "é€💥\x00\u202e漢"
        return "".join(r.choice(alphabet) for _ in range(n))

    # Values that reach deep into the handlers, by field name: the ports of the chipset,
    # the local APIC's registers, the synthetic MSRs, the CPUID leaves, the hypercalls.
    INTERESTING = {
        "port": (0x3F8, 0x3F9, 0x3FD, 0x3FF, 0x20, 0x21, 0xA0, 0xA1, 0x40, 0x43, 0x60, 0x64, 0x70, 0x71, 0x1F0,
                 0x1F7, 0x3D4, 0x3D5, 0x80, 0xCF8),
        "gpa": tuple(0xFEE00000 + o for o in (0x20, 0x80, 0xB0, 0xF0, 0x300, 0x310, 0x320, 0x380, 0x390, 0x3E0,
                                               0xFFC)) + (0xB8000, 0xBFFFF, 0, 0x1000, 0xFFFFFFFFFFFFF000),
        "msr": tuple(int(x) for x in HvMsr) + (0x1B, 0x800, 0x808, 0x80B, 0x830, 0x832, 0x838, 0x10, 0xC0000080),
        "leaf": (0, 1, 7, 0xB, 0x40000000, 0x40000001, 0x40000003, 0x40000004, 0x40000005, 0x40000006, 0x80000000),
        "vector": (0, 1, 0x0E, 0x1F, 0x20, 0x21, 0x24, 0x2E, 0x30, 0xEF, 0xFE, 0xFF),
        "vp": (0, 1, 2),
        "value": (0, 1, 0xFF, 0xFFFFFFFF, 0xFEE00000 | 0x800, 0x9F001, 1 << 63, 0x20, 0xFE, 0x000400FF, 0x000C00FF),
    }

    def hypercall_input(self) -> bytes:
        """A parameter block that may mean something: little-endian u64s, small or named."""
        r = self.r
        words = [r.choice((*self.partitions, 0, 1, 2, 3, 0x20001, 0x20002, 0x20003, 0x90000, 0x90001, U64_MAX,
                           r.randint(0, 4096))) for _ in range(r.randint(0, 16))]
        return b"".join(w.to_bytes(8, "little") for w in words)

    def well_formed(self, check, name: str = ""):
        kind, p = check.spec
        r = self.r
        if kind == "uint" and name == "control" and r.random() < 0.8:
            return control_value(r.choice(list(HypercallCode)), fast=r.random() < 0.3,
                                 rep_count=r.choice((0, 0, 1, 2, 0xFFF)))
        if kind == "uint" and name in self.INTERESTING and r.random() < 0.7:
            return r.choice(self.INTERESTING[name]) & ((1 << p["bits"]) - 1)
        if kind == "blob" and name == "input" and r.random() < 0.7:
            return self.hypercall_input()
        if kind == "uint":
            return self.uint(p["bits"], name)
        if kind == "bool":
            return r.random() < 0.5
        if kind == "one_of":
            return r.choice(p["choices"])
        if kind == "text":
            n = r.choice((0, 1, 8, 40, p["max_len"], r.randint(0, p["max_len"])))
            return self.text(n, p["ascii_only"])
        if kind == "blob":
            n = r.choice((0, 1, 8, 16, p["max_len"], r.randint(0, min(p["max_len"], 4096))))
            return r.randbytes(n)
        if kind == "stamps":
            now = r.randint(1 << 40, 1 << 50)  # like a host's perf_counter_ns, but from the seed
            return tuple(r.choice((now, 0, U64_MAX, r.randint(0, U64_MAX)))
                         for _ in range(r.choice((0, 1, 2, p["max_items"]))))
        if kind == "registers":
            return () if r.random() < 0.3 else tuple(self.uint(64) for _ in range(p["count"]))
        if kind == "ranges":
            out = []
            for _ in range(r.choice((0, 1, 3, p["max_items"]))):
                base = r.randint(0, p["limit"] - 1) if r.random() < 0.5 else r.choice((0, p["limit"] - 1))
                out.append((base, r.randint(1, max(1, min(p["limit"] - base, 64)))))
            return tuple(out)
        if kind == "texts":
            return tuple(self.text(r.randint(0, 64)) for _ in range(r.randint(0, min(p["max_items"], 8))))
        if kind == "mmio_writes":  # coalesced MMIO: the VGA buffer's, or anywhere
            out = []
            for _ in range(r.choice((0, 1, 8, p["max_items"]))):
                size = r.choice((1, 2, 4, 8))
                gpa = r.choice((0xB8000, 0xBFFF8, 0xFEE00000, 0)) + r.randint(0, 8)
                out.append((gpa, size, r.randint(0, (1 << (8 * size)) - 1)))
            return tuple(out)
        if kind == "mapping":
            return self.tree(r.randint(0, 3), finite=True, items=min(p["max_items"], 8))
        raise ValueError(f"no values for a field of kind {kind}")

    def tree(self, depth: int, finite: bool, items: int = 8):
        """A nested map, as vp_stats and status carry; ``finite=False`` also puts in what a
        map must not hold (non-finite floats, numbers as strings past u64, tuples as keys…)."""
        r = self.r
        out = {}
        for _ in range(r.randint(0, items)):
            key = r.choice(("n", "s", "lo", "hi", "c", "t", "st", "exits", "cpuid", self.text(4), r.randint(0, 99)))
            if depth > 0 and r.random() < 0.4:
                out[key] = self.tree(depth - 1, finite, items)
            else:
                out[key] = self.scalar(finite)
        return out

    def scalar(self, finite: bool = True):
        r = self.r
        pool = [0, 1, U64_MAX, I64_MIN, r.randint(0, 1 << 53), 1.5, -0.0, "x", "", b"\x00", True, None,
                [1, 2], [], str(1 << 70)]
        if not finite:
            pool += [math.inf, -math.inf, math.nan, str(1 << 200), 1e308, [math.nan]]
        return r.choice(pool)

    def wrong(self, check):
        """A value of another type than the field's, or one out of its range."""
        kind, p = check.spec
        r = self.r
        if r.random() < 0.5:
            bad = {"uint": [-1, (1 << p.get("bits", 64)) if p.get("bits", 64) < 64 else I64_MIN, 1.0, "7", True],
                   "bool": [0, 1, "true", None],
                   "one_of": [999, "nope", None, 1.5],
                   "text": [b"bytes", 7, self.text(p.get("max_len", 8) + 1), "é" * 40],
                   "blob": ["text", 7, r.randbytes(p.get("max_len", 8) + 1) if p.get("max_len", 8) < 70000 else 1],
                   "stamps": [[-1], [1.5], list(range(40)), "1,2", {"a": 1}],
                   "registers": [[1], [1, 2, 3], [-1, 0], [U64_MAX, "x"], (1 << 63,) * 9],
                   "ranges": [[[0, 0]], [[0xFFFF, 2]], [[1]], [[1, 2, 3]], [["a", 1]], [[0, 1]] * 300],
                   "texts": [["é", 1], "x", [b"x"]],
                   "mmio_writes": [[[0xB8000, 3, 0]], [[0xB8000, 1, 256]], [[1 << 52, 1, 0]], [[0xB8000, 8]],
                                   [[0xB8000, 8, 0]] * 171, [["a", 1, 0]]],
                   "mapping": [self.tree(3, finite=False), [], "map", {(1, 2): 1}, {1.5: 1},
                               {"n": math.inf}, {"c": {"1": str(1 << 70)}}]}[kind]
            return r.choice(bad)
        return self.scalar(finite=False)


# ======================================================================================
# Frames: one message each, drawn from the sequence
# ======================================================================================


class Sequence:
    """The seeded message sequence: ``next()`` → (peer kind, label, message name, frames)."""

    def __init__(self, seed: int, fuzz_pid: int, run_pids: list[int], max_frame: int = m.MAX_FRAME_BYTES,
                 device_partitions: tuple[int, ...] = ()) -> None:
        """``device_partitions``: the run's partitions whose workers are fuzzed too, through
        the root's ``io`` (port and VGA accesses on a VP's behalf: what their guest could
        do), console and keyboard input, and worker queries."""
        self.r = random.Random(seed)
        self.fuzz_pid = fuzz_pid
        self.device_partitions = tuple(device_partitions)
        self.values = Values(self.r, [fuzz_pid, *run_pids, 0, fuzz_pid + 1, U64_MAX])
        self.types = sorted(m.REGISTRY.values(), key=lambda c: c.TYPE)
        self.max_frame = max_frame
        self.hypercalls = [int(c) for c in HypercallCode]

    def next(self) -> tuple[str, str, str, list[bytes]]:
        r = self.r
        kind = r.choices(KINDS, PEER_WEIGHTS)[0]
        # Mostly what the peer's role may send (its handlers are the surface), else anything.
        cls = r.choice(ROLE_SENDS[kind] if r.random() < 0.7 else self.types)
        roll = r.random()
        if roll < 0.6 or (kind == "root" and roll < 0.85):
            label, fields = "well_formed", self.fields(cls, kind)
        else:
            label = r.choice(MALFORMED)
            return kind, label, cls.NAME, self.malformed(label, cls, kind)
        return kind, label, cls.NAME, [msgpack.packb([cls.TYPE, *fields], use_bin_type=True)]

    def fields(self, cls, kind: str) -> list:
        v, r = self.values, self.r
        out = [v.well_formed(check, name) for check, name in zip(cls.CHECKS, cls.FIELD_NAMES)]
        names = cls.FIELD_NAMES
        if cls is m.Hello:
            if r.random() < 0.7:
                out[0] = m.PROTOCOL_VERSION
            if kind == "stranger" and r.random() < 0.5:
                # A partition it could name: its own (the connection is another one, so
                # even a right proof is a CONFLICT), or another; a client nonce of the right
                # size, or not.  (No token is sent: the proof follows the challenge.)
                out[2] = r.choice([self.fuzz_pid, *v.partitions])
                out[6] = r.randbytes(32) if r.random() < 0.7 else r.randbytes(r.choice((0, 8, 31)))
        if kind == "root":
            # Root requests aim at the fuzz partition or at none: never at the run's own.
            if "partition" in names:
                out[names.index("partition")] = r.choice((self.fuzz_pid, 0, self.fuzz_pid + 1, U64_MAX))
            if self.device_partitions and cls in DEVICE_REQUESTS and r.random() < 0.6:
                self.device_request(cls, out)
            if cls is m.HypercallIntercept:
                code = r.choice(self.hypercalls)
                if code in ROOT_SKIPS:
                    code = int(HypercallCode.HvCallNotifyLongSpinWait)
                out[names.index("control")] = control_value(code, rep_count=r.choice((0, 1, 2, 0xFFF)))
                data = bytearray(out[names.index("input")])
                if len(data) >= 8:  # nearly every TLFS input starts with the partition ID
                    data[:8] = r.choice((self.fuzz_pid, 0xFFFFFFFFFFFFFFFF, self.fuzz_pid + 1)).to_bytes(8, "little")
                out[names.index("input")] = bytes(data)
            if cls is m.PartitionControl:
                # Never stop the fuzz partition (its VP holds an LP), and let it run more
                # often than not, so that its VP's exits are in turn as often as out of it.
                out[names.index("action")] = r.choice(("resume", "resume", "pause", "reset"))
        return out

    def device_request(self, cls, out: list) -> None:
        """Aim a root request at a run partition's worker: an access to one of its devices
        (never guest RAM: `io`'s MMIO reaches RAM too), input, or a query."""
        r, names = self.r, cls.FIELD_NAMES
        out[names.index("partition")] = r.choice(self.device_partitions)
        if cls is m.ExecuteRequest:
            op = r.choice(DEVICE_OPS)
            size = {"b": 1, "w": 2, "l": 4, "q": 8}[op[-1]]
            if op.startswith(("in", "out")):
                a = r.choice(Values.INTERESTING["port"]) if r.random() < 0.8 else r.randint(0, 0xFFFF)
            else:
                a = r.choice((0xB8000, 0xB8F9E, 0xBFFF8)) if r.random() < 0.5 else r.randrange(0xB8000, 0xC0000 - size)
            out[names.index("vp")] = 0
            out[names.index("op")] = op
            out[names.index("a")] = a
            out[names.index("b")] = r.choice((0, 0xFF, 0x80, 0xFE, 0xEC, 0x20, r.getrandbits(8 * size)))

    def malformed(self, label: str, cls, kind: str) -> list[bytes]:
        r, v = self.r, self.values
        fields = self.fields(cls, kind)
        if label == "bad_msgpack":
            return [r.choice((b"", b"\xc1", r.randbytes(r.randint(1, 64)), b"\x92\x01", b"\xdd\xff\xff\xff\xff"))]
        if label == "truncated":
            frame = msgpack.packb([cls.TYPE, *fields], use_bin_type=True)
            return [frame[:r.randint(0, max(0, len(frame) - 1))]]
        if label == "wrong_arity":
            if fields and r.random() < 0.5:
                fields = fields[:r.randint(0, len(fields) - 1)]
            else:
                fields = fields + [v.scalar() for _ in range(r.randint(1, 3))]
        elif label in ("wrong_type", "out_of_range") and fields:
            i = r.randrange(len(fields))
            fields[i] = v.wrong(cls.CHECKS[i])
        elif label == "unknown_type":
            return [msgpack.packb([r.choice((0, 5, 127, 128, -1, "hello", None, 1.0)), *fields], use_bin_type=True)]
        elif label == "oversized":
            # Near the frame limit (the decoder reads it all), or just past it (refused unread).
            n = r.choice((self.max_frame - 64, self.max_frame + 1, 1 << 17))
            return [msgpack.packb([cls.TYPE, r.randbytes(64) * (n // 64)], use_bin_type=True)]
        elif label == "deep":
            # Arrays in arrays (fixarray of one), deeper than any packer would write.
            return [b"\x92" + msgpack.packb(cls.TYPE) + b"\x91" * r.choice((20, 200, 5000, 100_000)) + b"\x01"]
        elif label == "extra_frame":
            return [msgpack.packb([cls.TYPE, *fields], use_bin_type=True), b"more"]
        return [msgpack.packb([cls.TYPE, *fields], use_bin_type=True)]


def reaction(msg: m.Message, rng: random.Random) -> m.Message | None:
    """What the fuzz partition's worker answers, outside the sequence: it completes the
    accesses forwarded to it (a read with a random value) and answers queries, as a worker
    does, so that its VP's forwarded exits end in turn."""
    if isinstance(msg, (m.PortNotify, m.MmioNotify)):
        value = 0 if msg.write else rng.getrandbits(32)
        return m.AccessComplete(msg.ref, value, msg.stamps[:6] + (time.perf_counter_ns(),))
    if isinstance(msg, m.WorkerQuery):
        return m.WorkerQueryReply(msg.ref, {"fuzz": 1})
    return None
