"""The topology's ``vmbus`` section: what it accepts, and errors naming file, line and key."""

from __future__ import annotations

import pytest

from proto.errors import ConfigError
from root.topology import load_topology
from root.topology_sections import vmbus_disk_image

HEAD = "[run]\nname = 'v'\n\n[[partition]]\nname = 'alpha'\n"
ENL = "enlightenments = ['hypercall', 'synic']\n"


def test_accepted_and_defaults(tmp_path):
    t = load_topology(HEAD + ENL + "vmbus = { disk = { size_mb = 8 }, nic = {} }\n", "t.toml", tmp_path)
    pc = t.partitions[0]
    assert pc.vmbus == {"signal_suppression": True, "disk": {"size_mb": 8}, "nic": {}}
    assert vmbus_disk_image(pc, tmp_path / "run", tmp_path) == tmp_path / "run" / "vmbus-disk-alpha.img"
    t = load_topology(HEAD + ENL + "vmbus = { disk = { image = 'd.img' }, signal_suppression = false }\n",
                      "t.toml", tmp_path)
    assert t.partitions[0].vmbus == {"signal_suppression": False, "disk": {"size_mb": 64, "image": "d.img"}}
    assert vmbus_disk_image(t.partitions[0], tmp_path / "run", tmp_path) == tmp_path / "d.img"
    assert load_topology(HEAD, "t.toml", tmp_path).partitions[0].vmbus is None


@pytest.mark.parametrize("text, message", [
    ("vmbus = { disk = { size_mb = 8 } }\n", "VMBus needs enlightenments to include 'hypercall'"),
    ("enlightenments = ['hypercall']\nvmbus = { disk = {} }\n", "VMBus needs enlightenments to include 'synic'"),
    (ENL + "vmbus = { floppy = {} }\n", "unknown 'floppy'"),
    (ENL + "vmbus = { disk = { size_mb = 0 } }\n", "disk size_mb 0 is outside 1..1048576"),
    (ENL + "vmbus = { disk = { size = 8 } }\n", "disk must be"),
    (ENL + "vmbus = { disk = { image = 'no/such/dir/x.img' } }\n", "no directory"),
    (ENL + "vmbus = { nic = { mac = 'x' } }\n", "a synthetic NIC takes no settings"),
    (ENL + "vmbus = { signal_suppression = 'yes' }\n", "is not true or false"),
    (ENL + "vmbus = 3\n", "vmbus"),
])
def test_errors_name_file_line_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        load_topology(HEAD + text, "t.toml", tmp_path)
    assert str(e.value).startswith("t.toml:") and "vmbus" in str(e.value) and message in str(e.value)


def test_switch_section(tmp_path):
    nic = HEAD + ENL + "vmbus = { nic = {} }\n"
    t = load_topology("[switch]\nexternal = true\n" + nic, "t.toml", tmp_path)
    assert t.switch == {"external": True} and t.to_dict()["switch"] == {"external": True}
    assert load_topology(nic, "t.toml", tmp_path).switch is None
    for text, message in (("[switch]\nexternal = 1\n" + nic, "expected bool"),
                          ("[switch]\ntap = true\n" + nic, "unknown key"),
                          ("[switch]\nexternal = true\n" + HEAD, "no partition has a synthetic NIC")):
        with pytest.raises(ConfigError) as e:
            load_topology(text, "t.toml", tmp_path)
        assert str(e.value).startswith("t.toml:") and "switch" in str(e.value) and message in str(e.value)
