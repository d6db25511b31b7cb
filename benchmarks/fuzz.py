"""The fuzzer: every message type, well-formed, malformed and out of turn, from every kind of
peer, against a live run — which must survive it, with its guests making progress.

A hostile guest owns its partition's processes, so it holds what they hold: the tokens of
its partition's worker and VPs (derived from the run secret with ``proto.auth``, as the
launcher derives them).  The fuzzer plays such a partition: through the root it creates
one more partition (one VP, no memory) beside the run's own, says hello as its worker and
its VP, and sends from those connections; from unauthenticated connections; and, as the
root (the run's secret), requests aimed at its own partition or at none (the root is
trusted: it is fuzzed for the robustness of its handlers, not to take the run's partitions
apart).  The run's partitions are never a target: they are the ones that must keep making
progress.

Reproducible: the message sequence is drawn from ``random.Random(seed)`` and nothing else,
so the same seed sends the same messages in the same order.  What the hypervisor sends back
does not change the sequence; the fuzzer only reacts outside it — its worker completes the
accesses forwarded to it and answers queries (counted as ``reactive``), and after an exit
its VP waits briefly for the resume, so that many exits are in turn and the rest out of
turn.

Bounded: ``messages`` and ``duration_s``; every receive polls with a timeout; a status
request answered later than ``status_timeout_s`` is a hang.

    python launch.py fuzz RUN [--messages N] [--seed S] [--duration S]
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import msgpack
import psutil
import zmq

from proto import messages as m
from proto.auth import peer_token
from proto.codes import HV_CHILD_ENLIGHTENED_PRIVILEGES, HvMsr, HvRegisterName, HypercallCode, control_value
from proto.fields import I64_MIN, U64_MAX

KINDS = ("stranger", "vp", "worker", "root")
# Out of every 100 messages, from which kind of peer.
PEER_WEIGHTS = (20, 35, 25, 20)
MALFORMED = ("bad_msgpack", "truncated", "wrong_arity", "wrong_type", "out_of_range", "unknown_type",
             "oversized", "deep", "extra_frame")
ROOT_ONLY_PARTITION_FIELDS = ("partition",)
# The fuzz partition's worker claims these (so that its VP's accesses are forwarded to it).
FUZZ_PORTS = ((0x3F8, 8), (0x60, 1), (0x64, 1))
FUZZ_MMIO = ((0xB8000, 0x8000),)
# Hypercalls the fuzzed root does not make: creating partitions would only grow the table.
ROOT_SKIPS = {int(HypercallCode.HvCallCreatePartition)}
VP_WAIT_MS = 5
STATUS_EVERY_S = 1.0


EXITS = tuple(cls for cls in m.REGISTRY.values() if "regs" in cls.FIELD_NAMES and cls is not m.VpResume)
# What each kind of peer may send (hypervisor/routes.py says so for the hypervisor); a
# stranger may only say hello.
ROLE_SENDS = {
    "stranger": (m.Hello,),
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


@dataclass
class FuzzReport:
    seed: int
    sent_by_type: Counter = field(default_factory=Counter)
    sent_by_kind: Counter = field(default_factory=Counter)  # "vp/well_formed", "stranger/truncated", …
    errors_by_code: Counter = field(default_factory=Counter)
    replies: Counter = field(default_factory=Counter)  # what else came back, by message name
    reactive: int = 0  # completions and answers the fuzzer's worker sent in reply (not in the sequence)
    messages: int = 0
    seconds: float = 0.0
    crashes: int = 0  # 1 when the hypervisor (or a worker of the run) died
    hangs: int = 0  # status requests not answered within the timeout
    dead: list = field(default_factory=list)
    exits_per_s_before: float = 0.0
    exits_per_s_after: float = 0.0
    stalls: int = 0  # status polls during fuzzing at which the run's partitions had made no exit
    polls: int = 0
    rss_before: int = 0
    rss_after: int = 0
    counters_before: dict = field(default_factory=dict)
    counters_after: dict = field(default_factory=dict)
    fuzz_partition: int = 0
    devices: bool = False  # the run's workers were fuzzed too
    handler_error_lines: list = field(default_factory=list)  # the guards' log lines (bugs), if the caller read them
    undecodable: list = field(default_factory=list)  # the first few frames from the hypervisor that did not decode

    @property
    def counters_delta(self) -> dict:
        return {k: v - self.counters_before.get(k, 0) for k, v in self.counters_after.items()}

    @property
    def ok(self) -> bool:
        return not self.crashes and not self.hangs and self.exits_per_s_after > 0 and not self.handler_error_lines

    def to_json(self) -> dict:
        return {"seed": self.seed, "messages": self.messages, "seconds": round(self.seconds, 2),
                "sent_by_kind": dict(sorted(self.sent_by_kind.items())),
                "sent_by_type": dict(sorted(self.sent_by_type.items())),
                "errors_by_code": dict(sorted(self.errors_by_code.items())),
                "replies": dict(sorted(self.replies.items())), "reactive": self.reactive,
                "crashes": self.crashes, "hangs": self.hangs, "dead": self.dead,
                "exits_per_s_before": round(self.exits_per_s_before, 1),
                "exits_per_s_after": round(self.exits_per_s_after, 1),
                "stalls": self.stalls, "polls": self.polls, "undecodable": self.undecodable,
                "rss_before": self.rss_before, "rss_after": self.rss_after,
                "hypervisor_counters": self.counters_delta, "fuzz_partition": self.fuzz_partition,
                "devices": self.devices, "handler_error_lines": self.handler_error_lines}


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
            role = out[1]
            if kind == "stranger" and r.random() < 0.5:
                # A token it could hold: its own partition's (the connection is another one,
                # so each is a CONFLICT), or a near miss.
                out[2] = r.choice([self.fuzz_pid, *v.partitions])
                token = peer_token("not-the-secret", role, out[2]) if r.random() < 0.5 else "é" * 40
                out[6] = token
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


# ======================================================================================
# The fuzzer's peers and the watch on the run
# ======================================================================================


class Fuzzer:
    def __init__(self, endpoint: str, secret: str, *, seed: int = 1, run_partitions: list[int],
                 hv_pid: int, watched_pids: list[int], status_timeout_s: float = 5.0, devices: bool = False,
                 log=print) -> None:
        self.endpoint = endpoint
        self.secret = secret
        self.seed = seed
        self.run_partitions = run_partitions
        self.hv_pid = hv_pid
        self.watched_pids = watched_pids  # the hypervisor's and the workers': none may die
        self.status_timeout_s = status_timeout_s
        self.devices = devices  # fuzz the run's own workers too (their guests' data may suffer)
        self.log = log
        self.ctx = zmq.Context.instance()
        self.socks: dict[str, zmq.Socket] = {}
        self.report = FuzzReport(seed)
        self.vp_in_guest = False

    # -- sockets -----------------------------------------------------------------------------

    def _dealer(self) -> zmq.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDTIMEO, int(self.status_timeout_s * 1000))
        s.connect(self.endpoint)
        return s

    def _request(self, sock: zmq.Socket, msg: m.Message, timeout_s: float | None = None) -> m.Message | None:
        sock.send(msg.encode())
        deadline = time.monotonic() + (timeout_s or self.status_timeout_s)
        while time.monotonic() < deadline:
            if sock.poll(max(1, int((deadline - time.monotonic()) * 1000)), zmq.POLLIN):
                reply = m.decode(sock.recv())
                if isinstance(reply, (m.ConsoleData, m.TraceEvent)):
                    continue  # a stream this root subscribed to (the sequence may subscribe it)
                return reply
        return None

    def _hello(self, sock: zmq.Socket, role: str, pid: int, vp: int = 0, wait: bool = True) -> None:
        token = self.secret_token(role, pid)
        sock.send(m.Hello(m.PROTOCOL_VERSION, role, pid, vp, 0, "fuzz", token).encode())
        if wait:
            reply = m.decode(sock.recv()) if sock.poll(5000, zmq.POLLIN) else None
            if not isinstance(reply, m.HelloReply):
                raise RuntimeError(f"fuzz: hello as {role} of {pid} got {reply}")

    def secret_token(self, role: str, pid: int) -> str:
        return peer_token(self.secret, role, pid)

    def setup(self) -> None:
        """The watch (a root of its own), the fuzzing root, and the fuzz partition with its
        worker and VP connections."""
        from root.client import RootClient  # the root's host flow, as the launcher does it

        self.socks["root"] = self._dealer()
        self._hello(self.socks["root"], "root", 0)
        client = RootClient(self.endpoint, self.secret)
        try:
            pid = client.create_partition(int(HV_CHILD_ENLIGHTENED_PRIVILEGES), 0, 0xFFF, 1)
            self.fuzz_pid = self.report.fuzz_partition = pid
            self.socks["worker"] = self._dealer()
            self._hello(self.socks["worker"], "worker", pid)
            reply = self._request(self.socks["worker"], m.InstallIntercept(FUZZ_PORTS, FUZZ_MMIO))
            if not isinstance(reply, m.Ack):
                raise RuntimeError(f"fuzz: install_intercept got {reply}")
            self.socks["vp"] = self._dealer()
            self._hello(self.socks["vp"], "vp", pid, wait=False)  # answered at its first dispatch
            client.set_vp_registers(pid, 0, {HvRegisterName.HvRegisterExplicitSuspend: 0})
        finally:
            client.close()
        self.socks["stranger"] = self._dealer()

    def teardown(self) -> None:
        """Take the fuzz partition off the LPs (paused, and its VP's LP given back), then close."""
        try:
            self._request(self.watch, m.PartitionControl(self.fuzz_pid, "stop"))
            self._drain_all()
            if self.vp_in_guest:
                self.socks["vp"].send(m.QuantumExit(0, (time.perf_counter_ns(),), ()).encode())
            time.sleep(0.05)
        finally:
            for s in self.socks.values():
                s.close(0)

    # -- replies -----------------------------------------------------------------------------

    def _drain(self, kind: str) -> None:
        sock = self.socks[kind]
        while sock.poll(0, zmq.POLLIN):
            frame = sock.recv()
            try:
                msg = m.decode(frame)
            except Exception as e:  # noqa: BLE001 — anything the hypervisor sends must decode
                self.report.replies["undecodable"] += 1
                if len(self.report.undecodable) < 5:
                    self.report.undecodable.append(f"to {kind}: {e}")
                continue
            self._took(kind, msg)

    def _drain_all(self) -> None:
        for kind in KINDS:
            if kind in self.socks:
                self._drain(kind)

    def _took(self, kind: str, msg: m.Message) -> None:
        rep = self.report
        if isinstance(msg, m.ErrorReply):
            rep.errors_by_code[msg.code] += 1
            return
        rep.replies[msg.NAME] += 1
        if kind == "vp" and isinstance(msg, (m.VpResume, m.HelloReply)):
            self.vp_in_guest = True
        elif kind == "worker":
            answer = reaction(msg, self.r_reactive)
            if answer is not None:
                self.socks["worker"].send(answer.encode())
                rep.reactive += 1

    # -- the watch ---------------------------------------------------------------------------

    def _status(self) -> dict | None:
        reply = self._request(self.watch, m.StatusRequest())
        if reply is None:
            self.report.hangs += 1
            self.log(f"fuzz: status not answered within {self.status_timeout_s} s")
            return None
        return reply.status if isinstance(reply, m.StatusReply) else None

    def _exits(self, status: dict) -> int:
        return sum(sum(vp["exits"].values()) for p in status["partitions"] if p["id"] in self.run_partitions
                   for vp in p["vps"])

    def _alive(self) -> bool:
        dead = []
        for pid in self.watched_pids:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    dead.append(pid)
            except psutil.Error:
                dead.append(pid)
        if dead:
            self.report.crashes = 1
            self.report.dead = dead
        return not dead

    def _rate(self, seconds: float) -> float:
        s0 = self._status()
        t0 = time.monotonic()
        time.sleep(seconds)
        s1 = self._status()
        if s0 is None or s1 is None:
            return 0.0
        return (self._exits(s1) - self._exits(s0)) / (time.monotonic() - t0)

    def _rss(self) -> int:
        try:
            return psutil.Process(self.hv_pid).memory_info().rss
        except psutil.Error:
            return 0

    # -- the run -----------------------------------------------------------------------------

    def run(self, messages: int, duration_s: float, rate_window_s: float = 1.0) -> FuzzReport:
        rep = self.report
        rep.devices = self.devices
        self.r_reactive = random.Random(self.seed + 1)
        self.watch = self._dealer()
        self._hello(self.watch, "root", 0)
        status = self._status()
        if status is None:
            return rep
        rep.counters_before = dict(status["counters"])
        rep.rss_before = self._rss()
        rep.exits_per_s_before = self._rate(rate_window_s)
        self.setup()
        seq = Sequence(self.seed, self.fuzz_pid, self.run_partitions,
                       device_partitions=tuple(self.run_partitions) if self.devices else ())
        start = time.monotonic()
        next_poll = start + STATUS_EVERY_S
        last_exits = self._exits(status)
        try:
            while rep.messages < messages and time.monotonic() - start < duration_s:
                kind, label, name, frames = seq.next()
                sock = self.socks[kind]
                try:
                    sock.send_multipart(frames)
                except zmq.Again:
                    rep.hangs += 1
                    self.log(f"fuzz: the hypervisor took no {kind} frame for {self.status_timeout_s} s")
                    break
                rep.messages += 1
                rep.sent_by_type[name] += 1
                rep.sent_by_kind[f"{kind}/{label}"] += 1
                if kind == "vp" and label == "well_formed" and m.BY_NAME[name] in EXITS:
                    self.vp_in_guest = False
                    if sock.poll(VP_WAIT_MS, zmq.POLLIN):
                        self._drain("vp")
                if rep.messages % 16 == 0:
                    self._drain_all()
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + STATUS_EVERY_S
                    if not self._alive():
                        break
                    status = self._status()
                    if status is None:
                        break
                    rep.polls += 1
                    exits = self._exits(status)
                    if exits == last_exits:
                        rep.stalls += 1
                    last_exits = exits
        finally:
            rep.seconds = time.monotonic() - start
            self._drain_all()
            if self._alive():
                self.teardown()
        if self._alive():
            rep.exits_per_s_after = self._rate(rate_window_s)
            status = self._status()
            if status is not None:
                rep.counters_after = dict(status["counters"])
            rep.rss_after = self._rss()
        self.watch.close(0)
        return rep




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


def format_report(rep: FuzzReport) -> str:
    """The counts, as the fuzz command prints them."""
    lines = [f"fuzz: seed {rep.seed}, {rep.messages} messages in {rep.seconds:.1f} s "
             f"({rep.messages / rep.seconds if rep.seconds else 0:.0f}/s), fuzz partition {rep.fuzz_partition}"
             f"{'; the run’s workers fuzzed too' if rep.devices else ''}"]
    by_peer = Counter()
    by_label = Counter()
    for k, n in rep.sent_by_kind.items():
        peer, label = k.split("/")
        by_peer[peer] += n
        by_label[label] += n
    lines.append("  sent by peer: " + ", ".join(f"{k} {v}" for k, v in sorted(by_peer.items())))
    lines.append("  sent by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(by_label.items())))
    lines.append(f"  sent by type ({len(rep.sent_by_type)} types): "
                 + ", ".join(f"{k} {v}" for k, v in sorted(rep.sent_by_type.items())))
    lines.append("  errors received by code: " + (", ".join(f"{k} {v}" for k, v in sorted(rep.errors_by_code.items()))
                                                  or "none"))
    lines.append("  other replies: " + (", ".join(f"{k} {v}" for k, v in sorted(rep.replies.items())) or "none")
                 + f"; the fuzz worker's reactive replies {rep.reactive}")
    for u in rep.undecodable:
        lines.append(f"  undecodable from the hypervisor: {u}")
    delta = rep.counters_delta
    lines.append("  hypervisor counters (during): " + ", ".join(f"{k} {v}" for k, v in delta.items() if v))
    lines.append(f"  handler errors logged (bugs of ours): {len(rep.handler_error_lines)}")
    lines += [f"    {line[:200]}" for line in rep.handler_error_lines[:5]]
    lines.append(f"  crashes {rep.crashes}{' (dead: ' + str(rep.dead) + ')' if rep.dead else ''}, hangs {rep.hangs}, "
                 f"polls without guest progress {rep.stalls} of {rep.polls}")
    lines.append(f"  guest exits/s (the run's partitions): before {rep.exits_per_s_before:.0f}, "
                 f"after {rep.exits_per_s_after:.0f}")
    lines.append(f"  hypervisor RSS: before {rep.rss_before / 2**20:.1f} MiB, after {rep.rss_after / 2**20:.1f} MiB")
    return "\n".join(lines)
