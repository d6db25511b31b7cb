"""The topology's per-section checks: the real-CPU backend (``cpu``, ``firmware``, ``kernel``),
a Linux kernel's ``initrd`` and ``cmdline``, a partition's ``vmbus`` table and where its
synthetic disk lives, and the I/O ports a device claims.  ``root.topology.load_topology``
calls them with its ``err`` and ``get``, which name the file, line and key.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from worker.devices.config import DEVICE_TYPES

if TYPE_CHECKING:
    from root.topology import PartitionConfig


def real_cpu(p: dict, t: str, i: int, base_dir: Path | None, err, get) -> tuple[str, str | None, str | None]:
    """``cpu = "python" | "unicorn" | "kvm"`` (or ``backend`` beside the CPU controls in a
    ``cpu = {…}`` table), ``firmware`` and ``kernel``: (backend, firmware, kernel).  A
    backend or firmware this host lacks is refused here, with the reason.  (``err`` and
    ``get`` are the parser's, which name the file and line.)"""
    from partitions.cpu import BACKENDS, unavailable
    from partitions.cpu.boot import kernel_path, seabios_missing
    raw = p.get("cpu", "python")
    if not isinstance(raw, str):
        get(p, "cpu", dict, t, i)  # a table of CPU controls, or an error saying so
    backend = raw.get("backend", "python") if isinstance(raw, dict) else raw
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise err(t, i, "cpu", f"{backend!r}: a backend is one of {', '.join(BACKENDS)} "
                               "(or a table of reserve, limit, weight)")
    firmware = get(p, "firmware", str, t, i, None)
    kernel = get(p, "kernel", str, t, i, None)
    if backend == "python":
        for key, value in (("firmware", firmware), ("kernel", kernel)):
            if value is not None:
                raise err(t, i, key, "needs a real CPU: cpu = \"unicorn\" or \"kvm\"")
        return backend, None, None
    why = unavailable(backend)
    if why:
        raise err(t, i, "cpu", f"{backend!r} cannot run here: {why}")
    if (firmware is None) == (kernel is None):
        raise err(t, i, "cpu", f"cpu = {backend!r} runs real x86 code: give firmware = \"seabios\" or kernel = PATH (one)")
    if firmware is not None:
        if firmware != "seabios":
            raise err(t, i, "firmware", f"unknown {firmware!r} (known: seabios)")
        missing = seabios_missing()
        if missing:
            raise err(t, i, "firmware", missing)
    if kernel is not None and not kernel_path(kernel, str(base_dir) if base_dir else None).is_file():
        raise err(t, i, "kernel", f"{kernel!r}: no such file (or test kernel: hvtest32)")
    if get(p, "vps", int, t, i, 1) != 1 and firmware is None:
        # Application processors wait for a startup IPI, which firmware sends; a kernel of
        # ours is entered on the BSP and starts none.
        raise err(t, i, "vps", f"cpu = {backend!r} with a kernel runs one VP (more need firmware = \"seabios\")")
    return backend, firmware, kernel


def linux_args(p: dict, t: str, i: int, kernel: str | None, base_dir: Path | None, err, get) -> tuple:
    """``initrd`` and ``cmdline``, for a Linux kernel (a bzImage) only."""
    from partitions.cpu.boot import kernel_path
    from partitions.cpu.linux import is_bzimage
    initrd, cmdline = get(p, "initrd", str, t, i, None), get(p, "cmdline", str, t, i, None)
    if initrd is None and cmdline is None:
        return None, None
    where = str(base_dir) if base_dir else None
    if kernel is None or not is_bzimage(kernel_path(kernel, where).read_bytes()[:0x300]):
        raise err(t, i, "initrd" if initrd is not None else "cmdline", "needs kernel = a Linux bzImage")
    if initrd is not None and not kernel_path(initrd, where).is_file():
        raise err(t, i, "initrd", f"{initrd!r}: no such file")
    return initrd, cmdline


def device_ports(spec: dict) -> list[int]:
    """Every I/O port a device of the topology claims, from the worker's config for it
    (``ValueError`` for a value the config refuses)."""
    cls = DEVICE_TYPES[spec["type"]].config
    names = {f.name for f in dataclasses.fields(cls)}
    config = cls(**{k: v for k, v in spec.items() if k in names})
    return [port for r in config.ports() for port in range(r.base, r.base + r.count)]


VMBUS_FORM = "must be { disk = { size_mb = N[, image = \"path\"] }, nic = {}[, signal_suppression = true|false] }"


def vmbus_section(raw: dict | None, enlightenments: list[str], base_dir: Path | None, err) -> dict | None:
    """A partition's ``vmbus`` table: the synthetic devices the root's VSP process offers it
    (issue 10).  Its disk image is a raw image, the ATA disk's format; without ``image``
    it is ``vmbus-disk-PARTITION.img`` in the run directory."""
    if raw is None:
        return None
    if set(raw) - {"disk", "nic", "signal_suppression"}:
        raise err("vmbus", f"unknown {sorted(set(raw) - {'disk', 'nic', 'signal_suppression'})[0]!r}: {VMBUS_FORM}")
    nic = raw.get("nic")
    if nic is not None and nic != {}:
        raise err("vmbus", f"nic {VMBUS_FORM} (a synthetic NIC takes no settings: its MAC address is "
                           f"00:15:5d:00:00:ID)")
    for needed in ("hypercall", "synic"):
        if needed not in enlightenments:
            raise err("vmbus", f"VMBus needs enlightenments to include {needed!r} (the guest posts messages "
                               f"and signals events by hypercall through the SynIC)")
    suppression = raw.get("signal_suppression", True)
    if not isinstance(suppression, bool):
        raise err("vmbus", f"signal_suppression = {suppression!r} is not true or false")
    out: dict = {"signal_suppression": suppression, **({"nic": {}} if nic is not None else {})}
    disk = raw.get("disk")
    if disk is not None:
        if not isinstance(disk, dict) or set(disk) - {"image", "size_mb"}:
            raise err("vmbus", f"disk {VMBUS_FORM}")
        image, size = disk.get("image"), disk.get("size_mb", 64)
        if image is not None and (not isinstance(image, str) or not image):
            raise err("vmbus", f"disk image {image!r} is not a path")
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 1 << 20:
            raise err("vmbus", f"disk size_mb {size!r} is outside 1..1048576")
        if image is not None and (base_dir is not None or Path(image).is_absolute()):
            where = Path(image) if Path(image).is_absolute() else base_dir / image
            if not where.parent.is_dir():
                raise err("vmbus", f"disk image {image!r}: no directory {where.parent}")
            if where.is_dir():
                raise err("vmbus", f"disk image {image!r} is a directory")
        out["disk"] = {"size_mb": size, **({"image": image} if image is not None else {})}
    return out


def vmbus_disk_image(pc: PartitionConfig, run_dir: Path, base_dir: Path) -> Path | None:
    """Where a partition's synthetic disk lives (as worker_devices places the ATA one's)."""
    disk = (pc.vmbus or {}).get("disk")
    if not disk:
        return None
    image = Path(disk["image"]) if disk.get("image") else run_dir / f"vmbus-disk-{pc.name}.img"
    return image if image.is_absolute() else base_dir / image


def host_sections(raw, parts: list, err, get) -> list[dict] | None:
    """``[[host]]`` sections (issue 13; root/cluster.py runs them): each a hypervisor with its
    own LPs (``lps``) and room for partitions that migrate in (``memory_mb``; default: every
    partition of the other hosts); then every partition names one (``host = "NAME"``).
    None where the topology has none — and then no partition may name one."""
    t = "host"
    if raw is None:
        for i, pc in enumerate(parts):
            if pc.host is not None:
                raise err("partition", i, "host", f"{pc.host!r}: the topology has no [[host]] sections")
        return None
    if not isinstance(raw, list) or not raw:
        raise err("", None, "host", "must be an array of tables ([[host]])")
    hosts: list[dict] = []
    for i, h in enumerate(raw):
        if not isinstance(h, dict):
            raise err(t, i, None, f"must be a table, got {type(h).__name__} {h!r}")
        for k in h:
            if k not in ("name", "lps", "memory_mb"):
                raise err(t, i, k, "unknown key (allowed: lps, memory_mb, name)")
        name = get(h, "name", str, t, i, required=True)
        from root.topology import NAME_RE
        if not NAME_RE.match(name) or len(name) > 8:
            raise err(t, i, "name", f"{name!r} must be lowercase letters, digits, - or _ (≤8: it names a "
                                    "network namespace's interfaces)")
        if any(o["name"] == name for o in hosts):
            raise err(t, i, "name", f"{name!r} is used by another host")
        lps = get(h, "lps", int, t, i, 1)
        if not 1 <= lps <= 64:
            raise err(t, i, "lps", f"{lps} is outside 1..64")
        memory = get(h, "memory_mb", int, t, i, None)
        if memory is not None and not 0 <= memory <= 65536:
            raise err(t, i, "memory_mb", f"{memory} is outside 0..65536")
        hosts.append({"name": name, "lps": lps, "memory_mb": memory})
    known = [h["name"] for h in hosts]
    for i, pc in enumerate(parts):
        if pc.host is None:
            raise err("partition", i, None, f"partition {pc.name!r} names no host (host = \"NAME\"; the topology "
                                            f"has hosts {', '.join(known)})")
        if pc.host not in known:
            raise err("partition", i, "host", f"unknown host {pc.host!r} (known: {', '.join(known)})")
    return hosts
