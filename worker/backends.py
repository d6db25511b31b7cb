"""The worker's host resources behind its devices: files in the run directory and beside the
topology (devices themselves do no host I/O; see :mod:`worker.devices.backends`).

* :class:`DiskFile`: a raw disk image, created sparse at its configured size when missing.
  Each write is a ``pwrite`` (in the page cache at once, so it survives the worker being
  killed); ``flush`` is ``fsync`` (ATA FLUSH CACHE).
* :class:`NvramFile`: the CMOS NVRAM, always exactly its size on disk.  It is created by
  writing a temporary file in the same directory, fsync and ``os.replace``, then held open:
  a changed byte is a one-byte ``pwrite`` at its offset, a rewrite a whole ``pwrite`` and
  fsync through the same descriptor (a confined worker can open nothing after it starts).  A one-byte write
  cannot be torn and never changes the size, so the file is a valid image whenever the
  process dies; it is not fsynced per byte, so a host crash may lose the last writes, as a
  CMOS battery failure would.  It lives in the run directory, so it survives a partition
  reset and a worker restart.
* :class:`ConsoleLog`: what the partition's UARTs transmit, held until the worker takes it
  (to send it on to the hypervisor) and appended to the console log file.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

from worker.devices.config import SECTOR_SIZE

log = logging.getLogger(__name__)


def _create(path: str, size_bytes: int, flags: int) -> int:
    """A new image of ``size_bytes`` (sparse), which appears at ``path`` whole or not at all:
    made under a name of its own, sized, then linked into place.  A process killed between
    creating and sizing it (a worker started ahead for a migration and stopped when the
    session was abandoned) otherwise left an empty image that the next worker refused.  If
    another process linked its image first, that one is opened."""
    tmp = f"{path}.{os.getpid()}.new"
    fd = os.open(tmp, flags | os.O_CREAT | os.O_EXCL, 0o600)  # the guest's data: its owner's alone
    try:
        os.ftruncate(fd, size_bytes)  # sparse: no blocks allocated
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another's image came first: that one is the disk
    finally:
        os.close(fd)
        os.unlink(tmp)
    # Opened by its own name, so that the descriptor names the image (not a removed
    # temporary) for whoever looks at the process's files.
    return os.open(path, flags)


class DiskFile:
    """A raw disk image file; its size is the disk's capacity."""

    def __init__(self, path: str, size_bytes: int) -> None:
        self.path = path
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            fd = _create(path, size_bytes, flags)
        size = os.fstat(fd).st_size
        if size == 0 or size % SECTOR_SIZE:
            os.close(fd)
            raise ValueError(f"disk image {path}: size {size} bytes is not a positive "
                             f"multiple of {SECTOR_SIZE}")
        self.fd = fd
        self.size = size

    # A host I/O error (ENOSPC on a sparse image, EIO) goes up to the device as the OSError
    # it is, with the image's path in it, for the device to log beside the ATA error.

    def read(self, offset: int, buffer: bytearray) -> int:
        try:
            return os.preadv(self.fd, [buffer], offset)
        except OSError as e:
            raise _naming(e, self.path)

    def write(self, offset: int, data: bytes) -> int:
        try:
            return os.pwrite(self.fd, data, offset)
        except OSError as e:
            raise _naming(e, self.path)

    def flush(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as e:
            raise _naming(e, self.path)

    def close(self) -> None:
        """Close the image.  Data already written is in the page cache; nothing is pending."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class NvramFile:
    """NVRAM bytes kept in a file of exactly ``size`` bytes (created, zeroed, if missing)."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.persist_errors = 0  # host failures to write the file (the device ran on)
        try:
            with open(path, "rb") as f:
                actual = os.fstat(f.fileno()).st_size
                if actual != size:
                    raise ValueError(f"CMOS NVRAM file {path!r} holds {actual} bytes, expected {size}")
                self._data = bytearray(f.read())
        except FileNotFoundError:
            # First start: create the image now, so a bad path shows at configuration time.
            self._data = bytearray(size)
            _atomic_write(path, bytes(self._data))
        self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)

    def load(self) -> bytes:
        return bytes(self._data)

    def write_byte(self, offset: int, value: int) -> None:
        self._data[offset] = value
        try:
            os.pwrite(self._fd, bytes([value]), offset)
        except OSError as e:
            log.warning("NVRAM byte write to %s failed (%s); rewriting the file", self.path, e)
            self._persist_all()

    def replace(self, data: bytes) -> None:
        self._data = bytearray(data)
        self._persist_all()

    def _persist_all(self) -> None:
        try:
            os.pwrite(self._fd, bytes(self._data), 0)  # the size never changes
            os.fsync(self._fd)
        except OSError as e:
            # A host I/O failure is not the guest's fault: keep running on the RAM copy.
            self.persist_errors += 1
            log.error("cannot persist CMOS NVRAM to %s: %s", self.path, e)


class ConsoleLog:
    """The partition's console output: bytes from its UARTs wait in ``pending`` (since
    ``since_ns``, monotonic) until :meth:`take` appends them to the log file and returns them."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.pending = bytearray()
        self.since_ns = 0

    def write(self, data: bytes) -> None:
        if not self.pending:
            self.since_ns = time.monotonic_ns()
        self.pending += data

    def take(self) -> bytes:
        data = bytes(self.pending)
        self.pending.clear()
        os.write(self._fd, data)
        return data

    def close(self) -> None:
        if self.pending:
            os.write(self._fd, bytes(self.pending))
            self.pending.clear()
        os.close(self._fd)


def _naming(e: OSError, path: str) -> OSError:
    """``e`` with ``path`` as its filename, if it had none (pwrite's and fsync's have none)."""
    if e.filename is None:
        e.filename = path
    return e


def _atomic_write(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old or the new file, never half."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
