"""run --restore's checks before anything starts (root/partition_save.py): the record must
fit the topology's partition, and a disk image the topology names must be the one saved
with the partition (its SHA-256); one in the run directory gets the saved contents."""

from __future__ import annotations

import copy
import hashlib
import zlib
from pathlib import Path

import pytest

from proto import saved_state
from root import partition_save
from root.topology import read_topology
from tests.unit.proto.test_partition_state import sections

TOPOLOGY = """
[run]
name = "r"
[[partition]]
name = "alpha"
vps = 2
memory_mb = 4
enlightenments = ["hypercall"]
disk = { image = "d.img", size_mb = 1 }
"""


@pytest.fixture
def setup(tmp_path):
    (tmp_path / "t.toml").write_text(TOPOLOGY)
    topology = read_topology(str(tmp_path / "t.toml"))
    pc = topology.partitions[0]
    devices = pc.worker_devices(Path("/nonexistent-run"), tmp_path)
    disk = bytes(range(256)) * 4096  # 1 MiB
    (tmp_path / "d.img").write_bytes(disk)
    s = sections()
    s["shape"] = partition_save.shape(pc, devices)
    s["disks"] = {"ata": {"size": len(disk), "sha256": hashlib.sha256(disk).digest(), "zlib": zlib.compress(disk)}}
    path = tmp_path / "alpha.hvs"
    path.write_bytes(saved_state.encode(1, "alpha", s))
    return tmp_path, pc, devices, path, s


def test_a_record_that_fits_is_read(setup):
    base, pc, devices, path, s = setup
    record = partition_save.read_for(pc, str(path), devices)
    assert record["sections"]["shape"] == s["shape"]


def test_a_named_disk_image_that_is_not_the_saved_one_is_refused(setup):
    base, pc, devices, path, _ = setup
    (base / "d.img").write_bytes(b"\1" * (1 << 20))
    with pytest.raises(partition_save.RestoreRefused, match="not the one saved with the partition"):
        partition_save.read_for(pc, str(path), devices)


def test_another_shape_or_a_missing_section_is_refused(setup):
    base, pc, devices, path, s = setup
    other = copy.deepcopy(s)
    other["shape"]["privileges"] += 1
    path.write_bytes(saved_state.encode(1, "alpha", other))
    with pytest.raises(partition_save.RestoreRefused, match="privileges: saved"):
        partition_save.read_for(pc, str(path), devices)
    del other["memory"]
    path.write_bytes(saved_state.encode(1, "alpha", other))
    with pytest.raises(partition_save.RestoreRefused, match="no memory"):
        partition_save.read_for(pc, str(path), devices)
    with pytest.raises(partition_save.RestoreRefused, match="No such file"):
        partition_save.read_for(pc, str(base / "missing.hvs"), devices)
