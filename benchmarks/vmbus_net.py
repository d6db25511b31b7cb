"""The synthetic NIC measured (issue 10): partition-to-partition ping round trips over the
root's switch and streaming frames/s, beside the chain floor (benchmarks/floor.py), and
where a ping's time goes, stage by stage.  ``python -m benchmarks.vmbus --net``.

Two runs of two enlightened partitions (alpha, beta) with a synthetic NIC each:

- **ping**: both run ``vmbus_net`` alone, pinging each other every 50 ms.  Every echo
  request carries the stamps ``partitions/vmbus_net.py`` lays out in ``STAMPS`` (the
  pinger's as it hands it to netvsc; the answerer's from the signal's arrival at the
  hypervisor to handing the reply to netvsc; the pinger's for the previous reply, which only
  the next request can carry).  The VSP's switch notes them with its own stamps of every echo
  request and reply, as netvsp got it from the sender's ring and as it had written the
  receiver's ring and signalled it (root/vsp/netvsp.py, ``switch.icmp_stamps`` in
  vsp-status.json).  All are perf_counter_ns — CLOCK_MONOTONIC, one clock for every
  process on the host — so the differences are the stages.  A pinger's last ping has no
  next request to carry its end: it is not counted.
- **stream**: alpha also runs ``vmbus_net_stream`` (2 s of back-to-back 1 KiB frames to
  beta); beta counts what arrived, the VSP what its full receive buffer dropped.

A ping's round trip starts after its ARP resolution (partitions/vmbus_net.py resolves,
then stamps), so the first ping carries no ARP; its round trip is shown beside the
percentiles and is not excluded (once 0.9 s, when its peer was still bringing its NIC up;
README gives a run's first pings beside its percentiles).  Pings with no reply within
1 s are counted as lost.  The guests ping every 50 ms at most and answer from their SINT's
interrupt, so a 20 s run gives hundreds of samples.
"""

from __future__ import annotations

import json
import re
import tempfile

from proto.errors import HvstackError

NET_PARTITION = """
[[partition]]
name = "{name}"
vps = 1
memory_mb = 16
enlightenments = ["hypercall", "vp_index", "reference_counter", "apic", "synic"]
workloads = {workloads}
vmbus = {{ nic = {{}} }}
"""

# Where a ping's time goes: (stage, from stamp, to stamp).  a0: the pinger hands the
# request to netvsc; req_in / req_w / req_out: the VSP's netvsp got the request from A's
# ring / began to write B's ring (before the write index that publishes it) / had written
# it and signalled; b0/b1/b2: B's poll found the request (the ring read that saw the VSP's
# write index: so b0 follows req_w however B came to look) / had it / hands the reply to
# netvsc; the same for the reply (rep_*, a2, a3).  The chain sums to the round trip.
STAGES = (
    ("A: ring write + HvCallSignalEvent → hv → VSP reads the ring", "a0", "req_in"),
    ("VSP: netvsp + switch", "req_in", "req_w"),
    ("VSP writes B's ring → B's poll finds it", "req_w", "b0"),
    ("B: netvsc reads the ring and the receive section", "b0", "b1"),
    ("B: handler builds the echo reply", "b1", "b2"),
    ("B: ring write + HvCallSignalEvent → hv → VSP reads the ring", "b2", "rep_in"),
    ("VSP: netvsp + switch", "rep_in", "rep_w"),
    ("VSP writes A's ring → A's poll finds it", "rep_w", "a2"),
    ("A: netvsc reads the ring and the receive section", "a2", "a3"),
)
# The "writes the ring → poll finds it" stages split, over the pings where the SINT
# interrupt the VSP's signal raised is what polled (its hypervisor stamps follow the ring
# write): sig — the hypervisor received the SynicSignal and asserted the SINT (one step of
# its loop), inj — it injected the vector into the VP (a resume or a posted interrupt), acc
# — the VP took it.  The others were found by a poll already under way, or by the workload's.
WAKE_STAGES = {
    "b": (("VSP: ring write + SynicSignal → hv has it, asserts B's SINT", "req_w", "b_sig"),
          ("hv: SINT asserted → vector injected into B's VP", "b_sig", "b_inj"),
          ("B's VP: injected → interrupt taken", "b_inj", "b_acc"),
          ("B: interrupt taken → NAPI poll finds the request", "b_acc", "b0")),
    "a": (("VSP: ring write + SynicSignal → hv has it, asserts A's SINT", "rep_w", "a_sig"),
          ("hv: SINT asserted → vector injected into A's VP", "a_sig", "a_inj"),
          ("A's VP: injected → interrupt taken", "a_inj", "a_acc"),
          ("A: interrupt taken → NAPI poll finds the reply", "a_acc", "a2")),
}
LOST_LINE = re.compile(r"vmbus_net: ping [\d.]+: no reply")


def topology(name: str, duration_s: float, stream: bool) -> str:
    return (f'[run]\nname = "{name}"\nduration_s = {duration_s}\nlogical_processors = 2\n'
            + NET_PARTITION.format(name="alpha", workloads='["vmbus_net", "vmbus_net_stream"]' if stream
                                   else '["vmbus_net"]')
            + NET_PARTITION.format(name="beta", workloads='["vmbus_net"]'))


def _run(name: str, duration_s: float, stream: bool):
    """One run to its end: (final status, console text by partition, the VSP's status)."""
    from root.report import Output
    from root.run import execute
    from root.topology import load_topology

    topo = load_topology(topology(name, duration_s, stream), "<bench-vmbus-net>")
    with open("/dev/null", "w") as devnull:
        run, reason, code = execute(topo, Output(devnull), duration_s)
    if code != 0 or not run.final_status:
        raise HvstackError(f"the bench run {name} failed: {reason}")
    path = run.run.path
    consoles = {p.name: (path / f"console-{p.name}.log").read_text(errors="replace") for p in topo.partitions}
    try:
        vsp = json.loads((path / "vsp-status.json").read_text())
    except (OSError, ValueError) as e:
        raise HvstackError(f"no VSP status in {path}: {e}") from e
    return run.final_status, consoles, vsp


def pings(vsp: dict) -> list[dict]:
    """Every ping whose request, reply and next request the switch noted: one dict of
    named stamps per ping, by pinger and sequence."""
    seen = {(src, dst, kind, seq): t for src, dst, kind, seq, *t in
            ((vsp.get("switch") or {}).get("icmp_stamps") or []) if len(t) == 15}
    requests = {(src, seq): t for (src, _, kind, seq), t in seen.items() if kind == 8}
    out = []
    for (src, dst, kind, seq), t in sorted(seen.items()):
        reply, after = seen.get((dst, src, 0, seq)), requests.get((src, (seq + 1) & 0xFFFF))
        if kind != 8 or reply is None or after is None or not all(after[13:15]):
            continue
        out.append({"from": src, "seq": seq, "a0": t[3], "req_in": t[0], "req_w": t[1], "req_out": t[2],
                    "b_sig": reply[4], "b_inj": reply[5], "b_acc": reply[6],
                    "b0": reply[7], "b1": reply[8], "b2": reply[9],
                    "rep_in": reply[0], "rep_w": reply[1], "rep_out": reply[2],
                    "a_sig": after[10], "a_inj": after[11], "a_acc": after[12], "a2": after[13], "a3": after[14]})
    return out


def woken(p: dict, side: str) -> bool:
    """Whether ``side``'s (a or b) poll that found the frame ran from the interrupt the
    VSP's signal for that frame raised: its stamps are there, follow the ring write and
    precede the poll."""
    written = p["req_w"] if side == "b" else p["rep_w"]
    sig, inj, acc, found = p[side + "_sig"], p[side + "_inj"], p[side + "_acc"], p[side + "0" if side == "b" else "a2"]
    return bool(sig and inj and acc and written) and written <= sig <= inj <= acc <= found


def pct(values: list[float], p: int) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, len(s) * p // 100)] if s else 0.0


def _row(name: str, d: list[float]) -> dict:
    return {"stage": name, "p50_us": pct(d, 50), "mean_us": sum(d) / len(d) if d else 0.0, "n": len(d)}


def stage_table(samples: list[dict]) -> list[dict]:
    """Per stage: p50 and mean (µs) over the pings that carry every stamp; after each
    "writes the ring → poll finds it" stage, its split over the pings the interrupt woke
    (``sub``: True)."""
    rows = []
    for name, a, b in STAGES:
        rows.append(_row(name, [(p[b] - p[a]) / 1e3 for p in samples]))
        side = "b" if b == "b0" else "a" if b == "a2" else None
        if side:
            woke = [p for p in samples if woken(p, side)]
            rows += [dict(_row(sub, [(p[y] - p[x]) / 1e3 for p in woke]), sub=True) for sub, x, y in WAKE_STAGES[side]]
    return rows


def measure(duration_s: float = 20.0, floor_samples: int = 2000, floor_stream_s: float = 2.0) -> dict:
    from benchmarks.floor import measure_chain
    from benchmarks.vmbus import private_runs

    with tempfile.TemporaryDirectory(prefix="hvvmbusnet") as d, private_runs(d):
        _, consoles, vsp = _run("bench-vmbus-ping", duration_s, stream=False)
        status, _, stream_vsp = _run("bench-vmbus-stream", max(duration_s, 12.0), stream=True)
    samples = pings(vsp)
    firsts: dict[str, dict] = {}
    for p in samples:
        firsts.setdefault(p["from"], p)
    rtt = [(p["a3"] - p["a0"]) / 1e3 for p in samples]
    g = [vp.guest for part in status.partitions for vp in part.vps]
    sent = sum(x.get("vmbus_stream_sent", 0) for x in g)
    ns = sum(x.get("vmbus_stream_ns", 0) for x in g)
    received = sum(x.get("vmbus_stream_rx", 0) for x in g)
    dropped = sum(dev.get("rx_dropped", 0) for devs in (stream_vsp.get("devices") or {}).values()
                  for dev in devs.values() if isinstance(dev, dict))
    floor = measure_chain(floor_samples, floor_stream_s)
    fl = [x / 1e3 for x in floor["ping_ns"]]
    return {
        "ping": {"n": len(rtt), "p50_us": pct(rtt, 50), "p99_us": pct(rtt, 99),
                 "min_us": min(rtt, default=0.0), "max_us": max(rtt, default=0.0),
                 "lost": sum(len(LOST_LINE.findall(t)) for t in consoles.values()),
                 "first_us": {k: (p["a3"] - p["a0"]) / 1e3 for k, p in firsts.items()}},
        "floor_ping": {"n": len(fl), "p50_us": pct(fl, 50), "p99_us": pct(fl, 99)},
        "stages": stage_table(samples),
        "stream": {"sent": sent, "received": received, "ns": ns, "vsp_rx_dropped": dropped,
                   "sent_fps": sent / ns * 1e9 if ns else 0.0, "received_fps": received / ns * 1e9 if ns else 0.0},
        "floor_stream_fps": floor["stream_fps"],
    }


def report(r: dict) -> str:
    p, fp, s = r["ping"], r["floor_ping"], r["stream"]
    lines = ["synthetic NIC (netvsc ↔ netvsp + switch in the root's VSP process), partition ↔ partition"]
    if p["n"]:
        lines.append(f"  ping round trip: p50 {p['p50_us'] / 1e3:.2f} ms, p99 {p['p99_us'] / 1e3:.2f} ms over {p['n']} "
                     f"(min {p['min_us'] / 1e3:.2f}, max {p['max_us'] / 1e3:.2f}); chain floor (8 hops) p50 "
                     f"{fp['p50_us']:.0f} µs, p99 {fp['p99_us']:.0f} µs: p50 {p['p50_us'] / fp['p50_us']:.0f}× floor")
        lines.append(f"    {p['lost']} lost (no reply within 1 s); first ping of each pinger (included; no ARP "
                     "inside it): " + ", ".join(f"{k} {v / 1e3:.2f} ms" for k, v in p["first_us"].items()))
    else:
        lines.append("  ping: no round trip with stamps was measured")
    if s["ns"]:
        lines.append(f"  streaming 1 KiB frames A → switch → B: {s['sent_fps']:.0f} frames/s sent, "
                     f"{s['received_fps']:.0f} frames/s received ({s['received']} of {s['sent']}; "
                     f"{s['vsp_rx_dropped']} dropped at B's full receive buffer); chain floor (4 hops a frame, every "
                     f"one signalled) {r['floor_stream_fps']:.0f} frames/s: {s['received_fps'] / r['floor_stream_fps']:.3f}× floor")
    rows = r["stages"]
    if rows and rows[0]["n"]:
        lines.append(f"  where a ping's time goes (µs, {rows[0]['n']} pings with every stamp):  p50     mean")
        for row in rows:
            if row.get("sub"):
                lines.append(f"      {row['stage']:<60} {row['p50_us']:8.0f} {row['mean_us']:8.0f}  "
                             f"({row['n']} woken by the interrupt)")
            else:
                lines.append(f"    {row['stage']:<62} {row['p50_us']:8.0f} {row['mean_us']:8.0f}")
    return "\n".join(lines)
