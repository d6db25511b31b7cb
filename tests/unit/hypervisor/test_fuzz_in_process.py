"""The fuzzer's message sequence (benchmarks/fuzz_sequence.py) through the in-process hypervisor, strict:
any handler error is re-raised, so a bug of ours that a hostile frame reaches fails here,
with the seed and the message that found it."""

from __future__ import annotations

import random

import pytest

from benchmarks.fuzz_sequence import KINDS, Sequence, reaction
from proto import messages as m
from tests.unit.hypervisor.fake_stack import ROOT, Stack, vp_id, worker_id


def test_the_same_seed_gives_the_same_sequence():
    a, b, c = Sequence(7, 3, [1, 2]), Sequence(7, 3, [1, 2]), Sequence(8, 3, [1, 2])
    first = [a.next() for _ in range(300)]
    assert first == [b.next() for _ in range(300)]
    assert first != [c.next() for _ in range(300)]


def test_the_sequence_covers_every_message_type_from_every_kind_of_peer():
    seq = Sequence(1, 3, [1, 2])
    drawn = [seq.next() for _ in range(3000)]
    assert {name for _, _, name, _ in drawn} == {cls.NAME for cls in m.REGISTRY.values()}
    assert {kind for kind, _, _, _ in drawn} == set(KINDS)
    assert {label for _, label, _, _ in drawn} >= {"well_formed", "bad_msgpack", "truncated", "wrong_arity",
                                                    "wrong_type", "oversized", "deep", "extra_frame"}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_strict_hypervisor_survives_the_fuzzers_sequence(tmp_path, seed):
    s = Stack(tmp_path, strict=True)
    s.hello(ROOT, "root")
    assert s.partition() == 1 and s.partition(vps=1) == 2
    fuzz = s.partition(vps=1)
    fuzz_vps = list(s.hv.table.get(fuzz).vps)
    who = {"stranger": b"stranger", "vp": vp_id(fuzz), "worker": worker_id(fuzz), "root": ROOT}
    seq, rng = Sequence(seed, fuzz, [1, 2]), random.Random(seed)
    for i in range(2500):
        kind, label, name, frames = seq.next()
        try:
            out = s.raw(who[kind], *frames)
            # The fuzz worker completes what is forwarded to it, as in a live run.
            answers = [a for a in (reaction(msg, rng) for msg in out.to(who["worker"])) if a is not None]
            for a in answers:
                s.router.inbox.append((who["worker"], a.encode()))
            if answers:
                s.run()
        except Exception as e:
            raise AssertionError(f"seed {seed}, message {i}: {kind} {label} {name}: {e!r}") from e
    assert s.send(ROOT, m.StatusRequest()).one(ROOT, m.StatusReply)
    assert s.hv.counters["handler_errors"] == 0
    assert s.hv.counters["out_of_turn"] > 0 and s.hv.counters["malformed"] > 0
    # Counted on the VPs themselves: the fuzzed root may have deleted the partition by now
    # (seed 3 does since posted_descriptor_ready, id 88, changed the draws).
    handled = sum(sum(vp.exits.values()) for vp in fuzz_vps)
    # Many of the fuzz VP's exits were in turn and went through their handlers (98 to 239 of
    # 2500 messages for seeds 1-5 since the hello became hello, challenge and proof; a new
    # message type changes the draws: with gpa_unmapped (id 90) seeds 1-6 gave 40 to 191).
    assert handled > 30
