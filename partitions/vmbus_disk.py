"""The synthetic-disk workloads: ``vmbus_disk`` (verified rounds, printed on the console as
the ATA workload's are) and ``vmbus_diskbench`` (the measurements benchmarks/vmbus.py
reads back from the VP's counters).

Both bring the bus up on first use (VP 0): SynIC, VMBus connect and offers, the SCSI
channel open, storvsc initialised, READ CAPACITY.  Buffers are QUEUE_DEPTH × 64 KiB of
guest RAM at DATA_GPA, above the VMBus pages.
"""

from __future__ import annotations

import random
import time

from proto.vmbus import HV_SCSI_GUID

from partitions.drivers.ata import SECTOR, AtaError
from partitions.drivers.storvsc import BLOCK, ScsiError, Storvsc
from partitions import vmbus_resume
from partitions.drivers.vmbus import Vmbus, VmbusError, offered
from partitions.vp import Vp

DATA_GPA = 0x300000
QUEUE_DEPTH = 8
BIG, SMALL = 64 * 1024, 4 * 1024
ROUND_INTERVAL_S = 0.5
AREA_BYTES = 32 << 20  # the part of the disk the rounds write
ROUND_KINDS = (("sequential", SMALL), ("random", SMALL), ("sequential", BIG), ("random", BIG))
# vmbus_diskbench's phases: requests in each
BENCH_QD1, BENCH_QD8, BENCH_LAT = 48, 192, 200
ATA_BENCH_BYTES = 64 * 1024  # enough to time now that a sector is one REP OUTSD exit


class Disk:
    """One partition's synthetic disk as its workloads use it."""

    def __init__(self, bus: Vmbus, sc: Storvsc) -> None:
        self.bus, self.sc = bus, sc


def vmbus_bus(vp: Vp, sys) -> Vmbus | None:
    """The partition's VMBus connection (once per boot; the disk and NIC workloads share
    it): SynIC, INITIATE_CONTACT, the offers.  None where VMBus is not to be had."""
    state = sys.timers.get("vmbus_bus")
    if state is not None and state[0] == sys.booted_generation:
        return state[1]
    bus = vmbus_resume.resume_bus(vp, sys)  # a resumed kernel's connection, from its checkpoint
    if bus is not None:
        sys.timers["vmbus_bus"] = (sys.booted_generation, bus)
        return bus
    if not offered(sys):
        sys.console(vp, f"[{sys.name}] vmbus: not offered (needs the SynIC, PostMessages, SignalEvents "
                        f"and the hypercall page)")
    else:
        try:
            bus = Vmbus()
            bus.init_synic(vp, sys)
            version = bus.connect(vp)
            sys.console(vp, f"[{sys.name}] vmbus: version {version >> 16}.{version & 0xFFFF}, "
                            f"{len(bus.offers)} offer(s)")
            vmbus_resume.remember_bus(sys, bus)
        except VmbusError as e:
            sys.console(vp, f"[{sys.name}] vmbus: {e}")
            bus = None
    sys.timers["vmbus_bus"] = (sys.booted_generation, bus)
    return bus


def bring_up(vp: Vp, sys) -> Disk | None:
    state = sys.timers.get("vmbus_disk_state")
    if state is not None and state[0] == sys.booted_generation:
        return state[1]
    disk = None
    bus = vmbus_bus(vp, sys)
    sc = vmbus_resume.resume_disk(vp, sys, bus) if bus is not None else None
    if sc is not None:  # a resumed kernel's channel and storvsc, from its checkpoint
        disk = Disk(bus, sc)
        sys.console(vp, f"[{sys.name}] vmbus: storvsc on channel {sc.ch.relid} resumed from the checkpoint")
    elif bus is not None:
        try:
            scsi = [o for o in bus.offers if o["if_type"] == HV_SCSI_GUID]
            if not scsi:
                raise VmbusError("no synthetic SCSI controller offered")
            ch = bus.open(vp, scsi[0], suppress=getattr(sys, "vmbus_config", {}).get("signal_suppression", True))
            sc = Storvsc(ch)
            sc.init(vp)
            sc.read_capacity(vp, DATA_GPA)
            disk = Disk(bus, sc)
            sys.console(vp, f"[{sys.name}] vmbus: storvsc protocol {sc.version >> 8}.{sc.version & 0xFF} "
                            f"on channel {ch.relid}: {sc.blocks * BLOCK >> 20} MiB")
            vmbus_resume.remember_disk(sys, sc)
        except (VmbusError, ScsiError) as e:
            sys.console(vp, f"[{sys.name}] vmbus: {e}")
    sys.timers["vmbus_disk_state"] = (sys.booted_generation, disk)
    return disk


def _pattern(name: str, rnd: int, lba: int, size: int) -> bytes:
    head = f"{name} vmbus round {rnd:06d} lba {lba:08d} ".encode()
    return (head * (size // len(head) + 1))[:size]


def wl_vmbus_disk(vp: Vp, sys) -> int:
    """Every 0.5 s (VP 0): QUEUE_DEPTH writes (sequential or random, 4 KiB or 64 KiB, in
    turn), SYNCHRONIZE CACHE, the same reads into zeroed buffers, compared."""
    if vp.index != 0:
        return 0
    now = time.monotonic()
    if now - sys.timers.get("vmbus_disk", 0.0) < ROUND_INTERVAL_S:
        return 0
    sys.timers["vmbus_disk"] = now
    disk = bring_up(vp, sys)
    if disk is None:
        return 0
    rnd = sys.timers.get("vmbus_disk_round", 0)
    sys.timers["vmbus_disk_round"] = rnd + 1
    kind, size = ROUND_KINDS[rnd % len(ROUND_KINDS)]
    slots = min(AREA_BYTES, disk.sc.blocks * BLOCK) // size
    if kind == "sequential":
        first = (rnd * QUEUE_DEPTH) % max(1, slots - QUEUE_DEPTH)
        lbas = [(first + i) * size // BLOCK for i in range(QUEUE_DEPTH)]
    else:
        lbas = [s * size // BLOCK for s in random.Random(rnd).sample(range(slots), QUEUE_DEPTH)]
    reqs = [(lba, size, DATA_GPA + i * BIG) for i, lba in enumerate(lbas)]
    patterns = [_pattern(sys.name, rnd, lba, size) for lba in lbas]
    exits, t0 = vp.exits, time.perf_counter_ns()
    signals = disk.sc.ch.signals_sent
    try:
        for (_, _, gpa), data in zip(reqs, patterns):
            vp.mem.write(gpa, data)
        disk.sc.rw(vp, True, reqs)
        disk.sc.flush(vp)
        for _, _, gpa in reqs:
            vp.mem.write(gpa, bytes(size))
        disk.sc.rw(vp, False, reqs)
    except (VmbusError, ScsiError) as e:
        sys.console(vp, f"[{sys.name}] vmbus_disk: {e}")
        sys.timers["vmbus_disk_state"] = (sys.booted_generation, None)
        return 0
    ok = all(vp.mem.read(gpa, size) == data for (_, _, gpa), data in zip(reqs, patterns))
    vmbus_resume.remember_disk(sys, disk.sc)  # (its transaction id moved)
    c = vp.counters
    c["vmbus_disk_bytes"] = c.get("vmbus_disk_bytes", 0) + 2 * size * QUEUE_DEPTH
    c["vmbus_disk_ns"] = c.get("vmbus_disk_ns", 0) + time.perf_counter_ns() - t0
    c["vmbus_disk_rounds"] = c.get("vmbus_disk_rounds", 0) + 1
    if not ok:
        c["vmbus_disk_errors"] = c.get("vmbus_disk_errors", 0) + 1
    sys.console(vp, f"[{sys.name}] vmbus_disk: round {rnd} {kind} {size // 1024} KiB x{QUEUE_DEPTH} "
                    f"lba {lbas[0]}: {'verified' if ok else 'MISMATCH'}; {vp.exits - exits} exits, "
                    f"{disk.sc.ch.signals_sent - signals} signals to the host for 3 ring writes")
    return QUEUE_DEPTH


def _phase(vp: Vp, disk: Disk, name: str, batches: list[list[tuple[int, int, int]]]) -> dict:
    """Write every batch (a batch = the requests outstanding at once), then SYNCHRONIZE
    CACHE; the figures go into the VP's counters under ``vmbus_NAME_*``."""
    sc, bus = disk.sc, disk.bus
    sig0, irq0, exits0 = sc.ch.signals_sent, bus.interrupts, vp.exits
    submit0, wait0, halts0 = sc.submit_ns, sc.wait_ns, sc.halts
    lat: list[int] = []
    t0 = time.perf_counter_ns()
    for batch in batches:
        t = time.perf_counter_ns()
        sc.rw(vp, True, batch)
        lat.append(time.perf_counter_ns() - t)
    sc.flush(vp)
    ns = time.perf_counter_ns() - t0
    requests = sum(len(b) for b in batches)
    lat.sort()
    out = {"bytes": sum(n for b in batches for _, n, _ in b), "ns": ns, "requests": requests,
           "guest_signals": sc.ch.signals_sent - sig0, "host_interrupts": bus.interrupts - irq0,
           "exits": vp.exits - exits0, "submit_ns": sc.submit_ns - submit0, "wait_ns": sc.wait_ns - wait0,
           "halts": sc.halts - halts0, "p50_ns": lat[len(lat) // 2],
           "p99_ns": lat[min(len(lat) - 1, len(lat) * 99 // 100)]}
    vp.counters.update({f"vmbus_{name}_{k}": v for k, v in out.items()})
    return out


def wl_vmbus_diskbench(vp: Vp, sys) -> int:
    """Once (VP 0): 64 KiB sequential writes at queue depth 1 and 8, 4 KiB random writes at
    queue depth 1 (latency), each phase ending with SYNCHRONIZE CACHE; then, where the
    partition also has an ATA disk, the same kind of writes through it.  Then idle."""
    if vp.index != 0 or sys.timers.get("vmbus_bench_done"):
        return 0
    sys.timers["vmbus_bench_done"] = 1
    disk = bring_up(vp, sys)
    if disk is None:
        return 0
    for i in range(QUEUE_DEPTH):
        vp.mem.write(DATA_GPA + i * BIG, _pattern(sys.name, 0, i, BIG))
    try:
        qd1 = _phase(vp, disk, "qd1", [[(i * BIG // BLOCK, BIG, DATA_GPA)] for i in range(BENCH_QD1)])
        qd8 = _phase(vp, disk, "qd8", [[((j * QUEUE_DEPTH + i) * BIG // BLOCK, BIG, DATA_GPA + i * BIG)
                                        for i in range(QUEUE_DEPTH)] for j in range(BENCH_QD8 // QUEUE_DEPTH)])
        rng = random.Random(1)
        slots = min(AREA_BYTES, disk.sc.blocks * BLOCK) // SMALL
        lat = _phase(vp, disk, "lat4k", [[(rng.randrange(slots) * SMALL // BLOCK, SMALL, DATA_GPA)]
                                         for _ in range(BENCH_LAT)])
    except (VmbusError, ScsiError) as e:
        sys.console(vp, f"[{sys.name}] vmbus_diskbench: {e}")
        return 0
    mbs = lambda r: r["bytes"] / r["ns"] * 1e3  # noqa: E731  MB/s
    sys.console(vp, f"[{sys.name}] vmbus_diskbench: 64 KiB writes QD1 {mbs(qd1):.1f} MB/s, QD8 {mbs(qd8):.1f} MB/s "
                    f"({(qd8['guest_signals'] + qd8['host_interrupts']) / qd8['requests']:.3f} signals per request); "
                    f"4 KiB QD1 p50 {lat['p50_ns'] / 1e3:.0f} us p99 {lat['p99_ns'] / 1e3:.0f} us")
    if getattr(sys, "ata", None) is not None and sys.timers.get("disk") != float("inf"):
        _ata_phase(vp, sys)
    return 1


def _ata_phase(vp: Vp, sys) -> None:
    """The emulated disk beside it: ATA_BENCH_BYTES of sequential PIO writes and FLUSH CACHE."""
    data = _pattern(sys.name, 0, 0, ATA_BENCH_BYTES)
    exits, t0 = vp.exits, time.perf_counter_ns()
    try:
        for off in range(0, ATA_BENCH_BYTES, 8 * SECTOR):
            sys.ata.write(vp, off // SECTOR, data[off:off + 8 * SECTOR])
        sys.ata.flush(vp)
    except AtaError as e:
        sys.console(vp, f"[{sys.name}] vmbus_diskbench: no ATA disk to compare ({e})")
        return
    ns = time.perf_counter_ns() - t0
    vp.counters.update(vmbus_ata_bytes=ATA_BENCH_BYTES, vmbus_ata_ns=ns, vmbus_ata_exits=vp.exits - exits)
    sys.console(vp, f"[{sys.name}] vmbus_diskbench: ATA PIO writes {ATA_BENCH_BYTES / ns * 1e6:.1f} KB/s, "
                    f"{vp.exits - exits} exits")
