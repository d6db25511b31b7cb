"""A host's live run creates a partition for a migration that brings it (root/arrivals.py):
refused, before any hypercall, where it has no room, where the partition runs there already,
and where the topology has no such partition."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from root.arrivals import arrive, pages_needed
from root.incoming import Refusal
from root.rundir import RunDir
from root.topology import load_topology

TOPOLOGY = load_topology('[[host]]\nname = "a"\n[[host]]\nname = "b"\n'
                         '[[partition]]\nname = "alpha"\nhost = "a"\nmemory_mb = 4\n'
                         '[[partition]]\nname = "beta"\nhost = "b"\nmemory_mb = 4\n', "h.toml")


class NoHypervisor:
    def __getattr__(self, name):
        raise AssertionError(f"a refused arrival asked the hypervisor ({name})")


def fake_run(tmp_path, free: int, running=("beta",), stopped=()):
    (tmp_path / "manifest.json").write_text(json.dumps({"stopped_partitions": list(stopped)}))
    return SimpleNamespace(arrivable={pc.name: pc for pc in TOPOLOGY.partitions}, run=RunDir(tmp_path),
                           partition_ids={n: i + 1 for i, n in enumerate(running)}, free_pages=list(range(free)),
                           root=NoHypervisor())


def test_no_room_is_refused_before_any_hypercall(tmp_path):
    need = pages_needed(TOPOLOGY.partitions[0])
    assert need == 1024 - 96  # 4 MiB but the legacy hole
    with pytest.raises(Refusal, match=f"no room for partition alpha here: it needs {need} pages of the pool, "
                                      f"{need - 1} are free") as e:
        arrive(fake_run(tmp_path, need - 1), "alpha")
    assert e.value.code == "CONFLICT"


def test_a_partition_that_runs_here_or_is_unknown_is_not_made(tmp_path):
    with pytest.raises(Refusal, match="partition beta runs here already"):
        arrive(fake_run(tmp_path, 4096), "beta")
    assert arrive(fake_run(tmp_path, 4096), "gamma") is None
