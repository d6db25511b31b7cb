"""The Linux x86 boot protocol (Documentation/arch/x86/boot.rst), 64-bit entry, as Firecracker
and kvmtool load a kernel: the bzImage's protected-mode code at 1 MiB, a zero page (struct
boot_params) at ZERO_PAGE with the image's setup header, an e820 map, the command line and
the initramfs, then the 64-bit entry (1 MiB + 0x200) in long mode with RSI = the zero page.

Only a bzImage of protocol 2.12 or later whose xloadflags say XLF_KERNEL_64 is taken.
"""

from __future__ import annotations

import struct

BZIMAGE_MAGIC = b"HdrS"
HEADER = 0x1F1  # where the setup header starts, in the image and in boot_params
SETUP_SECTS, HEADER_MAGIC, VERSION, TYPE_OF_LOADER, LOADFLAGS = 0x1F1, 0x202, 0x206, 0x210, 0x211
RAMDISK_IMAGE, RAMDISK_SIZE, HEAP_END_PTR, CMD_LINE_PTR = 0x218, 0x21C, 0x224, 0x228
XLOADFLAGS, CMDLINE_SIZE = 0x236, 0x238
E820_ENTRIES, E820_TABLE, E820_MAX = 0x1E8, 0x2D0, 128
LOADED_HIGH, CAN_USE_HEAP = 0x01, 0x80
XLF_KERNEL_64 = 0x01
E820_RAM, E820_RESERVED = 1, 2
ZERO_PAGE = 0x7000
CMDLINE = 0x20000
KERNEL_BASE = 0x100000
ENTRY_64 = 0x200
EBDA = 0x9FC00  # reserved to 640 KiB, and the BIOS area 0xF0000-0xFFFFF, as Firecracker's map


class NotLinux(Exception):
    """The image is not a bzImage this loader takes (said why)."""


def is_bzimage(image: bytes) -> bool:
    return image[HEADER_MAGIC:HEADER_MAGIC + 4] == BZIMAGE_MAGIC


def load(image: bytes, ram: list[tuple[int, int]], cmdline: str = "", initrd: bytes = b"") -> tuple[list, int, int]:
    """((GPA, bytes) to load, RIP, RSI) for ``image`` in a partition whose RAM is ``ram``
    ((gpa, length) runs, the SLAT's)."""
    if not is_bzimage(image):
        raise NotLinux("no 'HdrS' at 0x202: not a bzImage")
    (version,) = struct.unpack_from("<H", image, VERSION)
    if version < 0x20C:
        raise NotLinux(f"boot protocol {version >> 8}.{version & 0xFF}: 2.12 or later is needed (64-bit entry)")
    (xloadflags,) = struct.unpack_from("<H", image, XLOADFLAGS)
    if not xloadflags & XLF_KERNEL_64:
        raise NotLinux("xloadflags lack XLF_KERNEL_64: the kernel has no 64-bit entry")
    setup_sects = image[SETUP_SECTS] or 4
    kernel = image[(setup_sects + 1) * 512:]
    header_end = HEADER_MAGIC + image[0x201]  # the header's length is in its own byte 0x201
    boot_params = bytearray(4096)
    boot_params[HEADER:header_end] = image[HEADER:header_end]
    boot_params[TYPE_OF_LOADER] = 0xFF  # "undefined" loader
    boot_params[LOADFLAGS] |= LOADED_HIGH | CAN_USE_HEAP
    struct.pack_into("<H", boot_params, HEAP_END_PTR, 0xFE00)
    (cmdline_size,) = struct.unpack_from("<I", image, CMDLINE_SIZE)
    line = cmdline.encode()[:max(0, cmdline_size - 1)] + b"\0"
    struct.pack_into("<I", boot_params, CMD_LINE_PTR, CMDLINE)
    e820 = []
    for gpa, length in ram:
        end = gpa + length
        if gpa < EBDA:
            e820.append((gpa, min(end, EBDA) - gpa, E820_RAM))
        if end > KERNEL_BASE:
            e820.append((max(gpa, KERNEL_BASE), end - max(gpa, KERNEL_BASE), E820_RAM))
    e820 += [(EBDA, 0xA0000 - EBDA, E820_RESERVED), (0xF0000, 0x10000, E820_RESERVED)]
    e820.sort()
    if len(e820) > E820_MAX:
        raise NotLinux(f"{len(e820)} e820 entries: at most {E820_MAX}")
    boot_params[E820_ENTRIES] = len(e820)
    for i, (addr, size, kind) in enumerate(e820):
        struct.pack_into("<QQI", boot_params, E820_TABLE + 20 * i, addr, size, kind)
    top = max((gpa + length for gpa, length in ram if gpa + length <= 1 << 32), default=0)
    if KERNEL_BASE + len(kernel) > top:
        raise NotLinux(f"the kernel ({len(kernel)} bytes at 1 MiB) does not fit in RAM ending at {top:#x}")
    loads = [(ZERO_PAGE, bytes(boot_params)), (CMDLINE, line), (KERNEL_BASE, kernel)]
    if initrd:
        at = (top - len(initrd)) & ~0xFFF
        if at < KERNEL_BASE + len(kernel):
            raise NotLinux(f"the initramfs ({len(initrd)} bytes) does not fit above the kernel")
        struct.pack_into("<II", boot_params, RAMDISK_IMAGE, at, len(initrd))
        loads[0] = (ZERO_PAGE, bytes(boot_params))
        loads.append((at, initrd))
    return loads, KERNEL_BASE + ENTRY_64, ZERO_PAGE
