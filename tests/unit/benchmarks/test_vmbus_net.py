"""benchmarks/vmbus_net.py: a ping's stamps, from both guests and the switch, join into
stages in order; the chain floor measures."""

from __future__ import annotations

from benchmarks import vmbus_net as bench
from benchmarks.floor import measure_chain
from tests.unit.vsp.test_netvsp import two  # noqa: F401  (the fixture: two partitions on one switch)


def test_a_pings_stamps_join_the_switchs_in_order(two):  # noqa: F811
    switch, server, vps, nics, stacks = two
    consoles = {}
    for me, peer in ((1, 2), (2, 1)):
        lines = [f"[p{me}] vmbus_net: NIC {stacks[me].nic.mac.hex(':')} on channel 1, address 10.0.0.{me}"]
        for _ in range(2):
            rtt = stacks[me].ping(vps[me], bytes([10, 0, 0, peer]))
            assert rtt is not None
            lines.append(f"[p{me}] vmbus_net: ping 10.0.0.{peer}: 64 bytes, {rtt * 1e3:.2f} ms (0 echo requests "
                         f"answered)" + stacks[me].stamps_text())
        consoles[f"p{me}"] = "\n".join(lines)
    samples = bench.pings(consoles, {"switch": switch.status()})
    assert [(p["from"], p["seq"]) for p in samples] == [("p1", 1), ("p1", 2), ("p2", 1), ("p2", 2)]
    order = ("a0", "req_in", "req_out", "b0", "b1", "b2", "rep_in", "rep_out", "a2", "a3")
    for p in samples:  # one clock for guests and VSP: the stages follow each other
        assert [p[k] for k in order] == sorted(p[k] for k in order), p
    rows = bench.stage_table(samples)
    assert [r["n"] for r in rows] == [4] * len(bench.STAGES)
    total = sum(p["a3"] - p["a0"] for p in samples) / 4 / 1e3
    assert abs(sum(r["mean_us"] for r in rows) - total) < 1e-6 * max(total, 1)


def test_an_echo_request_from_elsewhere_leaves_no_stamps_to_join():
    # a console ping line whose request the switch never stamped is kept, without stages
    consoles = {"a": "vmbus_net: NIC x on channel 1, address 10.0.0.1\n"
                     "vmbus_net: ping 10.0.0.2: 64 bytes, 1.00 ms (0 echo requests answered) seq 3 stamps 1 2 3 4 5 6"}
    (p,) = bench.pings(consoles, {"switch": {"icmp_stamps": []}})
    assert "req_in" not in p and bench.stage_table([p])[0]["n"] == 0


def test_the_chain_floor_measures_round_trips_and_frames_per_second():
    r = measure_chain(50, 0.3)
    assert len(r["ping_ns"]) == 50 and all(t > 0 for t in r["ping_ns"])
    assert r["stream_fps"] > 0
