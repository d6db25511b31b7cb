"""Attach commands follow a migrated partition (root/follow.py): the source run's record of
the move is followed from run to run — also once the source has ended, along a chain, never
round a loop — and a partition that came back to a run is that run's again."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from proto.errors import HvstackError
from root import follow
from root.rundir import RunDir


def _end(path, reason="every partition was stopped (ctl stop)"):
    man = json.loads((path / "manifest.json").read_text())
    man.update(state="ended", ended={"reason": reason, "exit_code": 0})
    (path / "manifest.json").write_text(json.dumps(man))


def _arrived(path, partition, at):
    man = json.loads((path / "manifest.json").read_text())
    man["incoming"] = {"migrations": [{"partition": partition, "at": at.isoformat()}]}
    (path / "manifest.json").write_text(json.dumps(man))


def test_a_moved_partition_is_found_where_it_went_and_said_so(fake_run, capsys):
    a, b = fake_run("src-a"), fake_run("dst-b")
    rec = follow.record_move(a, "alpha", RunDir(b), "tcp://10.0.0.2:4000")
    assert rec["to"] == "dst-b" and rec["path"] == str(b)
    run, man = follow.live_partition("src-a", "alpha")
    assert run.path == b and man["name"] == "dst-b"
    err = capsys.readouterr().err
    assert err.startswith("alpha moved to run dst-b at ") and err.count("\n") == 1
    # Another partition of the source did not move: it is still the source's.
    assert follow.live_partition("src-a", "beta")[0].path == a
    assert capsys.readouterr().err == ""


def test_the_record_stays_after_the_source_ended_and_a_chain_is_followed(fake_run, capsys):
    a, b, c = fake_run("hop-a"), fake_run("hop-b"), fake_run("hop-c")
    follow.record_move(a, "alpha", RunDir(b), "tcp://b")
    _end(a)
    follow.record_move(b, "alpha", RunDir(c), "tcp://c")
    _end(b)
    assert follow.live_partition("hop-a", "alpha")[0].path == c
    assert capsys.readouterr().err.count("alpha moved to run") == 2
    # A run-level command (status, top) of the ended source goes where its partitions went.
    assert follow.live_run_following("hop-a")[0].path == c


def test_a_partition_that_came_back_is_the_runs_again(fake_run):
    a, b = fake_run("back-a"), fake_run("back-b")
    follow.record_move(a, "alpha", RunDir(b), "tcp://b")
    follow.record_move(b, "alpha", RunDir(a), "tcp://a")
    _arrived(a, "alpha", datetime.now(timezone.utc) + timedelta(seconds=1))
    assert follow.live_partition("back-a", "alpha")[0].path == a
    assert follow.live_partition("back-b", "alpha")[0].path == a


def test_a_loop_of_records_is_refused_not_followed_forever(fake_run):
    a, b = fake_run("loop-a"), fake_run("loop-b")
    follow.record_move(a, "alpha", RunDir(b), "tcp://b")
    follow.record_move(b, "alpha", RunDir(a), "tcp://a")  # (no arrival recorded: records that lie)
    with pytest.raises(HvstackError, match="chain longer than 8 runs or a loop"):
        follow.live_partition("loop-a", "alpha")


def test_a_move_to_an_unknown_run_and_an_ended_destination_say_so(fake_run):
    a, b = fake_run("far-a"), fake_run("far-b")
    follow.record_move(a, "alpha", None, "tcp://192.0.2.1:4000")
    with pytest.raises(HvstackError, match="moved to tcp://192.0.2.1:4000 .* a run this machine does not know"):
        follow.live_partition("far-a", "alpha")
    follow.record_move(a, "beta", RunDir(b), "tcp://b")
    _end(b, "guests finished")
    with pytest.raises(HvstackError, match="run far-b is not running"):
        follow.live_partition("far-a", "beta")


def test_a_garbled_record_is_no_move(fake_run):
    a = fake_run("junk-a")
    follow.record_path(a, "alpha").write_text("{not json")
    follow.record_path(a, "beta").write_text(json.dumps({"moves": [1, {"to": "x"}]}))
    assert follow.moves(a) == {}
    assert follow.live_partition("junk-a", "alpha")[0].path == a
