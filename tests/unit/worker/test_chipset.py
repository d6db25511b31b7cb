"""The worker's device vocabulary (worker.devices.config), and every device type in it builds.
(That the root checks topologies against this same vocabulary: tests/unit/root.)"""

from __future__ import annotations

import dataclasses

import pytest

from worker.chipset import BadDeviceConfig, Chipset
from worker.devices.config import CHIPSETS, DEVICE_KEYS, DEVICE_TYPES


def test_a_types_settings_are_the_fields_of_its_config_and_of_its_backend():
    for kind, t in DEVICE_TYPES.items():
        config = {f.name for f in dataclasses.fields(t.config)}
        backend = {f.name for f in dataclasses.fields(t.backend)} if t.backend else set()
        assert not config & backend, f"{kind}: {sorted(config & backend)} would be ambiguous"
        assert DEVICE_KEYS[kind] == config | backend


def test_the_settings_carry_their_defaults():
    assert DEVICE_TYPES["uart16550"].settings() == {"base": 0x3F8, "irq": 4, "name": "com1"}
    assert DEVICE_TYPES["ata"].settings()["image_path"] is dataclasses.MISSING  # required
    assert DEVICE_TYPES["cmos_rtc"].settings()["nvram_path"] is None


def test_every_chipset_device_is_built_with_settings_it_takes():
    for chipset in CHIPSETS.values():
        for device in chipset:
            kind = device["type"]
            assert set(device) - {"type"} <= DEVICE_KEYS[kind]


@pytest.mark.parametrize("name", sorted(CHIPSETS))
def test_every_chipset_builds(name):
    chipset = Chipset(CHIPSETS[name])
    try:
        assert chipset.console is not None and chipset.bus.ranges()
    finally:
        chipset.close()


@pytest.mark.parametrize("kind", sorted(DEVICE_TYPES))
def test_every_device_type_builds_from_a_topology_entry(kind, tmp_path):
    from tests.unit.devices.test_pci_bus import option_rom
    (tmp_path / "vgabios.bin").write_bytes(option_rom())
    required = {"image_path": str(tmp_path / "disk.img"), "vgabios": str(tmp_path / "vgabios.bin")}
    spec = {"type": kind, **{k: v for k, v in required.items() if k in DEVICE_KEYS[kind]}}
    chipset = Chipset([spec])
    try:
        assert len(chipset.devices) == 1 and chipset.bus.ranges()
    finally:
        chipset.close()


def test_an_unknown_setting_is_a_configuration_error_naming_what_the_type_takes():
    with pytest.raises(BadDeviceConfig, match="colour.*it takes base, irq, name"):
        Chipset([{"type": "uart16550", "colour": "red"}])


def test_an_unknown_device_type_is_a_configuration_error():
    with pytest.raises(BadDeviceConfig, match="unknown device type 'floppy'"):
        Chipset([{"type": "floppy"}])


def test_the_nvram_and_the_disk_image_are_opened_in_the_places_the_topology_names(tmp_path):
    chipset = Chipset([{"type": "pic8259"}, {"type": "cmos_rtc", "nvram_path": str(tmp_path / "nv.bin")},
                       {"type": "ata", "image_path": str(tmp_path / "d.img"), "size_bytes": 1 << 20}])
    chipset.close()
    assert (tmp_path / "nv.bin").stat().st_size == 114
    assert (tmp_path / "d.img").stat().st_size == 1 << 20


def test_a_pci_bus_whose_vga_bios_is_missing_or_not_a_rom_is_refused_plainly(tmp_path):
    with pytest.raises(BadDeviceConfig, match="VGA BIOS is not installed.*nothing.bin"):
        Chipset([{"type": "pci", "vgabios": str(tmp_path / "nothing.bin")}])
    (tmp_path / "text.bin").write_bytes(b"not a ROM" * 100)
    with pytest.raises(BadDeviceConfig, match="text.bin: no option ROM signature"):
        Chipset([{"type": "pci", "vgabios": str(tmp_path / "text.bin")}])
