"""The Linux boot protocol loader (partitions/cpu/linux.py) on a made-up bzImage: the zero
page, e820 map, command line and initramfs as Documentation/arch/x86/boot.rst places them,
the 64-bit entry; images it cannot boot are refused with the reason.  (Booting a real
kernel needs VT-x/AMD-V: on PVM hosts KVM's emulator stops it; see the README.)"""

from __future__ import annotations

import struct

import pytest

from partitions.cpu import linux
from partitions.cpu.boot import BootError, guest_ram, prepare

MIB = 1 << 20


def bzimage(version: int = 0x20F, xloadflags: int = 1, payload: bytes = b"K" * 8192) -> bytes:
    setup = bytearray(1024)  # boot sector + one setup sector
    setup[0x1F1] = 1
    setup[0x201] = 0x6A  # the header runs to 0x202 + 0x6A
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = 0x01
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, 256)  # cmdline_size
    return bytes(setup) + payload


def test_the_zero_page_e820_cmdline_and_initramfs():
    ram = guest_ram(16)
    loads, rip, rsi = linux.load(bzimage(), ram, "console=ttyS0 quiet", b"I" * 5000)
    at = dict(loads)
    bp = at[linux.ZERO_PAGE]
    assert (rip, rsi) == (0x100200, linux.ZERO_PAGE)
    assert at[0x100000] == b"K" * 8192
    assert bp[0x202:0x206] == b"HdrS" and bp[0x210] == 0xFF and bp[0x211] & 0x81 == 0x81
    assert struct.unpack_from("<I", bp, 0x228)[0] == linux.CMDLINE and at[linux.CMDLINE] == b"console=ttyS0 quiet\0"
    e820 = [struct.unpack_from("<QQI", bp, 0x2D0 + 20 * i) for i in range(bp[0x1E8])]
    assert e820 == [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2), (MIB, 15 * MIB, 1)]
    image, size = struct.unpack_from("<II", bp, 0x218)
    assert size == 5000 and image % 4096 == 0 and image + size <= 16 * MIB and at[image] == b"I" * 5000


@pytest.mark.parametrize("image, says", [
    (b"\0" * 4096, "not a bzImage"),
    (bzimage(version=0x20A), "2.12 or later"),
    (bzimage(xloadflags=0), "XLF_KERNEL_64"),
    (bzimage(payload=b"K" * (20 * MIB)), "does not fit"),
])
def test_an_image_it_cannot_boot_is_refused_with_the_reason(image, says):
    with pytest.raises(linux.NotLinux, match=says):
        linux.load(image, guest_ram(16))


def test_prepare_enters_linux_in_long_mode_with_rsi_at_the_zero_page(tmp_path):
    (tmp_path / "bzImage").write_bytes(bzimage())
    (tmp_path / "initrd").write_bytes(b"I" * 100)
    boot = prepare({"kernel": str(tmp_path / "bzImage"), "initrd": str(tmp_path / "initrd"),
                    "cmdline": "quiet", "memory_mb": 16})
    assert boot.long_mode and (boot.ip, boot.rsi) == (0x100200, linux.ZERO_PAGE)
    with pytest.raises(BootError, match="initrd"):
        prepare({"kernel": str(tmp_path / "bzImage"), "initrd": str(tmp_path / "missing"), "memory_mb": 16})
