"""A real-CPU VP's thread body: build the backend, run it, start over after a reset."""

from __future__ import annotations

import logging

from partitions.cpu.boot import Boot
from partitions.cpu.exitport import ExitPort
from partitions.vp import VpReset

log = logging.getLogger("partition")


def backend_class(kind: str):
    if kind == "unicorn":
        from partitions.cpu.unicorn_cpu import UnicornCpu
        return UnicornCpu
    if kind == "kvm":
        from partitions.cpu.kvm_cpu import KvmCpu
        return KvmCpu
    raise ValueError(f"no real-CPU backend {kind!r}")


def run_vp(kind: str, boot: Boot, dealer, index: int, mem, stop, bus_lock, partition: int, tlbs) -> None:
    """Runs until the partition stops (VpStopped) or the guest crashes (GuestCrash);
    a reset (INIT) builds a new CPU at the reset state, RAM keeping its contents."""
    cls = backend_class(kind)
    generation = 0
    while True:
        cpu = cls(lambda regs: ExitPort(dealer, index, mem, stop, bus_lock, partition=partition, tlbs=tlbs, regs=regs),
                  mem, boot)
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
