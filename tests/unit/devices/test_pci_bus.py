"""The gen-1 PCI bus: configuration mechanism #1 as firmware drives it, the odd and hostile
accesses a guest may make, the functions' headers, BAR sizing and the expansion ROM."""

import pytest

from tests.unit.devices.support import plug, plug_mmio
from worker.devices.base import IoError
from worker.devices.config import PciConfig
from worker.devices.gen1_pci import gen1_pci_bus
from worker.devices.hyperv_vga import NotAnOptionRom, patch_pci_ids

CF8, CFC = 0xCF8, 0xCFC
ROM_AT = 0xFEBF0000


def option_rom(size: int = 0x9C00, vendor: int = 0x1234, device: int = 0x1111) -> bytes:
    """A PCI option ROM image as SeaVGABIOS lays one out: 55 AA, size in 512s, checksum at 6,
    PCIR at 0x40; its bytes sum to 0."""
    rom = bytearray(size)
    rom[0:3] = b"\x55\xaa" + bytes([size // 512])
    rom[0x18:0x1A] = (0x40).to_bytes(2, "little")
    rom[0x40:0x48] = b"PCIR" + vendor.to_bytes(2, "little") + device.to_bytes(2, "little")
    rom[0x100:0x110] = bytes(range(16))
    rom[6] = -sum(rom) & 0xFF
    return bytes(rom)


@pytest.fixture
def pci():
    resets = []
    bus = gen1_pci_bus(PciConfig(), option_rom(), lambda: resets.append(1))
    bus.resets = resets
    return bus


def address(dev: int, fn: int, reg: int, bus: int = 0) -> int:
    return 0x80000000 | (bus << 16) | (dev << 11) | (fn << 8) | reg


def cfg_read(port_bus, dev, fn, reg, size=4, bus=0):
    port_bus.write(CF8, 4, address(dev, fn, reg & 0xFC, bus))
    return port_bus.read(CFC + (reg & 3), size)


def cfg_write(port_bus, dev, fn, reg, value, size=4):
    port_bus.write(CF8, 4, address(dev, fn, reg & 0xFC))
    port_bus.write(CFC + (reg & 3), size, value)


# ----------------------------------------------------------------- mechanism #1


def test_config_address_reads_back_without_its_reserved_bits(pci):
    bus = plug(pci)
    bus.write(CF8, 4, 0x80000000)  # SeaBIOS's pci_probe_host
    assert bus.read(CF8, 4) == 0x80000000
    bus.write(CF8, 4, 0xFFFFFFFF)
    assert bus.read(CF8, 4) == 0x80FFFFFC


def test_the_scan_finds_the_four_functions_of_a_gen1_vm(pci):
    bus = plug(pci)
    found = {}
    for dev in range(32):
        for fn in range(8):
            ids = cfg_read(bus, dev, fn, 0)
            if ids != 0xFFFFFFFF:
                found[(dev, fn)] = (ids & 0xFFFF, ids >> 16, cfg_read(bus, dev, fn, 8) >> 8)
    assert found == {(0, 0): (0x8086, 0x7192, 0x060000), (7, 0): (0x8086, 0x7110, 0x060100),
                     (7, 1): (0x8086, 0x7111, 0x010180), (8, 0): (0x1414, 0x5353, 0x030000)}
    assert cfg_read(bus, 7, 0, 0x0E, 1) & 0x80  # PIIX4 is multi-function: 07.1 gets scanned
    assert not cfg_read(bus, 8, 0, 0x0E, 1) & 0x80


def test_nonexistent_functions_and_other_buses_read_all_ones_without_a_guest_mistake(pci):
    bus = plug(pci)
    for size in (1, 2, 4):
        assert cfg_read(bus, 31, 7, 0, size) == (1 << 8 * size) - 1
        assert cfg_read(bus, 0, 0, 0, size, bus=1) == (1 << 8 * size) - 1
    cfg_write(bus, 31, 7, 0x04, 0xFFFF)  # vanishes
    assert pci.stats.missed_reads == pci.stats.missed_writes == 0


def test_byte_and_word_accesses_reach_the_addressed_bytes_of_the_dword(pci):
    bus = plug(pci)
    assert cfg_read(bus, 0, 0, 0x00, 2) == 0x8086
    assert cfg_read(bus, 0, 0, 0x02, 2) == 0x7192
    assert [cfg_read(bus, 0, 0, r, 1) for r in range(4)] == [0x86, 0x80, 0x92, 0x71]
    # An unaligned word inside the dword (byte enables 0110).
    bus.write(CF8, 4, address(0, 0, 0))
    assert bus.read(CFC + 1, 2) == 0x9280
    # Writes by byte and word land on their bytes only.
    cfg_write(bus, 7, 0, 0x61, 0x0B, 1)
    assert cfg_read(bus, 7, 0, 0x60) == 0x80800B80
    cfg_write(bus, 7, 1, 0x42, 0x8000, 2)  # SeaBIOS's piix_ide_setup: enable IDE1
    assert cfg_read(bus, 7, 1, 0x40) == 0x80000000


def test_an_access_running_past_0xcff_reads_ff_for_the_bytes_beyond(pci):
    bus = plug(pci)
    bus.write(CF8, 4, address(0, 0, 0))
    assert bus.read(CFC + 3, 2) == 0xFF71
    assert bus.read(CFC + 2, 4) == 0xFFFF7192
    bus.write(CF8, 4, address(7, 0, 0x60))
    bus.write(CFC + 3, 4, 0x0A0A0A0A)  # only PIRQRCD (63h) is written
    assert cfg_read(bus, 7, 0, 0x60) == 0x0A808080


def test_without_the_enable_bit_there_is_no_configuration_cycle(pci):
    bus = plug(pci)
    bus.write(CF8, 4, 0x00000000)
    assert pci.io_read(CFC, 4) is IoError.INVALID_REGISTER
    assert bus.read(CFC, 4) == 0xFFFFFFFF
    assert pci.io_write(CFC, 4, 0) is IoError.INVALID_REGISTER


def test_byte_and_word_accesses_to_0xcf8_are_not_config_address(pci):
    bus = plug(pci)
    bus.write(CF8, 4, address(0, 0, 0))
    assert pci.io_write(CF8, 1, 0) is IoError.INVALID_REGISTER
    assert pci.io_write(CF8, 2, 0) is IoError.INVALID_REGISTER
    assert pci.io_read(0xCFA, 2) is IoError.INVALID_REGISTER
    assert bus.read(CF8, 4) == address(0, 0, 0)  # untouched


def test_reset_control_at_0xcf9_resets_on_the_rising_edge_of_reset_cpu(pci):
    bus = plug(pci)
    bus.write(0xCF9, 1, 0x02)
    assert pci.resets == [] and bus.read(0xCF9, 1) == 0x02
    bus.write(0xCF9, 1, 0x06)  # SeaBIOS's pci_reboot
    assert pci.resets == [1]
    bus.write(0xCF9, 1, 0x06)
    assert pci.resets == [1]


def test_read_only_registers_ignore_writes(pci):
    bus = plug(pci)
    cfg_write(bus, 0, 0, 0x00, 0x12345678)
    cfg_write(bus, 8, 0, 0x08, 0xFFFFFFFF)
    assert cfg_read(bus, 0, 0, 0) == 0x71928086
    assert cfg_read(bus, 8, 0, 8) == 0x03000000
    cfg_write(bus, 8, 0, 0x04, 0xFFFF, 2)
    assert cfg_read(bus, 8, 0, 0x04, 2) == 0x0147


def test_bars_the_functions_lack_size_to_zero(pci):
    bus = plug(pci)
    for dev, fn in ((0, 0), (7, 0), (7, 1), (8, 0)):
        for bar in range(0x10, 0x28, 4):
            cfg_write(bus, dev, fn, bar, 0xFFFFFFFF)
            assert cfg_read(bus, dev, fn, bar) == 0, (dev, fn, bar)


# ----------------------------------------------------------------- the expansion ROM


def test_the_rom_bar_sizes_maps_and_serves_the_patched_vga_bios(pci):
    bus, mmio = plug(pci), plug_mmio(pci)
    cfg_write(bus, 8, 0, 0x30, 0xFFFFFFFE)  # SeaBIOS's map_pcirom sizing
    assert cfg_read(bus, 8, 0, 0x30) == 0xFFFF0000  # 39 KiB image: a 64 KiB BAR
    cfg_write(bus, 8, 0, 0x30, ROM_AT | 1)
    assert mmio.read(ROM_AT, 2) == 0xFFFF  # memory decode is still off
    cfg_write(bus, 8, 0, 0x04, 0x0003, 2)
    assert mmio.read(ROM_AT, 2) == 0xAA55
    assert mmio.read(ROM_AT + 0x44, 4) == 0x53531414  # PCIR now names 1414:5353
    rom = bytes(mmio.read(ROM_AT + i, 1) for i in range(0x9C00))
    assert sum(rom) & 0xFF == 0  # the checksum still holds
    assert mmio.read(ROM_AT + 0x9C00, 4) == 0xFFFFFFFF  # past the image, inside the BAR
    mmio.write(ROM_AT, 4, 0)  # a ROM ignores writes
    assert mmio.read(ROM_AT, 2) == 0xAA55
    cfg_write(bus, 8, 0, 0x30, ROM_AT)  # ROM disabled again
    assert mmio.read(ROM_AT, 2) == 0xFFFF


def test_a_rom_bar_outside_the_window_is_not_reachable_and_the_window_reads_all_ones(pci):
    bus, mmio = plug(pci), plug_mmio(pci)
    cfg_write(bus, 8, 0, 0x04, 0x0003, 2)
    cfg_write(bus, 8, 0, 0x30, ROM_AT | 1)
    assert mmio.read(ROM_AT, 2) == 0xAA55  # decoded in the window first…
    cfg_write(bus, 8, 0, 0x30, 0x000C0001)  # …then moved over the VGA BIOS's shadow
    assert mmio.device_at(0xC0000) is None
    assert mmio.read(ROM_AT, 2) == 0xFFFF  # where it was, nothing decodes any more
    assert mmio.read(0xE0000000, 8) == (1 << 64) - 1
    assert mmio.read(0xFEBFFFFF, 1) == 0xFF
    assert pci.stats.mmio_missed_reads == 0


def test_a_file_that_is_not_a_pci_option_rom_is_refused_plainly():
    with pytest.raises(NotAnOptionRom, match="signature"):
        patch_pci_ids(b"\0" * 1024, 1, 2)
    no_pcir = bytearray(option_rom())
    no_pcir[0x40:0x44] = b"XXXX"
    with pytest.raises(NotAnOptionRom, match="PCIR"):
        patch_pci_ids(bytes(no_pcir), 1, 2)
    with pytest.raises(NotAnOptionRom, match="at most"):
        patch_pci_ids(option_rom(size=0x1FE00) + b"\0" * 0x400, 1, 2)


def test_a_missing_vga_bios_is_said_plainly(tmp_path):
    missing = PciConfig(vgabios=str(tmp_path / "nothing.bin")).missing()
    assert missing and "nothing.bin" in missing and "not installed" in missing
    with pytest.raises(ValueError):
        PciConfig(vgabios="no such name!")


# ----------------------------------------------------------------- reset, save, restore


def test_reset_and_save_restore_keep_what_the_guest_may_change_and_refuse_the_rest(pci):
    bus = plug(pci)
    cfg_write(bus, 8, 0, 0x30, ROM_AT | 1)
    cfg_write(bus, 0, 0, 0x5A, 0x33, 1)  # PAM1
    saved = pci.save()
    other = gen1_pci_bus(PciConfig(), option_rom())
    other.restore(saved)
    assert cfg_read(plug(other), 8, 0, 0x30) == ROM_AT | 1
    assert cfg_read(plug(other), 0, 0, 0x58) == 0x00330000
    forged = pci.save()
    forged["config"][0] = b"\0" + bytes(forged["config"][0][1:])  # vendor ID is read-only
    with pytest.raises(ValueError, match="read-only"):
        other.restore(forged)
    pci.reset()
    assert cfg_read(bus, 8, 0, 0x30) == 0 and cfg_read(bus, 7, 0, 0x60) == 0x80808080
