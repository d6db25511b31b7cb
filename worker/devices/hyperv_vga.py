"""The PCI face of a Hyper-V generation-1 VM's VGA ("Microsoft Hyper-V virtual VGA",
1414:5353, at 00:08.0, originally an S3 Trio): its configuration header and the expansion
ROM that holds its VGA BIOS.  The VGA itself — the text buffer, the CRTC, the other
registers — is :mod:`worker.devices.vga_text` and :mod:`worker.devices.vga_graphics`.

The VGA BIOS is SeaVGABIOS (the system's ``seabios`` package, ``vgabios-stdvga.bin`` by
default): Hyper-V's own is not public.  An option ROM is run by SeaBIOS only when the PCI
data structure ("PCIR") in it names the function's vendor and device, so the image's PCIR
IDs are set to 1414:5353 and the header checksum byte (offset 6, SeaVGABIOS's
``_rom_header_checksum``) compensates — what QEMU's ``pci_patch_ids`` does for a ROM used by
more than one device.  The stdvga build probes the Bochs VBE ports 0x1CE/0x1CF, finds no
DISPI interface ("falling back to stdvga") and drives the standard VGA registers only.

Policies:

* No memory or I/O BAR: the legacy VGA ranges (0x3B0-0x3DF, 0xA0000-0xBFFFF) are decoded
  by the chipset's VGA devices whatever the Command register says, and there is no linear
  frame buffer.  No interrupt pin.
* An image that is not an option ROM (no 55AAh, a size byte that disagrees with the file,
  no PCIR structure, over 128 KiB) is refused with a plain error when the worker starts.
"""

from __future__ import annotations

from worker.devices.pci_function import PciFunction

VENDOR_MICROSOFT = 0x1414
DEVICE_HYPERV_VGA = 0x5353
CLASS_VGA = 0x030000
ROM_SIGNATURE = b"\x55\xaa"
ROM_MAX = 128 * 1024  # 0xC0000-0xDFFFF: the option ROM space
PCIR_POINTER = 0x18
CHECKSUM_BYTE = 6


class NotAnOptionRom(ValueError):
    """The VGA BIOS file is not a PCI option ROM image."""


def patch_pci_ids(image: bytes, vendor: int, device: int, what: str = "ROM") -> bytes:
    """``image`` with its PCIR vendor and device set, the 8-bit sum kept (byte 6 adjusts)."""
    rom = bytearray(image)
    if len(rom) < 0x20 or rom[:2] != ROM_SIGNATURE:
        raise NotAnOptionRom(f"{what}: no option ROM signature (55 AA)")
    if not 0 < rom[2] * 512 <= len(rom) or len(rom) > ROM_MAX:
        raise NotAnOptionRom(f"{what}: {len(rom)} bytes with a header size of {rom[2] * 512} "
                             f"(an option ROM is at most {ROM_MAX} bytes)")
    pcir = int.from_bytes(rom[PCIR_POINTER:PCIR_POINTER + 2], "little")
    if pcir + 8 > len(rom) or rom[pcir:pcir + 4] != b"PCIR":
        raise NotAnOptionRom(f"{what}: no PCI data structure (PCIR), so not a PCI option ROM")
    before = sum(rom[pcir + 4:pcir + 8])
    rom[pcir + 4:pcir + 8] = vendor.to_bytes(2, "little") + device.to_bytes(2, "little")
    rom[CHECKSUM_BYTE] = (rom[CHECKSUM_BYTE] + before - sum(rom[pcir + 4:pcir + 8])) & 0xFF
    return bytes(rom)


def hyperv_vga(vgabios: bytes, what: str = "VGA BIOS") -> PciFunction:
    """The VGA's PCI function with ``vgabios`` (the file's bytes) as its expansion ROM."""
    rom = patch_pci_ids(vgabios, VENDOR_MICROSOFT, DEVICE_HYPERV_VGA, what)
    return PciFunction("hyperv-vga", VENDOR_MICROSOFT, DEVICE_HYPERV_VGA, CLASS_VGA, rom=rom)
