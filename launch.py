#!/usr/bin/env python3
"""hvstack's launcher: the root partition's management service, and the attach commands.

    python launch.py                       run the embedded default topology
    python launch.py run configs/X.toml    run a topology file
    python launch.py bench [--json]        round trips against a pure-pyzmq floor
    python launch.py ls                    live runs
    python launch.py status RUN            partitions, VPs, counters, processes
    python launch.py stop RUN              end a run cleanly
    python launch.py io RUN PARTITION OP…  execute instructions on a VP's behalf

A run starts the hypervisor, creates each partition through root-only hypercalls, starts
its worker, then the partition itself; it ends when every VP has halted after its
workloads, on Ctrl-C, on `stop`, or when any of its processes dies — and then every process
of the run is gone and ``manifest.json`` in the run directory says how it ended.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psutil

from proto import auth
from proto.client import ConsoleWatcher, HypercallFailed, RootClient
from proto.codes import (
    HV_CHILD_ENLIGHTENED_PRIVILEGES,
    HV_SPIN_RETRY_NEVER,
    HvMsr,
    HvPrivilege,
    HvRecommendation,
    HvStatus,
    HypercallCode,
    X86Exception,
    control_value,
)
from proto.errors import ConfigError, HvstackError, PeerTimeout, Refused
from proto.messages import EXECUTE_OPS
from proto.exits import EMULATED_STAGES, HANDLED_STAGES, Exit, label, order_key, stage_names as path_stage_names
from proto.stats import PathStats
from proto.transport import ipc_endpoint

REPO = Path(__file__).resolve().parent

# ======================================================================================
# Topology
# ======================================================================================

DEFAULT_TOPOLOGY = """\
# The embedded default topology: two partitions on two logical processors, one offered
# the enlightenments and one without.  Each has the Hyper-V generation-1 chipset (PIC, PIT,
# CMOS RTC, i8042, VGA text, COM1); the enlightened one also has an ATA disk, whose image
# is created in the run directory.
[run]
name = "default"
duration_s = 3.0
logical_processors = 2
transport = "ipc"

[[partition]]
name = "enlightened"
vps = 2
memory_mb = 16
enlightenments = ["hypercall", "vp_index", "reference_counter", "apic"]
recommendations = ["relaxed_timing", "apic_msrs"]
spin_retry = 0xFFF
chipset = "gen1"
disk = { image = "disk-enlightened.img", size_mb = 16 }
workloads = ["serial", "screen", "disk", "portio", "cpuid", "msr", "hypercall"]

[[partition]]
name = "legacy"
vps = 2
memory_mb = 16
enlightenments = []
chipset = "gen1"
workloads = ["serial", "screen", "portio", "cpuid", "msr", "hypercall"]
"""

ENLIGHTENMENTS = {
    "apic": HvPrivilege.AccessApicMsrs,  # EOI/ICR/TPR MSRs and the VP assist page
    "hypercall": HvPrivilege.AccessHypercallMsrs,
    "vp_index": HvPrivilege.AccessVpIndex,
    "reference_counter": HvPrivilege.AccessPartitionReferenceCounter,
}
assert sum(ENLIGHTENMENTS.values()) == HV_CHILD_ENLIGHTENED_PRIVILEGES
RECOMMENDATIONS = {
    "address_space_switch_hypercall": HvRecommendation.UseHypercallForAddressSpaceSwitch,
    "local_flush_hypercall": HvRecommendation.UseHypercallForLocalFlush,
    "remote_flush_hypercall": HvRecommendation.UseHypercallForRemoteFlush,
    "apic_msrs": HvRecommendation.UseApicMsrs,
    "relaxed_timing": HvRecommendation.UseRelaxedTiming,
}
WORKLOADS = ("serial", "portio", "cpuid", "msr", "hypercall", "timer", "screen", "disk", "diskbench",
             "spinlock", "compute", "eoi_mmio", "eoi_msr", "eoi_assist", "tlb_reader", "tlb_flusher")
# The devices a topology may name, the settings each takes, and the chipsets (sets of
# devices) it may ask for: the worker's own vocabulary (the worker checks values).
from worker.devices.config import CHIPSETS, DEVICE_KEYS  # noqa: E402
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


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
    disk: dict | None  # {"image": path, "size_mb": n}
    devices: list[dict]  # extra devices beyond the chipset's
    cpu: dict  # {"reserve": %, "limit": %, "weight": n}, per VP, as Hyper-V's processor settings

    @property
    def privileges(self) -> int:
        return sum(int(ENLIGHTENMENTS[e]) for e in self.enlightenments)

    @property
    def recommendation_bits(self) -> int:
        return sum(int(RECOMMENDATIONS[r]) for r in self.recommendations)

    def worker_devices(self, run_dir: Path, base_dir: Path) -> list[dict]:
        """The device list the worker builds: the chipset, the disk, then extra devices.
        Relative paths are relative to the topology file (the run directory for the
        embedded default); the RTC's NVRAM is kept in the run directory."""
        devices = [dict(d) for d in CHIPSETS[self.chipset]]
        for d in devices:
            if d["type"] == "cmos_rtc":
                d["nvram_path"] = str(run_dir / f"nvram-{self.name}.bin")
        if self.disk:
            image = Path(self.disk["image"])
            devices.append({"type": "ata", "image_path": str(image if image.is_absolute() else base_dir / image),
                            "size_bytes": self.disk["size_mb"] << 20})
        devices.extend(dict(d) for d in self.devices)
        return devices


@dataclass
class Topology:
    source: str
    base_dir: Path | None  # the topology file's directory; None for the embedded one
    name: str
    duration_s: float
    logical_processors: int
    transport: str
    partitions: list[PartitionConfig]

    def to_dict(self) -> dict:
        return {
            "source": self.source, "base_dir": str(self.base_dir) if self.base_dir else None,
            "name": self.name, "duration_s": self.duration_s,
            "logical_processors": self.logical_processors, "transport": self.transport,
            "partitions": [p.__dict__ for p in self.partitions],
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
    label = f"[{table}]" if index is None else f"[[{table}]] #{index + 1}"
    if table == "":
        label = "top level"
    return ConfigError(f"{where}: {label} {key + ': ' if key else ''}{why}")


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

    check_keys(data, {"run", "partition"}, "", None, )
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
    if not isinstance(raw_parts, list) or not raw_parts:
        raise err("", None, None, "at least one [[partition]] is needed")
    parts: list[PartitionConfig] = []
    names = set()
    for i, p in enumerate(raw_parts):
        t = "partition"
        check_keys(p, {"name", "vps", "memory_mb", "enlightenments", "recommendations", "spin_retry",
                       "workloads", "chipset", "disk", "cpu", "device"}, t, i)
        pname = get(p, "name", str, t, i, required=True)
        if not NAME_RE.match(pname):
            raise err(t, i, "name", f"{pname!r} must be lowercase letters, digits, - or _ (≤32)")
        if pname in names:
            raise err(t, i, "name", f"{pname!r} is used by another partition")
        names.add(pname)
        vps = get(p, "vps", int, t, i, 1)
        if not 1 <= vps <= 64:
            raise err(t, i, "vps", f"{vps} is outside 1..64")
        mem = get(p, "memory_mb", int, t, i, 16)
        if not 1 <= mem <= 4096:
            raise err(t, i, "memory_mb", f"{mem} is outside 1..4096")
        enl = get(p, "enlightenments", list, t, i, [])
        for e in enl:
            if e not in ENLIGHTENMENTS:
                raise err(t, i, "enlightenments", f"unknown {e!r} (known: {', '.join(ENLIGHTENMENTS)})")
        rec = get(p, "recommendations", list, t, i, [])
        for r in rec:
            if r not in RECOMMENDATIONS:
                raise err(t, i, "recommendations", f"unknown {r!r} (known: {', '.join(RECOMMENDATIONS)})")
        spin = get(p, "spin_retry", int, t, i, HV_SPIN_RETRY_NEVER)
        if not 0 <= spin <= 0xFFFFFFFF:
            raise err(t, i, "spin_retry", f"{spin} is not a 32-bit count")
        wls = get(p, "workloads", list, t, i, ["serial"])
        for w in wls:
            if w not in WORKLOADS:
                raise err(t, i, "workloads", f"unknown {w!r} (known: {', '.join(WORKLOADS)})")
        chipset = get(p, "chipset", str, t, i, "gen1")
        if chipset not in CHIPSETS:
            raise err(t, i, "chipset", f"unknown {chipset!r} (known: {', '.join(CHIPSETS)})")
        disk = get(p, "disk", dict, t, i, None)
        if disk is not None:
            if set(disk) - {"image", "size_mb"} or not isinstance(disk.get("image"), str) or not disk["image"]:
                raise err(t, i, "disk", "must be { image = \"path\", size_mb = N }")
            size = disk.get("size_mb", 64)
            if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 1 << 20:
                raise err(t, i, "disk", f"size_mb {size!r} is outside 1..1048576")
            if chipset != "gen1":
                raise err(t, i, "disk", "an ATA disk needs chipset = \"gen1\" (its IRQ goes to the PIC)")
            disk = {"image": disk["image"], "size_mb": size}
        cpu = get(p, "cpu", dict, t, i, {})
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
        for d in raw_devs:
            dt = "partition.device"
            kind = get(d, "type", str, dt, None, required=True)
            if kind not in DEVICE_KEYS:
                raise err(dt, None, "type", f"unknown device {kind!r} (known: {', '.join(DEVICE_KEYS)})")
            for k in d:
                if k != "type" and k not in DEVICE_KEYS[kind]:
                    raise err(dt, None, k, f"{kind} has no setting {k!r} (it takes: {', '.join(sorted(DEVICE_KEYS[kind]))})")
            for k in ("base", "irq"):
                if k in d and (not isinstance(d[k], int) or isinstance(d[k], bool) or not 0 <= d[k] <= 0xFFFF):
                    raise err(dt, None, k, f"{d[k]!r} is not a port/IRQ number")
            dname = d.get("name", kind)
            if dname in dev_names:
                raise err(dt, None, "name", f"{dname!r} is already in partition {pname!r} (the chipset has "
                                            f"{', '.join(sorted(dev_names))}); give it another name")
            dev_names.add(dname)
            devices.append(dict(d))
        parts.append(PartitionConfig(pname, vps, mem, list(enl), list(rec), spin, list(wls), chipset, disk,
                                     devices, dict(cpu)))
    return Topology(source, base_dir, name, duration, lps, transport, parts)


def read_topology(path: str) -> Topology:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    return load_topology(text, path, Path(path).resolve().parent)


# ======================================================================================
# Run directories
# ======================================================================================


def runs_root() -> Path:
    """Where run directories live: $HVSTACK_RUN_DIR, else a per-user directory."""
    base = os.environ.get("HVSTACK_RUN_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"hvstack-{os.getuid()}"


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass
class RunDir:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def manifest(self) -> dict:
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as e:
            raise HvstackError(f"run {self.name}: cannot read its manifest: {e}") from e

    def secret(self) -> str:
        return (self.path / "secret").read_text().strip()

    def is_live(self) -> bool:
        try:
            man = self.manifest()
        except HvstackError:
            return False
        return man.get("state") == "running" and pid_alive(man.get("launcher_pid"))


def new_run_dir(topology_name: str) -> RunDir:
    root = runs_root()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / f"{topology_name}-{stamp}-{os.urandom(2).hex()}"
    path.mkdir(mode=0o700)
    (path / "logs").mkdir(mode=0o700)
    return RunDir(path)


def find_run(ref: str) -> RunDir:
    """A run by path, by name, or by a unique prefix of its name."""
    p = Path(ref)
    if (p / "manifest.json").exists():
        return RunDir(p.resolve())
    root = runs_root()
    if (root / ref / "manifest.json").exists():
        return RunDir(root / ref)
    matches = sorted(d for d in root.glob(f"{ref}*") if (d / "manifest.json").exists()) if root.exists() else []
    live = [d for d in matches if RunDir(d).is_live()]
    if len(live) == 1 or (len(matches) == 1):
        return RunDir((live or matches)[0])
    if not matches:
        raise HvstackError(f"no run {ref!r} in {root} (see `python launch.py ls`)")
    raise HvstackError(f"{ref!r} matches {len(matches)} runs: {', '.join(d.name for d in matches[:5])}")


def live_run(ref: str) -> tuple[RunDir, dict]:
    run = find_run(ref)
    man = run.manifest()
    if not run.is_live():
        how = man.get("ended", {}).get("reason", "its launcher is gone")
        raise HvstackError(f"run {run.name} is not running ({how})")
    return run, man


# ======================================================================================
# Processes
# ======================================================================================

PR_SET_PDEATHSIG = 1
POOL_SLACK_PAGES = 256
LEGACY_HOLE_PAGES = (0xA0, 0x100)  # 0xA0000–0xFFFFF: VGA memory, ROMs — device space, not RAM


def guest_ram_ranges(pages: int) -> list[tuple[int, int]]:
    """The guest-physical pages that are RAM, as (first page, count): a PC's conventional
    memory below 640 KiB and everything from 1 MiB up."""
    lo, hi = LEGACY_HOLE_PAGES
    ranges = [(0, min(pages, lo))]
    if pages > hi:
        ranges.append((hi, pages - hi))
    return ranges
STOP_GRACE_S = 3.0
HV_READY_TIMEOUT_S = 10.0
WORKER_READY_TIMEOUT_S = 10.0


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL if the launcher dies, even by SIGKILL, so
    no process of a run outlives it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


@dataclass
class Proc:
    role: str  # hypervisor | worker | partition
    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid


def spawn(role: str, name: str, module: str, args: list[str], env_extra: dict, run: RunDir,
          stdout=subprocess.DEVNULL) -> Proc:
    log_path = run.path / "logs" / f"{role}-{name}.log" if role != "hypervisor" else run.path / "logs" / "hypervisor.log"
    env = dict(os.environ)
    env.update(env_extra)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log = open(log_path, "ab")
    try:
        popen = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                                 stdin=subprocess.DEVNULL, stdout=stdout, stderr=log,
                                 preexec_fn=_die_with_parent, start_new_session=True)
    finally:
        log.close()
    return Proc(role, name, popen, log_path)


def stop_procs(procs: list[Proc], grace_s: float = STOP_GRACE_S) -> dict[str, int | None]:
    """SIGTERM, wait, SIGKILL (as trio does); returns each process's exit status."""
    for p in procs:
        if p.popen.poll() is None:
            try:
                p.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait(5)
    return {f"{p.role}:{p.name}": p.popen.returncode for p in procs}


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


# ======================================================================================
# A run
# ======================================================================================


class RunEnded(Exception):
    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


@dataclass
class Run:
    topology: Topology
    out: "Output"
    duration_s: float | None = None  # None: the topology's
    run: RunDir = field(init=False)
    procs: list[Proc] = field(default_factory=list)
    partition_ids: dict[str, int] = field(default_factory=dict)
    endpoint: str = ""
    secret: str = field(default_factory=auth.new_secret)
    root: RootClient | None = None
    watcher: ConsoleWatcher | None = None
    final_status: dict | None = None
    _stop_reason: str | None = None
    _console_partial: dict = field(default_factory=dict)

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        self.run = new_run_dir(self.topology.name)
        secret_path = self.run.path / "secret"
        secret_path.write_text(self.secret)
        secret_path.chmod(0o600)
        self._manifest_update(state="starting")
        if self.topology.transport == "ipc":
            endpoint = ipc_endpoint(str(self.run.path / "hv.sock"))
        else:
            endpoint = "tcp://127.0.0.1:0"
        pool_pages = sum(pc.memory_mb << 8 for pc in self.topology.partitions) + POOL_SLACK_PAGES
        hv = spawn("hypervisor", "hv", "hypervisor",
                   ["--endpoint", endpoint, "--lps", str(self.topology.logical_processors),
                    "--memory-dir", str(self.run.path), "--pool-pages", str(pool_pages)],
                   {"HVSTACK_SECRET": self.secret},
                   self.run, stdout=subprocess.PIPE)
        self.procs.append(hv)
        self.endpoint = self._await_ready(hv)
        self.root = RootClient(self.endpoint, self.secret)
        # The root's memory manager: host pages in a shuffled order, so that a partition's
        # contiguous guest memory lies on scattered host pages, as it does on a real host.
        free = list(range(pool_pages))
        random.Random(self.run.name).shuffle(free)
        for pc in self.topology.partitions:
            pages = pc.memory_mb << 8
            pid = self.root.create_partition(pc.privileges, pc.recommendation_bits, pc.spin_retry, pc.vps,
                                             pc.cpu, pages)
            ram = guest_ram_ranges(pages)
            n = sum(count for _, count in ram)
            self.root.build_memory(pid, ram, free[:n])
            del free[:n]
            self.root.start_vps(pid, pc.vps)
            self.partition_ids[pc.name] = pid
        self._manifest_update()
        self.watcher = ConsoleWatcher(self.endpoint, self.secret, list(self.partition_ids.values()))
        duration = self.topology.duration_s if self.duration_s is None else self.duration_s
        for pc in self.topology.partitions:
            pid = self.partition_ids[pc.name]
            token = auth.peer_token(self.secret, "worker", pid)
            devices = pc.worker_devices(self.run.path, self.topology.base_dir or self.run.path)
            spec = {"endpoint": self.endpoint, "partition_id": pid, "name": pc.name,
                    "console_path": str(self.run.path / f"console-{pc.name}.log"), "devices": devices}
            spec_path = self.run.path / f"worker-{pc.name}.json"
            write_json(spec_path, spec)
            self.procs.append(spawn("worker", pc.name, "worker", ["--spec", str(spec_path)],
                                    {"HVSTACK_TOKEN": token}, self.run))
        self._manifest_update()
        self._await_workers()
        for pc in self.topology.partitions:
            pid = self.partition_ids[pc.name]
            token = auth.peer_token(self.secret, "vp", pid)
            spec = {"endpoint": self.endpoint, "partition_id": pid, "name": pc.name, "vps": pc.vps,
                    "memory_mb": pc.memory_mb, "workloads": pc.workloads,
                    # 0 means "until stopped": the guest runs its workloads for a day.
                    "duration_s": duration if duration > 0 else 86400.0}
            spec_path = self.run.path / f"partition-{pc.name}.json"
            write_json(spec_path, spec)
            self.procs.append(spawn("partition", pc.name, "partitions", ["--spec", str(spec_path)],
                                    {"HVSTACK_TOKEN": token}, self.run))
        self._manifest_update(state="running")

    def _await_ready(self, hv: Proc) -> str:
        deadline = time.monotonic() + HV_READY_TIMEOUT_S
        line = b""
        while time.monotonic() < deadline:
            if hv.popen.poll() is not None:
                raise RunEnded(f"hypervisor {describe_exit(hv.popen.returncode)} at start "
                               f"(see {hv.log_path})", 1)
            ready, _, _ = select.select([hv.popen.stdout], [], [], 0.1)
            if ready:
                line = hv.popen.stdout.readline()
                if line.startswith(b"READY "):
                    hv.popen.stdout.close()
                    return line.split()[1].decode()
        raise RunEnded(f"hypervisor not ready in {HV_READY_TIMEOUT_S} s (see {hv.log_path})", 1)

    def _await_workers(self) -> None:
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while True:
            self._check_procs()
            status = self.root.status()
            if all(p["worker"] and p["ranges"] for p in status["partitions"]):
                return
            if time.monotonic() > deadline:
                raise RunEnded(f"workers not ready in {WORKER_READY_TIMEOUT_S} s", 1)
            time.sleep(0.05)

    def _check_procs(self) -> None:
        for p in self.procs:
            code = p.popen.poll()
            if code is not None:
                raise RunEnded(f"{p.role} {p.name} (pid {p.pid}) {describe_exit(code)}", 1)

    def request_stop(self, reason: str) -> None:
        self._stop_reason = reason

    @property
    def duration(self) -> float:
        return self.topology.duration_s if self.duration_s is None else self.duration_s

    def supervise(self) -> dict:
        """Until every VP has finished its workloads (a run with a duration), a stop
        request, a death, or every partition stopped by `ctl stop`."""
        grace = self.duration + 30
        deadline = time.monotonic() + grace
        next_status = 0.0
        stopped: set[int] = set()
        while True:
            self._pump_console(100)
            if self._stop_reason:
                raise RunEnded(self._stop_reason, 130 if "SIGINT" in self._stop_reason else 0)
            self._check_procs()
            if time.monotonic() < next_status:
                continue
            next_status = time.monotonic() + 0.25
            status = self.root.status()
            for p in status["partitions"]:
                if p["state"] == "finalized" and p["id"] not in stopped:
                    stopped.add(p["id"])
                    self._stop_partition(p["id"])
            if len(stopped) == len(self.partition_ids):
                raise RunEnded("every partition was stopped (ctl stop)", 0)
            if self.duration > 0:
                vps = [vp for p in status["partitions"] if p["id"] not in stopped for vp in p["vps"]]
                if vps and all(vp["guest"].get("workloads_done") for vp in vps):
                    self._pump_console(50)
                    return status
                if time.monotonic() > deadline:
                    raise RunEnded(f"guests did not finish within {grace:.0f} s", 1)

    def _stop_partition(self, pid: int) -> None:
        """`ctl stop`: end one partition's processes; the rest of the run goes on."""
        name = next(n for n, i in self.partition_ids.items() if i == pid)
        procs = [p for p in self.procs if p.role in ("partition", "worker") and p.name == name]
        exits = stop_procs(sorted(procs, key=lambda p: p.role != "partition"))
        for p in procs:
            self.procs.remove(p)
        self.out.print(f"partition {name} stopped: " + ", ".join(f"{k} {describe_exit(v)}" for k, v in exits.items()))
        self._manifest_update(stopped_partitions=sorted(
            set(self.run.manifest().get("stopped_partitions", [])) | {name}))

    def _pump_console(self, timeout_ms: int) -> None:
        if self.watcher is None:
            time.sleep(timeout_ms / 1000)
            return
        names = {v: k for k, v in self.partition_ids.items()}
        for pid, data in self.watcher.poll(timeout_ms):
            buf = self._console_partial.get(pid, b"") + data
            *lines, rest = buf.split(b"\n")
            self._console_partial[pid] = rest
            for line in lines:
                self.out.console(names.get(pid, str(pid)), line.rstrip(b"\r").decode(errors="replace"))

    def finish(self, reason: str, exit_code: int) -> None:
        """Stop every process (partitions, then workers, then the hypervisor) and record why."""
        if self.root is not None and self.final_status is None:
            try:
                self.final_status = self.root.status()
            except (HvstackError, OSError):
                pass
        for c in (self.watcher, self.root):
            if c is not None:
                c.close()
        order = {"partition": 0, "worker": 1, "hypervisor": 2}
        exits: dict = {}
        for stage in range(3):
            exits.update(stop_procs([p for p in self.procs if order[p.role] == stage]))
        left = [p.pid for p in self.procs if pid_alive(p.pid)]
        if not left:
            # Guest memory dies with the run; the manifest, logs, consoles, NVRAM and disk
            # images stay.
            for pattern in ("memory.pool", "slat-*.bin", "tlb-*.bin"):
                for f in self.run.path.glob(pattern):
                    f.unlink(missing_ok=True)
        self._manifest_update(state="ended", ended={
            "reason": reason, "exit_code": exit_code, "at": datetime.now(timezone.utc).isoformat(),
            "exits": {k: describe_exit(v) for k, v in exits.items()}, "left_running": left})

    def _manifest_update(self, **changes) -> None:
        path = self.run.manifest_path
        man = json.loads(path.read_text()) if path.exists() else {
            "name": self.run.name, "created": datetime.now(timezone.utc).isoformat(),
            "launcher_pid": os.getpid(), "config": self.topology.to_dict()}
        man.update({
            "endpoint": self.endpoint,
            "processes": {f"{p.role}:{p.name}": {"pid": p.pid, "log": str(p.log_path)} for p in self.procs},
            "partitions": {name: {"id": pid, "console": str(self.run.path / f"console-{name}.log")}
                           for name, pid in self.partition_ids.items()},
        })
        man.update(changes)
        write_json(path, man)


def execute(topology: Topology, out: "Output", duration_s: float | None = None) -> tuple[Run, str, int]:
    """Start a run, supervise it, end it; returns (run, reason, exit code).  Ctrl-C and
    SIGTERM end the run the same way as a dead process does: every process goes."""
    run = Run(topology, out, duration_s)

    def on_signal(signum, frame):
        name = signal.Signals(signum).name
        stop_file = run.run.path / "stop-requested" if hasattr(run, "run") else None
        who = stop_file.read_text().strip() if stop_file is not None and stop_file.exists() else ""
        run.request_stop(f"{name}{' from ' + who if who else ''}")

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    reason, code = "guests finished their workloads", 0
    try:
        try:
            run.start()
            out.started(run)
            run.final_status = run.supervise()
        except RunEnded as e:
            reason, code = e.reason, e.exit_code
        except (HvstackError, OSError) as e:
            reason, code = f"launcher error: {e}", 1
        finally:
            if hasattr(run, "run"):
                if run._stop_reason and code == 0 and reason.startswith("guests"):
                    reason = run._stop_reason
                run.finish(reason, code)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return run, reason, code


# ======================================================================================
# Output
# ======================================================================================

def us(ns: float) -> str:
    return f"{ns / 1000:.1f}"


def table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    align = align or "l" + "r" * (len(headers) - 1)

    def fmt(row):
        return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w)
                         for c, w, a in zip(row, widths, align))

    return "\n".join([fmt(headers), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)])


def path_rows(paths: dict) -> list[list[str]]:
    rows = []
    for name in sorted(paths, key=order_key):
        st = PathStats.from_wire(paths[name])
        t = st.total
        rows.append([label(name), str(t.n), us(t.percentile(50)), us(t.percentile(99)), us(t.hi)])
    return rows


def stage_rows(paths: dict, path: str = "io_port") -> list[list[str]]:
    if path not in paths:
        return []
    st = PathStats.from_wire(paths[path])
    names = Exit(path).stages if path in Exit._value2member_map_ else ()
    if len(names) != len(st.stages):
        return []
    total_mean = st.total.mean or 1
    rows = []
    for name, h in zip(names, st.stages):
        rows.append([name, us(h.mean), us(h.percentile(50)), us(h.percentile(99)), f"{100 * h.mean / total_mean:.0f}%"])
    rows.append(["total", us(st.total.mean), us(st.total.percentile(50)), us(st.total.percentile(99)), "100%"])
    return rows


class Output:
    def __init__(self, stream=sys.stdout) -> None:
        self.stream = stream

    def print(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def started(self, run: Run) -> None:
        self.print(f"run {run.run.name}: {len(run.topology.partitions)} partition(s), "
                   f"{run.topology.logical_processors} LPs — directory {run.run.path}")

    def console(self, partition: str, line: str) -> None:
        self.print(f"  {partition:>12} | {line}")

    def report(self, run: Run, status: dict | None) -> None:
        if not status:
            return
        names = {v: k for k, v in run.partition_ids.items()}
        for p in status["partitions"]:
            name = names.get(p["id"], str(p["id"]))
            exits = {}
            for vp in p["vps"]:
                for k, v in vp["exits"].items():
                    exits[k] = exits.get(k, 0) + v
            self.print()
            self.print(f"partition {name} (id {p['id']}, {len(p['vps'])} VPs, privileges {p['privileges']:#x}, "
                       f"hypercall page {'on' if p['hypercalls_enabled'] else 'off'})")
            self.print("  exits: " + ", ".join(f"{k} {v}" for k, v in exits.items() if v))
            rows = path_rows(p["paths"])
            if rows:
                self.print(_indent(table(["path", "count", "p50 µs", "p99 µs", "max µs"], rows)))
            for path, label in (("io_port", "emulated port I/O"), ("interrupt", "interrupt path")):
                srows = stage_rows(p["paths"], path)
                if srows:
                    self.print(f"  {label}, per stage:")
                    self.print(_indent(table(["stage", "mean µs", "p50 µs", "p99 µs", "share"], srows), 4))
            for line in (interrupt_line(p), spinlock_line(p, run.duration), scheduler_line(p)):
                if line:
                    self.print("  " + line)


def interrupt_line(p: dict) -> str:
    """Interrupts delivered, by vector, and the exits each one cost the guest."""
    delivered, by_vector = 0, {}
    for vp in p["vps"]:
        delivered += vp["interrupts"]["injected"]
        for k, v in vp["interrupts"]["by_vector"].items():
            by_vector[k] = by_vector.get(k, 0) + v
    if not delivered:
        return ""
    guest = p.get("guest", {})
    taken = guest.get("interrupts", 0)
    per = f"; {guest.get('handler_exits', 0) / taken:.2f} exits per interrupt in handlers" if taken else ""
    ticks = f"; {guest['ticks']} timer ticks" if guest.get("ticks") else ""
    vectors = ", ".join(f"{k}: {v}" for k, v in sorted(by_vector.items()))
    return f"interrupts: {delivered} delivered ({vectors}){per}{ticks}"


def spinlock_line(p: dict, duration_s: float) -> str:
    g = p.get("guest", {})
    if not g.get("acquisitions"):
        return ""
    rate = g["acquisitions"] / duration_s if duration_s else 0
    return (f"spinlock: {g['acquisitions']} acquisitions ({rate:.0f}/s), {g.get('spin_ns', 0) / 1e6:.0f} ms "
            f"spinning, {g.get('spin_notifies', 0)} long-spin-wait notifications")


def scheduler_line(p: dict) -> str:
    vps = [vp["sched"] for vp in p["vps"] if vp.get("sched")]
    if not vps:
        return ""
    run = sum(v["run_s"] for v in vps)
    wait = sum(v["wait_s"] for v in vps)
    return (f"scheduler: {run:.2f} s on LPs, {wait:.2f} s waiting for one, "
            f"{sum(v['dispatches'] for v in vps)} dispatches, {sum(v['preemptions'] for v in vps)} quantum ends, "
            f"{sum(v['yields'] for v in vps)} yields")


def _indent(text: str, n: int = 2) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())


# ======================================================================================
# Commands
# ======================================================================================


def cmd_run(args) -> int:
    try:
        topology = read_topology(args.config) if args.config else load_topology(DEFAULT_TOPOLOGY, "<default>")
    except ConfigError as e:
        print(f"launch.py: {e}", file=sys.stderr)
        return ConfigError.exit_code
    out = Output()
    run, reason, code = execute(topology, out, args.duration)
    out.report(run, run.final_status)
    out.print()
    out.print(f"run {run.run.name} ended: {reason}" if hasattr(run, "run") else f"run failed: {reason}")
    return code


def cmd_ls(args) -> int:
    root = runs_root()
    runs = sorted((d for d in root.glob("*") if (d / "manifest.json").exists()), key=lambda d: d.stat().st_mtime) \
        if root.exists() else []
    rows = []
    for d in runs:
        rd = RunDir(d)
        live = rd.is_live()
        if not live and not args.all:
            continue
        man = rd.manifest()
        rows.append([rd.name, "running" if live else man.get("ended", {}).get("reason", man.get("state", "?")),
                     str(man.get("launcher_pid", "")), ", ".join(man.get("partitions", {}))])
    if not rows:
        print(f"no {'runs' if args.all else 'live runs'} in {root}")
        return 0
    print(table(["run", "state", "launcher", "partitions"], rows, "llrl"))
    return 0


def process_rows(man: dict) -> list[list[str]]:
    rows = []
    procs = {"launcher": {"pid": man.get("launcher_pid")}, **man.get("processes", {})}
    handles = {}
    for name, info in procs.items():
        try:
            h = psutil.Process(info["pid"])
            h.cpu_percent(None)
            handles[name] = h
        except (psutil.Error, TypeError):
            handles[name] = None
    time.sleep(0.2)
    for name, info in procs.items():
        h = handles[name]
        if h is None:
            rows.append([name, str(info.get("pid")), "gone", "", ""])
            continue
        try:
            with h.oneshot():
                rows.append([name, str(h.pid), f"{h.cpu_percent(None):.0f}%",
                             f"{h.memory_info().rss / 2**20:.1f} MiB", str(h.num_threads())])
        except psutil.Error:
            rows.append([name, str(info.get("pid")), "gone", "", ""])
    return rows


def cmd_status(args) -> int:
    run, man = live_run(args.run)
    with RootClient(man["endpoint"], run.secret()) as root:
        status = root.status()
    procs = process_rows(man)
    if args.json:
        print(json.dumps({"run": run.name, "hypervisor": {k: v for k, v in status.items() if k != "partitions"},
                          "partitions": status["partitions"], "names": man.get("partitions", {}),
                          "processes": procs}, indent=2))
        return 0
    names = {v["id"]: k for k, v in man.get("partitions", {}).items()}
    print(f"run {run.name}: hypervisor up {status['uptime_s']:.1f} s, {status['peers']} peers, "
          f"{status['counters']['messages']} messages, {status['counters']['malformed']} malformed, "
          f"{status['counters']['refused_hellos']} refused hellos")
    for p in status["partitions"]:
        print(f"\npartition {names.get(p['id'], p['id'])} (id {p['id']}): {p['state']}, "
              f"worker {'up' if p['worker'] else 'missing'}, unclaimed I/O {p['unclaimed_reads']}r/"
              f"{p['unclaimed_writes']}w, worker timeouts {p['worker_timeouts']}")
        rows = [[str(vp["index"]), vp["state"], *(str(vp["exits"][k]) for k in vp["exits"]), str(vp["faults"])]
                for vp in p["vps"]]
        if p["vps"]:
            headers = ["vp", "state", *p["vps"][0]["exits"].keys(), "faults"]
            print(_indent(table(headers, rows, "ll" + "r" * (len(headers) - 2))))
        prow = path_rows(p["paths"])
        if prow:
            print(_indent(table(["path", "count", "p50 µs", "p99 µs", "max µs"], prow)))
    print()
    print(table(["process", "pid", "CPU", "RSS", "threads"], procs, "lrrrr"))
    return 0


def cmd_stop(args) -> int:
    run = find_run(args.run)
    man = run.manifest()
    if not run.is_live():
        print(f"run {run.name} is not running ({man.get('ended', {}).get('reason', 'launcher gone')})")
        return 1
    (run.path / "stop-requested").write_text(f"launch.py stop (pid {os.getpid()})")
    os.kill(man["launcher_pid"], signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        man = run.manifest()
        if man.get("state") == "ended":
            print(f"run {run.name} ended: {man['ended']['reason']}")
            return 0
        time.sleep(0.1)
    print(f"run {run.name} did not end within {args.timeout} s", file=sys.stderr)
    return 1


def parse_number(token: str) -> int:
    try:
        return int(token, 0)
    except ValueError:
        pass
    for enum in (HvMsr, HypercallCode):
        if token in enum.__members__:
            return int(enum[token])
    raise ValueError(f"{token!r} is not a number or a TLFS name")


IO_ARITY = {"inb": 1, "inw": 1, "inl": 1, "outb": 2, "outw": 2, "outl": 2,
            "readb": 1, "readw": 1, "readl": 1, "readq": 1, "writeb": 2, "writew": 2, "writel": 2, "writeq": 2,
            "cpuid": (1, 2), "rdmsr": 1, "wrmsr": 2, "hypercall": (1, 2)}


def parse_ops(tokens: list[str]) -> list[tuple[str, list[str]]]:
    """Split ``inb 0x3fd outb 0x3ff 0x41 …`` into operations."""
    ops, i = [], 0
    while i < len(tokens):
        op = tokens[i]
        if op not in IO_ARITY:
            raise ValueError(f"unknown operation {op!r} (known: {', '.join(EXECUTE_OPS)})")
        j = i + 1
        while j < len(tokens) and tokens[j] not in IO_ARITY:
            j += 1
        operands = tokens[i + 1:j]
        arity = IO_ARITY[op]
        lo, hi = arity if isinstance(arity, tuple) else (arity, arity)
        if not lo <= len(operands) <= hi:
            raise ValueError(f"{op} takes {lo}{'–' + str(hi) if hi != lo else ''} operand(s), got {len(operands)}")
        ops.append((op, operands))
        i = j
    return ops


def run_op(root: RootClient, partition: int, vp: int, op: str, operands: list[str]) -> str:
    if op == "hypercall":
        control = parse_number(operands[0])
        if operands[0] in HypercallCode.__members__:
            control = control_value(control)
        data = bytes.fromhex(operands[1]) if len(operands) > 1 else b""
        r = root.io(partition, vp, op, control, 0, data)
    else:
        nums = [parse_number(t) for t in operands]
        a = nums[0]
        b = nums[1] if len(nums) > 1 else 0
        r = root.io(partition, vp, op, a, b)
    if r.fault:
        return f"FAULT #{X86Exception(r.fault).name}"
    if op.startswith("in") or op.startswith("read"):
        return f"OK {r.rax:#x}"
    if op == "cpuid":
        return f"OK eax={r.rax:#010x} ebx={r.rbx:#010x} ecx={r.rcx:#010x} edx={r.rdx:#010x}"
    if op == "rdmsr":
        return f"OK {(r.rdx << 32) | r.rax:#x}"
    if op == "hypercall":
        status = r.rax & 0xFFFF
        try:
            sname = HvStatus(status).name
        except ValueError:
            sname = f"{status:#x}"
        reps = (r.rax >> 32) & 0xFFF
        return f"OK {sname} reps={reps}" + (f" output={r.output.hex()}" if r.output else "")
    return "OK"


def cmd_io(args) -> int:
    run, man = live_run(args.run)
    parts = man.get("partitions", {})
    if args.partition not in parts:
        print(f"launch.py io: run {run.name} has no partition {args.partition!r} "
              f"(it has {', '.join(parts)})", file=sys.stderr)
        return 2
    ops_args = list(args.ops)
    # `--vp N` may come after the partition, before the operations (argparse leaves it in
    # the REMAINDER there).
    while ops_args[:1] == ["--vp"] and len(ops_args) > 1:
        try:
            args.vp = int(ops_args[1], 0)
        except ValueError:
            print(f"launch.py io: --vp {ops_args[1]!r} is not a number", file=sys.stderr)
            return 2
        del ops_args[:2]
    tokens = ops_args or [t for line in sys.stdin for t in line.split("#")[0].split()]
    try:
        ops = parse_ops(tokens)
    except ValueError as e:
        print(f"launch.py io: {e}", file=sys.stderr)
        return 2
    failed = 0
    with RootClient(man["endpoint"], run.secret()) as root:
        for op, operands in ops:
            try:
                print(run_op(root, parts[args.partition]["id"], args.vp, op, operands), flush=True)
            except (ValueError, Refused) as e:
                print(f"ERR {e}", flush=True)
                failed += 1
    return 1 if failed else 0


def _partition_of(run: RunDir, man: dict, name: str) -> int:
    parts = man.get("partitions", {})
    if name not in parts:
        raise HvstackError(f"run {run.name} has no partition {name!r} (it has {', '.join(parts)})")
    return parts[name]["id"]


def cmd_screen(args) -> int:
    run, man = live_run(args.run)
    pid = _partition_of(run, man, args.partition)
    with RootClient(man["endpoint"], run.secret()) as root:
        screen = root.worker_query(pid, "screen")
    if "error" in screen:
        print(f"launch.py screen: {screen['error']}", file=sys.stderr)
        return 1
    print(screen["text"])
    return 0


def cmd_keys(args) -> int:
    from proto.scancodes import scancodes

    run, man = live_run(args.run)
    pid = _partition_of(run, man, args.partition)
    text = " ".join(args.text).replace("\\n", "\n")
    if args.enter:
        text += "\n"
    data = scancodes(text)
    with RootClient(man["endpoint"], run.secret()) as root:
        # A keyboard buffers 16 bytes: send 8 keys (make + break) at a time, as typing would.
        for i in range(0, len(data), 16):
            root.send_input(pid, "keyboard", data[i:i + 16])
            time.sleep(0.05)
    print(f"typed {len(data) // 2} keys into {args.partition}")
    return 0


# -- trace, console, ctl: attach to a live run's exits, serial console and partitions ------


def cmd_trace(args) -> int:
    """Every exit as the hypervisor sees it (as xentrace / perf kvm stat live show them),
    then a per-reason summary like `perf kvm stat report`."""
    import csv

    from proto.trace import CSV_FIELDS, TEXT_HEADER, TraceSummary, csv_row, event_record, text_line

    run, man = live_run(args.run)
    names = {v["id"]: k for k, v in man.get("partitions", {}).items()}
    only = _partition_of(run, man, args.partition) if args.partition else 0
    wanted = set(args.reason or ())
    if args.duration is not None and args.duration <= 0:
        print("launch.py trace: --duration must be > 0", file=sys.stderr)
        return 2
    out = sys.stdout
    writer = csv.writer(out, lineterminator="\n") if args.csv else None
    summary = TraceSummary()
    ended = None
    stop: list[int] = []  # Ctrl-C and SIGTERM end the trace between two batches of events

    old_handlers = {s: signal.signal(s, lambda signum, frame: stop.append(signum))
                    for s in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.perf_counter_ns()
    started = time.monotonic()
    try:
        with RootClient(man["endpoint"], run.secret()) as tracer:
            t0 = time.perf_counter_ns()
            tracer.trace_subscribe(only)
            started = time.monotonic()
            deadline = started + args.duration if args.duration else None
            if writer:
                writer.writerow(CSV_FIELDS)
            elif not args.json:
                out.write(TEXT_HEADER + "\n")
            out.flush()
            next_check = last_event = started
            while not stop:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                wait_s = min(next_check - now, deadline - now if deadline is not None else 1.0, 0.2)
                events = tracer.trace_poll(max(0, int(wait_s * 1000)))
                now = time.monotonic()
                if events:
                    last_event = now
                for ev in events:
                    if (only and ev.partition != only) or (wanted and ev.reason not in wanted):
                        continue
                    rec = event_record(ev, names, t0)
                    summary.add(rec["reason"], rec["total_ns"])
                    if writer:
                        writer.writerow(csv_row(rec))
                    elif args.json:
                        out.write(json.dumps({k: v for k, v in rec.items() if k != "total_ns"},
                                             ensure_ascii=False) + "\n")
                    else:
                        out.write(text_line(rec) + "\n")
                if events:
                    out.flush()
                if now >= next_check:
                    next_check = now + 1.0
                    if not run.is_live():
                        ended = run.manifest().get("ended", {}).get("reason", "its launcher is gone")
                        break
                    if now - last_event >= 1.0:
                        tracer.trace_renew(only)  # no event for a second: make sure we are still subscribed
        elapsed = round(time.monotonic() - started, 3)
        if args.json:
            out.write(json.dumps({"summary": summary.to_json(run=run.name, duration_s=elapsed,
                                                             partition=args.partition, reasons_filter=sorted(wanted))},
                                 ensure_ascii=False) + "\n")
        elif writer:
            out.write("\n")
            writer.writerow(TraceSummary.CSV_FIELDS)
            writer.writerows(summary.csv_rows())
        else:
            scope = f"partition {args.partition}" if args.partition else "all partitions"
            out.write(f"\nAnalyze events for {scope}, all VPs of run {run.name} ({elapsed:.1f} s):\n\n")
            out.write(summary.text() + "\n")
        out.flush()
    except BrokenPipeError:
        # The reader went away (`trace --json | head`): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
    if ended is not None:
        print(f"launch.py trace: run {run.name} ended while tracing ({ended})", file=sys.stderr)
        return 1
    return 0


def _console_uart(man: dict, partition: str) -> str:
    """The name of a partition's console: its first UART, as the worker picks it."""
    for pc in man.get("config", {}).get("partitions", []):
        if pc.get("name") == partition:
            for d in [*CHIPSETS.get(pc.get("chipset", "gen1"), []), *pc.get("devices", [])]:
                if d.get("type") == "uart16550":
                    return d.get("name", "com1")
    return "com1"


CONSOLE_ESCAPE = 0x1D  # Ctrl-], as virsh console and telnet
CONSOLE_CHUNK = 4096  # bytes per input_request (one page)
CONSOLE_WINDOW = 16 << 10  # bytes sent but not yet in the UART (the worker queues up to 64 KiB)
CONSOLE_STALL_S = 5.0  # piped input the guest does not read for this long is dropped


def cmd_console(args) -> int:
    """An interactive serial console, as `virsh console`: guest output to stdout, stdin to
    the console UART's receive FIFO."""
    import termios
    import tty

    run, man = live_run(args.run)
    pid = _partition_of(run, man, args.partition)
    if args.partition in man.get("stopped_partitions", []):
        raise HvstackError(f"partition {args.partition} of run {run.name} was stopped")
    uart = _console_uart(man, args.partition)
    try:
        stdin_fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        stdin_fd = None
    reading = not args.no_input and stdin_fd is not None
    interactive = reading and os.isatty(stdin_fd)
    out = sys.stdout.buffer
    note = sys.stdout if interactive else sys.stderr
    pending = bytearray()  # read, not yet sent
    line_buf = bytearray()  # piped, not yet a whole line
    eof = not reading
    linger_until = None
    rx_start, sent, taken = None, 0, 0  # the UART's rx_bytes when we began; bytes sent; bytes it took
    next_send, progress_at = 0.0, time.monotonic()
    old_tty = None
    exit_code, why = 0, ""

    def on_term(signum, frame):
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    watcher = ConsoleWatcher(man["endpoint"], run.secret(), [pid])
    root = RootClient(man["endpoint"], run.secret())
    try:
        print(f"Connected to partition {args.partition} of run {run.name} ({uart})", file=note)
        if interactive:
            print("Escape character is ^]", file=note)
        note.flush()
        if interactive:
            old_tty = termios.tcgetattr(stdin_fd)
            tty.setraw(stdin_fd, termios.TCSANOW)
        next_check = time.monotonic() + 1.0
        while True:
            # Guest output: whatever arrived, straight through.
            for _, data in watcher.poll(0 if reading and not eof else 20 if pending else 50):
                out.write(data)
                out.flush()
            now = time.monotonic()
            # Input: raw keystrokes (tty) or whole lines (pipe, file).
            if reading and not eof:
                ready, _, _ = select.select([stdin_fd], [], [], 0.02)
                if ready:
                    data = os.read(stdin_fd, 4096)
                    if interactive:
                        if CONSOLE_ESCAPE in data:
                            pending += data[:data.index(CONSOLE_ESCAPE)]
                            if pending:  # what was typed before ^]
                                root.send_input(pid, "console", bytes(pending[:CONSOLE_CHUNK]))
                            break
                        pending += data
                    elif data:
                        line_buf += data
                        cut = line_buf.rfind(b"\n") + 1
                        pending += line_buf[:cut]
                        del line_buf[:cut]
                    else:
                        eof = True
                        pending += line_buf
                        line_buf.clear()
            # The worker queues input until the UART's FIFO has room (the guest reads it on
            # IRQ4); keep at most a window of it in flight, so a long pipe cannot overflow that.
            if pending and now >= next_send:
                chunk = bytes(pending[:CONSOLE_CHUNK])
                if rx_start is None:
                    rx_start = root.uart_rx_bytes(pid, uart)
                if sent - taken + len(chunk) > CONSOLE_WINDOW:
                    rx = root.uart_rx_bytes(pid, uart)
                    now_taken = rx - rx_start if rx is not None and rx_start is not None else sent
                    if now_taken > taken:
                        taken, progress_at = now_taken, now
                if sent - taken + len(chunk) <= CONSOLE_WINDOW:
                    root.send_input(pid, "console", chunk)
                    sent += len(chunk)
                    del pending[:len(chunk)]
                    progress_at = now
                else:
                    next_send = now + 0.02
                    if eof and now - progress_at > CONSOLE_STALL_S:
                        print(f"launch.py console: the guest has not read its UART for {CONSOLE_STALL_S:.0f} s; "
                              f"{len(pending)} byte(s) of input dropped", file=sys.stderr)
                        pending.clear()
            if eof and reading and not pending:
                if linger_until is None:
                    linger_until = now + args.linger
                elif now >= linger_until:
                    for _, data in watcher.poll(0):
                        out.write(data)
                    out.flush()
                    break
            if now >= next_check:
                next_check = now + 1.0
                if not run.is_live():
                    how = run.manifest().get("ended", {}).get("reason", "its launcher is gone")
                    exit_code, why = 1, f"run {run.name} ended while attached ({how})"
                    break
                if args.partition in run.manifest().get("stopped_partitions", []):
                    exit_code, why = 1, f"partition {args.partition} was stopped"
                    break
    except KeyboardInterrupt:
        pass
    finally:
        if old_tty is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, old_tty)
        signal.signal(signal.SIGTERM, old_term)
        watcher.close()
        root.close()
    if interactive:
        print(file=note)
    if why:
        print(f"launch.py console: {why}", file=sys.stderr)
    return exit_code


CTL_DONE = {"pause": "paused", "resume": "resumed", "reset": "reset", "stop": "stopped"}


def cmd_ctl(args) -> int:
    """pause, resume, reset or stop one partition of a live run (PartitionControl)."""
    run, man = live_run(args.run)
    pid = _partition_of(run, man, args.partition)
    name = args.partition
    if name in man.get("stopped_partitions", []):
        raise HvstackError(f"partition {name} of run {run.name} is stopped")
    with RootClient(man["endpoint"], run.secret()) as root:
        try:
            root.control(pid, args.action)
        except Refused as e:
            raise HvstackError(f"cannot {args.action} partition {name}: {e.reason}") from None
        if args.action != "stop":
            part = next((p for p in root.status()["partitions"] if p["id"] == pid), {})
            extra = f" (reset #{part['resets']}: its VPs start over at the reset vector)" \
                if args.action == "reset" and "resets" in part else ""
            print(f"partition {name} {CTL_DONE[args.action]}{extra}")
            return 0
    # stop: the launcher ends the partition's processes when it sees the state "finalized".
    deadline = time.monotonic() + args.timeout
    stopped = False
    while time.monotonic() < deadline:
        man = run.manifest()
        if not stopped and name in man.get("stopped_partitions", []):
            stopped = True
            print(f"partition {name} stopped: its VPs and worker have exited", flush=True)
            if set(man.get("stopped_partitions", [])) < set(man.get("partitions", {})):
                return 0
        if man.get("state") == "ended":
            if not stopped:
                print(f"partition {name} stopped")
            print(f"run {run.name} ended: {man.get('ended', {}).get('reason', '?')}")
            return 0
        if not run.is_live():
            break
        time.sleep(0.1)
    if stopped:
        return 0
    print(f"launch.py ctl: partition {name} was told to stop, but its processes were not ended "
          f"within {args.timeout} s", file=sys.stderr)
    return 1


def cmd_bench(args) -> int:
    from benchmarks.bench import run_bench

    return run_bench(args)


# -- top and stats: live views of a run, from the status reply and psutil ----------------

TOP_SORTS = ("exits", "name", "cpu", "rss", "ctxsw")


def _sum_exits(part: dict) -> dict[str, int]:
    exits: dict[str, int] = {}
    for vp in part["vps"]:
        for k, v in vp["exits"].items():
            exits[k] = exits.get(k, 0) + v
    return exits


def _us(ns: float) -> float:
    return round(ns / 1000, 3)


def hist_summary(h) -> dict:
    """count, percentiles, max and mean (µs) of one proto.stats.Histogram."""
    return {"count": h.n, "p50_us": _us(h.percentile(50)), "p90_us": _us(h.percentile(90)),
            "p99_us": _us(h.percentile(99)), "p999_us": _us(h.percentile(99.9)), "max_us": _us(h.hi),
            "min_us": _us(h.lo), "mean_us": _us(h.mean)}


def path_summary(path: str, wire: dict) -> dict:
    """A path's total and, for a multi-stage path, each stage's p50/p99/mean (µs)."""
    st = PathStats.from_wire(wire)
    out = hist_summary(st.total)
    if len(st.stages) > 1:
        out["stages"] = {name: {"p50_us": _us(h.percentile(50)), "p99_us": _us(h.percentile(99)),
                                "mean_us": _us(h.mean)}
                         for name, h in zip(path_stage_names(path, len(st.stages)), st.stages)}
    return out


def _hist_since(now, before):
    """The samples ``now`` has that ``before`` had not (histograms only grow; a smaller one
    means the VP started over, and then everything in ``now`` is new)."""
    from proto.stats import Histogram, bucket_upper

    if before is None or now.n < before.n or any(now.counts.get(b, 0) < k for b, k in before.counts.items()):
        return now
    counts = {b: k - before.counts.get(b, 0) for b, k in now.counts.items() if k > before.counts.get(b, 0)}
    if not counts:
        return Histogram()
    return Histogram(counts, now.n - before.n, now.total - before.total, 0,
                     min(now.hi, bucket_upper(max(counts))))


def _status_while_live(root: RootClient, run: RunDir) -> dict:
    """A status reply; if the run has ended meanwhile, an error that says so."""
    def gone() -> HvstackError:
        try:
            how = run.manifest().get("ended", {}).get("reason", "its launcher is gone")
        except HvstackError:
            how = "its run directory is gone"
        return HvstackError(f"run {run.name} is not running ({how})")

    if not run.is_live():
        raise gone()
    try:
        return root.status()
    except (HvstackError, OSError):
        if not run.is_live():
            raise gone() from None
        raise


def _thread_ctx_switches(h: psutil.Process) -> tuple[int, int]:
    """Voluntary and involuntary context switches of every thread of a process (psutil's
    num_ctx_switches of the process counts its main thread only on Linux)."""
    vol = invol = 0
    try:
        tids = [t.id for t in h.threads()]
    except psutil.Error:
        tids = []
    for tid in tids:
        try:
            c = psutil.Process(tid).num_ctx_switches() if tid != h.pid else h.num_ctx_switches()
        except psutil.Error:
            continue
        vol, invol = vol + c.voluntary, invol + c.involuntary
    if not tids:
        c = h.num_ctx_switches()
        vol, invol = c.voluntary, c.involuntary
    return vol, invol


class ProcSampler:
    """pid, CPU %, RSS, threads and context switches of each process of a run, between
    one sample and the next (as top and xentop show them)."""

    def __init__(self) -> None:
        self.handles: dict[tuple[str, int], psutil.Process | None] = {}
        self.last_ctx: dict[tuple[str, int], int] = {}
        self.last_t = time.monotonic()

    @staticmethod
    def processes(man: dict) -> dict[str, int]:
        return {"launcher": man.get("launcher_pid"), **{k: v.get("pid") for k, v in man.get("processes", {}).items()}}

    def _handle(self, key: tuple[str, int]) -> psutil.Process | None:
        if key not in self.handles:
            try:
                h = psutil.Process(key[1])
                h.cpu_percent(None)
            except (psutil.Error, TypeError, ValueError):
                h = None
            self.handles[key] = h
        return self.handles[key]

    def prime(self, man: dict) -> None:
        for key in self.processes(man).items():
            h = self._handle(key)
            if h is not None:
                try:
                    self.last_ctx[key] = sum(_thread_ctx_switches(h))
                except psutil.Error:
                    pass
        self.last_t = time.monotonic()

    def sample(self, man: dict) -> list[dict]:
        now = time.monotonic()
        dt, self.last_t = now - self.last_t, now
        rows = []
        for key in self.processes(man).items():
            name, pid = key
            row = {"name": name, "pid": pid, "alive": False, "cpu_percent": None, "rss_bytes": None,
                   "threads": None, "ctx_switches": None, "ctx_switches_per_s": None}
            h = self._handle(key)
            try:
                if h is not None and h.is_running() and h.status() != psutil.STATUS_ZOMBIE:
                    with h.oneshot():
                        row.update(alive=True, cpu_percent=round(h.cpu_percent(None), 1),
                                   rss_bytes=h.memory_info().rss, threads=h.num_threads())
                    vol, invol = _thread_ctx_switches(h)
                    row["ctx_switches"] = {"voluntary": vol, "involuntary": invol}
                    before = self.last_ctx.get(key)
                    if before is not None and dt > 0:
                        row["ctx_switches_per_s"] = round(max(0, vol + invol - before) / dt, 1)
                    self.last_ctx[key] = vol + invol
            except psutil.Error:
                row["alive"] = False
            rows.append(row)
        return rows


def top_sample(run_name: str, man: dict, before: dict, after: dict, procs: list[dict], sort: str,
               fallback_dt: float) -> dict:
    """One frame of `top` from two status replies: rates are their difference over the
    hypervisor's own uptime between them."""
    dt = after["uptime_s"] - before["uptime_s"]
    if dt <= 0:
        dt = fallback_dt
    names = {v["id"]: k for k, v in man.get("partitions", {}).items()}
    prev = {p["id"]: p for p in before["partitions"]}
    by_name = {p["name"]: p for p in procs}
    parts = []
    for p in after["partitions"]:
        name = names.get(p["id"], str(p["id"]))
        old = prev.get(p["id"])
        exits, old_exits = _sum_exits(p), _sum_exits(old) if old else {}
        rates = {k: round(max(0, v - old_exits.get(k, 0)) / dt, 1) for k, v in exits.items()}
        states: dict[str, int] = {"running": 0, "intercept": 0, "halted": 0}
        for vp in p["vps"]:
            states[vp["state"]] = states.get(vp["state"], 0) + 1
        paths = {}
        old_paths = old["paths"] if old else {}
        for path in sorted(p["paths"], key=order_key):
            total = PathStats.from_wire(p["paths"][path]).total
            was = PathStats.from_wire(old_paths[path]).total if path in old_paths else None
            new = _hist_since(total, was)
            paths[path] = {"count": total.n, "per_s": round(new.n / dt, 1),
                           "p50_us": _us(total.percentile(50)), "p99_us": _us(total.percentile(99)),
                           "interval": {"count": new.n, "p50_us": _us(new.percentile(50)),
                                        "p99_us": _us(new.percentile(99))}}
        mine = [by_name[k] for k in (f"worker:{name}", f"partition:{name}") if k in by_name]
        parts.append({
            "name": name, "id": p["id"], "state": p["state"], "worker": p["worker"],
            "vps": {"total": len(p["vps"]), **states}, "exits": exits, "exits_per_s": rates,
            "exits_per_s_total": round(sum(rates.values()), 1), "faults": sum(vp["faults"] for vp in p["vps"]),
            "worker_timeouts": p["worker_timeouts"],
            "cpu_percent": round(sum(r["cpu_percent"] or 0 for r in mine), 1),
            "rss_bytes": sum(r["rss_bytes"] or 0 for r in mine),
            "ctx_switches_per_s": round(sum(r["ctx_switches_per_s"] or 0 for r in mine), 1),
            "paths": paths})
    part_key = {
        "name": lambda p: p["name"], "exits": lambda p: (-p["exits_per_s_total"], p["name"]),
        "cpu": lambda p: (-p["cpu_percent"], p["name"]), "rss": lambda p: (-p["rss_bytes"], p["name"]),
        "ctxsw": lambda p: (-p["ctx_switches_per_s"], p["name"]),
    }[sort]
    parts.sort(key=part_key)
    part_rate = {f"{role}:{p['name']}": p["exits_per_s_total"] for p in parts for role in ("worker", "partition")}
    part_rate["hypervisor:hv"] = sum(p["exits_per_s_total"] for p in parts)
    proc_key = {
        "name": lambda r: r["name"], "exits": lambda r: (-part_rate.get(r["name"], -1), r["name"]),
        "cpu": lambda r: (-(r["cpu_percent"] or 0), r["name"]), "rss": lambda r: (-(r["rss_bytes"] or 0), r["name"]),
        "ctxsw": lambda r: (-(r["ctx_switches_per_s"] or 0), r["name"]),
    }[sort]
    counters = after["counters"]
    return {
        "run": run_name, "time": datetime.now(timezone.utc).isoformat(), "interval_s": round(dt, 3), "sort": sort,
        "hypervisor": {"pid": after.get("pid"), "uptime_s": round(after["uptime_s"], 3), "peers": after["peers"],
                       "counters": counters,
                       "messages_per_s": round(max(0, counters.get("messages", 0)
                                                   - before["counters"].get("messages", 0)) / dt, 1)},
        "partitions": parts, "processes": sorted(procs, key=proc_key)}


def _mib(n: int | None) -> str:
    return "" if n is None else f"{n / 2**20:.1f} MiB"


def render_top(s: dict) -> str:
    hv = s["hypervisor"]
    c = hv["counters"]
    lines = [f"hvstack top — run {s['run']}   hypervisor up {hv['uptime_s']:.1f} s, {hv['peers']} peers, "
             f"{hv['messages_per_s']:.0f} messages/s   every {s['interval_s']:.1f} s, sorted by {s['sort']}",
             "  ".join(f"{k.replace('_', ' ')} {v}" for k, v in c.items() if k != "messages"), ""]
    rows = [[p["name"], str(p["id"]), p["state"], str(p["vps"]["total"]), str(p["vps"]["running"]),
             str(p["vps"]["intercept"]), str(p["vps"]["halted"]), f"{p['exits_per_s_total']:.0f}",
             str(sum(p["exits"].values())), str(p["faults"]), str(p["worker_timeouts"]), f"{p['cpu_percent']:.0f}%",
             _mib(p["rss_bytes"])] for p in s["partitions"]]
    lines.append(table(["partition", "id", "state", "VPs", "run", "icpt", "halt", "exits/s", "exits", "faults",
                        "wto", "CPU", "RSS"], rows, "lrlrrrrrrrrrr"))
    for p in s["partitions"]:
        total = sum(p["exits"].values()) or 1
        erows = [[k, str(v), f"{100 * v / total:.1f}", f"{p['exits_per_s'].get(k, 0):.0f}"]
                 for k, v in sorted(p["exits"].items(), key=lambda kv: (-p["exits_per_s"].get(kv[0], 0), -kv[1]))
                 if v]
        lines += ["", f"{p['name']}: exits by reason"]
        if erows:
            lines.append(_indent(table(["reason", "total", "%total", "now/s"], erows)))
        prows = [[label(k), str(v["count"]), f"{v['per_s']:.0f}", f"{v['p50_us']:.1f}",
                  f"{v['p99_us']:.1f}", *((f"{v['interval']['p50_us']:.1f}", f"{v['interval']['p99_us']:.1f}")
                                           if v["interval"]["count"] else ("-", "-"))]
                 for k, v in p["paths"].items()]
        if prows:
            lines.append(_indent(table(["path", "count", "now/s", "p50 µs", "p99 µs", "now p50", "now p99"], prows)))
    prows = []
    for r in s["processes"]:
        if not r["alive"]:
            prows.append([r["name"], str(r["pid"]), "gone", "", "", "", ""])
            continue
        ctx = r["ctx_switches"]
        prows.append([r["name"], str(r["pid"]), f"{r['cpu_percent']:.0f}%", _mib(r["rss_bytes"]), str(r["threads"]),
                      f"{ctx['voluntary']}/{ctx['involuntary']}",
                      "" if r["ctx_switches_per_s"] is None else f"{r['ctx_switches_per_s']:.0f}"])
    lines += ["", table(["process", "pid", "CPU", "RSS", "threads", "ctxsw vol/invol", "ctxsw/s"], prows, "lrrrrrr")]
    return "\n".join(lines)


def plot_file(value: str) -> str:
    """``bench --plot FILE``: checked when the arguments are parsed, so that a missing
    matplotlib (an optional extra) or directory fails before the bench runs, not after."""
    from benchmarks.plot import PlotUnavailable, require_matplotlib

    try:
        require_matplotlib()
    except PlotUnavailable as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not Path(value).resolve().parent.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: no such directory")
    return value


def cmd_top(args) -> int:
    """A live view of a run, as xentop and kvm_stat give one: refreshed every --interval."""
    run, man = live_run(args.run)
    if args.interval <= 0:
        print("launch.py top: --interval must be > 0", file=sys.stderr)
        return 2
    clear = sys.stdout.isatty() and not args.json
    sampler = ProcSampler()
    shown = 0
    try:
        with RootClient(man["endpoint"], run.secret()) as root:
            sampler.prime(man)
            before, t_before = _status_while_live(root, run), time.monotonic()
            while True:
                time.sleep(args.interval)
                after, t_after = _status_while_live(root, run), time.monotonic()
                man = run.manifest()
                sample = top_sample(run.name, man, before, after, sampler.sample(man), args.sort, t_after - t_before)
                text = json.dumps(sample, ensure_ascii=False) if args.json else render_top(sample)
                sys.stdout.write(("\x1b[H\x1b[2J" if clear else "") + text + ("\n" if args.json or clear else "\n\n"))
                sys.stdout.flush()
                shown += 1
                if args.once or (args.iterations and shown >= args.iterations):
                    return 0
                before, t_before = after, t_after
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (`top --json | head -1`): not an error, and nothing more to flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def run_stats(run: RunDir, man: dict, status: dict) -> dict:
    """The full statistics of a run as one JSON-ready object (µs)."""
    names = {v["id"]: k for k, v in man.get("partitions", {}).items()}
    parts = {}
    for p in status["partitions"]:
        parts[names.get(p["id"], str(p["id"]))] = {
            "id": p["id"], "state": p["state"], "vps": len(p["vps"]),
            "exits": _sum_exits(p),
            "counters": {"faults": sum(vp["faults"] for vp in p["vps"]),
                         **{k: p[k] for k in ("unclaimed_reads", "unclaimed_writes", "unmapped_gpa",
                                              "worker_timeouts", "resets") if k in p},
                         "guest": p.get("guest", {})},
            "paths": {k: path_summary(k, p["paths"][k])
                      for k in sorted(p["paths"], key=order_key)},
        }
    return {"run": run.name, "unit": "us",
            "hypervisor": {"uptime_s": status["uptime_s"], "peers": status["peers"], "counters": status["counters"],
                           "hypercalls": status.get("hypercalls", {})},
            "partitions": parts}


def cmd_stats(args) -> int:
    run, man = live_run(args.run)
    with RootClient(man["endpoint"], run.secret()) as root:
        status = _status_while_live(root, run)
    stats = run_stats(run, man, status)
    if args.json:
        print(json.dumps(stats, indent=2, ensure_ascii=False))
        return 0
    hv = stats["hypervisor"]
    print(f"run {run.name}: hypervisor up {hv['uptime_s']:.1f} s, "
          + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in hv["counters"].items()))
    for name, p in stats["partitions"].items():
        print(f"\npartition {name} (id {p['id']}, {p['vps']} VPs): {p['state']}")
        print("  exits: " + (", ".join(f"{k} {v}" for k, v in p["exits"].items() if v) or "none"))
        counters = {k: v for k, v in p["counters"].items() if k != "guest"}
        print("  counters: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counters.items()))
        rows = [[label(k), str(v["count"]), *(f"{v[f]:.1f}" for f in
                 ("p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us"))] for k, v in p["paths"].items()]
        if rows:
            print(_indent(table(["path", "count", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs", "mean µs"],
                                rows)))
        wire = status["partitions"][[q["id"] for q in status["partitions"]].index(p["id"])]["paths"]
        for k, v in p["paths"].items():
            if len(v.get("stages", {})) in (len(EMULATED_STAGES), len(HANDLED_STAGES)):
                print(f"  {label(k)}, per stage:")
                print(_indent(table(["stage", "mean µs", "p50 µs", "p99 µs", "share"], stage_rows(wire, k)), 4))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="launch.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    p = sub.add_parser("run", help="run a topology file (default: the embedded topology)")
    p.add_argument("config", nargs="?")
    p.add_argument("--duration", type=float, help="seconds of workloads (0: until stopped)")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("ls", help="list live runs")
    p.add_argument("--all", action="store_true", help="include ended runs")
    p.set_defaults(fn=cmd_ls)
    p = sub.add_parser("status", help="a live run's partitions, VPs, counters, processes")
    p.add_argument("run")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("stop", help="end a live run cleanly")
    p.add_argument("run")
    p.add_argument("--timeout", type=float, default=15.0)
    p.set_defaults(fn=cmd_stop)
    p = sub.add_parser("io", help="execute instructions on behalf of a VP (like QEMU's qtest)")
    p.add_argument("run")
    p.add_argument("partition")
    p.add_argument("ops", nargs=argparse.REMAINDER,
                   help="inb|inw|inl PORT, outb|outw|outl PORT VALUE, cpuid LEAF [SUBLEAF], rdmsr MSR, "
                        "wrmsr MSR VALUE, hypercall CONTROL|NAME [INPUT_HEX]; none: read them from stdin")
    p.add_argument("--vp", type=int, default=0)
    p.set_defaults(fn=cmd_io)
    p = sub.add_parser("screen", help="print a live partition's VGA text screen")
    p.add_argument("run")
    p.add_argument("partition")
    p.set_defaults(fn=cmd_screen)
    p = sub.add_parser("keys", help="type text on a live partition's keyboard (i8042, scancode set 1)")
    p.add_argument("run")
    p.add_argument("partition")
    p.add_argument("text", nargs="+")
    p.add_argument("--enter", action="store_true", help="press Enter after the text")
    p.set_defaults(fn=cmd_keys)
    p = sub.add_parser("trace", help="every exit of a live run as it happens, then a summary by reason")
    p.add_argument("run")
    p.add_argument("--partition", help="only this partition's exits")
    p.add_argument("--reason", action="append", choices=[str(e) for e in Exit],
                   help="only exits of this reason (may be given several times)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV rows, then the summary as CSV after a blank line")
    fmt.add_argument("--json", action="store_true", help="one JSON object per event, then a summary object")
    p.set_defaults(fn=cmd_trace)
    p = sub.add_parser("console", help="attach to a live partition's serial console (like virsh console; ^] exits)")
    p.add_argument("run")
    p.add_argument("partition")
    p.add_argument("--no-input", action="store_true", help="only watch: send nothing to the guest")
    p.add_argument("--linger", type=float, default=1.0,
                   help="seconds to keep printing after piped input ends (default 1)")
    p.set_defaults(fn=cmd_console)
    p = sub.add_parser("ctl", help="pause, resume, reset or stop a partition of a live run")
    p.add_argument("run")
    p.add_argument("action", choices=("pause", "resume", "reset", "stop"))
    p.add_argument("partition")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for stop to take effect")
    p.set_defaults(fn=cmd_ctl)
    p = sub.add_parser("bench", help="round trips of each path against a pure-pyzmq floor")
    p.add_argument("--json", action="store_true")
    p.add_argument("--duration", type=float, default=6.0, help="seconds of guest workloads per path kind")
    p.add_argument("--samples", type=int, default=6000, help="round trips per floor")
    p.add_argument("--rounds", type=int, default=3, help="floor and stack alternate this many times")
    p.add_argument("--no-experiments", dest="experiments", action="store_false",
                   help="skip the enlightenment experiments (spinlock, EOI, TLB)")
    p.add_argument("--plot", metavar="FILE.png", type=plot_file,
                   help="draw latency histograms and CDFs (needs the [plot] extra)")
    p.set_defaults(fn=cmd_bench)
    p = sub.add_parser("top", help="a live view of a run: VPs, exits/s by reason, latency, processes")
    p.add_argument("run")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default 1)")
    p.add_argument("--sort", choices=TOP_SORTS, default="exits", help="order of partitions and processes")
    p.add_argument("--once", action="store_true", help="one sample (two status reads --interval apart), then exit")
    p.add_argument("--iterations", type=int, default=0, help="exit after this many samples (0: until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="one JSON object per sample, one per line")
    p.set_defaults(fn=cmd_top)
    p = sub.add_parser("stats", help="a live run's full statistics: percentiles, stages, exits, counters")
    p.add_argument("run")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_stats)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["run", *argv]  # no command: run the default topology
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except HvstackError as e:
        print(f"launch.py {args.cmd}: {e}", file=sys.stderr)
        return 1
    except (PeerTimeout, HypercallFailed) as e:
        print(f"launch.py {args.cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
