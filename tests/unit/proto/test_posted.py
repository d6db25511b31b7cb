"""Posted-interrupt descriptors (proto/posted.py): set by the notifier, read and cleared by
the VP; whatever the partition writes there is clamped or harmless."""

from __future__ import annotations

import mmap
import os

import pytest

from proto import posted
from proto.messages import INTERRUPT_NO_EOI


@pytest.fixture
def file(tmp_path):
    """The hypervisor's side: the file and its mapping."""
    path = posted.posted_path(tmp_path, 3)
    fd = posted.create(path)
    buf = mmap.mmap(fd, posted.FILE_SIZE)
    notifier = posted.Notifier(buf)
    yield path, notifier
    notifier.close()
    buf.close()
    os.close(fd)


def test_a_new_file_is_0600_sparse_and_empty(file):
    path, buf = file
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(path).st_size == posted.FILE_SIZE and posted.SIDE.size == 64
    d = posted.VpDescriptor(path, 0)
    assert not d.outstanding() and d.take() == []
    d.close()


def test_posted_vectors_are_taken_highest_first_with_their_flags_and_stamps_then_cleared(file):
    path, buf = file
    d = posted.VpDescriptor(path, 1)
    buf.post(1, 0x30, (1, 2, 3, 4))
    buf.post(1, 0xEF | INTERRUPT_NO_EOI, (5, 6))
    assert d.outstanding()
    assert d.take() == [(0xEF | INTERRUPT_NO_EOI, (5, 6)), (0x30, (1, 2, 3, 4))]
    assert not d.outstanding() and d.take() == []
    assert bytes(d.buf[:posted.DESCRIPTOR_SIZE]) == bytes(posted.DESCRIPTOR_SIZE)  # PIR and ON clear
    d.close()


def test_a_vp_sees_only_its_own_region(file):
    path, buf = file
    d0, d1 = posted.VpDescriptor(path, 0), posted.VpDescriptor(path, 1)
    buf.post(1, 0x21, ())
    assert not d0.outstanding() and d0.take() == []
    assert d1.take() == [(0x21, ())]
    d0.close()
    d1.close()


def test_a_vector_is_not_posted_onto_its_untaken_bit(file):
    """Each post is an interrupt the hypervisor has put in service: a second one merged into
    the first's PIR bit would be one handler run, one EOI, for two.  So the notifier says no
    (the caller sends it by message) and leaves the first, stamps and all, as it was; once
    the VP has taken it, the vector may be posted again."""
    path, buf = file
    d = posted.VpDescriptor(path, 0)
    assert buf.post(0, 0x40, (1,)) is True
    assert buf.post(0, 0x40, (2,)) is False
    assert buf.post(0, 0x41, (3,)) is True  # another vector, another bit
    assert d.take() == [(0x41, (3,)), (0x40, (1,))]
    assert buf.post(0, 0x40, (4,)) is True
    assert d.take() == [(0x40, (4,))]
    d.close()


def test_garbage_written_by_the_guest_is_clamped_not_trusted(file):
    """A partition may scribble on its own descriptors: a count beyond the side entry is
    clamped, the vector is the PIR bit's whatever the entry says, ON without a bit is nothing."""
    path, buf = file
    d = posted.VpDescriptor(path, 2)
    d.buf[posted.ON_OFFSET] = 0xFF
    assert d.take() == []
    off = posted.DESCRIPTOR_SIZE + 0x50 * posted.SIDE.size
    d.buf[off:off + posted.SIDE.size] = b"\xff" * posted.SIDE.size
    d.buf[0x50 // 8] = 1 << (0x50 % 8)
    d.buf[posted.ON_OFFSET] = 1
    (interrupt, stamps), = d.take()
    assert interrupt & 0xFF == 0x50 and len(stamps) == posted.SIDE_STAMPS
    # Scribbling never breaks the notifier: a PIR bit the guest set is a post refused (the
    # hypervisor sends that interrupt by message), a clear one is posted to as ever.
    d.buf[:posted.REGION_SIZE] = b"\xa5" * posted.REGION_SIZE  # 0x60's bit set, 0x61's clear
    assert buf.post(2, 0x60, (9,)) is False and buf.post(2, 0x61, (9,)) is True
    assert (0x61, (9,)) in d.take()
    d.close()


def test_stamps_beyond_the_side_entry_and_out_of_range_are_cut(file):
    path, buf = file
    d = posted.VpDescriptor(path, 0)
    buf.post(0, 0x22, tuple(range(posted.SIDE_STAMPS)))
    assert d.take() == [(0x22, tuple(range(posted.SIDE_STAMPS)))]
    d.close()


def test_a_vp_index_beyond_the_file_is_refused(file):
    path, _ = file
    with pytest.raises(ValueError):
        posted.VpDescriptor(path, posted.MAX_VPS)
