"""A real-CPU VP's thread body: build the backend, run it, start over after a reset."""

from __future__ import annotations

import logging

from partitions.cpu.boot import Boot
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
    """Runs until the partition stops (VpStopped) or the guest crashes (GuestCrash);
    a reset (INIT) builds a new CPU at the reset state, RAM keeping its contents.
    ``saved``: the CPU state to resume from (a restored partition; unicorn only)."""
    cls = backend_class(kind)
    generation = 0
    while True:
        resume = {"saved": saved} if saved is not None and generation == 0 else {}
        cpu = cls(lambda regs: ExitPort(dealer, index, mem, stop, bus_lock, partition=partition, tlbs=tlbs, regs=regs),
                  mem, boot, **resume)
        if generation == 0:
            log.info("VP %d: %s CPU running %s", index, kind, boot.what)
        try:
            cpu.run()
            return
        except VpReset as reset:
            log.info("VP %d: %s", index, reset)
            generation = reset.generation
        finally:
            cpu.close()
