"""A PCI function's type-0 configuration header (PCI Local Bus 3.0, chapter 6): the 256
bytes a configuration cycle reads and writes, and the expansion ROM it may decode.

A function is its identity (vendor, device, class code, revision, header type), the bytes
the guest may change (a write mask per byte: what is not in the mask reads back as it was
made), and an optional expansion ROM.  The chips (:mod:`worker.devices.i440bx`,
:mod:`worker.devices.piix4`, :mod:`worker.devices.hyperv_vga`) say which registers of theirs
are writable; the bus (:mod:`worker.devices.pci_bus`) routes configuration cycles and memory
cycles here.

Policies:

* A register the chip does not implement reads 0 and ignores writes (the spec's rule for
  reserved registers), so a BAR the function lacks sizes to 0: the firmware skips it.
* Base address sizing falls out of the mask: the size bits of a BAR are not writable, so
  writing all-ones and reading back gives ``~(size - 1)``.  Only the expansion ROM BAR
  (offset 30h) is built here; no function of ours decodes I/O or memory BARs.
* The expansion ROM answers memory reads when its enable bit (bit 0 of 30h) and the
  Command register's Memory Space bit are both set, at the address the BAR holds; its size is
  the image rounded up to a power of two (at least 2 KiB, the BAR's granularity), and the
  bytes past the image read FFh.  Writes to the ROM are ignored, as a ROM does.
* Status (06h) is read-only here: no function of ours signals an error, so there is no
  write-1-to-clear bit to clear.
"""

from __future__ import annotations

COMMAND = 0x04
COMMAND_IO, COMMAND_MEMORY, COMMAND_BUS_MASTER = 0x1, 0x2, 0x4
COMMAND_WRITABLE = 0x0147  # I/O, memory, bus master, parity error response, SERR#
HEADER_TYPE = 0x0E
HEADER_MULTIFUNCTION = 0x80
SUBSYSTEM_VENDOR_ID, SUBSYSTEM_ID = 0x2C, 0x2E
ROM_ADDRESS = 0x30
ROM_ENABLE = 0x1
ROM_ADDRESS_MASK = 0xFFFFF800  # 2 KiB granularity
INTERRUPT_LINE, INTERRUPT_PIN = 0x3C, 0x3D
CONFIG_SIZE = 256


def _rom_bar_size(length: int) -> int:
    size = 0x800
    while size < length:
        size <<= 1
    return size


class PciFunction:
    """One function's configuration header and expansion ROM.  ``config`` is the live
    256 bytes (the bus saves them); ``initial`` is what reset restores."""

    def __init__(self, name: str, vendor: int, device: int, class_code: int, *, revision: int = 0,
                 multifunction: bool = False, subsystem: tuple[int, int] = (0, 0),
                 rom: bytes = b"", writable: dict[int, int] | None = None,
                 registers: dict[int, int] | None = None) -> None:
        """``writable``: {offset: mask of writable bits, one byte}; ``registers``: {offset:
        power-on value, one byte} of the chip's own registers (40h-FFh)."""
        self.name = name
        self.rom = bytes(rom)
        initial = bytearray(CONFIG_SIZE)
        mask = bytearray(CONFIG_SIZE)

        def put(offset: int, value: int, size: int) -> None:
            initial[offset:offset + size] = value.to_bytes(size, "little")

        put(0x00, vendor, 2)
        put(0x02, device, 2)
        put(0x08, revision | (class_code << 8), 4)
        put(HEADER_TYPE, HEADER_MULTIFUNCTION if multifunction else 0, 1)
        put(SUBSYSTEM_VENDOR_ID, subsystem[0], 2)
        put(SUBSYSTEM_ID, subsystem[1], 2)
        mask[COMMAND:COMMAND + 2] = COMMAND_WRITABLE.to_bytes(2, "little")
        mask[0x0C] = 0xFF  # cache line size
        mask[0x0D] = 0xFF  # latency timer
        mask[INTERRUPT_LINE] = 0xFF  # firmware's note of the IRQ; no pin here drives it
        if self.rom:
            self.rom_size = _rom_bar_size(len(self.rom))
            bar_mask = (ROM_ADDRESS_MASK & ~(self.rom_size - 1)) | ROM_ENABLE
            mask[ROM_ADDRESS:ROM_ADDRESS + 4] = bar_mask.to_bytes(4, "little")
        else:
            self.rom_size = 0
        for offset, value in (registers or {}).items():
            initial[offset] = value
        for offset, bits in (writable or {}).items():
            mask[offset] = bits
        self.initial = bytes(initial)
        self.mask = bytes(mask)
        self.config = bytearray(initial)

    def reset(self) -> None:
        self.config[:] = self.initial

    # ------------------------------------------------------------------ configuration cycles

    def config_read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.config[offset:offset + size], "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            bits = self.mask[offset + i]
            byte = (value >> (8 * i)) & 0xFF
            self.config[offset + i] = (self.config[offset + i] & ~bits & 0xFF) | (byte & bits)

    def check_config(self, config: bytes) -> str | None:
        """Why ``config`` (a saved header) is not one this function can hold: a bit the
        guest cannot write differs from power-on."""
        for offset, (got, was, bits) in enumerate(zip(config, self.initial, self.mask)):
            if (got ^ was) & ~bits & 0xFF:
                return f"{self.name} config byte {offset:#04x} = {got:#04x} has read-only bits changed"
        return None

    # ------------------------------------------------------------------ memory cycles

    def rom_base(self) -> int | None:
        """Where the expansion ROM decodes now, or None when it does not."""
        if not self.rom_size:
            return None
        bar = self.config_read(ROM_ADDRESS, 4)
        if not bar & ROM_ENABLE or not self.config[COMMAND] & COMMAND_MEMORY:
            return None
        return bar & ROM_ADDRESS_MASK

    def rom_read(self, offset: int, size: int) -> int:
        """``size`` bytes of the ROM from ``offset`` (past the image: FFh)."""
        data = self.rom[offset:offset + size]
        return int.from_bytes(data + b"\xff" * (size - len(data)), "little")
