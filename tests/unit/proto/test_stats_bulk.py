"""Histograms filed in bulk (the VP files its round trips at each vp_stats, issue 12) are the
same as histograms recorded one value at a time."""

from __future__ import annotations

import random

from proto.stats import Histogram, PathStats


def test_record_many_is_record_one_by_one_on_every_kind_of_value():
    rng = random.Random(12)
    edges = [0, -5, 1, 63, 64, 65, 127, 128, 10**6, 2**40 + 3, 2**53 - 1]
    values = [rng.choice(edges) if rng.random() < 0.3 else rng.randrange(10**9) for _ in range(5000)]
    one, bulk = Histogram(), Histogram()
    for v in values:
        one.record(v)
    bulk.record_many(values[:1234])
    bulk.record_many([])
    bulk.record_many(values[1234:])
    assert bulk == one
    assert bulk.percentile(50) == one.percentile(50) and bulk.lo == min(values) and bulk.hi == max(values)


def test_path_stats_record_many_files_each_stage_of_round_trips_of_any_length():
    rng = random.Random(13)
    rounds = [tuple(sorted(rng.randrange(10**7) for _ in range(rng.choice((2, 3, 4, 8)))))
              for _ in range(2000)]
    one, bulk = PathStats(), PathStats()
    for r in rounds:
        one.record(r)
    bulk.record_many(rounds[:7])
    bulk.record_many(rounds[7:])
    assert bulk == one and len(bulk.stages) == 7
