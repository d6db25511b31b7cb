"""proto.atomic: LOCK OR / LOCK AND on a shared mapping, atomic across processes (the
SynIC's event flags: the hypervisor sets, the guest clears, TLFS SIEF page)."""

from __future__ import annotations

import mmap
import multiprocessing

import pytest

from proto import atomic

PAGE = 4096


def test_fetch_or_and_fetch_and_return_the_old_byte():
    buf = mmap.mmap(-1, PAGE)
    assert atomic.fetch_or_u8(buf, 7, 0x12) == 0 and buf[7] == 0x12
    assert atomic.fetch_or_u8(buf, 7, 0x02) == 0x12 and buf[7] == 0x12
    assert atomic.fetch_and_u8(buf, 7, 0xFD) == 0x12 and buf[7] == 0x10
    buf.close()  # no export of the mapping is left behind


def _clear_bit0_until_told(buf, done) -> None:
    while not done.value:
        for _ in range(1000):
            atomic.fetch_and_u8(buf, 0, 0xFE)


def lost_flags(rounds: int = 100_000) -> int:
    """One process clears bit 0 of a byte over and over; this one sets bit 1 of the same
    byte and looks whether it is still there (then clears it itself): how often it was not."""
    ctx = multiprocessing.get_context("fork")
    buf = mmap.mmap(-1, PAGE)  # MAP_SHARED | MAP_ANONYMOUS: shared with the child
    done = ctx.Value("b", 0)
    clearer = ctx.Process(target=_clear_bit0_until_told, args=(buf, done))
    clearer.start()
    lost = 0
    try:
        for _ in range(rounds):
            atomic.fetch_or_u8(buf, 0, 0x03)  # bit 0: work for the clearer; bit 1: the flag
            if not buf[0] & 0x02:
                lost += 1
            atomic.fetch_and_u8(buf, 0, 0xFD)
    finally:
        done.value = 1
        clearer.join(10)
    assert clearer.exitcode == 0
    return lost


@pytest.mark.skipif(not atomic.ATOMIC, reason="libatomic is not available: the operations are not atomic")
def test_no_flag_set_by_one_process_is_lost_to_another_clearing_its_neighbour():
    """With a plain read-modify-write a flag set between the other process's read and
    write of the byte is lost; with LOCK OR / LOCK AND never."""
    assert lost_flags() == 0
