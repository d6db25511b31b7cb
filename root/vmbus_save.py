"""A VMBus partition's part of ``ctl save`` / ``run --restore`` / a migration (issue 13): its
bus as the root's VSP process keeps it (the ``vmbus`` section, :mod:`proto.vmbus_state`,
relayed by the hypervisor: ``vsp_state_request``) and its synthetic disk's contents (in
the ``disks`` section as :data:`DISK_NAME`, beside the ATA disks).

At a save the VSP completes every request in the partition's rings first (none is in
flight in a record) and leaves poll mode (root/vsp/saved.py); this is asked *before* the
hypervisor's state and the memory are taken, so that the completions it wrote into the
guest's rings, and the event flags and SINTs they signalled, are in them.
"""

from __future__ import annotations

import json
import os

from pathlib import Path

import msgpack

from proto import messages as m
from proto import partition_state as ps
from proto.errors import HvstackError, Refused
from root.topology import PartitionConfig
from root.topology_sections import vmbus_disk_image

DISK_NAME = "vmbus_disk"
TIMEOUT_MS = 10_000


def offered(pc: PartitionConfig) -> list[str]:
    """The device kinds the VSP offers this partition, in relid order (root/vsp/__main__.py)."""
    v = pc.vmbus or {}
    return [k for k, present in (("storvsp", v.get("disk")), ("netvsp", "nic" in v)) if present]


def _image(run_dir, pid: int) -> str | None:
    """The partition's synthetic disk image as the run's VSP has it (its spec, vsp.json)."""
    spec = json.loads((run_dir / "vsp.json").read_text())
    part = next((p for p in spec["partitions"] if p["id"] == pid), None)
    return part and part["disk"] and part["disk"]["image_path"]


def capture(root, run_dir, pc: PartitionConfig, pid: int) -> tuple[dict, dict]:
    """(the ``vmbus`` section, {DISK_NAME: its image's bytes} or {}) of the paused partition."""
    try:
        reply = root.dealer.request(m.VspStateRequest(pid, "save", b""), TIMEOUT_MS)
    except Refused as e:
        raise HvstackError(f"partition {pc.name}: the VSP did not save its bus: {e.reason}") from None
    if not isinstance(reply, m.VspStateReply) or reply.error:
        raise HvstackError(f"partition {pc.name}: the VSP did not save its bus: {getattr(reply, 'error', reply)}")
    state = ps.check_vmbus(msgpack.unpackb(reply.state, raw=False, strict_map_key=True))
    image = _image(run_dir, pid)
    disks = {}
    if image is not None:
        with open(image, "rb") as f:
            disks[DISK_NAME] = f.read()
    return state, disks


def check(pc: PartitionConfig, record: dict, base_dir, where: str) -> None:
    """Refuse a record whose bus or synthetic disk does not fit ``pc``: a VMBus partition's
    record without its bus, a bus offering other devices, a disk of another size — or, where
    the topology names the image (shared storage), another image."""
    from root.partition_save import RestoreRefused, _sha256

    sections = record["sections"]
    if (pc.vmbus is None) != ("vmbus" not in sections):
        raise RestoreRefused(f"{where}: the partition {'has no' if pc.vmbus is None else 'has a'} VMBus here, "
                             f"the record {'a' if 'vmbus' in sections else 'no'} VMBus section")
    if pc.vmbus is None:
        return
    saved = [o["device"] for o in sorted(sections["vmbus"]["offers"], key=lambda o: o["relid"])]
    if saved != offered(pc):
        raise RestoreRefused(f"{where}: vmbus devices: saved {saved}, topology {offered(pc)}")
    image = vmbus_disk_image(pc, Path("/nonexistent-run"), Path(base_dir))  # (a named image's path is all it needs)
    disk = sections["disks"].get(DISK_NAME)
    if (image is None) != (disk is None):
        raise RestoreRefused(f"{where}: the synthetic disk is {'absent' if image is None else 'present'} here, "
                             f"{'absent' if disk is None else 'present'} in the record")
    if disk is None:
        return
    size = pc.vmbus["disk"]["size_mb"] << 20
    if disk["size"] != size:
        raise RestoreRefused(f"{where}: the synthetic disk is {size} bytes here, {disk['size']} in the record")
    if pc.vmbus["disk"].get("image") and _sha256(image) != disk["sha256"]:
        raise RestoreRefused(f"{where}: the disk image {image} is not the one saved with the partition "
                             "(its SHA-256 differs)")


def restore(root, run_dir, pc: PartitionConfig, pid: int, record: dict) -> None:
    """Once the VSP runs and before the partition's VPs do: the synthetic disk's contents
    (one in the run directory; a named one was checked to be the saved one), then the bus."""
    from root.partition_save import RestoreRefused

    sections = record["sections"]
    image = _image(run_dir, pid)
    if image is not None and not pc.vmbus["disk"].get("image"):
        data = ps.disk_contents(DISK_NAME, sections["disks"][DISK_NAME])
        # In place: the VSP has the image open already (it made it, sparse, at its start).
        fd = os.open(image, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)
    blob = msgpack.packb(sections["vmbus"], use_bin_type=True)
    try:
        reply = root.dealer.request(m.VspStateRequest(pid, "restore", blob), TIMEOUT_MS)
    except Refused as e:
        raise RestoreRefused(f"the VSP refused the saved bus: {e.reason}") from None
    if not isinstance(reply, m.VspStateReply) or reply.error:
        raise RestoreRefused(f"the VSP refused the saved bus: {getattr(reply, 'error', reply)}")
