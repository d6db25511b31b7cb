"""benchmarks/vmbus_net.py: a ping's stamps, from both guests and the switch, join into
stages in order; the chain floor measures."""

from __future__ import annotations

from benchmarks import vmbus_net as bench
from benchmarks.floor import measure_chain
from tests.unit.vsp.test_netvsp import two  # noqa: F401  (the fixture: two partitions on one switch)

# (req_out, the VSP's stamp after its signal, is not in the chain: a receiver already
# polling may find the frame before it; req_w, taken before the write index, precedes it)
ORDER = ("a0", "req_in", "req_w", "b0", "b1", "b2", "rep_in", "rep_w", "a2", "a3")


def test_a_pings_stamps_join_the_switchs_in_order(two):  # noqa: F811
    switch, server, vps, nics, stacks = two
    for me, peer in ((1, 2), (2, 1)):
        for _ in range(3):
            assert stacks[me].ping(vps[me], bytes([10, 0, 0, peer])) is not None
    samples = bench.pings({"switch": switch.status()})
    # the last ping of each has no next request to carry its end
    assert [(p["from"], p["seq"]) for p in samples] == [("10.0.0.1", 1), ("10.0.0.1", 2),
                                                        ("10.0.0.2", 1), ("10.0.0.2", 2)]
    for p in samples:  # one clock for guests and VSP: the stages follow each other
        assert [p[k] for k in ORDER] == sorted(p[k] for k in ORDER), p
        assert p["req_w"] <= p["req_out"] and p["rep_w"] <= p["rep_out"]
    rows = bench.stage_table(samples)
    main = [r for r in rows if not r.get("sub")]
    assert [r["n"] for r in main] == [4] * len(bench.STAGES)
    total = sum(p["a3"] - p["a0"] for p in samples) / 4 / 1e3
    assert abs(sum(r["mean_us"] for r in main) - total) < 1e-6 * max(total, 1)


def test_the_wake_split_counts_only_pings_the_interrupt_woke():
    p = {"req_w": 100, "b_sig": 110, "b_inj": 130, "b_acc": 160, "b0": 200,
         "rep_w": 300, "a_sig": 0, "a_inj": 0, "a_acc": 0, "a2": 350}
    assert bench.woken(p, "b") and not bench.woken(p, "a")
    assert not bench.woken(dict(p, b_sig=90), "b")  # an older interrupt's stamps: not this frame's
    sample = dict(p, a0=0, req_in=50, b1=210, b2=220, rep_in=250, a3=400)
    rows = bench.stage_table([sample])
    subs = [r for r in rows if r.get("sub")]
    assert [r["p50_us"] * 1e3 for r in subs[:4]] == [10, 20, 30, 40] and all(r["n"] == 0 for r in subs[4:])


def test_a_lost_reply_leaves_that_ping_out(two):  # noqa: F811
    switch, server, vps, nics, stacks = two
    stacks[1].ping(vps[1], bytes([10, 0, 0, 2]))
    switch.icmp_stamps = {k: v for k, v in switch.icmp_stamps.items() if k[2] != 0}  # no reply seen
    stacks[1].ping(vps[1], bytes([10, 0, 0, 2]))
    assert bench.pings({"switch": switch.status()}) == []
    assert bench.pings({"switch": None}) == [] and bench.stage_table([])[0]["n"] == 0


def test_the_chain_floor_measures_round_trips_and_frames_per_second():
    r = measure_chain(50, 0.3)
    assert len(r["ping_ns"]) == 50 and all(t > 0 for t in r["ping_ns"])
    assert r["stream_fps"] > 0
