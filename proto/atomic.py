"""Atomic bit operations on shared memory, across processes (LOCK OR / LOCK AND).

The SynIC's event flags live in guest RAM, which two processes map: the hypervisor sets a
flag, the partition's guest clears it (TLFS: "LOCK AND" / "LOCK BTR").  A Python
read-modify-write of the byte is not atomic against the other process — a flag set between
the other side's read and write is lost.  So both sides use the C11 atomics that gcc's
runtime library exports (``libatomic``: ``__atomic_fetch_or_1`` / ``__atomic_fetch_and_1``,
LOCK-prefixed on x86, atomic on a MAP_SHARED mapping whoever else maps it), through ctypes.

Where libatomic cannot be loaded, :data:`ATOMIC` is False and the operations fall back to a
plain read-modify-write — correct within one process, racy across two; the hypervisor's
``status`` says so (counter ``synic_flags_atomic`` 0) and its log warns.
"""

import ctypes
import ctypes.util

SEQ_CST = 5  # __ATOMIC_SEQ_CST


LIBATOMIC_SONAME = "libatomic.so.1"  # gcc's, on every Linux distribution


def _open_libatomic():
    # By its SONAME first: find_library runs `ldconfig -p` (a fork and exec, ≈ 20 ms of a
    # start-up, issue 12) to find this very name.
    try:
        return ctypes.CDLL(LIBATOMIC_SONAME)
    except OSError:
        name = ctypes.util.find_library("atomic")
        return ctypes.CDLL(name) if name else None


def _load():
    try:
        lib = _open_libatomic()
        fetch_or, fetch_and = lib.__atomic_fetch_or_1, lib.__atomic_fetch_and_1
    except (OSError, AttributeError):  # AttributeError: None, or no such symbol
        return None, None
    for fn in (fetch_or, fetch_and):
        fn.argtypes = (ctypes.c_void_p, ctypes.c_uint8, ctypes.c_int)
        fn.restype = ctypes.c_uint8
    return fetch_or, fetch_and


_FETCH_OR, _FETCH_AND = _load()
ATOMIC = _FETCH_OR is not None


def _op(fn, buf, offset: int, mask: int, plain) -> int:
    if fn is None:
        old = buf[offset]
        buf[offset] = plain(old, mask) & 0xFF
        return old
    # A pointer into the mapping for this call only: a lasting export would keep the mmap
    # from being closed.
    cell = ctypes.c_uint8.from_buffer(buf, offset)
    try:
        return fn(ctypes.addressof(cell), mask & 0xFF, SEQ_CST)
    finally:
        del cell


def fetch_or_u8(buf, offset: int, mask: int) -> int:
    """``lock or byte [buf + offset], mask``; the byte's old value.  ``buf`` is a writable
    mmap (or any writable buffer)."""
    return _op(_FETCH_OR, buf, offset, mask, int.__or__)


def fetch_and_u8(buf, offset: int, mask: int) -> int:
    """``lock and byte [buf + offset], mask``; the byte's old value."""
    return _op(_FETCH_AND, buf, offset, mask, int.__and__)


# The same by address, for a caller that makes many on one mapping (the posted-interrupt
# descriptors, proto/posted.py): a ctypes view made per call costs as much as the atomic
# itself.  ``anchor`` (returned by :func:`anchor`) must live as long as the address is used
# and be dropped before the mapping is closed.


def anchor(buf, offset: int = 0):
    """(a ctypes view pinning ``buf``, the address of byte ``offset``)."""
    cell = ctypes.c_uint8.from_buffer(buf, offset)
    return cell, ctypes.addressof(cell)


def _op_at(fn, address: int, mask: int, plain) -> int:
    if fn is None:
        cell = ctypes.c_uint8.from_address(address)
        old = cell.value
        cell.value = plain(old, mask) & 0xFF
        return old
    return fn(address, mask & 0xFF, SEQ_CST)


def fetch_or_at(address: int, mask: int) -> int:
    """``lock or byte [address], mask``; the byte's old value."""
    return _op_at(_FETCH_OR, address, mask, int.__or__)


def fetch_and_at(address: int, mask: int) -> int:
    """``lock and byte [address], mask``; the byte's old value."""
    return _op_at(_FETCH_AND, address, mask, int.__and__)
