"""The root checks a topology's devices against the worker's own vocabulary
(worker.devices.config), not a copy of it; the worker's tests hold that vocabulary to its
config dataclasses (tests/unit/worker/test_chipset.py)."""

from __future__ import annotations

import pytest

from proto.errors import ConfigError
from root import topology
from worker.devices.config import CHIPSETS, DEVICE_KEYS


def test_the_topology_uses_the_workers_device_settings_and_chipsets():
    assert topology.DEVICE_KEYS is DEVICE_KEYS
    assert topology.CHIPSETS is CHIPSETS


def test_a_device_setting_the_worker_does_not_take_is_refused_naming_the_ones_it_does():
    text = "[[partition]]\nname = 'a'\n[[partition.device]]\ntype = 'uart16550'\nname = 'com2'\ncolour = 'red'\n"
    with pytest.raises(ConfigError) as e:
        topology.load_topology(text, "t.toml")
    takes = ", ".join(sorted(DEVICE_KEYS["uart16550"]))
    assert str(e.value) == f"t.toml:6: [[partition.device]] #1 colour: uart16550 has no setting 'colour' (it takes: {takes})"


def test_each_configs_ports_are_where_the_worker_puts_its_device(tmp_path):
    """The root checks placement with each config's ports(); the worker's bus registers each
    device's port_ranges(): the two must agree, sizes included."""
    from worker.chipset import Chipset
    from worker.devices.config import CHIPSETS

    specs = [*CHIPSETS["gen1"], {"type": "ata", "image_path": str(tmp_path / "d.img"), "size_bytes": 1 << 20},
             {"type": "uart16550", "name": "com2", "base": 0x2F8, "irq": 3}]
    chipset = Chipset(specs)
    try:
        assert len(chipset.devices) == len(specs)
        for device in chipset.devices:
            assert device.port_ranges() == device.config.ports(), device.name
    finally:
        chipset.close()


def test_a_pci_bus_whose_vga_bios_is_not_here_is_refused_before_anything_starts(tmp_path):
    text = "[[partition]]\nname = 'a'\n[[partition.device]]\ntype = 'pci'\nvgabios = 'roms/vga.bin'\n"
    with pytest.raises(ConfigError) as e:
        topology.load_topology(text, "t.toml", tmp_path)  # relative to the topology's directory
    assert str(e.value).startswith("t.toml:5: [[partition.device]] #1 vgabios: the VGA BIOS is not installed")
    assert str(tmp_path / "roms" / "vga.bin") in str(e.value)
    with pytest.raises(ConfigError, match="vgabios: vgabios 'no such!' is neither"):
        topology.load_topology(text.replace("roms/vga.bin", "no such!"), "t.toml", tmp_path)


def test_the_pci_bus_and_vga_graphics_sit_where_their_configs_say(tmp_path):
    from tests.unit.devices.test_pci_bus import option_rom
    from worker.chipset import Chipset

    (tmp_path / "vga.bin").write_bytes(option_rom())
    (tmp_path / "t.toml").write_text("")
    text = ("[[partition]]\nname = 'a'\n[[partition.device]]\ntype = 'pci'\nvgabios = 'vga.bin'\n"
            "[[partition.device]]\ntype = 'vga_graphics'\n")
    with pytest.raises(ConfigError, match="neither"):  # a bare name is a SeaVGABIOS build's
        topology.load_topology(text.replace("'vga.bin'", "'vga.bin!'"), "t.toml", tmp_path)
    topo = topology.load_topology(text.replace("'vga.bin'", f"'{tmp_path}/vga.bin'"), "t.toml", tmp_path)
    chipset = Chipset(topo.partitions[0].devices)
    try:
        for device in chipset.devices:
            assert device.port_ranges() == device.config.ports(), device.name
    finally:
        chipset.close()
