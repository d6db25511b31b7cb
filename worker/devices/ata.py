"""An ATA hard disk, device 0 on the primary IDE channel, PIO data transfers only.

Registers (ATA/ATAPI-6 section 7), at ``command_base`` (0x1F0) + offset and ``control_port``
(0x3F6)::

    +0 data (16-bit; 32-bit also accepted, as the PIIX splits it in two 16-bit cycles)
    +1 error (read) / features (write)      +2 sector count
    +3 LBA low   +4 LBA mid   +5 LBA high    +6 device
    +7 status (read) / command (write)       0x3F6 alternate status (read) / device control (write)

The sector count, LBA and features registers are two-deep FIFOs: every write pushes the old
value into the "previous" slot, which 48-bit commands read as the high-order bytes and which
reads return while device control HOB is set.

Policies (where the spec leaves a choice, or where this model is simpler than a drive):

* Only device 0 exists.  With DEV=1 selected, device 0 answers as ATA-6 9.16.1 ("Device 0
  only configurations") says: status and alternate status read 00h (and that read does not
  acknowledge device 0's interrupt), every other register reads and writes as if device 0
  were selected, and commands are ignored except EXECUTE DEVICE DIAGNOSTIC, which device 0
  runs.  INTRQ is driven only while device 0 is selected (an unselected device leaves it
  in high impedance, which the PC sees as low).
* Commands finish synchronously, so BSY is only ever seen during a software reset.  A
  command written while BSY, or while DRQ (a transfer is in progress), is ignored and
  counted in ``stats.ignored_commands`` (the spec calls the result indeterminate).
* DRQ blocks are one sector (READ/WRITE MULTIPLE are not supported: word 47 reports 0).
  PIO data-in interrupts for every block and not at the end; PIO data-out does not
  interrupt for the first block, does for every further block and at completion
  (ATA-6 9.7 and 9.8 protocols).
* The range is checked before any data moves: a command that would touch a sector past the
  end fails with IDNF and transfers nothing.  The taskfile is not rewritten with the failing
  or last address.
* The image is a backend the worker hands in (:class:`~worker.devices.backends.DiskImage`;
  the worker's is :class:`worker.backends.DiskFile`).  A host I/O error reading it is UNC;
  writing it, or a failing flush, is DF+ABRT.  Each is logged with the host's errno (ENOSPC,
  EIO, …) beside the ATA status and error the guest sees, and counted in
  ``stats.host_errors``: the guest learns only that the command failed, the host's log why.
* Write cache is reported supported and enabled: each full sector is written to the image
  at once (for a file, into the OS page cache, so it survives the worker being killed) and
  FLUSH CACHE (EXT) flushes the image (fsync).  With the write cache disabled by SET
  FEATURES 82h, every write command is flushed before it completes.
* CHS addressing (device LBA bit clear) is honoured for the 28-bit commands through the
  current translation, which INITIALIZE DEVICE PARAMETERS sets.  A software reset keeps
  the translation and SET FEATURES settings; ``reset()`` (power-on / hardware reset)
  restores the defaults.
* The data port read while no data-in transfer is active returns all-ones, and a write while
  no data-out transfer is active is dropped; both count in ``stats.idle_data_accesses``.
  A 32-bit access with only 2 bytes left in the block transfers those 2 bytes; the missing
  high half reads as zero / is dropped.
"""

from __future__ import annotations

import errno as errno_names
import logging
from dataclasses import dataclass, field
from typing import Annotated

from worker.devices.ata_identify import LBA28_MAX_SECTORS, default_geometry, identify_words
from worker.devices.backends import DiskImage
from worker.devices.base import WORD_DWORD, ChipsetDevice, DeviceStats, IrqLine, PortRange, all_ones
from worker.devices.config import SECTOR_SIZE, AtaDiskConfig
from worker.devices.state import Byte, Length, Mask, OneOf, Range

log = logging.getLogger(__name__)

__all__ = ["AtaDisk", "AtaDiskConfig", "AtaState", "AtaStats", "SECTOR_SIZE"]

# Status register (ATA-6 7.15.6).
STATUS_BSY = 0x80
STATUS_DRDY = 0x40
STATUS_DF = 0x20
STATUS_DSC = 0x10  # obsolete in ATA-6, but BIOSes and old drivers still wait for it
STATUS_DRQ = 0x08
STATUS_ERR = 0x01
STATUS_READY = STATUS_DRDY | STATUS_DSC

# Error register (ATA-6 7.9.6).
ERROR_UNC = 0x40
ERROR_IDNF = 0x10
ERROR_ABRT = 0x04
DIAGNOSTIC_PASSED = 0x01  # diagnostic code: device 0 passed, device 1 absent

# Device register (ATA-6 7.8).
DEVICE_LBA = 0x40
DEVICE_DEV = 0x10
DEVICE_HEAD_MASK = 0x0F

# Device control register (ATA-6 7.7).
CONTROL_HOB = 0x80
CONTROL_SRST = 0x04
CONTROL_NIEN = 0x02
CONTROL_MASK = CONTROL_HOB | CONTROL_SRST | CONTROL_NIEN

# Commands.
CMD_READ_SECTORS = 0x20
CMD_READ_SECTORS_EXT = 0x24
CMD_WRITE_SECTORS = 0x30
CMD_WRITE_SECTORS_EXT = 0x34
CMD_EXECUTE_DEVICE_DIAGNOSTIC = 0x90
CMD_INITIALIZE_DEVICE_PARAMETERS = 0x91
CMD_FLUSH_CACHE = 0xE7
CMD_FLUSH_CACHE_EXT = 0xEA
CMD_IDENTIFY_DEVICE = 0xEC
CMD_SET_FEATURES = 0xEF

# SET FEATURES subcommands (features register).
FEATURE_ENABLE_WRITE_CACHE = 0x02
FEATURE_SET_TRANSFER_MODE = 0x03
FEATURE_DISABLE_READ_LOOK_AHEAD = 0x55
FEATURE_DISABLE_REVERT_TO_DEFAULTS = 0x66
FEATURE_DISABLE_WRITE_CACHE = 0x82
FEATURE_ENABLE_READ_LOOK_AHEAD = 0xAA
FEATURE_ENABLE_REVERT_TO_DEFAULTS = 0xCC

# Transfer direction of the current DRQ block.
XFER_NONE = 0
XFER_IN = 1  # device to host: READ SECTOR(S), IDENTIFY DEVICE
XFER_OUT = 2  # host to device: WRITE SECTOR(S)

# Register offsets from the command block base.
REG_DATA = 0
REG_ERROR_FEATURES = 1
REG_SECTOR_COUNT = 2
REG_LBA_LOW = 3
REG_LBA_MID = 4
REG_LBA_HIGH = 5
REG_DEVICE = 6
REG_STATUS_COMMAND = 7
# The two-deep registers: the state field of each, and its previous value in <field>_hob.
_TWO_DEEP = {REG_ERROR_FEATURES: "features", REG_SECTOR_COUNT: "sector_count",
             REG_LBA_LOW: "lba_low", REG_LBA_MID: "lba_mid", REG_LBA_HIGH: "lba_high"}


@dataclass
class AtaStats(DeviceStats):
    sectors_read: int = 0
    sectors_written: int = 0
    flushes: int = 0
    errors: int = 0  # commands that ended with ERR set
    host_errors: int = 0  # of those, failures of the image on the host (logged with errno)
    ignored_commands: int = 0
    idle_data_accesses: int = 0
    commands: dict[int, int] = field(default_factory=dict)  # opcode -> times executed


@dataclass
class AtaState:
    """Everything a guest can observe.  Defaults are the state after a reset (with the
    signature of an ATA device in the taskfile) except the CHS translation, which depends
    on the capacity and is filled in by the device."""

    features: Byte = 0
    features_hob: Byte = 0
    sector_count: Byte = 1
    sector_count_hob: Byte = 0
    lba_low: Byte = 1
    lba_low_hob: Byte = 0
    lba_mid: Byte = 0
    lba_mid_hob: Byte = 0
    lba_high: Byte = 0
    lba_high_hob: Byte = 0
    device: Byte = 0
    control: Annotated[int, Mask(CONTROL_MASK)] = 0
    status: Byte = STATUS_READY
    error: Byte = DIAGNOSTIC_PASSED
    intrq_pending: bool = False
    in_reset: bool = False  # SRST set, waiting for the host to clear it
    transfer: Annotated[int, OneOf(XFER_NONE, XFER_IN, XFER_OUT)] = XFER_NONE
    command: Byte = 0  # the command owning the current transfer
    buffer: Annotated[bytearray, Length(exactly=SECTOR_SIZE)] = field(
        default_factory=lambda: bytearray(SECTOR_SIZE))
    pos: Annotated[int, Range(0, SECTOR_SIZE - 1)] = 0  # next byte the host reads or writes
    lba: Annotated[int, Range(0, (1 << 48) - 1)] = 0  # the sector in ``buffer``
    # Sectors still to transfer after the one in ``buffer``.
    remaining: Annotated[int, Range(0, 0xFFFF)] = 0
    cylinders: Annotated[int, Range(1, 0xFFFF)] = 1
    heads: Annotated[int, Range(1, 16)] = 1
    sectors_per_track: Annotated[int, Range(1, 0xFF)] = 1
    write_cache: bool = True
    read_look_ahead: bool = True


class AtaDisk(ChipsetDevice):
    """ATA device 0 on one IDE channel, interrupting on ``irq``, its sectors in ``image``."""

    def __init__(self, config: AtaDiskConfig, irq: IrqLine, image: DiskImage) -> None:
        self.config = config
        self.name = config.name
        self.irq = irq
        self.image = image
        if image.size <= 0 or image.size % SECTOR_SIZE:
            raise ValueError(f"a disk image of {image.size} bytes is not whole sectors")
        self.capacity = image.size // SECTOR_SIZE  # in sectors
        self.stats = AtaStats()
        self._data_port = config.command_base + REG_DATA
        self._handlers = {
            CMD_READ_SECTORS: self._cmd_read_write,
            CMD_READ_SECTORS_EXT: self._cmd_read_write,
            CMD_WRITE_SECTORS: self._cmd_read_write,
            CMD_WRITE_SECTORS_EXT: self._cmd_read_write,
            CMD_EXECUTE_DEVICE_DIAGNOSTIC: self._cmd_execute_device_diagnostic,
            CMD_INITIALIZE_DEVICE_PARAMETERS: self._cmd_initialize_device_parameters,
            CMD_FLUSH_CACHE: self._cmd_flush_cache,
            CMD_FLUSH_CACHE_EXT: self._cmd_flush_cache,
            CMD_IDENTIFY_DEVICE: self._cmd_identify_device,
            CMD_SET_FEATURES: self._cmd_set_features,
        }
        self.state = self._power_on_state()

    # ----------------------------------------------------------------- lifecycle

    def _power_on_state(self) -> AtaState:
        cylinders, heads, spt = default_geometry(self.capacity)
        return AtaState(cylinders=cylinders, heads=heads, sectors_per_track=spt)

    def reset(self) -> None:
        """Power-on / hardware reset: every setting back to its default."""
        self.state = self._power_on_state()
        self._sync_irq()

    def port_ranges(self) -> list[PortRange]:
        base = self.config.command_base
        return [PortRange(base + REG_DATA, 1, WORD_DWORD),  # 32-bit: the PIIX splits it in two
                PortRange(base + REG_ERROR_FEATURES, REG_STATUS_COMMAND),
                PortRange(self.config.control_port, 1)]

    # ----------------------------------------------------------------- port I/O

    def io_read(self, port: int, size: int) -> int:
        s = self.state
        if port == self._data_port:
            value = self._read_data(s, size)
            if s.pos and s.transfer == XFER_IN:
                # 256 times a sector: inside a block only the buffer position moved, so
                # the IRQ level cannot have changed.
                return value
        elif port == self.config.control_port:
            value = 0 if s.device & DEVICE_DEV else s.status  # alternate status
        else:
            value = self._read_register(s, port - self.config.command_base)
        self._sync_irq()
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        s = self.state
        if port == self.config.control_port:
            self._write_device_control(s, value & 0xFF)
        else:
            s.control &= ~CONTROL_HOB  # a write to any command block register clears HOB
            if port != self._data_port:
                self._write_register(s, port - self.config.command_base, value & 0xFF)
            else:
                self._write_data(s, size, value)
                if s.pos and s.transfer == XFER_OUT:
                    return  # inside a block, as in io_read
        self._sync_irq()

    def _read_data(self, s: AtaState, size: int) -> int:
        if s.transfer != XFER_IN:
            self.stats.idle_data_accesses += 1
            return all_ones(size)
        pos = s.pos
        end = min(pos + size, SECTOR_SIZE)  # a dword straddling the end: the rest reads 0
        s.pos = end
        value = int.from_bytes(s.buffer[pos:end], "little")
        if end == SECTOR_SIZE:
            self._data_in_block_done(s)
        return value

    def _write_data(self, s: AtaState, size: int, value: int) -> None:
        if s.transfer != XFER_OUT:
            self.stats.idle_data_accesses += 1
            return
        pos = s.pos
        end = min(pos + size, SECTOR_SIZE)  # bytes past the end of the block are dropped
        s.buffer[pos:end] = (value & all_ones(size)).to_bytes(size, "little")[:end - pos]
        s.pos = end
        if end == SECTOR_SIZE:
            self._data_out_block_done(s)

    def _read_register(self, s: AtaState, offset: int) -> int:
        if offset == REG_ERROR_FEATURES:
            return s.error
        if offset == REG_DEVICE:
            return s.device
        if offset != REG_STATUS_COMMAND:
            name = _TWO_DEEP[offset]
            return getattr(s, name + "_hob" if s.control & CONTROL_HOB else name)
        # Status: device 1 is absent, so it reads 00h and device 0's interrupt stays pending.
        if s.device & DEVICE_DEV:
            return 0
        s.intrq_pending = False  # reading status acknowledges the interrupt
        return s.status

    def _write_register(self, s: AtaState, offset: int, value: int) -> None:
        if offset == REG_DEVICE:
            s.device = value
        elif offset == REG_STATUS_COMMAND:
            self._write_command(s, value)
        else:  # every write pushes the old value into the "previous" (HOB) slot
            name = _TWO_DEEP[offset]
            setattr(s, name + "_hob", getattr(s, name))
            setattr(s, name, value)

    def _write_device_control(self, s: AtaState, value: int) -> None:
        s.control = value & CONTROL_MASK
        if value & CONTROL_SRST:
            if not s.in_reset:  # SRST 0 -> 1: abandon everything and show BSY
                s.in_reset = True
                s.status = STATUS_BSY
                s.transfer = XFER_NONE
                s.pos = 0
                s.intrq_pending = False
        elif s.in_reset:  # SRST 1 -> 0: the reset completes, without an interrupt
            s.in_reset = False
            self._set_signature(s)
            s.error = DIAGNOSTIC_PASSED
            s.status = STATUS_READY

    def _irq_wanted(self) -> bool:
        # INTRQ is driven only while device 0 is selected (see the module docstring).
        s = self.state
        return s.intrq_pending and not (s.control & CONTROL_NIEN) and not (s.device & DEVICE_DEV)

    # ----------------------------------------------------------------- commands

    def _write_command(self, s: AtaState, opcode: int) -> None:
        if s.device & DEVICE_DEV and opcode != CMD_EXECUTE_DEVICE_DIAGNOSTIC:
            self.stats.ignored_commands += 1  # addressed to the absent device 1
            return
        if s.status & STATUS_BSY or s.transfer != XFER_NONE:
            self.stats.ignored_commands += 1
            return
        s.intrq_pending = False  # writing the command register clears a pending interrupt
        self.stats.commands[opcode] = self.stats.commands.get(opcode, 0) + 1
        s.error = 0
        handler = self._handlers.get(opcode)
        if handler is None:
            self._fail(s, ERROR_ABRT)
        else:
            handler(s, opcode)

    def _complete(self, s: AtaState) -> None:
        s.transfer = XFER_NONE
        s.pos = 0
        s.status = STATUS_READY
        s.intrq_pending = True

    def _fail(self, s: AtaState, error: int, status: int = STATUS_DRDY | STATUS_ERR) -> None:
        s.transfer = XFER_NONE
        s.pos = 0
        s.error = error
        s.status = status
        s.intrq_pending = True
        self.stats.errors += 1

    def _host_error(self, op: str, lba: int | None, cause, s: AtaState) -> None:
        """Log a failure of the image on the host — its errno by name and number — beside
        what the guest sees of it (the status and error registers just set)."""
        self.stats.host_errors += 1
        if isinstance(cause, OSError) and cause.errno is not None:
            why = f"{errno_names.errorcode.get(cause.errno, '?')} (errno {cause.errno}): {cause.strerror}"
            if cause.filename:
                why += f" ({cause.filename})"
        else:
            why = str(cause)
        where = f" at LBA {lba}" if lba is not None else ""
        log.error("%s: host %s error on the disk image%s: %s; the guest sees status %#04x, error %#04x (%s)",
                  self.name, op, where, why, s.status, s.error, "UNC" if s.error == ERROR_UNC else "DF+ABRT")

    def _start_block(self, s: AtaState, transfer: int, interrupt: bool) -> None:
        s.transfer = transfer
        s.pos = 0
        s.status = STATUS_READY | STATUS_DRQ
        s.intrq_pending = interrupt

    def _set_signature(self, s: AtaState) -> None:
        """The ATA device signature a reset or diagnostic leaves in the taskfile."""
        s.sector_count, s.lba_low, s.lba_mid, s.lba_high, s.device = 1, 1, 0, 0, 0
        s.sector_count_hob = s.lba_low_hob = s.lba_mid_hob = s.lba_high_hob = 0

    def _decode_range(self, s: AtaState, ext: bool) -> tuple[int, int] | None:
        """(first LBA, sector count) of a read/write, or None if any sector is out of range."""
        if ext:
            lba = ((s.lba_high_hob << 40) | (s.lba_mid_hob << 32) | (s.lba_low_hob << 24)
                   | (s.lba_high << 16) | (s.lba_mid << 8) | s.lba_low)
            count = ((s.sector_count_hob << 8) | s.sector_count) or 65536
            limit = self.capacity
        else:
            count = s.sector_count or 256
            if s.device & DEVICE_LBA:
                lba = (((s.device & DEVICE_HEAD_MASK) << 24) | (s.lba_high << 16)
                       | (s.lba_mid << 8) | s.lba_low)
                limit = min(self.capacity, LBA28_MAX_SECTORS)
            else:
                cylinder = (s.lba_high << 8) | s.lba_mid
                head = s.device & DEVICE_HEAD_MASK
                sector = s.lba_low
                if not (cylinder < s.cylinders and head < s.heads and 1 <= sector <= s.sectors_per_track):
                    return None
                lba = (cylinder * s.heads + head) * s.sectors_per_track + sector - 1
                limit = s.cylinders * s.heads * s.sectors_per_track
        if lba + count > limit:
            return None
        return lba, count

    def _cmd_read_write(self, s: AtaState, opcode: int) -> None:
        span = self._decode_range(s, opcode in (CMD_READ_SECTORS_EXT, CMD_WRITE_SECTORS_EXT))
        if span is None:
            self._fail(s, ERROR_IDNF)
            return
        s.command = opcode
        s.lba, count = span
        s.remaining = count - 1
        if opcode in (CMD_WRITE_SECTORS, CMD_WRITE_SECTORS_EXT):
            self._start_block(s, XFER_OUT, interrupt=False)  # none before the first block
        elif self._load_sector(s):
            self._start_block(s, XFER_IN, interrupt=True)

    def _load_sector(self, s: AtaState) -> bool:
        try:
            got = self.image.read(s.lba * SECTOR_SIZE, s.buffer)
        except OSError as e:
            got, cause = -1, e
        else:
            cause = f"short read: {got} of {SECTOR_SIZE} bytes"
        if got != SECTOR_SIZE:  # an I/O error, or the image shrank under us
            self._fail(s, ERROR_UNC)
            self._host_error("read", s.lba, cause, s)
            return False
        self.stats.sectors_read += 1
        return True

    def _data_in_block_done(self, s: AtaState) -> None:
        if s.remaining == 0:
            s.transfer = XFER_NONE  # PIO data-in: no interrupt after the last block
            s.pos = 0
            s.status = STATUS_READY
            return
        s.remaining -= 1
        s.lba += 1
        if self._load_sector(s):
            self._start_block(s, XFER_IN, interrupt=True)

    def _data_out_block_done(self, s: AtaState) -> None:
        try:
            written = self.image.write(s.lba * SECTOR_SIZE, s.buffer)
        except OSError as e:
            written, cause = -1, e
        else:
            cause = f"short write: {written} of {SECTOR_SIZE} bytes"
        if written != SECTOR_SIZE:
            self._fail(s, ERROR_ABRT, STATUS_DRDY | STATUS_DF | STATUS_ERR)
            self._host_error("write", s.lba, cause, s)
            return
        self.stats.sectors_written += 1
        if s.remaining:
            s.remaining -= 1
            s.lba += 1
            self._start_block(s, XFER_OUT, interrupt=True)
            return
        if not s.write_cache and not self._flush(s):
            return
        self._complete(s)

    def _flush(self, s: AtaState) -> bool:
        try:
            self.image.flush()
        except OSError as e:
            self._fail(s, ERROR_ABRT, STATUS_DRDY | STATUS_DF | STATUS_ERR)
            self._host_error("flush", None, e, s)
            return False
        self.stats.flushes += 1
        return True

    def _cmd_flush_cache(self, s: AtaState, opcode: int) -> None:
        if self._flush(s):
            self._complete(s)

    def _cmd_identify_device(self, s: AtaState, opcode: int) -> None:
        words = identify_words(self.config, self.capacity, s)
        buf = s.buffer
        for i, word in enumerate(words):
            buf[2 * i] = word & 0xFF
            buf[2 * i + 1] = word >> 8
        s.command = opcode
        s.lba = 0
        s.remaining = 0
        self._start_block(s, XFER_IN, interrupt=True)

    def _cmd_set_features(self, s: AtaState, opcode: int) -> None:
        feature = s.features
        if feature == FEATURE_ENABLE_WRITE_CACHE:
            s.write_cache = True
        elif feature == FEATURE_DISABLE_WRITE_CACHE:
            s.write_cache = False
        elif feature == FEATURE_ENABLE_READ_LOOK_AHEAD:
            s.read_look_ahead = True
        elif feature == FEATURE_DISABLE_READ_LOOK_AHEAD:
            s.read_look_ahead = False
        elif feature in (FEATURE_DISABLE_REVERT_TO_DEFAULTS, FEATURE_ENABLE_REVERT_TO_DEFAULTS):
            pass  # settings already survive a software reset
        elif feature == FEATURE_SET_TRANSFER_MODE:
            mode = s.sector_count
            # PIO default (00h/01h) or PIO flow control modes 0-4 (08h-0Ch); no DMA here.
            if not (mode in (0x00, 0x01) or 0x08 <= mode <= 0x0C):
                self._fail(s, ERROR_ABRT)
                return
        else:
            self._fail(s, ERROR_ABRT)
            return
        self._complete(s)

    def _cmd_initialize_device_parameters(self, s: AtaState, opcode: int) -> None:
        spt = s.sector_count
        heads = (s.device & DEVICE_HEAD_MASK) + 1
        cylinders = min(self.capacity // (heads * spt), 0xFFFF) if spt else 0
        if cylinders == 0:  # no usable translation: keep the old one
            self._fail(s, ERROR_ABRT)
            return
        s.cylinders, s.heads, s.sectors_per_track = cylinders, heads, spt
        self._complete(s)

    def _cmd_execute_device_diagnostic(self, s: AtaState, opcode: int) -> None:
        self._set_signature(s)  # also clears DEV: device 0 is selected again
        s.error = DIAGNOSTIC_PASSED
        self._complete(s)

    # ----------------------------------------------------------------- snapshot
    # The image's contents are not part of the snapshot.

    def _check_state(self, state: AtaState) -> None:
        if state.cylinders * state.heads * state.sectors_per_track > self.capacity:
            raise ValueError("ATA snapshot CHS translation exceeds the image capacity")
        transfer, command = state.transfer, state.command
        if transfer == XFER_IN and command not in (CMD_READ_SECTORS, CMD_READ_SECTORS_EXT,
                                                   CMD_IDENTIFY_DEVICE):
            raise ValueError(f"ATA snapshot: data-in transfer for command {command:#x}")
        if transfer == XFER_OUT and command not in (CMD_WRITE_SECTORS, CMD_WRITE_SECTORS_EXT):
            raise ValueError(f"ATA snapshot: data-out transfer for command {command:#x}")
        if transfer != XFER_NONE and command != CMD_IDENTIFY_DEVICE:
            if state.lba + state.remaining >= self.capacity:
                raise ValueError("ATA snapshot transfer runs past the end of the image")
