"""Every device's configuration, in one place: what a topology may say about each device type.

A topology names a device by ``type`` and gives settings; each type has a frozen config
dataclass (where the chip sits, its IRQ, its identity strings) and, when it keeps data on
the host, the settings of that backend (the disk image, the NVRAM file), which the worker
opens and hands to the device.  The topology's keys for a type are the fields of both, with
their defaults (openvmm keeps a device's config apart from its code in ``*_resources``
crates for the same reason: whoever builds a VM needs the vocabulary, not the emulator).

The root imports this module (``DEVICE_TYPES``, ``DEVICE_KEYS``, ``CHIPSETS``) to check a
topology before anything starts; the worker's chipset builds devices from the same entries.
Values are checked when the dataclasses are made (``ValueError``).  Each config's ``ports()``
is where the device sits on the port bus (the ISA addresses a PC gives the fixed chips), so
that the root can refuse two devices on one port with the topology's file, line and key
before the worker's bus would (a unit test holds each device's ``port_ranges`` to it).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from worker.devices.base import WORD_DWORD, PortRange

SECTOR_SIZE = 512  # a disk image is whole sectors
PIT_HZ = 1_193_182  # the PIT's input clock on a PC
# PIIX: ELCR1 bits 0-2 and ELCR2 bits 0 and 5 (IRQ0, 1, 2, 8, 13) are reserved, always edge.
PIIX_FIXED_EDGE_IRQS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 8) | (1 << 13)
ISA_IRQS = range(16)  # what a device's IRQ line can be wired to: the PIC pair's inputs


def _check_irq(irq: int) -> None:
    if irq not in ISA_IRQS:
        raise ValueError(f"irq {irq} is not an ISA IRQ (0..15)")


# ------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class Uart16550Config:
    """Where the UART sits: eight ports from ``base`` and an ISA IRQ number."""

    base: int = 0x3F8
    irq: int = 4
    name: str = "com1"

    def __post_init__(self) -> None:
        PortRange(self.base, 8)  # validates the range
        _check_irq(self.irq)
        if not self.name:
            raise ValueError("a UART needs a name")

    def ports(self) -> list[PortRange]:
        return [PortRange(self.base, 8)]


@dataclass(frozen=True)
class Pic8259Config:
    """Fixed configuration of the PIC pair."""

    name: str = "pic"
    # IRQs whose ELCR bit is hard-wired to edge (reads 0, writes ignored).
    elcr_fixed_edge: int = PIIX_FIXED_EDGE_IRQS
    # ELCR contents after reset, 16 bits (bit n = IRQn).  PIIX resets to all-edge.
    elcr_at_reset: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.elcr_fixed_edge <= 0xFFFF or not 0 <= self.elcr_at_reset <= 0xFFFF:
            raise ValueError("ELCR masks are 16-bit")
        if self.elcr_at_reset & self.elcr_fixed_edge:
            raise ValueError("elcr_at_reset sets a bit that is fixed edge")

    def ports(self) -> list[PortRange]:
        """Master ICW/OCW at 0x20, slave at 0xA0, the ELCR pair at 0x4D0 (PIIX)."""
        return [PortRange(0x20, 2), PortRange(0xA0, 2), PortRange(0x4D0, 2)]


@dataclass(frozen=True)
class Pit8254Config:
    name: str = "pit"
    port61: bool = True  # answer port 0x61 (see the pit8254 module docstring)
    input_hz: int = PIT_HZ

    def __post_init__(self) -> None:
        if self.input_hz <= 0:
            raise ValueError("input_hz must be positive")

    def ports(self) -> list[PortRange]:
        """Counters 0-2 and the control word at 0x40-0x43; port 0x61 (NMI status and
        control: channel 2's gate and output) when ``port61``."""
        return [PortRange(0x40, 4)] + ([PortRange(0x61, 1)] if self.port61 else [])


@dataclass(frozen=True)
class CmosRtcConfig:
    base: int = 0x70
    irq: int = 8

    def __post_init__(self) -> None:
        PortRange(self.base, 2)
        _check_irq(self.irq)

    def ports(self) -> list[PortRange]:
        return [PortRange(self.base, 2)]


@dataclass(frozen=True)
class AtaDiskConfig:
    """Where the disk sits and what IDENTIFY DEVICE says of it."""

    model: str = "hvstack ATA disk"
    serial: str = "HVS00000001"
    firmware: str = "1.0"
    command_base: int = 0x1F0
    control_port: int = 0x3F6
    irq: int = 14
    name: str = "ata0"

    def __post_init__(self) -> None:
        for label, text, limit in (("model", self.model, 40), ("serial", self.serial, 20),
                                   ("firmware", self.firmware, 8)):
            # IDENTIFY strings are fixed-width, space-padded ASCII.
            if len(text) > limit or not all(0x20 <= ord(ch) <= 0x7E for ch in text):
                raise ValueError(f"{label} {text!r} must be at most {limit} printable ASCII characters")
        PortRange(self.command_base, 8)
        PortRange(self.control_port, 1)
        _check_irq(self.irq)

    def ports(self) -> list[PortRange]:
        """The command block (the data register takes 16/32-bit accesses), the control port."""
        return [PortRange(self.command_base, 1, WORD_DWORD), PortRange(self.command_base + 1, 7),
                PortRange(self.control_port, 1)]


@dataclass(frozen=True)
class VgaTextConfig:
    name: str = "vga"

    def ports(self) -> list[PortRange]:
        """Miscellaneous output (write 0x3C2, read 0x3CC), the CRTC index/data pair (an
        ``outw`` writes both) and input status 1, at their colour addresses."""
        return [PortRange(0x3C2, 1), PortRange(0x3CC, 1), PortRange(0x3D4, 1, sizes=(1, 2)),
                PortRange(0x3D5, 1), PortRange(0x3DA, 1)]


@dataclass(frozen=True)
class VgaGraphicsConfig:
    name: str = "vga-graphics"

    def ports(self) -> list[PortRange]:
        """The sequencer (0x3C4/0x3C5) and graphics controller (0x3CE/0x3CF) index/data
        pairs; an ``outw`` to an index port writes both."""
        return [PortRange(0x3C4, 1, sizes=(1, 2)), PortRange(0x3C5, 1),
                PortRange(0x3CE, 1, sizes=(1, 2)), PortRange(0x3CF, 1)]


VGABIOS_DIRS = ("/usr/share/seabios", "/usr/share/qemu")


@dataclass(frozen=True)
class PciConfig:
    """The gen-1 PCI bus: configuration mechanism #1, the i440BX host bridge (00:00.0), the
    PIIX4's ISA bridge and IDE functions (00:07.0, 00:07.1) and the VGA (00:08.0), whose
    expansion ROM is ``vgabios``: a SeaVGABIOS build by name (``stdvga`` is
    vgabios-stdvga.bin of the system's seabios package) or a path."""

    name: str = "pci"
    vgabios: str = "stdvga"

    def __post_init__(self) -> None:
        if not self.vgabios or ("/" not in self.vgabios and not self.vgabios.replace("-", "").isalnum()):
            raise ValueError(f"vgabios {self.vgabios!r} is neither a SeaVGABIOS build's name nor a path")

    def ports(self) -> list[PortRange]:
        """CONFIG_ADDRESS (0xCF8, with PIIX4's Reset Control at 0xCF9) and CONFIG_DATA (0xCFC-0xCFF)."""
        return [PortRange(0xCF8, 8, sizes=(1, 2, 4))]

    def vgabios_candidates(self) -> list[str]:
        if "/" in self.vgabios:
            return [self.vgabios]
        return [f"{d}/vgabios-{self.vgabios}.bin" for d in VGABIOS_DIRS]

    def vgabios_path(self) -> str | None:
        return next((p for p in self.vgabios_candidates() if os.path.isfile(p)), None)

    def missing(self) -> str | None:
        """Why this bus cannot be built on this host (None: it can)."""
        if self.vgabios_path() is None:
            where = " or ".join(self.vgabios_candidates())
            hint = "" if "/" in self.vgabios else ": apt-get install seabios"
            return f"the VGA BIOS is not installed (no {where}){hint}"
        return None


@dataclass(frozen=True)
class I8042Config:
    data_port: int = 0x60
    command_port: int = 0x64
    irq: int = 1
    aux_irq: int = 12
    keyboard_queue_size: int = 16  # a real keyboard buffers 16 bytes

    def __post_init__(self) -> None:
        PortRange(self.data_port, 1)
        PortRange(self.command_port, 1)
        _check_irq(self.irq)
        _check_irq(self.aux_irq)

    def ports(self) -> list[PortRange]:
        return [PortRange(self.data_port, 1), PortRange(self.command_port, 1)]


# ------------------------------------------------------------------------- backends


@dataclass(frozen=True)
class DiskImageSettings:
    """The raw image behind an ATA disk.  ``size_bytes`` is used only to create a missing
    image (sparse); an existing image keeps its size."""

    image_path: str
    size_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.size_bytes <= 0 or self.size_bytes % SECTOR_SIZE:
            raise ValueError(f"size_bytes {self.size_bytes} is not a positive multiple of {SECTOR_SIZE}")


@dataclass(frozen=True)
class NvramSettings:
    """Where the CMOS NVRAM is kept; None: it lives only as long as the device."""

    nvram_path: str | None = None


# ------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class DeviceType:
    """One device type of the topology: its config and, if any, its backend's settings."""

    config: type
    backend: type | None = None

    def settings(self) -> dict[str, Any]:
        """Every key a topology may give, with its default (``dataclasses.MISSING`` when the
        key is required)."""
        out = {}
        for cls in (self.config, self.backend):
            for f in dataclasses.fields(cls) if cls else ():
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                out[f.name] = default
        return out

    def build(self, spec: dict[str, Any]) -> tuple[Any, Any]:
        """(config, backend settings or None) from a topology entry without its ``type``."""
        unknown = set(spec) - set(self.settings())
        if unknown:
            raise ValueError(f"{self.config.__name__} has no setting {', '.join(sorted(unknown))}; "
                             f"it takes {', '.join(sorted(self.settings()))}")

        def make(cls):
            names = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in spec.items() if k in names})

        return make(self.config), make(self.backend) if self.backend else None


DEVICE_TYPES: dict[str, DeviceType] = {
    "pic8259": DeviceType(Pic8259Config),
    "pit8254": DeviceType(Pit8254Config),
    "uart16550": DeviceType(Uart16550Config),
    "cmos_rtc": DeviceType(CmosRtcConfig, NvramSettings),
    "ata": DeviceType(AtaDiskConfig, DiskImageSettings),
    "vga_text": DeviceType(VgaTextConfig),
    "i8042": DeviceType(I8042Config),
    "vga_graphics": DeviceType(VgaGraphicsConfig),
    "pci": DeviceType(PciConfig),
}

# What a topology may set for each device type.
DEVICE_KEYS: dict[str, frozenset[str]] = {
    kind: frozenset(t.settings()) for kind, t in DEVICE_TYPES.items()
}

# chipset = "gen1": the legacy devices of a Hyper-V generation-1 VM (hyperv-facts.md §5);
# "minimal": COM1 alone, polled (no interrupt controller).
CHIPSETS: dict[str, list[dict[str, Any]]] = {
    "gen1": [{"type": "pic8259"}, {"type": "pit8254"}, {"type": "cmos_rtc"}, {"type": "i8042"},
             {"type": "vga_text"}, {"type": "uart16550", "name": "com1", "base": 0x3F8, "irq": 4}],
    "minimal": [{"type": "uart16550", "name": "com1", "base": 0x3F8, "irq": 4}],
}
