"""What a real-CPU VP starts with: firmware or a kernel image, read before the partition
process is confined (so the files need only be readable by whoever starts it).

* ``firmware = "seabios"``: the system's SeaBIOS ``bios.bin`` (Debian's ``seabios``
  package) below 4 GiB, read-only, and its last 128 KiB at 0xE0000–0xFFFFF as writable
  shadow RAM, with 0xC0000–0xDFFFF (the option ROMs' space) writable too (what a chipset's
  PAM registers give a BIOS; these regions are the partition process's, one copy every VP
  maps, not pages of the partition's RAM).  VP 0 starts at the reset vector, real mode,
  F000:FFF0; the others wait for a startup IPI (:func:`at_sipi`).
* ``kernel = PATH``: a flat 32-bit image loaded at 1 MiB and entered there in 32-bit
  protected mode with paging off and flat segments (as a multiboot loader leaves it), the
  form of the test kernels in ``partitions/guests``; one marked with LONG_MODE_MAGIC is
  entered in 64-bit mode instead (see below); a bzImage is loaded by the Linux boot
  protocol (:mod:`partitions.cpu.linux`), with ``initrd`` and ``cmdline``.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from partitions.cpu import linux

SEABIOS_PATHS = ("/usr/share/seabios/bios.bin", "/usr/share/qemu/bios.bin")
SHADOW_BASE = 0xE0000
SHADOW_SIZE = 0x20000
OPTION_ROM_BASE, OPTION_ROM_SIZE = 0xC0000, 0x20000  # shadow RAM where option ROMs would be
FOUR_GIB = 1 << 32
KERNEL_BASE = 0x100000
RESET_CS, RESET_IP = 0xF000, 0xFFF0
GUESTS_DIR = Path(__file__).resolve().parent.parent / "guests"
MAX_KERNEL_BYTES = 16 << 20


class BootError(Exception):
    """The firmware or kernel a topology names cannot be had (said plainly)."""


@dataclass
class Region:
    """Memory outside the partition's RAM: firmware ROM and its shadow.  One host buffer
    per region, which every VP of the partition maps (SeaBIOS's application processors
    count themselves in a variable of its F-segment shadow, which the BSP reads)."""

    gpa: int
    data: bytes
    writable: bool
    _buffer: mmap.mmap | None = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> int:
        return (len(self.data) + 0xFFF) & ~0xFFF

    def buffer(self) -> mmap.mmap:
        """The region's host memory, made (holding ``data``) on first use."""
        with _REGION_LOCK:
            if self._buffer is None:
                self._buffer = mmap.mmap(-1, self.size)
                self._buffer[:len(self.data)] = self.data
            return self._buffer

    def reload(self) -> None:
        """Back to ``data``: what a CPU starting at the reset vector finds (a reset's
        shadow RAM holds the firmware again, as the first boot's did)."""
        self.buffer()[:len(self.data)] = self.data


_REGION_LOCK = threading.Lock()


def saved_regions(boot: "Boot") -> dict:
    """The writable regions' contents (firmware's shadow RAM: SeaBIOS runs from its copy at
    0xE0000–0xFFFFF, option ROMs at 0xC0000 — memory of the partition process, not of the
    partition's RAM file), by GPA, zlib then hex (a restored spec is JSON): VP 0 saves them
    with its registers (issue 13)."""
    return {f"{r.gpa:#x}": zlib.compress(bytes(r.buffer()), 1).hex() for r in boot.regions if r.writable}


def restore_regions(boot: "Boot", saved) -> None:
    """A restored partition's writable regions from ``saved`` (VP 0's ``regions``), each
    checked to be exactly one of this boot's, of its size; BootError otherwise."""
    ours = {f"{r.gpa:#x}": r for r in boot.regions if r.writable}
    if not isinstance(saved, dict) or sorted(saved) != sorted(ours):
        raise BootError(f"saved regions {sorted(saved) if isinstance(saved, dict) else saved!r} are not this "
                        f"firmware's writable ones {sorted(ours)}")
    for gpa, region in ours.items():
        try:
            dec = zlib.decompressobj()
            data = dec.decompress(bytes.fromhex(saved[gpa]), region.size + 1)
        except (TypeError, ValueError, zlib.error) as e:
            raise BootError(f"saved region {gpa}: {e}") from None
        if len(data) != region.size:
            raise BootError(f"saved region {gpa}: {len(data)} bytes, expected {region.size}")
        region.buffer()[:] = data


@dataclass
class Boot:
    real_mode: bool
    cs: int  # real mode: the code segment (the entry is cs * 16 + ip)
    ip: int
    load: list[tuple[int, bytes]] = field(default_factory=list)  # into guest RAM, by VP 0
    regions: list[Region] = field(default_factory=list)
    what: str = ""
    kvm_fd: int | None = None  # /dev/kvm, opened before confinement (the kvm backend)
    # Where code that may use the synthetic MSRs runs (unicorn watches it for RDMSR/WRMSR).
    msr_code: list[tuple[int, int]] = field(default_factory=list)
    long_mode: bool = False  # entered in 64-bit mode: LONG_MODE_* below, in guest RAM
    rsi: int = 0  # RSI at entry (Linux: the zero page)
    vps: int = 1  # the partition's VPs (more than one: firmware only)
    # Held by a unicorn VP of a partition of several while it executes guest code
    # (partitions/cpu/guest_code.py).  One per partition: at_sipi's copies share it.
    guest_code_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def entry(self) -> int:
        return (self.cs << 4) + self.ip if self.real_mode else self.ip


# The CMOS bytes a PC BIOS sizes RAM by (what QEMU's pc_cmos_init writes): base memory in
# KiB at 0x15/0x16, memory from 1 MiB to 64 MiB in KiB at 0x17/0x18 and 0x30/0x31, memory
# from 16 MiB up in 64 KiB units at 0x34/0x35.  The NVRAM file holds registers 0x0E–0x7F.
CMOS_NVRAM_FIRST, CMOS_NVRAM_SIZE = 0x0E, 0x72


CMOS_SMP_COUNT = 0x5F  # QEMU's: the number of processors less one (SeaBIOS waits for them)


def cmos_nvram(memory_mb: int, vps: int = 1) -> bytes:
    """A new partition's CMOS NVRAM telling its firmware how much RAM it has, and how many
    processors."""
    nvram = bytearray(CMOS_NVRAM_SIZE)
    nvram[CMOS_SMP_COUNT - CMOS_NVRAM_FIRST] = max(0, vps - 1)

    def put16(index: int, value: int) -> None:
        nvram[index - CMOS_NVRAM_FIRST:index - CMOS_NVRAM_FIRST + 2] = min(value, 0xFFFF).to_bytes(2, "little")
    put16(0x15, 640)
    extended_kb = max(0, memory_mb - 1) * 1024
    put16(0x17, extended_kb)
    put16(0x30, extended_kb)
    put16(0x34, max(0, memory_mb - 16) * 16)
    return bytes(nvram)


# A kernel whose bytes 8-15 are this is entered at 1 MiB + 16 in 64-bit mode, as
# Firecracker enters Linux: paging on with an identity map of the first 4 GiB (2 MiB pages),
# a flat GDT (0x08 code, 0x10 data), CR0 PE|PG|…, CR4 PAE, EFER LME|LMA.
LONG_MODE_MAGIC = b"HVSTK64\0"
LONG_MODE_ENTRY = 16
GDT_GPA = 0x500
PML4_GPA = 0x9000  # then the PDPT at 0xA000 and four page directories at 0xB000-0xEFFF
LONG_MODE_CR0, LONG_MODE_CR4, LONG_MODE_EFER = 0x80050033, 0x20, 0x500
GDT_ENTRIES = (0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF)


def long_mode_tables() -> list[tuple[int, bytes]]:
    """The GDT and page tables a long-mode entry needs, as (GPA, bytes) to load."""
    pml4 = (PML4_GPA + 0x1003).to_bytes(8, "little").ljust(4096, b"\0")
    pdpt = b"".join((PML4_GPA + 0x2000 + 0x1000 * i + 3).to_bytes(8, "little") for i in range(4)).ljust(4096, b"\0")
    pds = b"".join((i * 0x200000 | 0x83).to_bytes(8, "little") for i in range(2048))
    gdt = b"".join(e.to_bytes(8, "little") for e in GDT_ENTRIES)
    return [(GDT_GPA, gdt), (PML4_GPA, pml4 + pdpt + pds)]


def at_sipi(boot: Boot, vector: int) -> Boot:
    """What an application processor starts with after a startup IPI: real mode at
    ``vector`` × 4 KiB (CS = vector << 8, IP = 0), the same firmware regions, nothing loaded."""
    return dataclasses.replace(boot, real_mode=True, cs=(vector & 0xFF) << 8, ip=0, load=[], long_mode=False,
                               rsi=0, what=f"application processor from SIPI vector {vector:#04x}")


def guest_ram(memory_mb: int) -> list[tuple[int, int]]:
    """The RAM the root maps for a partition of ``memory_mb`` (root/hostflow.py): below
    640 KiB and from 1 MiB up, as (gpa, length)."""
    top = memory_mb << 20
    return [(0, min(top, 0xA0000))] + ([(0x100000, top - 0x100000)] if top > 0x100000 else [])


def seabios_path() -> str | None:
    for p in SEABIOS_PATHS:
        if os.path.isfile(p):
            return p
    return None


def seabios_missing() -> str | None:
    """Why ``firmware = "seabios"`` cannot run here (None: it can)."""
    if seabios_path() is None:
        return ("SeaBIOS is not installed (no " + " or ".join(SEABIOS_PATHS) +
                "): apt-get install seabios")
    return None


def kernel_path(name: str, base_dir: str | None = None) -> Path:
    """A kernel the topology names: one of ours in partitions/guests by name
    (``hvtest32``), else a path (relative to the topology file)."""
    ours = GUESTS_DIR / f"{name}.bin"
    if "/" not in name and ours.is_file():
        return ours
    p = Path(name)
    return p if p.is_absolute() or base_dir is None else Path(base_dir) / p


def prepare(spec: dict) -> Boot:
    """The boot of a real-CPU partition from its spec's ``firmware`` and ``kernel``."""
    if spec.get("firmware") == "seabios":
        missing = seabios_missing()
        if missing:
            raise BootError(missing)
        path = seabios_path()
        rom = Path(path).read_bytes()
        if len(rom) < SHADOW_SIZE or len(rom) % 0x1000 or len(rom) > 1 << 20:
            raise BootError(f"{path}: {len(rom)} bytes is not a BIOS image (128 KiB to 1 MiB)")
        return Boot(True, RESET_CS, RESET_IP, regions=[
            Region(FOUR_GIB - len(rom), rom, writable=False),
            Region(SHADOW_BASE, rom[-SHADOW_SIZE:], writable=True),
            Region(OPTION_ROM_BASE, bytes(OPTION_ROM_SIZE), writable=True),
        ], what=f"SeaBIOS ({path})", vps=int(spec.get("vps", 1)))
    if spec.get("kernel"):
        path = kernel_path(spec["kernel"], spec.get("base_dir"))
        try:
            image = path.read_bytes()
        except OSError as e:
            raise BootError(f"kernel {spec['kernel']!r}: {path}: {e.strerror}") from None
        if not image or len(image) > MAX_KERNEL_BYTES:
            raise BootError(f"kernel {path}: {len(image)} bytes (1 byte to 16 MiB)")
        if linux.is_bzimage(image):
            initrd = b""
            if spec.get("initrd"):
                ipath = kernel_path(spec["initrd"], spec.get("base_dir"))
                try:
                    initrd = ipath.read_bytes()
                except OSError as e:
                    raise BootError(f"initrd {spec['initrd']!r}: {ipath}: {e.strerror}") from None
            try:
                loads, rip, rsi = linux.load(image, guest_ram(spec.get("memory_mb", 16)), spec.get("cmdline") or "",
                                             initrd)
            except linux.NotLinux as e:
                raise BootError(f"kernel {path}: {e}") from None
            # The BIOS area Linux scans (option ROMs, the MP table, the RSDP): read-only zeros,
            # as a machine whose firmware left nothing there (reads of unmapped GPAs #GP here).
            return Boot(False, 0, rip, load=[*long_mode_tables(), *loads], long_mode=True, rsi=rsi,
                        regions=[Region(OPTION_ROM_BASE, bytes(0x40000), writable=False)],
                        what=f"Linux {path.name} (64-bit boot protocol)")
        if image[8:16] == LONG_MODE_MAGIC:
            return Boot(False, 0, KERNEL_BASE + LONG_MODE_ENTRY, load=[*long_mode_tables(), (KERNEL_BASE, image)],
                        what=f"kernel {path.name} (64-bit entry)", long_mode=True,
                        msr_code=[(KERNEL_BASE, KERNEL_BASE + len(image) - 1)])
        return Boot(False, 0, KERNEL_BASE, load=[(KERNEL_BASE, image)], what=f"kernel {path.name}",
                    msr_code=[(KERNEL_BASE, KERNEL_BASE + len(image) - 1)])
    raise BootError("a real CPU needs firmware = \"seabios\" or kernel = PATH")
