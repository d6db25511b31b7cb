"""``python -m partitions --spec SPEC.json --secret-fd N [--memory-fd M --slat-fd S
--tlb-fds T0,T1… --posted-fd P] [--uid U --gid G | --namespaces]``.

SPEC.json (written by launch.py) holds ``endpoint``, ``partition_id``, ``name``, ``vps``,
``memory_mb``, ``workloads`` and ``duration_s``.  One thread per VP, each with its own
socket; VP 0 boots the guest kernel, the others wait for it.  The partition's VP token
comes down the pipe on descriptor N; its RAM (read-write), SLAT table (read-only) and TLB
on each LP are descriptors the launcher opened (else the VPs ask the hypervisor where the
files are and open them).

A partition process runs guest code, so it is the process to confine first: with
``--uid`` it connects every VP's socket, then drops to its own uid (no capabilities,
``no_new_privs``; :mod:`proto.confine`) before any VP says hello or runs a guest
instruction.  After that it can reach its own memory and its own sockets, nothing else.
With ``--namespaces`` (not root) it hides the runs root in namespaces of its own first.
Either way a seccomp filter then keeps it off every other process
(:func:`proto.confine.start_confined`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import sys
import threading

import msgpack

from proto import confine
from proto import messages as m
from proto.memory import GuestMemory
from proto.tlb import LpTlb
from proto.posted import MAX_VPS as MAX_POSTED_VPS, VpDescriptor
from proto.transport import Dealer, connect
from proto.guest_state import GuestStateError

from partitions import kernel, resume
from partitions.vp import GuestFault, Vp, VpReset, VpStopped

log = logging.getLogger("partition")
VP_START_TIMEOUT_MS = 60_000  # a VP's hello waits for its start (the root's WORKER_READY_TIMEOUT_S and more)


def migrated_registers(fd: int, vps: int) -> list:
    """A migrated real-CPU partition's register files: msgpack after the go's "g", up to
    the pipe's end (root/incoming.py); one per VP (the backend checks each as it restores it)."""
    data = b""
    while select.select([fd], [], [], confine.GO_TIMEOUT_S)[0]:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        data += chunk
    try:
        state = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException):
        state = None
    if not isinstance(state, list) or len(state) != vps or not all(isinstance(r, dict) for r in state):
        raise SystemExit("python -m partitions: no register file for each VP after the go")
    return state


def vp_thread(spec: dict, token: str, index: int, system: kernel.System,
              stop: threading.Event, failures: list, bus_lock: threading.Lock,
              socket: Dealer, memory: tuple | None, boot=None) -> None:
    dealer = None
    try:
        # The hello's reply comes when the root starts the VP, after the partition's worker
        # is ready (root/run.py starts this process meanwhile): wait as long as that may take.
        dealer = connect(spec["endpoint"], "vp", spec["partition_id"], index, token=token, dealer=socket,
                         timeout_ms=VP_START_TIMEOUT_MS)
        if memory is None:
            # Guest RAM: the partition's own file, through its SLAT table.
            where = dealer.request(m.MemoryRequest(spec["partition_id"]))
            memory = (GuestMemory(where.ram, where.slat), [LpTlb(p) for p in where.tlbs], None)
        if boot is not None:  # real x86 code on a real-CPU backend (partitions/cpu)
            from partitions.cpu.run import run_vp
            saved = (spec.get("cpu_state") or [None] * spec["vps"])[index]  # a restored partition's
            run_vp(spec["cpu"], boot, dealer, index, memory[0], stop, bus_lock, spec["partition_id"], memory[1],
                   saved=saved)
            return
        # Its posted-interrupt descriptor, if the hypervisor made the partition one (proto/posted.py).
        posted = VpDescriptor(memory[2], index) if memory[2] is not None and index < MAX_POSTED_VPS else None
        vp = Vp(dealer, index, memory[0], stop, bus_lock, partition=spec["partition_id"], tlbs=memory[1],
                coalesced=system.coalesced, posted=posted)
        seen_generation = 0
        saved = None
        if spec.get("resume"):  # restored from a saved record: the kernel state is in RAM
            saved = resume.read_state(vp)
            resume.resume_vp(vp, saved, system)
        system.resume_vps[index] = vp
        while True:
            try:
                if index == 0 and saved is not None:
                    saved, state = None, saved  # a reset after this boots afresh
                    resume.bsp_resume(vp, system, state)
                elif index == 0:
                    kernel.bsp_main(vp, system)
                else:
                    kernel.ap_main(vp, system, seen_generation)
                return
            except VpReset as reset:
                # INIT: the VP starts over at its reset vector; RAM keeps its contents, as
                # after a warm reset.  An AP waits for the BSP's boot after this reset (the
                # first boot is generation 1, the boot after reset n is generation n + 1).
                log.info("VP %d: %s", index, reset)
                seen_generation = reset.generation
                vp.coalesced.clear()
                vp.power_on()
    except VpStopped:
        pass
    except (GuestFault, GuestStateError) as e:
        log.error("VP %d: %s", index, e)
        failures.append(e)
    except Exception as e:  # a bug in guest or VP code: record it and end the partition
        log.exception("VP %d crashed", index)
        failures.append(e)
    finally:
        if dealer is not None:
            dealer.close()
        if failures:
            stop.set()  # one VP failing ends the partition, and the launcher sees it exit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m partitions")
    ap.add_argument("--spec", required=True)
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--secret-fd", type=int, required=True, help="a pipe holding the partition's VP token")
    ap.add_argument("--memory-fd", type=int, help="the partition's RAM, open read-write")
    ap.add_argument("--slat-fd", type=int, help="the partition's SLAT table, open read-only")
    ap.add_argument("--dirty-fd", type=int, help="the partition's dirty log, open read-write (live migration)")
    ap.add_argument("--go-fd", type=int,
                    help="started ahead (an incoming migration): say READY once its namespaces are made, and "
                         "connect the VPs and say their hellos only once the launcher writes 'g' here")
    ap.add_argument("--tlb-fds", help="the partition's TLB file on each LP, comma-separated")
    ap.add_argument("--posted-fd", type=int, help="the partition's posted-interrupt descriptors, open read-write")
    ap.add_argument("--uid", type=int, help="drop to this uid once connected")
    ap.add_argument("--gid", type=int)
    ap.add_argument("--namespaces", action="store_true",
                    help="not root: hide the runs root in namespaces of this process's own first")
    args = ap.parse_args(argv)
    with open(args.spec) as f:
        spec = json.load(f)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format=f"%(asctime)s partition:{spec['name']} %(levelname)s %(message)s")
    token = confine.read_secret(args.secret_fd)
    if not token:
        print("python -m partitions: no token on --secret-fd", file=sys.stderr)
        return 2
    memory = None
    if args.memory_fd is not None:
        tlbs = [LpTlb(int(fd)) for fd in args.tlb_fds.split(",")] if args.tlb_fds else None
        memory = (GuestMemory(args.memory_fd, args.slat_fd, args.dirty_fd), tlbs, args.posted_fd)
    boot = None
    if spec.get("cpu", "python") != "python":
        # Firmware or kernel read before confinement (it need only be readable by whoever
        # starts the process).
        from partitions.cpu import boot as cpu_boot, unavailable
        why = unavailable(spec["cpu"])
        try:
            if why:
                raise cpu_boot.BootError(f"cpu = {spec['cpu']!r}: {why}")
            boot = cpu_boot.prepare(spec)
            if spec["cpu"] == "kvm":
                from partitions.cpu.kvm_cpu import before_confinement
                before_confinement(boot)
        except (cpu_boot.BootError, OSError) as e:
            print(f"python -m partitions: {e}", file=sys.stderr)
            return 2
    # Every VP's socket connected while the run's socket can be reached; then confined.
    # An incoming migration's partition waits for its go before its VPs connect: its
    # start-up is not in the downtime, and they connect once its state has arrived (the
    # hypervisor takes a restore only before, and shuts down a connection silent too long).
    sockets = confine.start_confined(args.spec, spec, spec["vps"], uid=args.uid, gid=args.gid,
                                     namespaces=args.namespaces, log=log,
                                     wait_go=None if args.go_fd is None else lambda: confine.ready_go(args.go_fd))
    if sockets is None:
        log.info("not needed after all: the launcher closed --go-fd")
        return 0
    if args.go_fd is not None:
        if spec.get("cpu", "python") != "python":
            spec["cpu_state"] = migrated_registers(args.go_fd, spec["vps"])
    if boot is not None and spec.get("cpu_state") and "regions" in spec["cpu_state"][0]:
        from partitions.cpu import boot as cpu_boot
        try:  # firmware's shadow RAM as saved, before any VP runs (a restored VP does not reload it)
            cpu_boot.restore_regions(boot, spec["cpu_state"][0]["regions"])
        except cpu_boot.BootError as e:
            print(f"python -m partitions: {e}", file=sys.stderr)
            return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda s, f: stop.set())
    signal.signal(signal.SIGINT, lambda s, f: stop.set())
    system = kernel.System(spec["name"], spec["workloads"], spec["duration_s"])
    system.vmbus_config = spec.get("vmbus") or {}  # the topology's vmbus section (partitions/vmbus_disk.py)
    system.resume_vps = [None] * spec["vps"]
    system.checkpoint = resume.checkpoint  # the kernel's state into its RAM, for a save
    failures: list = []
    bus_lock = threading.Lock()
    threads = [threading.Thread(target=vp_thread, name=f"vp{i}", daemon=True,
                                args=(spec, token, i, system, stop, failures, bus_lock, sockets[i], memory, boot))
               for i in range(spec["vps"])]
    for t in threads:
        t.start()
    # The main thread only waits: for a signal, or for a VP to fail.
    while not stop.wait(0.2):
        if not any(t.is_alive() for t in threads):
            break
    stop.set()
    for t in threads:
        t.join(timeout=5)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
