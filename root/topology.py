"""Topologies: the TOML schema, its defaults, and checks whose errors name file, line and key.

A topology names logical processors and partitions (VPs, memory, devices, enlightenments,
workloads).  The device types, their settings and the chipsets are the worker's device
vocabulary (``worker.devices.config``), and the workload names are the guest's
(``partitions.workloads.WORKLOADS``), so neither is repeated here.
``python launch.py`` with no topology runs ``configs/default.toml``.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from partitions.workloads import WORKLOADS as GUEST_WORKLOADS
from proto.codes import HV_CHILD_ENLIGHTENED_PRIVILEGES, HV_SPIN_RETRY_NEVER, HvPrivilege, HvRecommendation
from proto.codes import HV_STIMER_PRIVILEGES, HV_SYNIC_PRIVILEGES, HV_TSC_PAGE_PRIVILEGES
from proto.errors import ConfigError
from root import REPO
from root.topology_sections import device_ports, host_sections, linux_args, real_cpu, vmbus_section
from worker.devices.config import CHIPSETS, DEVICE_KEYS, DEVICE_TYPES, ISA_IRQS

# The default topology: two partitions on two LPs, one offered the enlightenments and one
# without (`python launch.py` runs it).
DEFAULT_CONFIG = REPO / "configs" / "default.toml"
DEFAULT_SOURCE = "<default>"

ENLIGHTENMENTS = {
    "apic": HvPrivilege.AccessApicMsrs,  # EOI/ICR/TPR MSRs and the VP assist page
    "hypercall": HvPrivilege.AccessHypercallMsrs,
    "vp_index": HvPrivilege.AccessVpIndex,
    "reference_counter": HvPrivilege.AccessPartitionReferenceCounter,
    "frequency_msrs": HvPrivilege.AccessFrequencyMsrs,  # HV_X64_MSR_APIC_FREQUENCY
}
assert sum(ENLIGHTENMENTS.values()) == HV_CHILD_ENLIGHTENED_PRIVILEGES
# Offered only where a topology names them (issue 10): the SynIC (with PostMessage and
# SignalEvent), the synthetic timers, the reference TSC page.
ENLIGHTENMENTS.update({"synic": HV_SYNIC_PRIVILEGES, "stimer": HV_STIMER_PRIVILEGES,
                       "tsc_page": HV_TSC_PAGE_PRIVILEGES})
RECOMMENDATIONS = {
    "address_space_switch_hypercall": HvRecommendation.UseHypercallForAddressSpaceSwitch,
    "local_flush_hypercall": HvRecommendation.UseHypercallForLocalFlush,
    "remote_flush_hypercall": HvRecommendation.UseHypercallForRemoteFlush,
    "apic_msrs": HvRecommendation.UseApicMsrs,
    "relaxed_timing": HvRecommendation.UseRelaxedTiming,
    "cluster_ipi": HvRecommendation.UseSyntheticClusterIpi,  # HvCallSendSyntheticClusterIpi(Ex)
    "ex_processor_masks": HvRecommendation.UseExProcessorMasks,  # the HV_VP_SET (Ex) calls
}
# VPs a partition may have here.  The hypervisor takes what an HV_VP_SET can name (4096);
# this machine's stack gives each VP a thread and a ZeroMQ connection, and the xAPIC's
# 8-bit IDs (CPUID 1 EBX, the ICR's destination) stop at 255, so a topology asks for at
# most 128: room for VP indices past 64, which need the Ex calls.
MAX_VPS = 128
# The workloads a partition may run: the guest's own table.
WORKLOADS = tuple(GUEST_WORKLOADS)
# The devices a topology may name and the settings each takes (DEVICE_KEYS), the chipsets,
# sets of devices, it may ask for (CHIPSETS), and where each device sits (its config's
# ports()): the worker's own vocabulary, imported above.  Values are checked here with the
# worker's own dataclasses, and placement (two devices on one port, an IRQ the PIC does not
# have) before anything starts, so that a mistake names the file, line and key instead of
# ending the run as "worker exited with status 1".
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
IRQ_KEYS = ("irq", "aux_irq")
DISK_FORM = ("must be { size_mb = N } (its image in the run directory) or { image = \"path\", size_mb = N }"
             ", with contents = \"bootdisk\" (or a path) to start a new image with")


@dataclass
class PartitionConfig:
    name: str
    vps: int
    memory_mb: int
    enlightenments: list[str]
    recommendations: list[str]
    spin_retry: int
    workloads: list[str]
    chipset: str
    disk: dict | None  # {"size_mb": n}, and {"image": path} when the topology names one
    devices: list[dict]  # extra devices beyond the chipset's
    cpu: dict  # {"reserve": %, "limit": %, "weight": n}, per VP, as Hyper-V's processor settings
    vmbus: dict | None = None  # {"disk": {"size_mb": n[, "image": path]}, "nic": {}, "signal_suppression": bool}
    backend: str = "python"  # what runs the guest: partitions.cpu.BACKENDS (`cpu = "unicorn"`)
    firmware: str | None = None  # "seabios" (a real-CPU backend only)
    kernel: str | None = None  # a test kernel of ours by name, or a path (a real-CPU backend only)
    initrd: str | None = None  # with a Linux kernel (a bzImage): its initramfs
    cmdline: str | None = None  # with a Linux kernel: its command line
    on_worker_exit: str = "end"  # "end": a dead worker ends the run; "restart": a new one restores (servicing)
    host: str | None = None  # the [[host]] it runs on (root/cluster.py); None in a topology without hosts

    @property
    def privileges(self) -> int:
        return sum(int(ENLIGHTENMENTS[e]) for e in self.enlightenments)

    @property
    def recommendation_bits(self) -> int:
        return sum(int(RECOMMENDATIONS[r]) for r in self.recommendations)

    def worker_devices(self, run_dir: Path, base_dir: Path) -> list[dict]:
        """The device list the worker builds: the chipset, the disk, then extra devices.
        A disk image the topology names is relative to the topology file (``base_dir``);
        one it does not name is ``disk-PARTITION.img`` in the run directory, as is the
        RTC's NVRAM.  So running a topology writes nothing beside it unless it says so."""
        devices = [dict(d) for d in CHIPSETS[self.chipset]]
        for d in devices:
            if d["type"] == "cmos_rtc":
                d["nvram_path"] = str(run_dir / f"nvram-{self.name}.bin")
        if self.disk:
            image = Path(self.disk["image"]) if self.disk.get("image") else run_dir / f"disk-{self.name}.img"
            devices.append({"type": "ata", "image_path": str(image if image.is_absolute() else base_dir / image),
                            "size_bytes": self.disk["size_mb"] << 20})
        devices.extend(dict(d) for d in self.devices)
        return devices


@dataclass
class Topology:
    source: str
    base_dir: Path | None  # the topology file's directory; None for the default and bench texts
    name: str
    duration_s: float
    logical_processors: int
    transport: str
    partitions: list[PartitionConfig]
    switch: dict | None = None  # {"external": bool}: the virtual switch's TAP port (issue 10)
    hosts: list[dict] | None = None  # [[host]]: {"name", "lps", "memory_mb"} each (root/cluster.py)

    def to_dict(self) -> dict:
        return {
            "source": self.source, "base_dir": str(self.base_dir) if self.base_dir else None,
            "name": self.name, "duration_s": self.duration_s,
            "logical_processors": self.logical_processors, "transport": self.transport,
            "partitions": [p.__dict__ for p in self.partitions],
            "switch": self.switch, "hosts": self.hosts,
        }


class _Locator:
    """Finds the line of ``key`` in table ``[table]`` (the n-th ``[[table]]``) of a TOML text,
    so a config error can name it; tomllib keeps no positions."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def line_of(self, table: str, index: int | None, key: str | None) -> int | None:
        header_line, seen, inside = None, -1, table == ""
        for no, raw in enumerate(self.lines, 1):
            line = raw.strip()
            m = re.match(r"^\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?", line)
            if m:
                if m.group(1) == table:
                    seen += 1
                    inside = index is None or seen == index
                    if inside:
                        header_line = no
                elif not m.group(1).startswith(table + ".") or not inside:
                    inside = False
                continue
            if inside and key and re.match(rf"^{re.escape(key)}\s*=", line):
                return no
        return header_line


def _config_error(path: str, loc: _Locator, table: str, index: int | None, key: str | None, why: str):
    line = loc.line_of(table, index, key)
    where = f"{path}:{line}" if line else path
    what = f"[{table}]" if index is None else f"[[{table}]] #{index + 1}"
    if table == "":
        what = "top level"
    return ConfigError(f"{where}: {what} {key + ': ' if key else ''}{why}")


def load_topology(text: str, source: str, base_dir: Path | None = None) -> Topology:
    """Parse and check a topology; every problem names the file, line and key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from e
    loc = _Locator(text)

    def err(table, index, key, why):
        return _config_error(source, loc, table, index, key, why)

    def check_keys(d, allowed, table, index):
        for k in d:
            if k not in allowed:
                raise err(table, index, k, f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def get(d, key, kind, table, index, default=None, required=False):
        if key not in d:
            if required:
                raise err(table, index, None, f"missing key {key!r}")
            return default
        v = d[key]
        ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v, ok = float(v), True
        if not ok:
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise err(table, index, key, f"expected {names}, got {type(v).__name__} {v!r}")
        return v

    def strings(values, table, index, key):
        for v in values:
            if not isinstance(v, str):
                raise err(table, index, key, f"expected a list of strings, got {type(v).__name__} {v!r} in it")
        return values

    check_keys(data, {"run", "partition", "switch", "host"}, "", None)
    run = data.get("run", {})
    if not isinstance(run, dict):
        raise err("", None, "run", "must be a table")
    check_keys(run, {"name", "duration_s", "logical_processors", "transport"}, "run", None)
    name = get(run, "name", str, "run", None, "run")
    if not NAME_RE.match(name):
        raise err("run", None, "name", f"{name!r} must be lowercase letters, digits, - or _ (≤32)")
    duration = get(run, "duration_s", float, "run", None, 3.0)
    if not 0 <= duration <= 86400:
        raise err("run", None, "duration_s", f"{duration} is outside 0..86400 (0 runs until stopped)")
    lps = get(run, "logical_processors", int, "run", None, 2)
    if not 1 <= lps <= 64:
        raise err("run", None, "logical_processors", f"{lps} is outside 1..64")
    transport = get(run, "transport", str, "run", None, "ipc")
    if transport not in ("ipc", "tcp"):
        raise err("run", None, "transport", f"{transport!r} is not 'ipc' or 'tcp'")

    raw_parts = data.get("partition", [])
    if not isinstance(raw_parts, list):
        raise err("", None, "partition", "must be an array of tables ([[partition]])")
    if not raw_parts:
        raise err("", None, None, "at least one [[partition]] is needed")
    parts: list[PartitionConfig] = []
    names = set()
    device_no = 0  # [[partition.device]] tables so far, over every partition: the locator's index
    for i, p in enumerate(raw_parts):
        t = "partition"
        if not isinstance(p, dict):
            raise err(t, i, None, f"must be a table, got {type(p).__name__} {p!r}")
        check_keys(p, {"name", "vps", "memory_mb", "enlightenments", "recommendations", "spin_retry",
                       "workloads", "chipset", "disk", "cpu", "device", "vmbus", "firmware", "kernel",
                       "initrd", "cmdline", "on_worker_exit", "host"}, t, i)
        pname = get(p, "name", str, t, i, required=True)
        if not NAME_RE.match(pname):
            raise err(t, i, "name", f"{pname!r} must be lowercase letters, digits, - or _ (≤32)")
        if pname in names:
            raise err(t, i, "name", f"{pname!r} is used by another partition")
        names.add(pname)
        vps = get(p, "vps", int, t, i, 1)
        if not 1 <= vps <= MAX_VPS:
            raise err(t, i, "vps", f"{vps} is outside 1..{MAX_VPS}")
        mem = get(p, "memory_mb", int, t, i, 16)
        if not 1 <= mem <= 4096:
            raise err(t, i, "memory_mb", f"{mem} is outside 1..4096")
        enl = strings(get(p, "enlightenments", list, t, i, []), t, i, "enlightenments")
        for e in enl:
            if e not in ENLIGHTENMENTS:
                raise err(t, i, "enlightenments", f"unknown {e!r} (known: {', '.join(ENLIGHTENMENTS)})")
        rec = strings(get(p, "recommendations", list, t, i, []), t, i, "recommendations")
        for r in rec:
            if r not in RECOMMENDATIONS:
                raise err(t, i, "recommendations", f"unknown {r!r} (known: {', '.join(RECOMMENDATIONS)})")
        spin = get(p, "spin_retry", int, t, i, HV_SPIN_RETRY_NEVER)
        if not 0 <= spin <= 0xFFFFFFFF:
            raise err(t, i, "spin_retry", f"{spin} is not a 32-bit count")
        wls = strings(get(p, "workloads", list, t, i, ["serial"]), t, i, "workloads")
        for w in wls:
            if w not in WORKLOADS:
                raise err(t, i, "workloads", f"unknown {w!r} (known: {', '.join(WORKLOADS)})")
        chipset = get(p, "chipset", str, t, i, "gen1")
        if chipset not in CHIPSETS:
            raise err(t, i, "chipset", f"unknown {chipset!r} (known: {', '.join(CHIPSETS)})")
        disk = get(p, "disk", dict, t, i, None)
        if disk is not None:
            image = disk.get("image")
            contents = disk.get("contents")
            if set(disk) - {"image", "size_mb", "contents"} or (image is not None and (not isinstance(image, str) or not image)):
                raise err(t, i, "disk", DISK_FORM)
            if contents is not None:
                from partitions.cpu.boot import kernel_path
                if not isinstance(contents, str) or not kernel_path(contents, str(base_dir) if base_dir else None).is_file():
                    raise err(t, i, "disk", f"contents {contents!r}: no such file (or image of ours: bootdisk)")
            size = disk.get("size_mb", 64)
            if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 1 << 20:
                raise err(t, i, "disk", f"size_mb {size!r} is outside 1..1048576")
            if chipset != "gen1":
                raise err(t, i, "disk", "an ATA disk needs chipset = \"gen1\" (its IRQ goes to the PIC)")
            if image is not None and (base_dir is not None or Path(image).is_absolute()):
                where = Path(image) if Path(image).is_absolute() else base_dir / image
                if not where.parent.is_dir():
                    raise err(t, i, "disk", f"image {image!r}: no directory {where.parent}")
                if where.is_dir():
                    raise err(t, i, "disk", f"image {image!r} is a directory")
            disk = {"image": image, "size_mb": size} if image is not None else {"size_mb": size}
            if contents is not None:
                disk["contents"] = contents  # written at the start of a new image
        backend, firmware, kernel = real_cpu(p, t, i, base_dir, err, get)
        cpu = {} if isinstance(p.get("cpu"), str) else get(p, "cpu", dict, t, i, {})
        cpu = {k: v for k, v in cpu.items() if k != "backend"}
        for k, v in cpu.items():
            if k not in ("reserve", "limit", "weight"):
                raise err(t, i, "cpu", f"unknown setting {k!r} (reserve, limit, weight)")
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise err(t, i, "cpu", f"{k} = {v!r} is not a number")
            lo, hi = (1, 10000) if k == "weight" else (0, 100)
            if not lo <= v <= hi:
                raise err(t, i, "cpu", f"{k} = {v} is outside {lo}..{hi}{'' if k == 'weight' else ' (percent of an LP)'}")
        if cpu.get("reserve", 0) > cpu.get("limit", 100):
            raise err(t, i, "cpu", "reserve is above limit")
        devices = []
        raw_devs = p.get("device", [])
        if not isinstance(raw_devs, list):
            raise err(t, i, "device", "must be an array of tables ([[partition.device]])")
        dev_names = {d.get("name", d["type"]) for d in CHIPSETS[chipset]}
        # Every port claimed so far: the chipset's fixed devices, then the disk, then the
        # extra devices in order, as the worker's bus registers them.
        claimed: dict[int, str] = {}
        for d in CHIPSETS[chipset] + ([{"type": "ata", "name": "disk"}] if disk else []):
            for port in device_ports(d):
                claimed[port] = f"{d.get('name', d['type'])} ({'the disk' if d['type'] == 'ata' else 'chipset ' + chipset})"
        for d in raw_devs:
            dt, di = "partition.device", device_no
            device_no += 1

            def derr(key, why, dt=dt, di=di):
                # An inline `device = [{…}]` has no [[partition.device]] header to point at.
                if loc.line_of(dt, di, None) is None:
                    return err(t, i, "device", f"#{di + 1}: {key + ': ' if key else ''}{why}")
                return err(dt, di, key, why)

            if not isinstance(d, dict):
                raise derr(None, f"must be a table, got {type(d).__name__} {d!r}")
            kind = d.get("type")
            if not isinstance(kind, str):
                raise derr(None if kind is None else "type", "missing key 'type'" if kind is None
                           else f"expected str, got {type(kind).__name__} {kind!r}")
            if kind not in DEVICE_KEYS:
                raise derr("type", f"unknown device {kind!r} (known: {', '.join(DEVICE_KEYS)})")
            for k in d:
                if k != "type" and k not in DEVICE_KEYS[kind]:
                    raise derr(k, f"{kind} has no setting {k!r} (it takes: {', '.join(sorted(DEVICE_KEYS[kind]))})")
            for k, v in d.items():
                if k.endswith(("base", "port")) and (not isinstance(v, int) or isinstance(v, bool)
                                                     or not 0 <= v <= 0xFFFF):
                    raise derr(k, f"{v!r} is not an I/O port (0..0xffff)")
                if k in IRQ_KEYS and (not isinstance(v, int) or isinstance(v, bool) or v not in ISA_IRQS):
                    raise derr(k, f"{v!r} is not an ISA IRQ (0..15: the PIC pair's inputs)")
            for k, default in DEVICE_TYPES[kind].settings().items():
                if default is dataclasses.MISSING and k not in d:
                    raise derr(None, f"{kind} needs {k!r}")
                kind_of = str if default is None or default is dataclasses.MISSING else type(default)
                if k in d and (type(d[k]) is not kind_of):
                    raise derr(k, f"expected {kind_of.__name__}, got {type(d[k]).__name__} {d[k]!r}")
            if kind == "pci" and "/" in d.get("vgabios", "") and base_dir is not None:
                d = {**d, "vgabios": str(base_dir / d["vgabios"])}  # relative to the topology file
            try:
                config, _ = DEVICE_TYPES[kind].build({k: v for k, v in d.items() if k != "type"})
                ports = device_ports(d)
            except (ValueError, TypeError) as e:
                raise derr(_key_named_in(d, str(e)), str(e)) from None
            missing = config.missing() if hasattr(config, "missing") else None
            if missing:  # a file the device needs is not on this host (the VGA BIOS)
                raise derr("vgabios" if "vgabios" in d else None, missing)
            dname = d.get("name", kind)
            if dname in dev_names:
                raise derr("name", f"{dname!r} is already in partition {pname!r} (the chipset has "
                                   f"{', '.join(sorted(dev_names))}); give it another name")
            for port in ports:
                if port in claimed:
                    raise derr(_port_key(d, port), f"{dname} would claim port {port:#x}, which {claimed[port]} has")
            for port in ports:
                claimed[port] = f"{dname} ([[partition.device]] #{di + 1})"
            dev_names.add(dname)
            devices.append(dict(d))
        vmbus = vmbus_section(get(p, "vmbus", dict, t, i, None), enl, base_dir, lambda k, why: err(t, i, k, why))
        on_worker_exit = get(p, "on_worker_exit", str, t, i, "end")
        if on_worker_exit not in ("end", "restart"):
            raise err(t, i, "on_worker_exit", f"{on_worker_exit!r} is not \"end\" or \"restart\"")
        if vmbus and backend != "python":
            raise err(t, i, "vmbus", f"cpu = {backend!r}: the VMBus guest drivers are the Python guest's (cpu = \"python\")")
        parts.append(PartitionConfig(pname, vps, mem, list(enl), list(rec), spin, list(wls), chipset, disk,
                                     devices, dict(cpu), vmbus, backend, firmware, kernel,
                                     *linux_args(p, t, i, kernel, base_dir, err, get),
                                     on_worker_exit=on_worker_exit, host=get(p, "host", str, t, i, None)))
    switch = get(data, "switch", dict, "", None, None)
    if switch is not None:
        check_keys(switch, {"external"}, "switch", None)
        external = get(switch, "external", bool, "switch", None, False)
        if not any(p.vmbus and "nic" in p.vmbus for p in parts):
            raise err("switch", None, None, "no partition has a synthetic NIC (vmbus = { nic = {} }) to switch")
        switch = {"external": external}
    hosts = host_sections(data.get("host"), parts, err, get)
    return Topology(source, base_dir, name, duration, lps, transport, parts, switch, hosts)



def _port_key(spec: dict, port: int) -> str | None:
    """The setting that put a device on ``port`` (the nearest port setting at or below it);
    None when the device sits there by default."""
    keys = [k for k, v in spec.items() if k.endswith(("base", "port")) and isinstance(v, int) and v <= port]
    return max(keys, key=lambda k: spec[k], default=None)


def _key_named_in(spec: dict, message: str) -> str | None:
    """The setting whose value a config's error message quotes."""
    for k, v in spec.items():
        if k == "type":
            continue
        if isinstance(v, str) and repr(v) in message:
            return k
        if isinstance(v, int) and not isinstance(v, bool) and \
                (f"{v:#x}" in message or re.search(rf"\b{v}\b", message)):
            return k
    return None


def read_topology(path: str) -> Topology:
    """A topology file; relative paths in it (a disk image) are relative to its directory."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {raw[e.start]:#04x}); TOML files are UTF-8") from None
    return load_topology(text, path, Path(path).resolve().parent)


def default_topology() -> Topology:
    """``configs/default.toml``, as ``python launch.py`` with no topology runs it."""
    try:
        text = DEFAULT_CONFIG.read_text()
    except OSError as e:
        raise ConfigError(f"{DEFAULT_CONFIG}: cannot read the default topology: {e.strerror}") from e
    return load_topology(text, DEFAULT_SOURCE)
