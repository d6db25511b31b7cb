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


def test_the_bucket_table_is_bucket_of_over_its_whole_range():
    from proto.stats import TABLE_HI, TABLE_LO, TABLE_SHIFT, _bucket_table, bucket_of

    table = _bucket_table()
    assert len(table) == TABLE_HI >> TABLE_SHIFT
    for i in range(TABLE_LO >> TABLE_SHIFT, TABLE_HI >> TABLE_SHIFT):
        low, high = i << TABLE_SHIFT, ((i + 1) << TABLE_SHIFT) - 1
        assert table[i] == bucket_of(low) == bucket_of(high), i


def test_record_many_by_the_table_is_record_one_by_one():
    """Batches whose values are all a µs or more take the table (and a value past its end
    the arithmetic): the same histogram as one value at a time, at every edge."""
    from proto.stats import TABLE_HI, TABLE_LO

    rng = random.Random(14)
    edges = [TABLE_LO, TABLE_LO + 1, TABLE_LO + 15, TABLE_LO + 16, 2047, 2048, TABLE_HI - 1, TABLE_HI,
             TABLE_HI + 1, 2**40 + 3, 2**53 - 1]
    for _ in range(20):
        values = [rng.choice(edges) if rng.random() < 0.2 else int(rng.lognormvariate(11, 2)) + TABLE_LO
                  for _ in range(rng.randrange(1, 600))]
        one, bulk = Histogram(), Histogram()
        for v in values:
            one.record(v)
        bulk.record_many(values)
        assert bulk == one and bulk.to_wire()["c"] == one.counts


def test_histograms_filed_in_bulk_travel_and_merge_as_the_others_do():
    from proto import messages as m
    from proto.stats import merge_paths

    rng = random.Random(15)
    rounds = [tuple(sorted(rng.randrange(10**7) for _ in range(4))) for _ in range(300)]
    bulk, one = PathStats(), PathStats()
    bulk.record_many(rounds)
    for r in rounds:
        one.record(r)
    wire = m.decode(m.VpStats({"io_port": bulk.to_wire()}, {}).encode()).paths["io_port"]
    assert PathStats.from_wire(wire) == one
    assert merge_paths({}, {"io_port": bulk})["io_port"] == one
