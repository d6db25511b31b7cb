"""``python -m root.vsp --spec SPEC.json --secret-fd N --memory-fds ID:RAM:SLAT,…``: the root
partition's kernel-side process, one per run, serving every child partition that has a
``vmbus`` section (its VMBus server and VSPs).

SPEC.json (written by the launcher into the run directory) holds ``endpoint``,
``server_key``, ``status_path`` and ``partitions``: each one's ``id``, ``name``,
``suppress`` (signal suppression, on unless the experiment turns it off), ``disk``
(``image_path``, ``size_bytes``) and ``nic`` (a port on the one virtual switch).  Its "vsp" key comes down the pipe
on descriptor N; each partition's RAM (read-write) and SLAT table (read-only) are the
descriptors ``--memory-fds`` names.  It maps only what a guest describes: a GPADL's pages
while the GPADL lives, a request's page list for that request (root/vsp/memory.py), each
page checked against the SLAT.

The process holds every child's data in flight, like the root's kernel: it is not
dumpable, it dies with the launcher (PR_SET_PDEATHSIG, set before exec), and it opens its
disk images 0600.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys

from proto import confine
from proto.transport import connect
from worker.backends import DiskFile

from root.vsp.service import VspService
from root.vsp.memory import PartitionMemory
from root.vsp import tap
from root.vsp.netvsp import NetVsp, VirtualSwitch
from root.vsp.tap import ExternalPort
from root.vsp.storvsp import StorVsp


def memory_fds(text: str) -> dict[int, tuple[int, int, int | None]]:
    """PARTITION:RAM:SLAT[:DIRTY] each (DIRTY: its dirty log, for live migration)."""
    out = {}
    for item in filter(None, text.split(",")):
        pid, ram, slat, *dirty = (int(x) for x in item.split(":"))
        out[pid] = (ram, slat, dirty[0] if dirty else None)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m root.vsp")
    ap.add_argument("--spec", required=True)
    ap.add_argument("--secret-fd", type=int, required=True, help="a pipe holding the vsp's key")
    ap.add_argument("--memory-fds", default="", help="PARTITION:RAM_FD:SLAT_FD[:DIRTY_FD],… for each partition served")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    confine.set_dumpable(False)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s vsp %(levelname)s %(message)s")
    with open(args.spec) as f:
        spec = json.load(f)
    token = confine.read_secret(args.secret_fd)
    if not token:
        print("python -m root.vsp: no key on --secret-fd", file=sys.stderr)
        return 2
    fds = memory_fds(args.memory_fds)
    dealer = connect(spec["endpoint"], "vsp", 0, 0, token=token, server_key=spec.get("server_key"))
    service = VspService(dealer, spec.get("status_path"))

    def stop(signum, frame):
        service.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    disks = []
    switch = service.switch = VirtualSwitch()
    for p in spec["partitions"]:
        ram, slat, dirty = fds[p["id"]]
        devices = []
        if p.get("disk"):
            disk = DiskFile(p["disk"]["image_path"], p["disk"]["size_bytes"])
            disks.append(disk)
            devices.append(StorVsp(disk))
        if p.get("nic"):
            # Hyper-V's prefix 00:15:5D, then the partition's id: unique on this switch.
            devices.append(NetVsp(switch, bytes([0x00, 0x15, 0x5D, 0, (p["id"] >> 8) & 0xFF, p["id"] & 0xFF]),
                                  p["name"]))
        service.add_partition(p["id"], PartitionMemory(ram, slat, dirty), devices, p.get("suppress", True))
        logging.info("partition %d (%s): offering %s", p["id"], p["name"],
                     ", ".join(type(d).__name__ for d in devices) or "nothing")
    if spec.get("external_port"):
        service.external = ExternalPort()
        if service.external.error:
            logging.warning("virtual switch: %s; running without it", service.external.error)
            service.external = None
        else:
            switch.attach(service.external)
            logging.info("virtual switch: external port %s in %s", tap.ADDRESS, service.external.netns)
    print("READY", flush=True)
    try:
        service.serve()
    finally:
        for d in disks:
            d.close()
        dealer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
