"""A real-CPU VP's thread body: build the backend, run it, start over after a reset."""

from __future__ import annotations

import logging

from partitions.cpu.boot import Boot, at_sipi
from partitions.cpu.exitport import ExitPort
from partitions.vp import VpReset

log = logging.getLogger("partition")


def scratch_memory(directory, pages: int = 1024):
    """Guest memory in files of its own under ``directory``, laid out as the root maps a
    partition's (RAM below 640 KiB and from 1 MiB up): for running a backend without a
    hypervisor — the bench's in-process limit, the unit tests."""
    from pathlib import Path

    from proto.memory import GuestMemory

    ram, slat = Path(directory) / "ram", Path(directory) / "slat"
    ram.write_bytes(bytes(pages * 4096))
    table = bytearray(b"\xff" * 4 * pages)
    for page in list(range(0, 0xA0)) + list(range(0x100, pages)):
        table[page * 4:page * 4 + 4] = page.to_bytes(4, "little")
    slat.write_bytes(table)
    return GuestMemory(str(ram), str(slat))


def backend_class(kind: str):
    if kind == "unicorn":
        from partitions.cpu.unicorn_cpu import UnicornCpu
        return UnicornCpu
    if kind == "kvm":
        from partitions.cpu.kvm_cpu import KvmCpu
        return KvmCpu
    raise ValueError(f"no real-CPU backend {kind!r}")


def run_vp(kind: str, boot: Boot, dealer, index: int, mem, stop, bus_lock, partition: int, tlbs,
           saved: dict | None = None) -> None:
    """Runs until the partition stops (VpStopped) or the guest crashes (GuestCrash).  VP 0
    (the BSP) starts at ``boot``; an application processor waits for a startup IPI and
    starts in real mode at its vector.  A reset (the partition's, or an INIT IPI) builds a
    new CPU: the BSP's at the reset state, the firmware regions back to their image (RAM
    keeps its contents); an AP waits for its SIPI again.  ``saved``: the CPU state to
    resume from (a restored partition; unicorn only), AP or not."""
    cls = backend_class(kind)

    def port(regs):
        return ExitPort(dealer, index, mem, stop, bus_lock, partition=partition, tlbs=tlbs, regs=regs)

    start = boot if index == 0 or saved is not None else None
    first = True
    while True:
        cpu = None
        try:
            if start is None:
                wait_for_sipi(port)  # raises VpReset (with the vector) or VpStopped
            resume = {"saved": saved} if saved is not None and first else {}
            if start is boot and not resume:
                for region in boot.regions:
                    region.reload()
            cpu = cls(port, mem, start, **resume)
            if first:
                log.info("VP %d: %s CPU running %s", index, kind, start.what)
                first = False
            cpu.run()
            return
        except VpReset as reset:
            log.info("VP %d: %s", index, reset)
            start = at_sipi(boot, reset.sipi & 0xFF) if reset.sipi else (boot if index == 0 else None)
        finally:
            if cpu is not None:
                cpu.close()


def wait_for_sipi(port) -> None:
    """An application processor before its startup IPI: halted with interrupts off, as
    wait-for-SIPI is, until a reset tells it more (VpReset)."""
    waiting = port(lambda: (0x2, 0))  # RFLAGS: IF clear
    while True:
        waiting.halt(False)
