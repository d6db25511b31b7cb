"""The worker's file-backed backends: what they leave on disk, and host failures."""

from __future__ import annotations

import pytest

from worker import backends
from worker.backends import ConsoleLog, DiskFile, NvramFile


def test_a_disk_image_reads_and_writes_at_byte_offsets(tmp_path):
    image = DiskFile(str(tmp_path / "d.img"), 4096)
    try:
        assert image.write(512, b"x" * 512) == 512
        buffer = bytearray(512)
        assert image.read(512, buffer) == 512 and buffer == b"x" * 512
        assert image.read(4096 - 256, buffer) == 256  # short at the end
    finally:
        image.close()


def test_nvram_is_created_zeroed_and_keeps_byte_writes(tmp_path):
    path = tmp_path / "nv.bin"
    store = NvramFile(str(path), 114)
    assert path.read_bytes() == bytes(114) and store.load() == bytes(114)
    store.write_byte(3, 0x5A)
    assert path.read_bytes()[3] == 0x5A
    assert NvramFile(str(path), 114).load()[3] == 0x5A


def test_a_failing_byte_write_rewrites_the_whole_file(tmp_path, monkeypatch):
    path = tmp_path / "nv.bin"
    store = NvramFile(str(path), 114)

    real = backends.os.pwrite

    def broken(fd, data, offset):
        if len(data) == 1:
            raise OSError(5, "EIO")
        return real(fd, data, offset)

    monkeypatch.setattr(backends.os, "pwrite", broken)
    store.write_byte(7, 0x42)
    assert path.read_bytes()[7] == 0x42 and store.persist_errors == 0


def test_a_host_failure_to_persist_is_counted_not_raised(tmp_path, monkeypatch):
    store = NvramFile(str(tmp_path / "nv.bin"), 114)

    def disk_full(fd):
        raise OSError(28, "ENOSPC")

    monkeypatch.setattr(backends.os, "fsync", disk_full)
    store.replace(b"\x01" * 114)
    assert store.persist_errors == 1 and store.load() == b"\x01" * 114
    assert [p.name for p in tmp_path.iterdir()] == ["nv.bin"]  # no temporary file left


def test_an_nvram_file_of_the_wrong_size_is_refused_naming_it(tmp_path):
    (tmp_path / "nv.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="nv.bin"):
        NvramFile(str(tmp_path / "nv.bin"), 114)


def test_the_console_log_appends_what_it_is_given_when_taken(tmp_path):
    path = tmp_path / "console.log"
    path.write_bytes(b"before\n")
    console = ConsoleLog(str(path))
    console.write(b"he")
    console.write(b"llo")
    assert console.pending == b"hello" and console.since_ns > 0
    assert console.take() == b"hello" and not console.pending
    console.write(b" world")
    console.close()  # what is still pending reaches the file
    assert path.read_bytes() == b"before\nhello world"


def test_a_new_disk_image_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    """A worker stopped between creating its image and sizing it (one started ahead for a
    migration whose session was abandoned) left an empty file the next worker refused."""
    path = tmp_path / "d.img"

    def killed(fd, size):
        raise KeyboardInterrupt  # (as a SIGTERM's exception would, between the two)

    monkeypatch.setattr(backends.os, "ftruncate", killed)
    with pytest.raises(KeyboardInterrupt):
        DiskFile(str(path), 4096)
    assert list(tmp_path.iterdir()) == []  # nothing at the path, no temporary left
    monkeypatch.undo()
    image = DiskFile(str(path), 4096)
    try:
        assert image.size == 4096 and sorted(p.name for p in tmp_path.iterdir()) == ["d.img"]
    finally:
        image.close()
    again = DiskFile(str(path), 8192)  # an existing image is opened as it is
    try:
        assert again.size == 4096
    finally:
        again.close()
