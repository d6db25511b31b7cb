"""A partition's first guest-visible files, written before its worker starts: a firmware
partition's CMOS NVRAM and a new disk image's starting contents.  A file that exists (a
reset, a rerun) is the guest's and is left alone.
"""

from __future__ import annotations

import os


def firmware_nvram(path: os.PathLike, memory_mb: int, vps: int = 1) -> None:
    """A partition booting firmware starts with CMOS NVRAM that says how much RAM it has
    (a BIOS reads it there); an existing NVRAM file (a reset, a rerun) is the guest's."""
    from partitions.cpu.boot import cmos_nvram
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as f:
        f.write(cmos_nvram(memory_mb, vps))


def disk_contents(ata: dict, contents: str, base_dir) -> None:
    """A new disk image starts with ``contents`` (a boot disk of ours, or a file); an
    existing image is the guest's and is left alone."""
    from partitions.cpu.boot import kernel_path
    data = kernel_path(contents, str(base_dir) if base_dir else None).read_bytes()
    try:
        fd = os.open(ata["image_path"], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as f:
        f.write(data[:ata["size_bytes"]])
        f.truncate(ata["size_bytes"])
