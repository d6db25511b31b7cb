"""``python -m partitions --spec SPEC.json``; the partition token comes in HVSTACK_TOKEN.

SPEC.json (written by launch.py) holds ``endpoint``, ``partition_id``, ``name``, ``vps``,
``memory_mb``, ``workloads`` and ``duration_s``.  One thread per VP, each with its own
socket; VP 0 boots the guest kernel, the others wait for it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from proto import messages as m
from proto.memory import GuestMemory
from proto.tlb import LpTlb
from proto.transport import connect

from partitions import kernel
from partitions.vp import GuestFault, Vp, VpReset, VpStopped

log = logging.getLogger("partition")


def vp_thread(spec: dict, token: str, index: int, system: kernel.System,
              stop: threading.Event, failures: list, bus_lock: threading.Lock) -> None:
    dealer = None
    try:
        dealer = connect(spec["endpoint"], "vp", spec["partition_id"], index, token=token,
                         server_key=spec.get("server_key"))
        # Guest RAM: the host page pool, through this partition's SLAT table.
        where = dealer.request(m.MemoryRequest(spec["partition_id"]))
        vp = Vp(dealer, index, GuestMemory(where.pool, where.slat), stop, bus_lock,
                partition=spec["partition_id"], tlbs=[LpTlb(p) for p in where.tlbs])
        seen_generation = 0
        while True:
            try:
                if index == 0:
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
                vp.power_on()
    except VpStopped:
        pass
    except GuestFault as e:
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
    args = ap.parse_args(argv)
    with open(args.spec) as f:
        spec = json.load(f)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format=f"%(asctime)s partition:{spec['name']} %(levelname)s %(message)s")
    token = os.environ.get("HVSTACK_TOKEN")
    if not token:
        print("python -m partitions: HVSTACK_TOKEN is not set", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda s, f: stop.set())
    signal.signal(signal.SIGINT, lambda s, f: stop.set())
    system = kernel.System(spec["name"], spec["workloads"], spec["duration_s"])
    failures: list = []
    bus_lock = threading.Lock()
    threads = [threading.Thread(target=vp_thread, name=f"vp{i}", daemon=True,
                                args=(spec, token, i, system, stop, failures, bus_lock))
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
