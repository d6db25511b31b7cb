"""The VP scheduler through the real processes: LPs, weights, limits, long spin waits."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from proto.errors import PeerTimeout
from root.client import RootClient

from tests.support import alive, short_run_root, start_run, wait_until

pytestmark = pytest.mark.integration

PARTITION = """
[[partition]]
name = "{name}"
vps = {vps}
memory_mb = 4
chipset = "minimal"
enlightenments = {enlightenments}
spin_retry = {spin_retry}
workloads = ["{workload}"]
cpu = {{ {cpu} }}
"""


def topology(tmp_path: Path, lps: int, *partitions: dict) -> str:
    text = f'[run]\nname = "sched"\nduration_s = 0\nlogical_processors = {lps}\n'
    for p in partitions:
        text += PARTITION.format(**{"vps": 1, "enlightenments": "[]", "spin_retry": "0xFFFFFFFF",
                                    "workload": "compute", "cpu": "", **p})
    cfg = tmp_path / "sched.toml"
    cfg.write_text(text)
    return str(cfg)


class Run:
    def __init__(self, cfg: str) -> None:
        self.live = start_run(cfg, short_run_root())
        self.client = RootClient(self.live.manifest()["endpoint"], self.live.secret())

    def status(self) -> dict:
        try:
            return self.client.status()
        except PeerTimeout as e:  # seen once in CI (not reproduced): say what the run was doing
            raise AssertionError(f"{e}\n{self.live.postmortem()}") from None

    def run_s(self) -> dict[int, float]:
        """Seconds each partition's VPs spent dispatched on an LP, by partition id."""
        return {p["id"]: sum(vp["sched"].get("run_s", 0) for vp in p["vps"]) for p in self.status()["partitions"]}

    def sample(self, seconds: float) -> tuple[dict[int, float], float]:
        """Run time per partition over ``seconds`` of wall time, measured by the hypervisor."""
        a, t0 = self.run_s(), time.monotonic()
        time.sleep(seconds)
        b, t1 = self.run_s(), time.monotonic()
        return {k: b[k] - a[k] for k in b}, t1 - t0

    def close(self) -> None:
        self.client.close()
        pids = self.live.pids()
        self.live.stop()
        wait_until(lambda: not alive(pids), 10, what="every process gone")


@pytest.fixture
def runs():
    started = []
    yield lambda cfg: started.append(Run(cfg)) or started[-1]
    for r in started:
        r.close()


def booted(run: Run, vps: int) -> None:
    wait_until(lambda: sum(1 for p in run.status()["partitions"] for vp in p["vps"]
                           if vp["sched"].get("dispatches", 0) > 2) >= vps, 30, what="every VP dispatched")


def test_never_more_vps_run_than_there_are_lps(tmp_path, runs):
    run = runs(topology(tmp_path, 2, {"name": "a", "vps": 3}, {"name": "b", "vps": 2}))
    booted(run, 5)
    for _ in range(10):
        sched = run.status()["scheduler"]
        assert sched["running"] <= 2 and sched["max_running"] <= 2
        time.sleep(0.1)
    assert sched["max_running"] == 2


@pytest.mark.timing
def test_weights_share_a_contended_lp_within_10_percent(tmp_path, runs):
    run = runs(topology(tmp_path, 1, {"name": "light", "cpu": "weight = 100"},
                        {"name": "heavy", "cpu": "weight = 300"}))
    booted(run, 2)
    used, _ = run.sample(3.0)
    light, heavy = used[1], used[2]
    share = heavy / (light + heavy)
    assert share == pytest.approx(0.75, rel=0.10), f"heavy got {share:.1%} of the LP, weights say 75%"


@pytest.mark.timing
def test_a_limit_caps_a_vp_within_10_percent(tmp_path, runs):
    run = runs(topology(tmp_path, 2, {"name": "capped", "cpu": "limit = 30"}))
    booted(run, 1)
    used, wall = run.sample(3.0)
    share = used[1] / wall
    assert share == pytest.approx(0.30, rel=0.10), f"a VP limited to 30% of an LP ran {share:.1%}"


@pytest.mark.timing
def test_a_reserve_is_served_before_weight(tmp_path, runs):
    run = runs(topology(tmp_path, 1, {"name": "reserved", "cpu": "reserve = 60, weight = 1"},
                        {"name": "other", "cpu": "weight = 10000"}))
    booted(run, 2)
    used, _ = run.sample(3.0)
    share = used[1] / (used[1] + used[2])
    # Without its reserve the weight-1 VP would get 0.01% of the LP.
    assert share >= 0.60 * 0.9, f"the reserved VP got {share:.1%} of the LP, its reserve is 60%"


@pytest.mark.timing
def test_long_spin_wait_notifications_cut_the_spinning_per_acquisition(tmp_path, runs):
    """A waiter that tells the hypervisor it has spun long gives its LP away — often to the
    preempted lock holder — instead of spinning out its quantum, so the partition wastes fewer
    PAUSE spins per lock acquisition. Spins per acquisition are counted in the guest, so they do
    not move with the host's load the way acquisitions per wall-clock second do (that rate, kept
    in the message, was higher with notifications in most runs but lost under load: 724 vs 739)."""
    spins, rates = {}, {}
    for label, enl, retry in (("on", '["hypercall", "vp_index", "reference_counter"]', "0x400"),
                              ("off", "[]", "0xFFFFFFFF")):
        cfg = topology(tmp_path, 2, {"name": "locks", "vps": 4, "workload": "spinlock",
                                     "enlightenments": enl, "spin_retry": retry})
        run = runs(cfg)
        booted(run, 4)

        def guest():
            return run.status()["partitions"][0]["guest"]

        g0, t0 = guest(), time.monotonic()
        time.sleep(3.0)
        g1 = guest()
        acquired = g1.get("acquisitions", 0) - g0.get("acquisitions", 0)
        assert acquired > 0, g1
        spins[label] = (g1.get("spins", 0) - g0.get("spins", 0)) / acquired
        rates[label] = acquired / (time.monotonic() - t0)
        assert (g1.get("spin_notifies", 0) > 0) == (label == "on")
        run.close()
    assert spins["on"] < spins["off"], (f"spins per acquisition with notifications {spins['on']:.0f}, without "
                                        f"{spins['off']:.0f} (acquisitions/s {rates['on']:.0f} vs {rates['off']:.0f})")


def test_a_vp_runs_only_once_the_root_clears_its_explicit_suspend(live):
    """TLFS host flow: a VP is created suspended; HvCallSetVpRegisters(ExplicitSuspend = 0)
    starts it.  Until then the scheduler never dispatches it (its hello reply waits)."""
    from proto.auth import peer_token
    from proto.codes import HvRegisterName as R
    from proto.errors import PeerTimeout
    from proto.transport import connect

    client = RootClient(live.manifest()["endpoint"], live.secret())
    pid = client.create_partition(0, 0, 0xFFFFFFFF, 1)
    assert client.get_vp_registers(pid, 0, [R.HvRegisterExplicitSuspend]) == [1]
    token = peer_token(live.secret(), "vp", pid)
    with pytest.raises(PeerTimeout):
        connect(live.manifest()["endpoint"], "vp", pid, 0, token=token, timeout_ms=1000)

    def vp_sched():
        part = next(p for p in client.status()["partitions"] if p["id"] == pid)
        return part["vps"][0]["sched"]

    assert vp_sched()["state"] == "ready" and vp_sched()["dispatches"] == 0
    client.start_vps(pid, 1)
    assert client.get_vp_registers(pid, 0, [R.HvRegisterExplicitSuspend]) == [0]
    # Its hello reply is dispatched now (to the connection that gave up waiting).
    assert wait_until(lambda: vp_sched()["dispatches"] == 1, 5, what="the VP dispatched")
    client.close()


def test_the_register_block_is_saved_at_every_exit_and_restored_at_every_dispatch(live):
    """RFLAGS and CR3 travel with every exit (saved) and every resume (restored): the
    guest's STI shows in RFLAGS from outside, and a CR3 the root writes is the one the VP
    carries on with (were it not restored, the VP's next exit would save its old CR3)."""
    from proto.codes import HvRegisterName as R

    client = RootClient(live.manifest()["endpoint"], live.secret())
    pid = live.manifest()["partitions"]["alpha"]["id"]
    wait_until(lambda: "tick 100.00 Hz" in live.console("alpha"), 30, what="boot with interrupts on")
    # IF is clear inside handlers and the serial driver's critical sections: sample until set.
    rflags = wait_until(lambda: (lambda r: r if r & 0x200 else 0)(
        client.get_vp_registers(pid, 0, [R.HvX64RegisterRflags])[0]), 10, 0.01, what="RFLAGS.IF seen set")
    assert rflags & 0x2 and client.get_vp_registers(pid, 0, [R.HvX64RegisterCr3]) == [0]
    client.set_vp_registers(pid, 0, {R.HvX64RegisterCr3: 0x5000})
    exits = client.status()["partitions"][0]["vps"][0]["guest"].get("exits", 0)
    wait_until(lambda: client.status()["partitions"][0]["vps"][0]["guest"].get("exits", 0) > exits + 100, 10,
               what="the VP running on")
    assert client.get_vp_registers(pid, 0, [R.HvX64RegisterCr3]) == [0x5000]
    client.close()
