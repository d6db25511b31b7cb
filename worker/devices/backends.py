"""What devices are handed to reach the host, and in-memory versions of it.

A device does no host I/O of its own (as vm-superio's ``Serial`` is handed a sink and
openvmm's disks a backend): the worker hands it a backend.  The file-backed ones are the
worker's (:mod:`worker.backends`); the in-memory ones here serve the device unit tests and a
device with nothing to persist.  Host failures surface as ``OSError`` for the device to turn
into what the guest sees (an ATA error, say).
"""

from __future__ import annotations

from typing import Protocol


class ConsoleSink(Protocol):
    """Where a UART's transmitted bytes go."""

    def write(self, data: bytes) -> None: ...


class DiskImage(Protocol):
    """A disk's contents: ``size`` bytes, read and written at byte offsets."""

    size: int

    def read(self, offset: int, buffer: bytearray) -> int:
        """Fill ``buffer`` from ``offset``; the number of bytes read (short at the end)."""
        ...

    def write(self, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset``; the number of bytes written."""
        ...

    def flush(self) -> None:
        """Make every write so far durable (ATA FLUSH CACHE)."""
        ...

    def close(self) -> None: ...


class NvramStore(Protocol):
    """Battery-backed bytes that outlive the device (the CMOS RAM).  Writes never raise: a
    host failure is not the guest's, so the store reports it and the device runs on."""

    def load(self) -> bytes:
        """The stored bytes (zeros in a new store)."""
        ...

    def write_byte(self, offset: int, value: int) -> None:
        """One byte changed; cheap, as guests rewrite CMOS bytes often."""
        ...

    def replace(self, data: bytes) -> None:
        """All bytes at once (a restored snapshot)."""
        ...


class MemoryConsole:
    """A console that keeps what it is given: ``chunks`` in order, ``data`` joined."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


class NullConsole:
    """A console connected to nothing."""

    def write(self, data: bytes) -> None:
        pass


class MemoryDisk:
    """A disk image in a bytearray; ``flushes`` counts FLUSH CACHEs.  Set ``fail`` to
    ``"read"``, ``"write"`` or ``"flush"`` to make that operation raise OSError."""

    def __init__(self, size: int, data: bytes | None = None) -> None:
        self.data = bytearray(data if data is not None else size)
        self.size = len(self.data)
        self.flushes = 0
        self.fail = ""
        self.closed = False

    def read(self, offset: int, buffer: bytearray) -> int:
        if self.fail == "read":
            raise OSError(5, "injected read error")
        chunk = self.data[offset:offset + len(buffer)]
        buffer[:len(chunk)] = chunk
        return len(chunk)

    def write(self, offset: int, data: bytes) -> int:
        if self.fail == "write":
            raise OSError(5, "injected write error")
        self.data[offset:offset + len(data)] = data
        return len(data)

    def flush(self) -> None:
        if self.fail == "flush":
            raise OSError(5, "injected flush error")
        self.flushes += 1

    def close(self) -> None:
        self.closed = True


class MemoryNvram:
    """NVRAM that lives as long as the object (what a topology without a file gets)."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)

    def load(self) -> bytes:
        return bytes(self.data)

    def write_byte(self, offset: int, value: int) -> None:
        self.data[offset] = value

    def replace(self, data: bytes) -> None:
        self.data = bytearray(data)
