"""Bus 0 of a Hyper-V generation-1 VM, as ``lspci -n`` shows it in one:

    00:00.0 0600: 8086:7192   i440BX host bridge (AGP disabled)
    00:07.0 0601: 8086:7110   PIIX4 ISA bridge
    00:07.1 0101: 8086:7111   PIIX4 IDE (compatibility mode)
    00:08.0 0300: 1414:5353   Hyper-V VGA, its expansion ROM the VGA BIOS

(the PIIX4's power-management function, 07.3, is not built: see :mod:`worker.devices.piix4`).
"""

from __future__ import annotations

from typing import Callable

from worker.devices.config import PciConfig
from worker.devices.hyperv_vga import hyperv_vga
from worker.devices.i440bx import i440bx_host_bridge
from worker.devices.pci_bus import PciBus
from worker.devices.piix4 import piix4_ide, piix4_isa_bridge

HOST_BRIDGE, PIIX4_ISA, PIIX4_IDE, VGA = (0, 0), (7, 0), (7, 1), (8, 0)


def gen1_pci_bus(config: PciConfig, vgabios: bytes, reset: Callable[[], None] = lambda: None,
                 what: str = "VGA BIOS") -> PciBus:
    """The bus with its four functions; ``vgabios`` is the VGA BIOS file's bytes
    (:class:`worker.devices.hyperv_vga.NotAnOptionRom` if they are not an option ROM)."""
    return PciBus(config, {HOST_BRIDGE: i440bx_host_bridge(), PIIX4_ISA: piix4_isa_bridge(),
                           PIIX4_IDE: piix4_ide(), VGA: hyperv_vga(vgabios, what)}, reset)
