import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.unit.devices.support import RecordingIrqLine, plug
from worker import backends
from worker.backends import DiskFile
from worker.devices.ata import (
    CMD_EXECUTE_DEVICE_DIAGNOSTIC,
    CMD_FLUSH_CACHE,
    CMD_FLUSH_CACHE_EXT,
    CMD_IDENTIFY_DEVICE,
    CMD_INITIALIZE_DEVICE_PARAMETERS,
    CMD_READ_SECTORS,
    CMD_READ_SECTORS_EXT,
    CMD_SET_FEATURES,
    CMD_WRITE_SECTORS,
    CMD_WRITE_SECTORS_EXT,
    ERROR_ABRT,
    ERROR_IDNF,
    ERROR_UNC,
    STATUS_BSY,
    STATUS_DRDY,
    STATUS_DRQ,
    STATUS_ERR,
    AtaDisk,
    AtaDiskConfig,
)
from worker.devices.backends import MemoryDisk
from worker.devices.base import IoError, NullIrqLine, PortRange

DATA, ERROR, FEATURES, COUNT, LBA_LOW, LBA_MID, LBA_HIGH, DEVICE, STATUS, COMMAND = (
    0x1F0, 0x1F1, 0x1F1, 0x1F2, 0x1F3, 0x1F4, 0x1F5, 0x1F6, 0x1F7, 0x1F7)
ALT_STATUS = DEVICE_CONTROL = 0x3F6
MIB = 1 << 20
BIG = 200 << 30  # past the 28-bit limit (128 GiB); sparse, so it costs nothing


@pytest.fixture
def make_disk(tmp_path):
    disks = []

    def make(size_bytes=MIB, name="disk.img", **kwargs):
        irq = NullIrqLine()
        config = AtaDiskConfig(model=kwargs.pop("model", "HVS Test Disk"),
                               serial=kwargs.pop("serial", "SN12345"), **kwargs)
        image = DiskFile(str(tmp_path / name), size_bytes)
        disks.append(image)
        return AtaDisk(config, irq, image), irq

    yield make
    for image in disks:
        image.close()


def outb(disk, port, value):
    assert disk.io_write(port, 1, value) is None


def inb(disk, port):
    value = disk.io_read(port, 1)
    assert not isinstance(value, IoError)
    return value


def issue_lba28(disk, command, lba=0, count=1):
    outb(disk, COUNT, count & 0xFF)
    outb(disk, LBA_LOW, lba & 0xFF)
    outb(disk, LBA_MID, (lba >> 8) & 0xFF)
    outb(disk, LBA_HIGH, (lba >> 16) & 0xFF)
    outb(disk, DEVICE, 0xE0 | ((lba >> 24) & 0x0F))
    outb(disk, COMMAND, command)


def issue_lba48(disk, command, lba=0, count=1):
    # High-order bytes first: each register is a two-deep FIFO.
    outb(disk, COUNT, (count >> 8) & 0xFF)
    outb(disk, LBA_LOW, (lba >> 24) & 0xFF)
    outb(disk, LBA_MID, (lba >> 32) & 0xFF)
    outb(disk, LBA_HIGH, (lba >> 40) & 0xFF)
    outb(disk, COUNT, count & 0xFF)
    outb(disk, LBA_LOW, lba & 0xFF)
    outb(disk, LBA_MID, (lba >> 8) & 0xFF)
    outb(disk, LBA_HIGH, (lba >> 16) & 0xFF)
    outb(disk, DEVICE, 0x40)
    outb(disk, COMMAND, command)


def read_block(disk):
    out = bytearray()
    for _ in range(256):
        out += disk.io_read(DATA, 2).to_bytes(2, "little")
    return bytes(out)


def write_block(disk, data):
    for i in range(0, 512, 2):
        assert disk.io_write(DATA, 2, int.from_bytes(data[i:i + 2], "little")) is None


def identify(disk):
    outb(disk, DEVICE, 0xA0)
    outb(disk, COMMAND, CMD_IDENTIFY_DEVICE)
    inb(disk, STATUS)
    raw = read_block(disk)
    return [int.from_bytes(raw[i:i + 2], "little") for i in range(0, 512, 2)]


def ata_string(words):
    return b"".join(w.to_bytes(2, "big") for w in words).decode("ascii")


def pattern(seed):
    return bytes((seed * 7 + i) & 0xFF for i in range(512))


# ----------------------------------------------------------------- the image


def test_a_missing_image_is_created_sparse_at_the_configured_size(make_disk, tmp_path):
    disk, _ = make_disk(size_bytes=4 * MIB)
    path = tmp_path / "disk.img"
    assert path.stat().st_size == 4 * MIB
    assert path.stat().st_blocks == 0
    assert disk.capacity == 4 * MIB // 512


def test_an_existing_image_keeps_its_size_as_the_capacity(make_disk, tmp_path):
    (tmp_path / "disk.img").write_bytes(bytes(512 * 10))
    disk, _ = make_disk(size_bytes=4 * MIB)
    assert disk.capacity == 10
    assert (tmp_path / "disk.img").stat().st_size == 512 * 10


def test_an_image_whose_size_is_not_a_multiple_of_512_is_a_value_error_naming_it(make_disk, tmp_path):
    (tmp_path / "odd.img").write_bytes(bytes(1000))
    with pytest.raises(ValueError, match="odd.img"):
        make_disk(name="odd.img")


def test_a_config_with_a_too_long_model_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="model"):
        AtaDiskConfig(model="M" * 41)


def test_close_closes_the_image_descriptor(make_disk):
    disk, _ = make_disk()
    fd = disk.image.fd
    disk.image.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    disk.image.close()  # a second close is harmless


# ----------------------------------------------------------------- IDENTIFY DEVICE


def test_identify_reports_model_serial_and_firmware_as_byte_swapped_ata_strings(make_disk):
    disk, _ = make_disk(firmware="FW1")
    words = identify(disk)
    assert ata_string(words[27:47]) == "HVS Test Disk".ljust(40)
    assert ata_string(words[10:20]) == "SN12345".ljust(20)
    assert ata_string(words[23:27]) == "FW1".ljust(8)
    assert words[27] == (ord("H") << 8) | ord("V")


def test_identify_reports_lba28_and_lba48_capacity_of_the_image(make_disk):
    disk, _ = make_disk(size_bytes=8 * MIB)
    words = identify(disk)
    sectors = 8 * MIB // 512
    assert words[60] | (words[61] << 16) == sectors
    assert sum(words[100 + i] << (16 * i) for i in range(4)) == sectors
    assert words[49] & 0x0200  # LBA supported
    assert words[83] & 0x0400 and words[86] & 0x0400  # 48-bit supported and enabled


def test_identify_caps_the_lba28_capacity_of_a_large_disk(make_disk):
    disk, _ = make_disk(size_bytes=BIG)
    words = identify(disk)
    assert words[60] | (words[61] << 16) == 0x0FFFFFFF
    assert sum(words[100 + i] << (16 * i) for i in range(4)) == BIG // 512
    assert (words[1], words[3], words[6]) == (16383, 16, 63)


def test_identify_reports_chs_geometry_of_a_small_disk(make_disk):
    disk, _ = make_disk(size_bytes=8 * MIB)
    words = identify(disk)
    cylinders = (8 * MIB // 512) // (16 * 63)
    assert (words[1], words[3], words[6]) == (cylinders, 16, 63)
    assert (words[54], words[55], words[56]) == (cylinders, 16, 63)
    assert words[57] | (words[58] << 16) == cylinders * 16 * 63
    assert words[53] & 0x0001


def test_identify_ends_with_a_valid_integrity_word(make_disk):
    disk, _ = make_disk()
    words = identify(disk)
    assert words[255] & 0xFF == 0xA5
    assert sum((w & 0xFF) + (w >> 8) for w in words) % 256 == 0


def test_identify_reports_ata6_and_flush_cache_support(make_disk):
    disk, _ = make_disk()
    words = identify(disk)
    assert words[0] & 0x8000 == 0  # an ATA, not ATAPI, device
    assert words[80] & 0x0040  # ATA/ATAPI-6
    assert words[83] & 0x3000 == 0x3000 and words[83] & 0xC000 == 0x4000
    assert words[82] & 0x0020 and words[85] & 0x0020  # write cache supported and enabled


def test_identify_interrupts_and_raises_drq_then_completes_after_the_block(make_disk):
    disk, irq = make_disk()
    outb(disk, DEVICE, 0xA0)
    outb(disk, COMMAND, CMD_IDENTIFY_DEVICE)
    assert irq.level
    assert inb(disk, STATUS) & STATUS_DRQ
    read_block(disk)
    assert inb(disk, STATUS) == STATUS_DRDY | 0x10


# ----------------------------------------------------------------- reading and writing


def test_one_sector_written_with_lba28_reads_back(make_disk):
    disk, _ = make_disk()
    issue_lba28(disk, CMD_WRITE_SECTORS, lba=5)
    write_block(disk, pattern(1))
    assert inb(disk, STATUS) == STATUS_DRDY | 0x10
    issue_lba28(disk, CMD_READ_SECTORS, lba=5)
    inb(disk, STATUS)
    assert read_block(disk) == pattern(1)
    assert inb(disk, STATUS) & (STATUS_DRQ | STATUS_ERR) == 0


def test_several_sectors_written_with_lba28_read_back_in_order(make_disk):
    disk, _ = make_disk()
    issue_lba28(disk, CMD_WRITE_SECTORS, lba=100, count=3)
    for i in range(3):
        assert inb(disk, STATUS) & STATUS_DRQ
        write_block(disk, pattern(i))
    issue_lba28(disk, CMD_READ_SECTORS, lba=100, count=3)
    assert [read_block(disk) for _ in range(3)] == [pattern(i) for i in range(3)]
    assert disk.stats.sectors_written == 3 and disk.stats.sectors_read == 3


def test_lba48_ext_commands_use_the_high_order_bytes_of_each_register(make_disk, tmp_path):
    disk, _ = make_disk(size_bytes=3 << 40)  # 3 TiB, sparse: LBAs above 32 bits exist
    lba = 0x1_2345_6789  # needs all of LBA low, mid and high plus two high-order bytes
    issue_lba48(disk, CMD_WRITE_SECTORS_EXT, lba=lba, count=2)
    write_block(disk, pattern(3))
    write_block(disk, pattern(4))
    assert inb(disk, STATUS) == STATUS_DRDY | 0x10
    with open(tmp_path / "disk.img", "rb") as image:
        image.seek(lba * 512)
        assert image.read(1024) == pattern(3) + pattern(4)
    issue_lba48(disk, CMD_READ_SECTORS_EXT, lba=lba, count=2)
    assert read_block(disk) + read_block(disk) == pattern(3) + pattern(4)


def test_hob_in_device_control_reads_back_the_previous_register_values(make_disk):
    disk, _ = make_disk()
    outb(disk, LBA_LOW, 0x11)
    outb(disk, LBA_LOW, 0x22)
    outb(disk, DEVICE_CONTROL, 0x80)
    assert inb(disk, LBA_LOW) == 0x11
    outb(disk, DEVICE_CONTROL, 0x00)
    assert inb(disk, LBA_LOW) == 0x22


def test_a_command_block_write_clears_hob(make_disk):
    disk, _ = make_disk()
    outb(disk, LBA_LOW, 0x11)
    outb(disk, DEVICE_CONTROL, 0x80)
    outb(disk, LBA_MID, 0x33)
    assert inb(disk, LBA_LOW) == 0x11  # current value again: HOB was cleared


def test_sector_count_zero_means_256_sectors_for_lba28(make_disk):
    disk, _ = make_disk()
    issue_lba28(disk, CMD_READ_SECTORS, lba=0, count=0)
    for _ in range(256):
        assert inb(disk, STATUS) & STATUS_DRQ
        read_block(disk)
    assert inb(disk, STATUS) & STATUS_DRQ == 0
    assert disk.stats.sectors_read == 256


def test_sector_count_zero_means_65536_sectors_for_ext_commands(make_disk):
    disk, _ = make_disk(size_bytes=65535 * 512)
    issue_lba48(disk, CMD_READ_SECTORS_EXT, lba=0, count=0)
    assert inb(disk, STATUS) == STATUS_DRDY | STATUS_ERR  # 65536 sectors do not fit
    assert inb(disk, ERROR) == ERROR_IDNF


def test_chs_addressing_reaches_the_sector_the_translation_names(make_disk, tmp_path):
    disk, _ = make_disk(size_bytes=8 * MIB)
    # cylinder 1, head 2, sector 3 with 16 heads of 63 sectors
    outb(disk, COUNT, 1)
    outb(disk, LBA_LOW, 3)
    outb(disk, LBA_MID, 1)
    outb(disk, LBA_HIGH, 0)
    outb(disk, DEVICE, 0xA0 | 2)
    outb(disk, COMMAND, CMD_WRITE_SECTORS)
    write_block(disk, pattern(9))
    with open(tmp_path / "disk.img", "rb") as image:
        image.seek(((1 * 16 + 2) * 63 + 2) * 512)
        assert image.read(512) == pattern(9)


def test_dword_data_port_accesses_transfer_four_bytes(make_disk):
    disk, _ = make_disk()
    issue_lba28(disk, CMD_WRITE_SECTORS, lba=1)
    data = pattern(5)
    for i in range(0, 512, 4):
        assert disk.io_write(DATA, 4, int.from_bytes(data[i:i + 4], "little")) is None
    issue_lba28(disk, CMD_READ_SECTORS, lba=1)
    back = b"".join(disk.io_read(DATA, 4).to_bytes(4, "little") for _ in range(128))
    assert back == data


def test_a_written_sector_reaches_the_file_by_pwrite_before_any_flush(make_disk, tmp_path, monkeypatch):
    disk, _ = make_disk()
    pwrites, fsyncs = [], []
    real_pwrite = os.pwrite
    monkeypatch.setattr(backends.os, "pwrite", lambda fd, data, off: pwrites.append(off) or real_pwrite(fd, data, off))
    monkeypatch.setattr(backends.os, "fsync", lambda fd: fsyncs.append(fd))
    issue_lba28(disk, CMD_WRITE_SECTORS, lba=7, count=2)
    write_block(disk, pattern(6))
    assert pwrites == [7 * 512]  # the first sector went out as soon as it was complete
    write_block(disk, pattern(7))
    assert pwrites == [7 * 512, 8 * 512]
    assert fsyncs == []
    with open(tmp_path / "disk.img", "rb") as image:
        image.seek(7 * 512)
        assert image.read(1024) == pattern(6) + pattern(7)


def test_a_flushed_write_survives_a_sigkill_of_the_worker(tmp_path):
    image = tmp_path / "disk.img"
    script = textwrap.dedent(f"""
        import os, signal
        from worker.devices.ata import AtaDisk, AtaDiskConfig
        from worker.backends import DiskFile
        from worker.devices.base import NullIrqLine
        disk = AtaDisk(AtaDiskConfig(), NullIrqLine(), DiskFile({str(image)!r}, 1 << 20))
        for port, value in ((0x1F2, 1), (0x1F3, 9), (0x1F4, 0), (0x1F5, 0), (0x1F6, 0xE0), (0x1F7, 0x30)):
            disk.io_write(port, 1, value)
        for i in range(256):
            disk.io_write(0x1F0, 2, 0xBEEF)
        disk.io_write(0x1F7, 1, 0xE7)
        assert disk.io_read(0x1F7, 1) == 0x50
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run([sys.executable, "-c", script], cwd=root, timeout=30)
    assert result.returncode == -signal.SIGKILL
    with open(image, "rb") as data:
        data.seek(9 * 512)
        assert data.read(512) == b"\xef\xbe" * 256


def test_a_dword_straddling_the_end_of_a_block_transfers_only_what_is_left(make_disk):
    disk, _ = make_disk()
    issue_lba28(disk, CMD_WRITE_SECTORS, lba=2)
    disk.io_write(DATA, 2, 0x0100)
    for i in range(127):
        disk.io_write(DATA, 4, 0x01010101)
    assert disk.io_write(DATA, 4, 0xAAAA0302) is None  # only 0x0302 fits
    assert inb(disk, STATUS) == STATUS_DRDY | 0x10
    issue_lba28(disk, CMD_READ_SECTORS, lba=2)
    disk.io_read(DATA, 2)
    for i in range(127):
        disk.io_read(DATA, 4)
    assert disk.io_read(DATA, 4) == 0x0302  # the missing high half reads as zero
    assert inb(disk, STATUS) & STATUS_DRQ == 0


@pytest.mark.parametrize("opcode", [CMD_FLUSH_CACHE, CMD_FLUSH_CACHE_EXT])
def test_flush_cache_fsyncs_the_image_and_interrupts(make_disk, monkeypatch, opcode):
    disk, irq = make_disk()
    fsyncs = []
    monkeypatch.setattr(backends.os, "fsync", lambda fd: fsyncs.append(fd))
    outb(disk, DEVICE, 0xE0)
    outb(disk, COMMAND, opcode)
    assert fsyncs == [disk.image.fd]
    assert irq.level
    assert inb(disk, STATUS) == STATUS_DRDY | 0x10
    assert disk.stats.flushes == 1


def test_a_failing_fsync_reports_device_fault_and_abort(make_disk, monkeypatch):
    disk, _ = make_disk()

    def broken(fd):
        raise OSError(5, "EIO")

    monkeypatch.setattr(backends.os, "fsync", broken)
    outb(disk, COMMAND, CMD_FLUSH_CACHE)
    assert inb(disk, STATUS) == STATUS_DRDY | 0x20 | STATUS_ERR
    assert inb(disk, ERROR) == ERROR_ABRT



# The device needs no file: an in-memory image shows what it asks of any backend.


def test_the_device_runs_on_an_in_memory_image_and_flushes_it():
    image = MemoryDisk(64 * 512)
    disk = AtaDisk(AtaDiskConfig(), NullIrqLine(), image)
    issue_lba28(disk, CMD_WRITE_SECTORS, lba=3)
    write_block(disk, pattern(3))
    assert image.data[3 * 512:4 * 512] == pattern(3) and image.flushes == 0
    outb(disk, COMMAND, CMD_FLUSH_CACHE)
    assert image.flushes == 1 and disk.stats.flushes == 1


def test_a_host_read_error_is_an_uncorrectable_sector():
    image = MemoryDisk(64 * 512)
    disk = AtaDisk(AtaDiskConfig(), NullIrqLine(), image)
    image.fail = "read"
    issue_lba28(disk, CMD_READ_SECTORS, lba=1)
    assert inb(disk, STATUS) == STATUS_DRDY | STATUS_ERR
    assert inb(disk, ERROR) == ERROR_UNC


def test_a_host_write_error_is_a_device_fault_and_abort():
    image = MemoryDisk(64 * 512)
    disk = AtaDisk(AtaDiskConfig(), NullIrqLine(), image)
    image.fail = "write"
    issue_lba28(disk, CMD_WRITE_SECTORS, lba=1)
    write_block(disk, pattern(1))
    assert inb(disk, STATUS) == STATUS_DRDY | 0x20 | STATUS_ERR
    assert inb(disk, ERROR) == ERROR_ABRT


def test_an_image_that_is_not_whole_sectors_is_refused():
    with pytest.raises(ValueError, match="whole sectors"):
        AtaDisk(AtaDiskConfig(), NullIrqLine(), MemoryDisk(1000))


def test_with_the_write_cache_disabled_each_write_command_is_fsynced(make_disk, monkeypatch):
    disk, _ = make_disk()
    fsyncs = []
    monkeypatch.setattr(backends.os, "fsync", lambda fd: fsyncs.append(fd))
    outb(disk, FEATURES, 0x82)
    outb(disk, COMMAND, CMD_SET_FEATURES)
    assert inb(disk, STATUS) & STATUS_ERR == 0
    assert identify(disk)[85] & 0x0020 == 0
    issue_lba28(disk, CMD_WRITE_SECTORS, lba=0, count=2)
    write_block(disk, pattern(1))
    assert fsyncs == []
    write_block(disk, pattern(2))
    assert fsyncs == [disk.image.fd]


# ----------------------------------------------------------------- errors


def test_a_read_past_the_end_fails_with_idnf_and_err(make_disk):
    disk, irq = make_disk(size_bytes=10 * 512)
    issue_lba28(disk, CMD_READ_SECTORS, lba=9, count=2)
    assert irq.level
    assert inb(disk, STATUS) == STATUS_DRDY | STATUS_ERR
    assert inb(disk, ERROR) == ERROR_IDNF
    assert disk.stats.errors == 1 and disk.stats.sectors_read == 0


def test_a_write_past_the_end_fails_with_idnf_and_transfers_nothing(make_disk):
    disk, _ = make_disk(size_bytes=10 * 512)
    issue_lba28(disk, CMD_WRITE_SECTORS, lba=10)
    assert inb(disk, STATUS) == STATUS_DRDY | STATUS_ERR
    assert inb(disk, ERROR) == ERROR_IDNF
    assert disk.io_read(DATA, 2) == 0xFFFF  # no transfer: the data port floats


def test_lba28_commands_cannot_reach_past_the_28_bit_limit(make_disk):
    disk, _ = make_disk(size_bytes=BIG)
    issue_lba28(disk, CMD_READ_SECTORS, lba=0x0FFFFFFF)
    assert inb(disk, ERROR) == ERROR_IDNF


def test_an_unknown_command_aborts_with_abrt_and_err(make_disk):
    disk, irq = make_disk()
    outb(disk, DEVICE, 0xA0)
    outb(disk, COMMAND, 0xC8)  # READ DMA: no DMA here
    assert irq.level
    assert inb(disk, STATUS) == STATUS_DRDY | STATUS_ERR
    assert inb(disk, ERROR) == ERROR_ABRT
    assert disk.stats.commands == {0xC8: 1}


def test_set_features_accepts_pio_modes_and_aborts_dma_modes(make_disk):
    disk, _ = make_disk()
    outb(disk, FEATURES, 0x03)
    outb(disk, COUNT, 0x0C)  # PIO mode 4
    outb(disk, COMMAND, CMD_SET_FEATURES)
    assert inb(disk, STATUS) & STATUS_ERR == 0
    outb(disk, COUNT, 0x42)  # Ultra DMA mode 2
    outb(disk, COMMAND, CMD_SET_FEATURES)
    assert inb(disk, STATUS) & STATUS_ERR
    assert inb(disk, ERROR) == ERROR_ABRT


def test_set_features_aborts_an_unsupported_subcommand(make_disk):
    disk, _ = make_disk()
    outb(disk, FEATURES, 0x05)  # advanced power management
    outb(disk, COMMAND, CMD_SET_FEATURES)
    assert inb(disk, ERROR) == ERROR_ABRT


def test_initialize_device_parameters_changes_the_current_translation(make_disk):
    disk, _ = make_disk(size_bytes=8 * MIB)
    outb(disk, COUNT, 32)
    outb(disk, DEVICE, 0xA0 | 7)  # 8 heads
    outb(disk, COMMAND, CMD_INITIALIZE_DEVICE_PARAMETERS)
    assert inb(disk, STATUS) & STATUS_ERR == 0
    words = identify(disk)
    assert (words[54], words[55], words[56]) == ((8 * MIB // 512) // (8 * 32), 8, 32)
    assert (words[3], words[6]) == (16, 63)  # the default translation is unchanged


def test_initialize_device_parameters_with_zero_sectors_per_track_aborts(make_disk):
    disk, _ = make_disk()
    outb(disk, COUNT, 0)
    outb(disk, COMMAND, CMD_INITIALIZE_DEVICE_PARAMETERS)
    assert inb(disk, ERROR) == ERROR_ABRT


def test_execute_device_diagnostic_leaves_the_signature_and_code_01(make_disk):
    disk, irq = make_disk()
    issue_lba28(disk, CMD_READ_SECTORS, lba=0x123456)  # fills the taskfile (and fails)
    inb(disk, STATUS)
    outb(disk, COMMAND, CMD_EXECUTE_DEVICE_DIAGNOSTIC)
    assert irq.level
    assert inb(disk, ERROR) == 0x01
    assert [inb(disk, p) for p in (COUNT, LBA_LOW, LBA_MID, LBA_HIGH, DEVICE)] == [1, 1, 0, 0, 0]


# ----------------------------------------------------------------- interrupts


def test_reading_status_clears_intrq(make_disk):
    disk, irq = make_disk()
    outb(disk, COMMAND, CMD_FLUSH_CACHE)
    assert irq.level
    inb(disk, STATUS)
    assert not irq.level


def test_reading_alternate_status_leaves_intrq_asserted(make_disk):
    disk, irq = make_disk()
    outb(disk, COMMAND, CMD_FLUSH_CACHE)
    assert inb(disk, ALT_STATUS) == STATUS_DRDY | 0x10
    assert irq.level


def test_nien_keeps_intrq_low_and_clearing_it_shows_the_pending_interrupt(make_disk):
    disk, irq = make_disk()
    outb(disk, DEVICE_CONTROL, 0x02)
    outb(disk, COMMAND, CMD_FLUSH_CACHE)
    assert not irq.level
    outb(disk, DEVICE_CONTROL, 0x00)
    assert irq.level


def test_a_write_command_does_not_interrupt_for_its_first_block_but_does_after(make_disk):
    disk, irq = make_disk()
    issue_lba28(disk, CMD_WRITE_SECTORS, lba=0, count=2)
    assert not irq.level and inb(disk, ALT_STATUS) & STATUS_DRQ
    write_block(disk, pattern(0))
    assert irq.level  # second block ready
    inb(disk, STATUS)
    write_block(disk, pattern(1))
    assert irq.level  # command complete


def test_intrq_is_set_on_the_line_only_when_it_changes(make_disk):
    disk, _ = make_disk()
    disk.irq = RecordingIrqLine()
    issue_lba28(disk, CMD_READ_SECTORS, lba=0)
    read_block(disk)
    inb(disk, STATUS)
    assert disk.irq.levels == [True, False]


# ----------------------------------------------------------------- device 1, reset


def test_with_device_1_selected_status_reads_zero_and_commands_are_ignored(make_disk):
    disk, irq = make_disk()
    outb(disk, DEVICE, 0xB0)
    assert inb(disk, STATUS) == 0
    assert inb(disk, ALT_STATUS) == 0
    outb(disk, COMMAND, CMD_IDENTIFY_DEVICE)
    assert not irq.level
    assert disk.stats.ignored_commands == 1
    assert inb(disk, DEVICE) == 0xB0  # the taskfile is shared: device 0 answers
    outb(disk, DEVICE, 0xA0)
    assert inb(disk, STATUS) == STATUS_DRDY | 0x10


def test_intrq_is_released_while_device_1_is_selected(make_disk):
    disk, irq = make_disk()
    outb(disk, COMMAND, CMD_FLUSH_CACHE)
    outb(disk, DEVICE, 0xB0)
    assert not irq.level
    outb(disk, DEVICE, 0xA0)
    assert irq.level


def test_srst_shows_bsy_then_leaves_the_signature_and_abandons_the_transfer(make_disk):
    disk, irq = make_disk()
    issue_lba28(disk, CMD_READ_SECTORS, lba=3, count=4)
    outb(disk, DEVICE_CONTROL, 0x04)
    assert inb(disk, ALT_STATUS) == STATUS_BSY
    assert not irq.level
    outb(disk, COMMAND, CMD_IDENTIFY_DEVICE)  # ignored while BSY
    outb(disk, DEVICE_CONTROL, 0x00)
    assert inb(disk, STATUS) == STATUS_DRDY | 0x10
    assert inb(disk, ERROR) == 0x01
    assert [inb(disk, p) for p in (COUNT, LBA_LOW, LBA_MID, LBA_HIGH, DEVICE)] == [1, 1, 0, 0, 0]
    assert disk.io_read(DATA, 2) == 0xFFFF
    assert not irq.level


def test_reset_restores_power_on_state_and_lowers_intrq(make_disk):
    disk, irq = make_disk()
    outb(disk, FEATURES, 0x82)
    outb(disk, COMMAND, CMD_SET_FEATURES)
    assert irq.level
    disk.reset()
    assert not irq.level
    assert inb(disk, STATUS) == STATUS_DRDY | 0x10
    assert identify(disk)[85] & 0x0020  # write cache enabled again


def test_a_command_during_a_transfer_is_ignored(make_disk):
    disk, _ = make_disk()
    issue_lba28(disk, CMD_READ_SECTORS, lba=0, count=2)
    outb(disk, COMMAND, CMD_FLUSH_CACHE)
    assert disk.stats.ignored_commands == 1
    assert inb(disk, STATUS) & STATUS_DRQ


# ----------------------------------------------------------------- access sizes


def test_byte_access_to_the_data_port_is_an_invalid_access_size(make_disk):
    disk, _ = make_disk()
    bus = plug(disk)
    assert bus.io_read(DATA, 1) is IoError.INVALID_ACCESS_SIZE
    assert bus.io_write(DATA, 1, 0) is IoError.INVALID_ACCESS_SIZE
    assert (disk.stats.missed_reads, disk.stats.missed_writes) == (1, 1)


@pytest.mark.parametrize("port", [ERROR, COUNT, STATUS, ALT_STATUS])
def test_wide_access_to_a_byte_register_is_an_invalid_access_size(make_disk, port):
    disk, _ = make_disk()
    bus = plug(disk)
    assert bus.io_read(port, 2) is IoError.INVALID_ACCESS_SIZE
    assert bus.io_write(port, 4, 0) is IoError.INVALID_ACCESS_SIZE
    assert (disk.stats.missed_reads, disk.stats.missed_writes) == (1, 1)


def test_a_port_outside_the_device_never_reaches_it(make_disk):
    disk, _ = make_disk()
    bus = plug(disk)
    assert bus.io_read(0x3F7, 1) is IoError.INVALID_REGISTER
    assert bus.stats.unclaimed_reads == 1 and disk.stats.missed_reads == 0


def test_port_ranges_are_the_command_block_and_device_control(make_disk):
    disk, _ = make_disk()
    ports = sorted(p for r in disk.port_ranges() for p in range(r.base, r.last + 1))
    assert ports == [*range(0x1F0, 0x1F8), 0x3F6]
    assert {p: r.sizes for r in disk.port_ranges() for p in range(r.base, r.last + 1)} == {
        0x1F0: (2, 4), **{p: (1,) for p in range(0x1F1, 0x1F8)}, 0x3F6: (1,)}
    assert plug(disk).ranges() == [PortRange(0x1F0, 8), PortRange(0x3F6, 1)]


# ----------------------------------------------------------------- save / restore


def test_save_restore_mid_read_continues_the_transfer(make_disk):
    disk, _ = make_disk()
    issue_lba28(disk, CMD_WRITE_SECTORS, lba=20, count=2)
    write_block(disk, pattern(1))
    write_block(disk, pattern(2))
    issue_lba28(disk, CMD_READ_SECTORS, lba=20, count=2)
    inb(disk, STATUS)  # acknowledge the first block's interrupt
    first_half = b"".join(disk.io_read(DATA, 2).to_bytes(2, "little") for _ in range(100))
    saved = disk.save()
    other, irq = make_disk()  # the same image, a fresh device
    other.restore(saved)
    assert not irq.level
    rest = b"".join(other.io_read(DATA, 2).to_bytes(2, "little") for _ in range(156))
    assert first_half + rest == pattern(1)
    assert irq.level  # the second block's interrupt
    assert read_block(other) == pattern(2)


def test_save_restore_mid_write_continues_the_transfer(make_disk, tmp_path):
    disk, _ = make_disk()
    issue_lba28(disk, CMD_WRITE_SECTORS, lba=30)
    data = pattern(8)
    for i in range(0, 200, 2):
        disk.io_write(DATA, 2, int.from_bytes(data[i:i + 2], "little"))
    other, _ = make_disk()
    other.restore(disk.save())
    for i in range(200, 512, 2):
        other.io_write(DATA, 2, int.from_bytes(data[i:i + 2], "little"))
    assert inb(other, STATUS) == STATUS_DRDY | 0x10
    with open(tmp_path / "disk.img", "rb") as image:
        image.seek(30 * 512)
        assert image.read(512) == data


def test_save_is_plain_data_with_a_version(make_disk):
    disk, _ = make_disk()
    saved = disk.save()
    assert saved["version"] == 1
    assert isinstance(saved["buffer"], bytes)
    assert all(isinstance(v, (int, bool, bytes)) for v in saved.values())


@pytest.mark.parametrize("change", [
    {"version": 99},
    {"status": 256},
    {"buffer": b"short"},
    {"in_reset": 1},
    {"transfer": 1, "command": CMD_WRITE_SECTORS},
    {"transfer": 1, "command": CMD_READ_SECTORS, "lba": 2047, "remaining": 1},
    {"extra": 0},
])
def test_restore_rejects_a_bad_snapshot_and_keeps_the_current_state(make_disk, change):
    disk, _ = make_disk()
    outb(disk, LBA_LOW, 0x42)
    saved = disk.save()
    saved.update(change)
    with pytest.raises(ValueError):
        disk.restore(saved)
    assert inb(disk, LBA_LOW) == 0x42


def test_restore_rejects_a_missing_key(make_disk):
    disk, _ = make_disk()
    saved = disk.save()
    del saved["lba"]
    with pytest.raises(ValueError, match="lba"):
        disk.restore(saved)


def test_commands_are_counted_by_opcode(make_disk):
    disk, _ = make_disk()
    bus = plug(disk)  # the bus counts accesses
    outb(bus, COMMAND, CMD_FLUSH_CACHE)
    outb(bus, COMMAND, CMD_FLUSH_CACHE)
    identify(bus)
    assert disk.stats.commands == {CMD_FLUSH_CACHE: 2, CMD_IDENTIFY_DEVICE: 1}
    assert disk.stats.reads > 256 and disk.stats.writes >= 4


# Host I/O errors are logged with their errno beside what the guest sees (issue 9).


class FullDisk(MemoryDisk):
    """An image whose host has run out of space: every write raises ENOSPC."""

    def write(self, offset: int, data: bytes) -> int:
        raise OSError(28, os.strerror(28), "/images/full.img")


def test_a_host_enospc_is_logged_with_its_errno_beside_the_ata_error(caplog):
    disk = AtaDisk(AtaDiskConfig(), NullIrqLine(), FullDisk(64 * 512))
    issue_lba28(disk, CMD_WRITE_SECTORS, lba=5)
    with caplog.at_level("ERROR", logger="worker.devices.ata"):
        write_block(disk, pattern(5))
    assert inb(disk, STATUS) == STATUS_DRDY | 0x20 | STATUS_ERR and inb(disk, ERROR) == ERROR_ABRT
    (line,) = [r.getMessage() for r in caplog.records]
    assert "ENOSPC (errno 28)" in line and "/images/full.img" in line and "LBA 5" in line
    assert "status 0x61, error 0x04 (DF+ABRT)" in line
    assert disk.stats.host_errors == 1


def test_a_host_eio_on_read_and_on_flush_are_logged_too(caplog, make_disk, monkeypatch):
    image = MemoryDisk(64 * 512)
    disk = AtaDisk(AtaDiskConfig(), NullIrqLine(), image)
    image.fail = "read"
    with caplog.at_level("ERROR", logger="worker.devices.ata"):
        issue_lba28(disk, CMD_READ_SECTORS, lba=1)
        image.fail = "flush"
        outb(disk, COMMAND, CMD_FLUSH_CACHE)
    read, flush = [r.getMessage() for r in caplog.records]
    assert "host read error" in read and "EIO (errno 5)" in read and "(UNC)" in read
    assert "host flush error" in flush and "EIO (errno 5)" in flush and "(DF+ABRT)" in flush


def test_the_disk_file_names_its_image_in_a_host_error(make_disk, monkeypatch):
    disk, _ = make_disk()

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(backends.os, "fsync", broken)
    with pytest.raises(OSError) as e:
        disk.image.flush()
    assert e.value.filename == disk.image.path
