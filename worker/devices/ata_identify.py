"""IDENTIFY DEVICE (ATA/ATAPI-6 8.15): what an ATA disk says about itself, and the default
CHS translation it reports, for :mod:`worker.devices.ata`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.devices.ata import AtaState
    from worker.devices.config import AtaDiskConfig

LBA28_MAX_SECTORS = 0x0FFFFFFF  # IDENTIFY words 60-61 saturate here (ATA-6 6.2.1)


def default_geometry(sectors: int) -> tuple[int, int, int]:
    """The default CHS translation (cylinders, heads, sectors per track): 16 heads of 63
    sectors with cylinders capped at 16383, as ATA-6 6.2.1 asks of disks over 8.4 GB;
    tiny images get fewer heads and sectors so there is at least one cylinder."""
    spt = min(63, sectors)
    heads = max(1, min(16, sectors // spt))
    return min(sectors // (heads * spt), 16383), heads, spt


def ata_string_words(text: str, word_count: int) -> list[int]:
    """An IDENTIFY string: space padded, two characters a word, the first in the high byte."""
    raw = text.ljust(2 * word_count).encode("ascii")
    return [(raw[2 * i] << 8) | raw[2 * i + 1] for i in range(word_count)]


def identify_words(cfg: AtaDiskConfig, capacity: int, s: AtaState) -> list[int]:
    """The 256 words for a disk of ``capacity`` sectors, as configured and now set."""
    w = [0] * 256
    cylinders, heads, spt = default_geometry(capacity)
    w[0] = 0x0040  # ATA device, fixed (bit 6, obsolete but still reported)
    w[1], w[3], w[6] = cylinders, heads, spt
    w[10:20] = ata_string_words(cfg.serial, 10)
    w[23:27] = ata_string_words(cfg.firmware, 4)
    w[27:47] = ata_string_words(cfg.model, 20)
    w[47] = 0x8000  # READ/WRITE MULTIPLE: no sectors per block (not supported)
    w[49] = 0x0A00  # bit 11 IORDY supported, bit 9 LBA supported; no DMA
    w[50] = 0x4000  # bit 14 shall be one
    w[51] = 0x0200  # obsolete PIO timing mode 2
    w[53] = 0x0007  # words 54-58, 64-70 and 88 are valid
    w[54], w[55], w[56] = s.cylinders, s.heads, s.sectors_per_track
    current = s.cylinders * s.heads * s.sectors_per_track
    w[57], w[58] = current & 0xFFFF, current >> 16
    lba28 = min(capacity, LBA28_MAX_SECTORS)
    w[60], w[61] = lba28 & 0xFFFF, lba28 >> 16
    w[64] = 0x0003  # PIO modes 3 and 4
    w[67] = 120  # minimum PIO cycle time without flow control, ns
    w[68] = 120  # minimum PIO cycle time with IORDY, ns
    w[80] = 0x0078  # supports ATA-3, ATA/ATAPI-4, -5 and -6
    w[81] = 0x0000  # minor version not reported
    w[82] = 0x0060  # bit 6 read look-ahead, bit 5 write cache
    w[83] = 0x7400  # bit 14 one, 13 FLUSH CACHE EXT, 12 FLUSH CACHE, 10 48-bit address
    w[84] = 0x4000
    w[85] = (0x0040 if s.read_look_ahead else 0) | (0x0020 if s.write_cache else 0)
    w[86] = 0x3400  # enabled: FLUSH CACHE EXT, FLUSH CACHE, 48-bit address
    w[87] = 0x4000
    w[88] = 0x0000  # no Ultra DMA
    for i in range(4):  # 48-bit capacity, words 100-103, least significant first
        w[100 + i] = (capacity >> (16 * i)) & 0xFFFF
    # Word 255: signature A5h in the low byte, and a high byte making all 512 bytes sum to 0.
    total = sum((word & 0xFF) + (word >> 8) for word in w[:255]) + 0xA5
    w[255] = (((-total) & 0xFF) << 8) | 0xA5
    return w
