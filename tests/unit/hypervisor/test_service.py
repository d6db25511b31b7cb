"""The loop, the route table, hello and the peers' other requests, in-process."""

from __future__ import annotations

import logging

from proto import messages as m
from proto.exits import Exit
from proto.stats import PathStats
from hypervisor.routes import Route
from hypervisor.scheduler import VpState
from proto.auth import hello_proof, peer_token
from tests.unit.hypervisor.fake_stack import REGS, ROOT, SECRET, Stack, stamps, vp_id, worker_id

V10, V11, V20 = vp_id(1, 0), vp_id(1, 1), vp_id(2, 0)
W1, W2 = worker_id(1), worker_id(2)


def error_of(sent, who) -> m.ErrorReply:
    return sent.one(who, m.ErrorReply)


# -- the loop: what it refuses ---------------------------------------------------------------------


def test_garbage_and_extra_frames_get_an_error_and_a_count_never_a_crash(stack):
    assert error_of(stack.raw(b"x", b"\xc1"), b"x").code == "MALFORMED"
    assert error_of(stack.raw(b"x", b"\x92\x7f\x00"), b"x").code == "UNKNOWN_TYPE"
    assert error_of(stack.raw(b"x", m.StatusRequest().encode(), b"more"), b"x").code == "MALFORMED"
    assert stack.hv.counters["malformed"] == 3 and stack.hv.running is False


def test_nothing_but_hello_before_hello(stack):
    err = error_of(stack.send(b"stranger", m.StatusRequest()), b"stranger")
    assert (err.code, err.ref_type) == ("NOT_AUTHENTICATED", m.StatusRequest.TYPE)
    assert stack.hv.counters["not_authenticated"] == 1


def test_a_role_may_send_only_what_its_routes_allow(two):
    assert error_of(two.send(W1, m.IoPortIntercept(1, 0x80, 1, False, 0, stamps(), REGS)), W1).code == "NOT_PERMITTED"
    assert error_of(two.send(V10, m.StatusRequest()), V10).message == "a vp may not send status_request"
    assert error_of(two.send(ROOT, m.VpResume(1, 0, 0, 0, 0, 0, b"", (), 0, (), 0, 0, 0)), ROOT).code \
        == "NOT_PERMITTED"  # not a request at all
    assert two.hv.counters["not_permitted"] == 3
    assert two.vp(1).state is VpState.RUNNING  # a refused exit does not take the VP off its LP


def test_the_route_table_routes_every_exit_kind_to_a_handler_taking_its_context(stack):
    routes = stack.hv.routes
    assert all(isinstance(r, Route) for r in routes.values())
    exits = {cls for cls, r in routes.items() if r.exit}
    assert exits == {m.IoPortIntercept, m.IoStringIntercept, m.MmioIntercept, m.CpuidIntercept, m.MsrIntercept,
                     m.HypercallIntercept,
                     m.HaltIntercept, m.QuantumExit, m.Cr3Intercept, m.InvlpgIntercept}
    assert all("vp" in routes[cls].roles for cls in exits)
    assert routes[m.Hello].roles == ()  # only before binding
    # Hypervisor → peer messages are never routed back in.
    for cls in (m.VpResume, m.PortNotify, m.MmioNotify, m.HelloReply, m.StatusReply, m.TraceEvent, m.ConsoleData):
        assert cls not in routes


# -- hello -----------------------------------------------------------------------------------------


def test_hello_binds_an_identity_once(two):
    assert error_of(two.hello(ROOT, "root"), ROOT).code == "NOT_PERMITTED"  # already bound
    assert error_of(two.hello(b"w1b", "worker", 1), b"w1b").code == "CONFLICT"  # one worker per partition
    assert error_of(two.hello(b"v10b", "vp", 1, 0), b"v10b").code == "CONFLICT"  # one thread per VP
    assert error_of(two.hello(b"v19", "vp", 1, 9), b"v19").code == "UNKNOWN_VP"
    assert error_of(two.hello(b"w9", "worker", 9), b"w9").code == "UNKNOWN_PARTITION"
    assert two.hv.counters["refused_hellos"] == 4


def test_a_hello_must_prove_its_role_and_speak_the_protocol(stack, caplog):
    assert error_of(stack.hello(b"x", "root", token="0" * 40), b"x").code == "NOT_AUTHENTICATED"
    err = error_of(stack.send(b"y", m.Hello(99, "root", 0, 0, 1, "s", b"n" * 32)), b"y")
    assert err.code == "VERSION_MISMATCH"
    assert stack.hv.counters["refused_hellos"] == 2 and "refused hello from pid" in caplog.text


def test_a_captured_hello_and_proof_replayed_on_another_connection_are_refused(stack):
    """Issue 9: a token was a static bearer credential, so a captured hello replayed as
    root.  The proof is bound to the connection's own nonce: replayed, it fails."""
    hello = m.Hello(m.PROTOCOL_VERSION, "root", 0, 0, 4242, "s", b"c" * 32)
    [challenge] = stack.send(b"victim", hello).to(b"victim")
    mac = hello_proof(peer_token(SECRET, "root", 0), "root", 0, 0, 4242, "s", hello.nonce, challenge.nonce)
    assert isinstance(stack.send(b"victim", m.HelloProof(mac)).one(b"victim"), m.HelloReply)
    # The attacker replays both frames it saw on a connection of its own.
    [other] = stack.send(b"thief", hello).to(b"thief")
    assert other.nonce != challenge.nonce
    assert error_of(stack.send(b"thief", m.HelloProof(mac)), b"thief").code == "NOT_AUTHENTICATED"
    assert b"thief" not in stack.hv.peers.by_identity
    # ... or a proof with no challenge first, or a second proof for one challenge.
    assert error_of(stack.send(b"thief2", m.HelloProof(mac)), b"thief2").code == "NOT_AUTHENTICATED"
    assert error_of(stack.send(b"thief", m.HelloProof(mac)), b"thief").code == "NOT_AUTHENTICATED"
    assert stack.hv.counters["refused_hellos"] == 3


def test_a_hello_with_a_short_nonce_is_refused(stack):
    hello = m.Hello(m.PROTOCOL_VERSION, "root", 0, 0, 4242, "s", b"c" * 8)
    assert error_of(stack.send(b"short", hello), b"short").code == "INVALID_FIELD"


def test_no_key_or_token_is_on_the_wire_of_a_hello(stack):
    hello = m.Hello(m.PROTOCOL_VERSION, "root", 0, 0, 4242, "s", b"c" * 32)
    [challenge] = stack.send(b"r", hello).to(b"r")
    key = peer_token(SECRET, "root", 0)
    mac = hello_proof(key, "root", 0, 0, 4242, "s", hello.nonce, challenge.nonce)
    for frame in (hello.encode(), challenge.encode(), m.HelloProof(mac).encode()):
        assert key.encode() not in frame and SECRET.encode() not in frame


def test_an_unanswered_challenge_expires(stack, monkeypatch):
    from hypervisor import peers
    hello = m.Hello(m.PROTOCOL_VERSION, "root", 0, 0, 4242, "s", b"c" * 32)
    [challenge] = stack.send(b"slow", hello).to(b"slow")
    mac = hello_proof(peer_token(SECRET, "root", 0), "root", 0, 0, 4242, "s", hello.nonce, challenge.nonce)
    real = peers.time.monotonic
    monkeypatch.setattr(peers.time, "monotonic", lambda: real() + peers.HELLO_DEADLINE_S + 1)
    assert error_of(stack.send(b"slow", m.HelloProof(mac)), b"slow").code == "NOT_AUTHENTICATED"


def test_a_vps_hello_reply_waits_until_the_root_starts_it(stack):
    stack.partition(vps=1, start=False)
    assert stack.vp(1).state is VpState.READY and stack.vp(1).sched.suspended
    assert isinstance(stack.start(1, 0).one(V10), m.HelloReply)
    assert stack.vp(1).state is VpState.RUNNING


def test_a_suspended_vp_finishes_its_exit_but_runs_again_only_when_let_go(two):
    assert not two.start(1, 0, suspend=True).to(V10)
    assert not two.exit(V10, m.CpuidIntercept(1, 0, 0, stamps(), REGS)).to(V10)
    assert two.vp(1).state is VpState.READY
    assert two.start(1, 0).one(V10, m.VpResume).seq == 1


# -- scheduling through the loop -------------------------------------------------------------------


def test_with_one_lp_a_ready_vp_runs_when_the_lp_is_given_back(tmp_path):
    s = Stack(tmp_path, lps=1)  # (with no forced preemption: fake_stack.Stack)
    s.hello(ROOT, "root")
    s.partition(vps=1)
    s.partition(vps=1, start=False)
    assert not s.start(2, 0).to(V20)  # the one LP is V10's
    assert s.vp(2).state is VpState.READY
    out = s.exit(V10, m.QuantumExit(1, stamps(), REGS))  # V10 gives it back
    assert isinstance(out.one(V20), m.HelloReply) and not out.to(V10)
    assert s.vp(1).state is VpState.READY and s.vp(2).state is VpState.RUNNING
    st = s.hv.status()
    assert st.scheduler.ready == 1 and st.scheduler.lps[0].vp == (2, 0)
    assert st.partition(1).vps[0].sched.state == "ready" and st.partition(1).vps[0].sched.lp is None


# -- the peers' other requests ------------------------------------------------------------------


def test_a_peer_may_map_only_its_own_partitions_memory(two):
    reply = two.send(W1, m.MemoryRequest(1)).one(W1, m.MemoryReply)
    assert reply.slat.endswith("slat-1.bin") and len(reply.tlbs) == 4
    assert two.send(V20, m.MemoryRequest(2)).one(V20, m.MemoryReply)
    assert error_of(two.send(W1, m.MemoryRequest(2)), W1).code == "NOT_PERMITTED"
    assert two.hv.counters["isolation_refusals"] == 1


def test_vp_stats_become_the_partitions_paths_and_guest_counters(two):
    stats = PathStats()
    stats.record((0, 10, 30))
    two.send(V10, m.VpStats({Exit.CPUID.value: stats.to_wire()}, {"interrupts": 2, "exits": 5}))
    two.send(V11, m.VpStats({Exit.CPUID.value: stats.to_wire()}, {"interrupts": 1}))
    p = two.hv.status().partition(1)
    assert p.guest == {"interrupts": 3, "exits": 5} and p.paths["cpuid"].total.n == 2
    assert p.vps[0].guest == {"interrupts": 2, "exits": 5}
    two.send(V10, m.VpStats({"cpuid": {"t": "not a histogram"}}, {}))
    assert two.hv.counters["malformed"] == 1


def test_each_vp_stats_adds_its_round_trips_and_a_bad_one_adds_nothing(two):
    """vp_stats carry the round trips since the VP's last (issue 12): the hypervisor adds
    them up — and refuses, whole, one whose buckets do not add up to its count, one that
    would take the VP past MAX_VP_STATS_BUCKETS, or one that would count past what packs."""
    from hypervisor.telemetry import MAX_VP_STATS_BUCKETS
    from proto.stats import MAX_BUCKET, MAX_WIRE_VALUE, Histogram

    def delta(*totals_ns: int) -> dict:
        st = PathStats()
        for t in totals_ns:
            st.record((0, t // 2, t))
        return st.to_wire()

    two.send(V10, m.VpStats({Exit.CPUID.value: delta(1000, 2000)}, {"exits": 2}))
    two.send(V10, m.VpStats({Exit.CPUID.value: delta(3000), Exit.MSR.value: delta(500)}, {"exits": 4}))
    two.send(V10, m.VpStats({}, {"exits": 5}))
    p = two.hv.status().partition(1)
    cpuid = p.paths["cpuid"]
    assert (cpuid.total.n, cpuid.total.total, cpuid.total.lo, cpuid.total.hi) == (3, 6000, 1000, 3000)
    assert p.paths["msr"].total.n == 1 and p.vps[0].guest == {"exits": 5}
    vp = two.vp(1)
    assert vp.stats_buckets == sum(len(h.counts) for st in vp.stats.values() for h in (st.total, *st.stages))
    before = (two.hv.status().partition(1).paths, vp.stats_buckets)

    lying = delta(1000)
    lying["t"]["n"] = 7  # one bucket holding 1
    full = Histogram({b: 1 for b in range(MAX_BUCKET + 1)}, MAX_BUCKET + 1, MAX_BUCKET + 1, 1, 1)
    stages = -(-MAX_VP_STATS_BUCKETS // len(full.counts))  # every histogram as full as a bucket number allows
    many = PathStats(full, [full] * stages)
    huge = delta(1000)
    huge["t"]["n"] = huge["t"]["c"][next(iter(huge["t"]["c"]))] = MAX_WIRE_VALUE - 1
    for bad in (lying, many.to_wire(), huge):
        two.send(V10, m.VpStats({Exit.CPUID.value: bad}, {"exits": 99}))
    assert two.hv.counters["malformed"] == 3
    assert (two.hv.status().partition(1).paths, vp.stats_buckets) == before and vp.counters == {"exits": 5}


def test_a_vp_stats_near_the_bucket_cap_is_counted_exactly(two):
    """The cap on a VP's histogram buckets is decided by a bound (every bucket of a
    vp_stats new) while that is under the cap, and by the exact count near it: a delta
    whose buckets the VP has already is taken however many it carries."""
    from hypervisor.telemetry import MAX_VP_STATS_BUCKETS
    from proto.stats import MAX_BUCKET, Histogram

    full = Histogram({b: 1 for b in range(MAX_BUCKET + 1)}, MAX_BUCKET + 1, MAX_BUCKET + 1, 1, 1)
    stages = MAX_VP_STATS_BUCKETS // len(full.counts) - 1  # the total and these: under the cap, twice over it
    delta = PathStats(full, [full] * stages).to_wire()
    held = (stages + 1) * len(full.counts)
    assert held <= MAX_VP_STATS_BUCKETS < 2 * held
    vp = two.vp(1)
    for sent in (1, 2):
        two.send(V10, m.VpStats({Exit.CPUID.value: delta}, {"exits": sent}))
        assert two.hv.counters["malformed"] == 0 and vp.counters == {"exits": sent}
        assert vp.stats_buckets == held == sum(len(h.counts) for st in vp.stats.values()
                                               for h in (st.total, *st.stages))
    assert two.hv.status().partition(1).paths["cpuid"].total.n == 2 * len(full.counts)


def test_a_peer_that_is_gone_loses_its_subscriptions(two):
    two.hello(b"t", "root")
    two.send(b"t", m.TraceSubscribe(0))
    two.send(b"t", m.ConsoleSubscribe(1))
    two.router.gone.add(b"t")
    two.send(b"t", m.StatusRequest())  # the reply cannot be routed
    assert two.hv.counters["unroutable_replies"] == 1
    assert b"t" not in two.hv.tracer.tracers and b"t" not in two.part(1).console_watchers


def test_serve_closes_the_socket_it_was_given(stack):
    assert stack.router.closed


def test_a_flood_of_refused_hellos_writes_a_bounded_log(stack, caplog):
    """Finding: every refused hello wrote a log line, at whatever rate a peer sent them."""
    with caplog.at_level(logging.INFO, "hypervisor"):
        for i in range(300):
            stack.hello(b"x%d" % i, "root", token="0" * 40)
    lines = [r.getMessage() for r in caplog.records if "refused hello" in r.getMessage()]
    assert stack.hv.counters["refused_hellos"] == 300
    assert 1 <= len(lines) <= 10, f"{len(lines)} log lines for 300 refused hellos"
    assert all(len(line) <= 300 for line in lines)


def test_a_peer_whose_connection_goes_is_forgotten_with_its_streams(stack):
    """Finding: the peer table never shrank."""
    stack.hello(b"r2", "root")
    stack.send(b"r2", m.TraceSubscribe(0))
    assert b"r2" in stack.hv.peers.by_identity and b"r2" in stack.router.bound
    assert len(stack.hv.tracer.tracers) == 1
    stack.router.dropped.append(b"r2")
    stack.hv._housekeeping()
    assert b"r2" not in stack.hv.peers.by_identity and not stack.hv.tracer.tracers
    assert stack.hv.counters["peers_disconnected"] == 1
    assert stack.hv.status().peers == 1  # the root the fixture bound


def test_a_worker_or_vp_that_disconnects_leaves_the_table_but_keeps_its_place(two):
    """Its entry goes; its place in the partition stays taken for the run (the root sees
    the process die), so nobody else can claim the partition's devices or VPs."""
    peers = len(two.hv.peers)
    two.router.dropped += [worker_id(1), vp_id(1, 0)]
    two.hv._housekeeping()
    assert worker_id(1) not in two.hv.peers.by_identity and vp_id(1, 0) not in two.hv.peers.by_identity
    assert len(two.hv.peers) == peers - 2
    assert two.hv.table.get(1).worker == worker_id(1)
    assert error_of(two.hello(b"w1new", "worker", 1), b"w1new").code == "CONFLICT"
    assert error_of(two.hello(b"v10new", "vp", 1, 0), b"v10new").code == "CONFLICT"
