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

import random
import time
from collections import Counter
from dataclasses import dataclass, field

import psutil
import zmq

from proto import messages as m
from proto.auth import hello_proof, new_nonce, peer_token
from proto.codes import HV_CHILD_ENLIGHTENED_PRIVILEGES, HvRegisterName
from proto.errors import HvstackError, ProtocolError

from benchmarks.fuzz_sequence import EXITS, KINDS, Sequence, reaction

# The fuzz partition's worker claims these (so that its VP's accesses are forwarded to it).
FUZZ_PORTS = ((0x3F8, 8), (0x60, 1), (0x64, 1))
FUZZ_MMIO = ((0xB8000, 0x8000),)
VP_WAIT_MS = 5
STATUS_EVERY_S = 1.0


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
# The fuzzer's peers and the watch on the run
# ======================================================================================


class Fuzzer:
    def __init__(self, endpoint: str, secret: str, *, server_key: str | None = None, seed: int = 1,
                 run_partitions: list[int],
                 hv_pid: int, watched_pids: list[int], status_timeout_s: float = 5.0, devices: bool = False,
                 log=print) -> None:
        self.endpoint = endpoint
        self.secret = secret
        self.server_key = server_key  # a tcp endpoint's CURVE public key (the manifest's)
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
        if self.server_key and self.endpoint.startswith("tcp://"):  # as proto.transport.Dealer does
            s.curve_serverkey = self.server_key.encode()
            s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
        s.setsockopt(zmq.SNDTIMEO, int(self.status_timeout_s * 1000))
        s.connect(self.endpoint)
        return s

    def _request(self, sock: zmq.Socket, msg: m.Message, timeout_s: float | None = None) -> m.Message | None:
        sock.send(msg.encode())
        deadline = time.monotonic() + (timeout_s or self.status_timeout_s)
        while time.monotonic() < deadline:
            if sock.poll(max(1, int((deadline - time.monotonic()) * 1000)), zmq.POLLIN):
                try:
                    reply = m.decode(sock.recv())
                except ProtocolError as e:
                    self.report.replies["undecodable"] += 1
                    self.report.undecodable.append(f"reply to {msg.NAME}: {e}")
                    continue
                if isinstance(reply, (m.ConsoleData, m.TraceEvent)):
                    continue  # a stream this root subscribed to (the sequence may subscribe it)
                return reply
        return None

    def _hello(self, sock: zmq.Socket, role: str, pid: int, vp: int = 0, wait: bool = True) -> None:
        """Hello, its challenge, the proof (proto.auth); then the reply, if ``wait``."""
        hello = m.Hello(m.PROTOCOL_VERSION, role, pid, vp, 0, "fuzz", new_nonce())
        sock.send(hello.encode())
        challenge = m.decode(sock.recv()) if sock.poll(5000, zmq.POLLIN) else None
        if not isinstance(challenge, m.HelloChallenge):
            raise HvstackError(f"hello as {role} of partition {pid} got {challenge}")
        sock.send(m.HelloProof(hello_proof(self.secret_token(role, pid), role, pid, vp, 0, "fuzz",
                                           hello.nonce, challenge.nonce)).encode())
        if wait:
            reply = m.decode(sock.recv()) if sock.poll(5000, zmq.POLLIN) else None
            if not isinstance(reply, m.HelloReply):
                raise HvstackError(f"hello as {role} of partition {pid} got {reply}")

    def secret_token(self, role: str, pid: int) -> str:
        return peer_token(self.secret, role, pid)

    def setup(self) -> None:
        """The watch (a root of its own), the fuzzing root, and the fuzz partition with its
        worker and VP connections."""
        from root.client import RootClient  # the root's host flow, as the launcher does it

        self.socks["root"] = self._dealer()
        self._hello(self.socks["root"], "root", 0)
        client = RootClient(self.endpoint, self.secret, server_key=self.server_key)
        try:
            pid = client.create_partition(int(HV_CHILD_ENLIGHTENED_PRIVILEGES), 0, 0xFFF, 1)
            self.fuzz_pid = self.report.fuzz_partition = pid
            self.socks["worker"] = self._dealer()
            self._hello(self.socks["worker"], "worker", pid)
            reply = self._request(self.socks["worker"], m.InstallIntercept(FUZZ_PORTS, FUZZ_MMIO))
            if not isinstance(reply, m.Ack):
                raise HvstackError(f"the fuzz worker's install_intercept got {reply}")
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

    def run(self, messages: int, duration_s: float, rate_window_s: float = 3.0) -> FuzzReport:
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
