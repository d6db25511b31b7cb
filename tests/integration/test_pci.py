"""The gen-1 PCI bus on a live stack, driven by `io` as firmware drives it: configuration
mechanism #1 through the worker, the VGA's expansion ROM through the host bridge's memory
window (an MMIO range the worker claims in the hypervisor), and hostile accesses that
must leave every process standing."""

from __future__ import annotations

import pytest

from worker.devices.config import PciConfig

pytestmark = pytest.mark.integration

TOPOLOGY = """
[run]
name = "pci"
logical_processors = 1

[[partition]]
name = "p"
memory_mb = 4
enlightenments = []
workloads = ["timer"]

  [[partition.device]]
  type = "pci"
"""
ROM_AT = 0xFEBF0000


def cfg(dev: int, fn: int, reg: int) -> str:
    return hex(0x80000000 | (dev << 11) | (fn << 8) | reg)


def test_firmware_finds_the_functions_and_the_vga_bios_and_odd_accesses_harm_nothing(hvstack_run):
    why = PciConfig().missing()
    if why:
        pytest.skip(why)
    run = hvstack_run(toml=TOPOLOGY, timeout=60)
    run.wait_for_console("p", "hvstack guest kernel", timeout=30)
    # The probe SeaBIOS makes, then the host bridge's and the VGA's IDs.
    assert run.io("p", "outl", "0xcf8", "0x80000000", "inl", "0xcf8", "inl", "0xcfc",
                  "outl", "0xcf8", cfg(8, 0, 0), "inl", "0xcfc", "inw", "0xcfe",
                  "outl", "0xcf8", cfg(9, 0, 0), "inl", "0xcfc") == [
        "OK", "OK 0x80000000", "OK 0x71928086", "OK", "OK 0x53531414", "OK 0x5353", "OK", "OK 0xffffffff"]
    # Size the ROM BAR, place it, turn on memory decode: the VGA BIOS answers in the window.
    assert run.io("p", "outl", "0xcf8", cfg(8, 0, 0x30), "outl", "0xcfc", "0xfffffffe", "inl", "0xcfc",
                  "outl", "0xcfc", hex(ROM_AT | 1), "outl", "0xcf8", cfg(8, 0, 4), "outw", "0xcfc", "0x3",
                  "readw", hex(ROM_AT), "readl", hex(ROM_AT + 0x10000 - 4)) == [
        "OK", "OK", "OK 0xffff0000", "OK", "OK", "OK", "OK 0xaa55", "OK 0xffffffff"]
    # Odd and hostile: an access running past 0xCFF, words at 0xCF8, a write to the ROM,
    # a read of the window where nothing decodes.
    assert run.io("p", "inl", "0xcff", "outw", "0xcf8", "0xffff", "inw", "0xcfa",
                  "writel", hex(ROM_AT), "0", "readw", hex(ROM_AT), "readq", "0xe0000000") == [
        "OK 0xffffff00", "OK", "OK 0xffff", "OK", "OK 0xaa55", "OK 0xffffffffffffffff"]
    assert run.io("p", "inb", "0x3fd")[0].startswith("OK")  # the worker is still serving
