"""The committed test kernels are what partitions/guests/build.sh makes of their sources,
byte for byte, where the toolchain named in toolchain.txt is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

GUESTS = Path(__file__).resolve().parents[3] / "partitions" / "guests"
IMAGES = ("hvtest32.bin", "hvtest64.bin", "bootdisk.bin")


def installed_toolchain() -> str | None:
    lines = []
    for tool in ("gcc", "ld", "as", "objcopy"):
        if shutil.which(tool) is None:
            return None
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30).stdout
        lines.append(out.splitlines()[0] if out else "")
    return "\n".join(lines) + "\n"


def test_the_committed_images_are_what_the_build_script_makes(tmp_path):
    wanted = (GUESTS / "toolchain.txt").read_text()
    have = installed_toolchain()
    if have != wanted:
        pytest.skip(f"the images were built with:\n{wanted}this host has:\n{have or 'no gcc/binutils'}")
    subprocess.run(["sh", str(GUESTS / "build.sh"), str(tmp_path)], check=True, timeout=120)
    for name in IMAGES:
        assert (tmp_path / name).read_bytes() == (GUESTS / name).read_bytes(), f"{name} differs from its rebuild"
