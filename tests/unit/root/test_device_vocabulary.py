"""The topology's device settings and the worker's device configs are one vocabulary (the
topology derives its settings from the worker's config dataclasses; these hold it to that)."""

from __future__ import annotations

from dataclasses import fields

from root import topology
from worker.chipset import DEVICE_SETTINGS, DEVICE_TYPES


def test_every_device_a_topology_may_name_is_one_the_worker_builds():
    assert set(topology.DEVICE_KEYS) == set(DEVICE_TYPES) == set(DEVICE_SETTINGS)


def test_every_setting_a_topology_may_give_is_a_field_of_the_devices_config():
    for kind, keys in topology.DEVICE_KEYS.items():
        config_fields = {f.name for f in fields(DEVICE_SETTINGS[kind])}
        assert keys <= config_fields, f"{kind}: {sorted(keys - config_fields)} are not {DEVICE_SETTINGS[kind].__name__} fields"


def test_every_chipset_device_is_built_with_settings_it_takes():
    for chipset in topology.CHIPSETS.values():
        for device in chipset:
            kind = device["type"]
            assert set(device) - {"type"} <= topology.DEVICE_KEYS[kind]
