"""Posted-interrupt descriptors in shared memory: one file per partition, one region per VP.

Intel's posted interrupts (SDM vol. 3, "Posted-Interrupt Processing") put a running vCPU's
pending vectors in a 64-byte descriptor in memory: the 256-bit posted-interrupt request
bitmap (PIR) and the outstanding-notification bit (ON).  The notifier sets the vector's PIR
bit and then ON, each with a LOCK-prefixed OR; the CPU, at its next check, clears ON and
moves PIR into the virtual IRR (an atomic exchange of each word with 0).  hvstack does the
same with a file the hypervisor creates and both processes map (``pi-ID.bin`` in the run
directory, 0600): the hypervisor posts (:class:`Notifier`), the VP reads it at its preemption
points as a memory load (:class:`VpDescriptor`), so an interrupt for a VP executing guest
code needs no message, and no ZeroMQ I/O thread on either side to carry one.

A VP's region is the descriptor and, after it, a side entry per vector with what hvstack's
resumes carry besides the vector: the "no EOI required" flag (``INTERRUPT_NO_EOI``) and the
interrupt path's stamps (for the latency histograms)::

    descriptor   PIR 32 bytes (bit n: vector n), ON byte 32 bit 0, 31 bytes reserved   64 bytes
    side entry   interrupt u16 (vector | INTERRUPT_NO_EOI), stamps count u8, 5 bytes,
                 SIDE_STAMPS × u64 stamps                                              64 bytes
    region       descriptor, then a side entry for each of the 256 vectors             16,448 bytes

The hypervisor writes a vector's side entry, then ORs its PIR bit, then ON; the VP clears
ON, exchanges each nonzero PIR byte with 0 (:mod:`proto.atomic`, so a bit set meanwhile
is never lost), then reads the side entries of the bits it took.  A vector posted again
between the VP's exchange and its read of the side entry is taken twice, the first time
with the second's stamps: both were posted, only the stamps are approximate.

A PIR bit holds one interrupt, as an IRR bit does, but here each post is one the
hypervisor has already taken into service (the PIC's INTA, IRR → ISR): two posts of a
vector merged into one bit would run its handler once for two, one EOI short — the PIC's
ISR bit (or the APIC's) held for good, and every interrupt at or below its priority gone
with it.  (It happened: with IRQ 4's handler running, IRQ 0 is acknowledged and posted; the
handler's non-specific EOI ends IRQ 0, the highest in service, not IRQ 4; IRQ 0 is
acknowledged again and posted onto the untaken bit.)  So the notifier never posts onto a
set bit (:meth:`Notifier.post` says no, and the interrupt goes by message instead).

What a hostile partition can do with it: write anything into its own VPs' regions.  The
hypervisor writes there and reads back only the bit of a vector it is about to post (and
the PIR for a save), and its own local APIC state stays authoritative: a vector is taken
(IRR → ISR, or off the PIC's queue) when it is posted, exactly as for a resume, and its
EOI comes back as an exit as before.  So a forged PIR bit runs the guest's own handler for
nothing in service (which the guest can do by calling it) or sends its own interrupt by
message instead, a cleared one loses the guest its own interrupt; a garbage side entry is
clamped where the VP reads it.  The file cannot be cut short under the hypervisor's mapping
(SIGBUS): the partition's seccomp filter refuses truncation, as for its RAM file
(:mod:`proto.seccomp`).
"""

from __future__ import annotations

import mmap
import os
import struct

from proto.atomic import anchor, fetch_and_at, fetch_or_at

PIR_BYTES = 32
ON_OFFSET = 32  # byte 32, bit 0: the outstanding-notification bit
ON = 0x01
DESCRIPTOR_SIZE = 64
VECTORS = 256
SIDE_STAMPS = 7
SIDE = struct.Struct(f"<HB5x{SIDE_STAMPS}Q")  # 64 bytes
REGION_SIZE = DESCRIPTOR_SIZE + VECTORS * SIDE.size
# The file covers this many VPs (root/topology.py's MAX_VPS); a VP beyond it is posted to by
# message.  The file is sparse: a VP's region costs a page only once something is posted.
MAX_VPS = 128
FILE_SIZE = MAX_VPS * REGION_SIZE
# The layout's version, which the VP names when it says it reads its descriptor.
LAYOUT = 1
_U64 = (1 << 64) - 1


def posted_path(directory, partition: int) -> str:
    """The partition's posted-interrupt descriptors in the run directory."""
    return os.path.join(directory, f"pi-{partition}.bin")


def region(vp: int) -> int:
    """Where VP ``vp``'s descriptor starts in the file."""
    return vp * REGION_SIZE


def create(path: str) -> int:
    """A new file of empty descriptors, 0600 from the start; returns a read-write descriptor
    (the caller's)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.ftruncate(fd, FILE_SIZE)  # sparse: zeros, nothing posted
    return fd


class Notifier:
    """The notifier's half over a writable mapping of the whole file (the hypervisor's):
    it writes there, and reads back only what a save must carry (:meth:`untaken`)."""

    def __init__(self, buf) -> None:
        self.buf = buf
        self._anchor, self._address = anchor(buf)

    def post(self, vp: int, interrupt: int, stamps: tuple) -> bool:
        """The side entry of the vector, its PIR bit, then ON; True.  False, writing
        nothing, while the vector's PIR bit is still set (posted, not yet taken): a second
        post would merge into it, one handler run for two interrupts the hypervisor has put
        in service — one EOI short for good (see the module docstring).  The caller sends
        that one by message instead.  (Reading the bit races with nothing: the VP only
        clears it, and this notifier is the only one that sets it — but for the partition
        itself, whose own interrupts then go by message.)"""
        base = region(vp)
        vector = interrupt & 0xFF
        pir_byte, pir_bit = base + vector // 8, 1 << (vector % 8)
        if self.buf[pir_byte] & pir_bit:
            return False
        stamps = tuple(s & _U64 for s in stamps[:SIDE_STAMPS])
        SIDE.pack_into(self.buf, base + DESCRIPTOR_SIZE + vector * SIDE.size, interrupt & 0xFFFF, len(stamps),
                       *stamps, *(0,) * (SIDE_STAMPS - len(stamps)))
        fetch_or_at(self._address + pir_byte, pir_bit)
        fetch_or_at(self._address + base + ON_OFFSET, ON)  # last: a reader that sees ON finds the bit
        return True

    def untaken(self, vp: int) -> list[int]:
        """The vectors VP ``vp``'s PIR holds (posted, not yet taken), highest first — read,
        not cleared.  Read back only for a save (hypervisor/vp_state.py), where what a
        partition wrote here can only reach its own record."""
        pir = bytes(self.buf[region(vp):region(vp) + PIR_BYTES])
        return [i * 8 + bit for i in range(PIR_BYTES - 1, -1, -1) if pir[i]
                for bit in range(7, -1, -1) if pir[i] >> bit & 1]

    def close(self) -> None:
        """Before the mapping is closed."""
        self._anchor = None


class VpDescriptor:
    """One VP's descriptor as its preemption points read it: ``file`` is a path or an open
    descriptor of the partition's file (which stays the caller's)."""

    def __init__(self, file: str | int, vp: int) -> None:
        if not 0 <= vp < MAX_VPS:
            raise ValueError(f"VP {vp}: the descriptor file covers VPs 0..{MAX_VPS - 1}")
        if isinstance(file, int):
            self._map = mmap.mmap(file, FILE_SIZE)
        else:
            fd = os.open(file, os.O_RDWR | os.O_CLOEXEC)
            try:
                self._map = mmap.mmap(fd, FILE_SIZE)
            finally:
                os.close(fd)
        # The VP's own region, the only part it ever touches.
        self.buf = memoryview(self._map)[region(vp):region(vp) + REGION_SIZE]
        self._anchor, self._address = anchor(self.buf)

    def outstanding(self) -> bool:
        """ON: something was posted since the last :meth:`take` (one memory load)."""
        return bool(self.buf[ON_OFFSET] & ON)

    def take(self) -> list[tuple[int, tuple]]:
        """Clear ON, take every PIR bit (atomically, so none posted meanwhile is lost) and
        return the posted interrupts, highest vector first, as (interrupt, stamps) —
        what a resume carries (``VpResume.interrupt``, ``irq_stamps``)."""
        buf, address = self.buf, self._address
        fetch_and_at(address + ON_OFFSET, ~ON & 0xFF)
        taken = []
        pir = bytes(buf[:PIR_BYTES])
        for i in range(PIR_BYTES - 1, -1, -1):
            if not pir[i]:
                continue
            bits = fetch_and_at(address + i, 0)  # an exchange with 0: what is set now
            for bit in range(7, -1, -1):
                if bits >> bit & 1:
                    vector = i * 8 + bit
                    interrupt, count, *stamps = SIDE.unpack_from(buf, DESCRIPTOR_SIZE + vector * SIDE.size)
                    # The side entry is the partition's to scribble on: the vector is the
                    # PIR bit's, whatever the entry says, and the count is clamped.
                    taken.append((vector | (interrupt & ~0xFF & 0xFFFF), tuple(stamps[:min(count, SIDE_STAMPS)])))
        return taken

    def close(self) -> None:
        self._anchor = None
        self.buf.release()
        self._map.close()
