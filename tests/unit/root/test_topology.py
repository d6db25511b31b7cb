"""Topologies: the shipped ones are valid and write nothing beside themselves; the default is
configs/default.toml; a disk image goes where the topology says, or in the run directory;
a bad topology's error names its file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from proto.errors import ConfigError
from root import REPO
from root.topology import (DEFAULT_CONFIG, DEFAULT_SOURCE, WORKLOADS, default_topology, load_topology,
                           read_topology)

SHIPPED = sorted((REPO / "configs").glob("*.toml")) + sorted((REPO / "tests" / "configs").glob("*.toml"))
PATH_SETTINGS = ("image_path", "nvram_path")


def needs_missing_firmware(config: Path) -> str | None:
    """Why a shipped topology cannot be read here: the firmware it names is not installed."""
    from partitions.cpu.boot import seabios_missing
    return seabios_missing() if 'firmware = "seabios"' in config.read_text() else None


def test_every_shipped_config_is_valid():
    assert len(SHIPPED) >= 3
    for c in SHIPPED:
        if not needs_missing_firmware(c):
            read_topology(str(c))


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_running_a_shipped_topology_writes_its_files_in_the_run_directory_only(config, tmp_path):
    if needs_missing_firmware(config):
        pytest.skip(needs_missing_firmware(config))
    topology = read_topology(str(config))
    run_dir = tmp_path / "run"
    for pc in topology.partitions:
        for device in pc.worker_devices(run_dir, topology.base_dir or run_dir):
            for key in PATH_SETTINGS:
                if key in device:
                    assert Path(device[key]).parent == run_dir, f"{config.name}: {pc.name} {device}"


def test_the_default_topology_is_configs_default_toml():
    assert DEFAULT_CONFIG == REPO / "configs" / "default.toml"
    default = default_topology()
    from_file = read_topology(str(DEFAULT_CONFIG))
    assert default.source == DEFAULT_SOURCE and default.base_dir is None
    assert default.partitions == from_file.partitions and default.name == from_file.name == "default"


def test_a_disk_without_an_image_is_created_in_the_run_directory(tmp_path):
    t = load_topology("[[partition]]\nname = 'a'\ndisk = { size_mb = 4 }\n", "<t>", tmp_path / "cfg")
    (ata,) = [d for d in t.partitions[0].worker_devices(tmp_path / "run", t.base_dir) if d["type"] == "ata"]
    assert ata == {"type": "ata", "image_path": str(tmp_path / "run" / "disk-a.img"), "size_bytes": 4 << 20}


def test_a_named_image_is_relative_to_the_topology_file_unless_absolute(tmp_path):
    text = "[[partition]]\nname = 'a'\ndisk = {{ image = '{}', size_mb = 4 }}\n"
    (tmp_path / "cfg").mkdir()
    (tmp_path / "abs").mkdir()  # an image's directory must exist
    absolute = tmp_path / "abs" / "x.img"
    for image, expected in (("mine.img", tmp_path / "cfg" / "mine.img"), (str(absolute), absolute)):
        t = load_topology(text.format(image), "<t>", tmp_path / "cfg")
        devices = t.partitions[0].worker_devices(tmp_path / "run", t.base_dir)
        assert devices[-1]["image_path"] == str(expected)


def test_workload_names_are_the_guests():
    from partitions.workloads import WORKLOADS as guest

    assert WORKLOADS == tuple(guest)


@pytest.mark.parametrize("text, where, what", [
    ("[run]\nduration_s = 'soon'\n[[partition]]\nname='a'\n", ":2:", "[run] duration_s: expected float"),
    ("[run]\n[[partition]]\nname = 'a'\nvps = 0\n", ":4:", "[[partition]] #1 vps: 0 is outside 1..128"),
    ("[[partition]]\nname = 'a'\n\n[[partition]]\nname = 'b'\nworkloads = ['dance']\n", ":6:",
     "[[partition]] #2 workloads: unknown 'dance'"),
    ("[[partition]]\nname = 'a'\ncolour = 'red'\n", ":3:", "colour: unknown key"),
    ("[[partition]]\nname = 'a'\n[[partition.device]]\ntype = 'sb16'\n", ":4:", "unknown device 'sb16'"),
    ("[[partition]]\nname = 'a'\ndisk = { image = 3 }\n", ":3:", "disk: must be { size_mb = N }"),
    ("[[partition]]\nname = 'a'\nchipset = 'minimal'\ndisk = { size_mb = 4 }\n", ":4:", "needs chipset = \"gen1\""),
    ("[run]\nname = 'x'\n", "", "at least one [[partition]]"),
    ("[run\n", "", "not valid TOML"),
    ("[[partition]]\nname = 'a'\non_worker_exit = 'reboot'\n", ":3:", "on_worker_exit: 'reboot' is not"),
])
def test_a_bad_topology_names_file_line_and_key(tmp_path, text, where, what):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        read_topology(str(cfg))
    assert str(e.value).startswith(f"{cfg}{where}") and what in str(e.value), str(e.value)
    assert e.value.exit_code == 2


def test_a_missing_topology_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml: cannot read: No such file"):
        read_topology(str(tmp_path / "nope.toml"))


def test_a_partition_may_have_up_to_128_vps_and_ask_for_the_ex_calls_and_frequency_msrs():
    """Issue 14: VP indices past 64 (which need the HV_VP_SET forms) fit a topology; the
    recommendations that advertise those calls and the frequency-MSR privilege have names."""
    from proto.codes import HvPrivilege, HvRecommendation

    topo = load_topology("[[partition]]\nname = 'wide'\nvps = 128\nenlightenments = ['frequency_msrs']\n"
                         "recommendations = ['cluster_ipi', 'ex_processor_masks']\n", "wide.toml")
    (p,) = topo.partitions
    assert p.vps == 128 and p.privileges == HvPrivilege.AccessFrequencyMsrs
    assert p.recommendation_bits == HvRecommendation.UseSyntheticClusterIpi | HvRecommendation.UseExProcessorMasks
    with pytest.raises(ConfigError, match="vps: 129 is outside 1..128"):
        load_topology("[[partition]]\nname = 'wide'\nvps = 129\n", "wide.toml")


def test_on_worker_exit_defaults_to_ending_the_run(tmp_path):
    cfg = tmp_path / "t.toml"
    cfg.write_text("[[partition]]\nname = 'a'\n\n[[partition]]\nname = 'b'\non_worker_exit = 'restart'\n")
    assert [p.on_worker_exit for p in read_topology(str(cfg)).partitions] == ["end", "restart"]
