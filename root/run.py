"""A run's life cycle: start the hypervisor, create the partitions (the TLFS host flow), start
each one's worker and then the partition itself; supervise; end.

A run ends when every VP has halted after its workloads, on Ctrl-C or SIGTERM (`stop`
sends one), when `ctl stop` has stopped every partition, or when any of its processes dies
— and then every process of the run is gone (partitions, then workers, then the
hypervisor) and ``manifest.json`` in the run directory says how it ended.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from proto import auth, confine
from proto.memory import dirty_path, memory_path, slat_path
from proto.tlb import tlb_path
from proto.posted import posted_path
from proto.errors import HvstackError
from proto.status import HypervisorStatus
from proto.transport import curve_keypair, ipc_endpoint
from root import REPO, cgroups, follow, hostflow, migration, partition_save, prestart, servicing, zygote
from root.incoming import Receiver
from root.migration_lease import LeaseWatcher
from root.client import ConsoleWatcher, RootClient
from root.guest_images import disk_contents, firmware_nvram
from root.procs import (STOP_GRACE_S, Proc, child_env, describe_exit, die_with_parent, last_words, partition_uid,
                        spawn, stop_procs, uids_in_use)
from root.report import Output
from root.rundir import GUEST_MEMORY_FILES, RunDir, launcher_identity, new_run_dir, pid_alive, write_json, write_private
from root.topology import Topology
from root.topology_sections import vmbus_disk_image
from root import vmbus_save
from root.vsp import status as vsp_status

HV_READY_TIMEOUT_S = 10.0
WORKER_READY_TIMEOUT_S = 10.0
STATUS_INTERVAL_S = 0.25  # how often supervision reads the hypervisor's status
PROC_CHECK_S = 0.05  # how often it looks for a process that died (and reports it)
FINISH_GRACE_S = 30  # beyond the duration, before guests that have not finished end the run
UNTIL_STOPPED_S = 86400.0  # the guest's duration when the run's is 0 ("until stopped")
HV_DEAD_PARTITION_GRACE_S = 0.5
# Stop order: the partitions first, then their workers (and the VSP process), then the hypervisor.
STOP_ORDER = {"partition": 0, "worker": 1, "hypervisor": 2, "vsp": 1}
VSP_READY_TIMEOUT_S = 10.0
# Every file a run's processes create is theirs alone (0600; directories 0700): they inherit
# the launcher's umask while a run starts.
RUN_UMASK = prestart.RUN_UMASK


class RunEnded(HvstackError):
    """The run is over, for ``reason``; the launcher exits with ``exit_code`` (0 when it
    ended as asked, 130 on SIGINT, 1 when something died or did not start)."""

    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


@dataclass
class Run:
    topology: Topology
    out: Output
    duration_s: float | None = None  # None: the topology's
    run: RunDir = field(init=False)
    procs: list[Proc] = field(default_factory=list)
    partition_ids: dict[str, int] = field(default_factory=dict)
    endpoint: str = ""
    server_key: str | None = None  # a tcp endpoint's CURVE public key (Z85); None for ipc
    secret: str = field(default_factory=auth.new_secret)
    isolation: str = confine.SAME_USER  # the level in force (confine.level()), set at start
    root: RootClient | None = None
    watcher: ConsoleWatcher | None = None
    final_status: HypervisorStatus | None = None  # the hypervisor's status as the run ended
    _stop_reason: str | None = None
    _console_partial: dict = field(default_factory=dict)
    _unresponsive: list = field(default_factory=list)  # partitions whose worker stopped answering
    _cgroups: dict = field(default_factory=dict)  # partition name → its cpu cgroup (root/cgroups.py)
    _uids: dict = field(default_factory=dict)  # (role, partition id) → the uid its process runs under
    # The uids live processes had when the first was chosen, and those chosen since: one scan of
    # /proc per run, not one per process (32 at 16 partitions, ≈ 20 ms each on a busy host).
    _uids_in_use: set | None = None
    _dead_workers: dict = field(default_factory=dict)  # name → Proc: died, to be restarted (servicing)
    worker_restarts: dict = field(default_factory=dict)  # partition name → times its worker was restarted
    restores: dict = field(default_factory=dict)  # partition name → its saved record (root/partition_save.py)
    incoming: list = field(default_factory=list)  # partitions that come by migration (root/incoming.py)
    listen: str = "127.0.0.1"  # the address the incoming endpoint listens on
    receiver: object = None  # their root.incoming.Receiver
    leases: object = None  # the migrate commands' leases on this run's partitions (root/migration_lease.py)
    # Partitions this run may create while it runs, for a migration that brings them (a host
    # of a run of hosts: every partition of the topology; root/arrivals.py), and the pool's
    # pages not yet given to a partition.
    arrivable: dict = field(default_factory=dict)
    room_pages: int = 0  # added to the pool for them
    free_pages: list = field(default_factory=list)
    zygotes: dict = field(default_factory=dict)  # module → its zygote (root/zygote.py), which forks its processes
    # On the command lines of the processes started before the run directory was (root/prestart.py) and of
    # the zygotes and their children: how `stop` knows them as this run's (root/procs.py leftovers).
    run_tag: str = field(default_factory=lambda: prestart.tag() or prestart.new_tag())

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        # The launcher holds the run secret: no other process of its uid may read its memory.
        confine.set_dumpable(False)
        self.isolation = confine.level()
        self.run = new_run_dir(self.topology.name)
        write_private(self.run.path / "secret", self.secret)
        self._manifest_update(state="starting")
        logs = self.run.path / "logs"
        pool_pages = hostflow.pool_pages(self.topology) + self.room_pages
        args = ["--lps", str(self.topology.logical_processors),
                "--memory-dir", str(self.run.path), "--pool-pages", str(pool_pages)]
        if self.topology.transport == "ipc":
            args = ["--endpoint", ipc_endpoint(str(self.run.path / "hv.sock")), *args]
            early = prestart.take_hypervisor(args, logs / "hypervisor.log", self.secret)
            hv = Proc("hypervisor", "hv", early, logs / "hypervisor.log") if early is not None else \
                spawn("hypervisor", "hv", "hypervisor", args, logs, secret=self.secret, stdout=subprocess.PIPE)
        else:
            hv = self._spawn_tcp_hypervisor(args, logs)
        self.procs.append(hv)
        self._start_zygotes(logs)  # their imports while the hypervisor does its own
        self.endpoint = self._await_ready(hv)
        self.root = RootClient(self.endpoint, self.secret, server_key=self.server_key)
        free = self.free_pages = hostflow.free_pages(pool_pages, self.run.name)
        for pc in self.topology.partitions:
            # Its VPs stay suspended until its worker is ready (below), so that the
            # partition process can start meanwhile.
            self.partition_ids[pc.name] = hostflow.create_partition(self.root, pc, free)
            migration.create_dirty_log(self.run.path, self.partition_ids[pc.name])
            if pc.name in self.restores:  # its memory and hypervisor state, before a VP connects
                partition_save.restore_memory_and_state(self.root, self.run.path, self.partition_ids[pc.name],
                                                        self.restores[pc.name])
        self._manifest_update()
        self._start_vsp(logs)
        for name, record in self.restores.items():  # a VMBus partition's bus, before its VPs run
            pc = next(p for p in self.topology.partitions if p.name == name)
            if pc.vmbus is not None:
                vmbus_save.restore(self.root, self.run.path, pc, self.partition_ids[name], record)
        self.watcher = ConsoleWatcher(self.endpoint, self.secret, list(self.partition_ids.values()),
                                      server_key=self.server_key)
        for pc in self.topology.partitions:
            pid = self.partition_ids[pc.name]
            devices = pc.worker_devices(self.run.path, self.topology.base_dir or self.run.path)
            if pc.firmware:
                firmware_nvram(self.run.path / f"nvram-{pc.name}.bin", pc.memory_mb, pc.vps)
            if pc.disk and pc.disk.get("contents"):
                disk_contents(next(d for d in devices if d["type"] == "ata"), pc.disk["contents"],
                              self.topology.base_dir)
            write_json(self.run.path / f"worker-{pc.name}.json", self.worker_spec(pc, devices))
            if pc.name in self.restores:  # its disks, and its devices for the worker to restore
                partition_save.restore_devices(self.run.path, pid, pc, devices, self.restores[pc.name])
            if pc.name not in self.incoming:  # (an incoming partition's start when its migration begins)
                self.procs.append(self.spawn_worker(pc, restore=pc.name in self.restores))
        self._manifest_update()
        # The partition processes start while the workers do (issue 12: each is a Python
        # start-up of a few hundred ms, which used to follow the workers'); their VPs'
        # hellos wait until the VPs are started, once every worker has claimed its ranges.
        for pc in self.topology.partitions:
            pid = self.partition_ids[pc.name]
            token = auth.peer_token(self.secret, "vp", pid)
            spec_path = self.run.path / f"partition-{pc.name}.json"
            write_json(spec_path, self.partition_spec(pc))
            if pc.name in self.incoming:
                continue
            args, fds = self._confinement("partition", pid, tlbs=True)
            self.procs.append(spawn("partition", pc.name, "partitions", ["--spec", str(spec_path), *args],
                                    logs, secret=token, fds=fds, zygote=self.zygotes.get("partitions")))
            self._limit_cpu(pc, self.procs[-1].pid)
        self._start_vps_as_workers_ready()
        if self.incoming or self.arrivable:
            self.receiver = Receiver(self, self.incoming, self.listen)
            self._manifest_update(incoming=self.receiver.manifest())
        self.leases = LeaseWatcher(self)
        self._manifest_update(state="running")

    def worker_spec(self, pc, devices: list[dict]) -> dict:
        """What partition ``pc``'s worker reads from ``worker-NAME.json``."""
        return {"endpoint": self.endpoint, "server_key": self.server_key, "partition_id": self.partition_ids[pc.name],
                "name": pc.name, "console_path": str(self.run.path / f"console-{pc.name}.log"), "devices": devices}

    def partition_spec(self, pc) -> dict:
        """What partition ``pc``'s process reads from ``partition-NAME.json``."""
        return {"endpoint": self.endpoint, "server_key": self.server_key, "partition_id": self.partition_ids[pc.name],
                "name": pc.name, "vps": pc.vps, "memory_mb": pc.memory_mb, "workloads": pc.workloads,
                "vmbus": pc.vmbus, "cpu": pc.backend, "firmware": pc.firmware, "kernel": pc.kernel,
                "initrd": pc.initrd, "cmdline": pc.cmdline,
                "resume": pc.name in self.restores or pc.name in self.incoming,
                "cpu_state": partition_save.cpu_state(self.restores.get(pc.name)),
                "base_dir": str(self.topology.base_dir) if self.topology.base_dir else None,
                # 0 means "until stopped": the guest runs its workloads for a day.
                "duration_s": self.duration if self.duration > 0 else UNTIL_STOPPED_S}

    def spawn_worker(self, pc, restore: bool = False, go_fd: int | None = None, forked: bool = False) -> Proc:
        """``python -m worker`` for partition ``pc`` (its spec already written), confined;
        its devices saved into ``checkpoint-NAME.bin`` when servicing asks (and at every
        completed access where a dead worker is restarted); ``restore``: a successor, which
        restores them from there first (root/servicing.py) and says how long that took
        on its stdout — once the launcher writes on ``go_fd``'s other end, if given (the
        read end: inherited, then closed here)."""
        pid = self.partition_ids[pc.name]
        args, fds = self._confinement("worker", pid, tlbs=False)
        args += ["--checkpoint", str(self.run.path / f"checkpoint-{pc.name}.bin")]
        if pc.on_worker_exit == "restart":
            args += ["--each-exit"]
        if restore:
            args += ["--restore"]
        if go_fd is not None:
            args += ["--go-fd", str(go_fd)]
            fds += (go_fd,)
        return spawn("worker", pc.name, "worker", ["--spec", str(self.run.path / f"worker-{pc.name}.json"), *args],
                     self.run.path / "logs", secret=auth.peer_token(self.secret, "worker", pid), fds=fds,
                     stdout=subprocess.PIPE if restore else subprocess.DEVNULL,
                     # A successor (servicing, a restart) starts fresh, as before: forked, one
                     # started ≈ 10× sooner, and a restarted partition then sometimes stalled for
                     # good (issue 12's report; servicing's timing is not start-up's to change).
                     # ``forked``: an incoming migration's, which has no predecessor (root/incoming.py).
                     zygote=None if restore and not forked else self.zygotes.get("worker"))

    def _confinement(self, role: str, pid: int, tlbs: bool) -> tuple[list[str], tuple[int, ...]]:
        """The arguments and descriptors that confine a worker or partition process: its
        partition's RAM (read-write) and SLAT table (read-only), the partition's TLB files
        (the partition process only) and, where the run is root's, its uid (else, where
        user namespaces can be had, ``--namespaces``).  The files are
        the hypervisor's, 0600: the process cannot reopen them (not even through
        /proc/self/fd) once it has dropped to its uid."""
        d = self.run.path
        ram = os.open(memory_path(d, pid), os.O_RDWR | os.O_CLOEXEC)
        slat = os.open(slat_path(d, pid), os.O_RDONLY | os.O_CLOEXEC)
        fds = [ram, slat]
        args = ["--memory-fd", str(ram), "--slat-fd", str(slat)]
        if os.path.exists(dirty_path(d, pid)):  # every write marks its page there (live migration)
            fds.append(os.open(dirty_path(d, pid), os.O_RDWR | os.O_CLOEXEC))
            args += ["--dirty-fd", str(fds[-1])]
        if tlbs:
            lp_fds = [os.open(tlb_path(d, pid, lp), os.O_RDWR | os.O_CLOEXEC)
                      for lp in range(self.topology.logical_processors)]
            fds += lp_fds
            args += ["--tlb-fds", ",".join(map(str, lp_fds))]
            if os.path.exists(posted_path(d, pid)):  # the hypervisor's posted-interrupt descriptors
                fds.append(os.open(posted_path(d, pid), os.O_RDWR | os.O_CLOEXEC))
                args += ["--posted-fd", str(fds[-1])]
        if self.isolation == confine.UIDS:
            # A successor worker (servicing) runs under its predecessor's uid.
            if self._uids_in_use is None:
                self._uids_in_use = uids_in_use()
            uid = self._uids.get((role, pid)) or partition_uid(os.getpid(), pid, role, self._uids_in_use)
            self._uids[(role, pid)] = uid
            self._uids_in_use.add(uid)
            args += ["--uid", str(uid), "--gid", str(uid)]
        elif self.isolation == confine.NAMESPACES:
            args += ["--namespaces"]
        return args, tuple(fds)

    def _start_zygotes(self, logs) -> None:
        """A zygote each for the workers and the partition processes (root/zygote.py), unless
        HVSTACK_ZYGOTE=0 or this process cannot adopt what they fork; without one (or once
        one has failed) the processes start as a fresh ``python -m`` each."""
        self.zygotes = prestart.take_zygotes()  # started before the launcher's imports, if they were
        prestart.dismiss()  # anything of those the run does not use (a tcp run's hypervisor)
        if self.zygotes or not zygote.enabled() or not zygote.become_subreaper():
            return
        for module in prestart.ZYGOTE_MODULES:
            self.zygotes[module] = zygote.Zygote(module, self.run_tag, logs, child_env(module), REPO,
                                                 die_with_parent)

    def _start_vsp(self, logs) -> None:
        """The root's kernel-side process (root/vsp), only when some partition has a vmbus
        section: its key and each such partition's RAM and SLAT by descriptor; ready (its
        connections made in the hypervisor) before any guest boots."""
        served = [pc for pc in self.topology.partitions if pc.vmbus is not None]
        if not served:
            return
        d, base = self.run.path, self.topology.base_dir or self.run.path
        parts, fds, fd_args = [], [], []
        for pc in served:
            pid = self.partition_ids[pc.name]
            ram = os.open(memory_path(d, pid), os.O_RDWR | os.O_CLOEXEC)
            slat = os.open(slat_path(d, pid), os.O_RDONLY | os.O_CLOEXEC)
            fds += [ram, slat]
            fd_args.append(f"{pid}:{ram}:{slat}")
            if os.path.exists(dirty_path(d, pid)):  # its writes into guest memory marked (live migration)
                fds.append(os.open(dirty_path(d, pid), os.O_RDWR | os.O_CLOEXEC))
                fd_args[-1] += f":{fds[-1]}"
            image = vmbus_disk_image(pc, d, base)
            parts.append({"id": pid, "name": pc.name, "suppress": pc.vmbus["signal_suppression"],
                          "nic": "nic" in pc.vmbus,
                          "disk": image and {"image_path": str(image), "size_bytes": pc.vmbus["disk"]["size_mb"] << 20}})
        spec = {"endpoint": self.endpoint, "server_key": self.server_key, "partitions": parts,
                "status_path": str(d / vsp_status.STATUS_FILE),
                "external_port": bool((self.topology.switch or {}).get("external"))}
        write_json(d / "vsp.json", spec)
        vsp = spawn("vsp", "vsp", "root.vsp", ["--spec", str(d / "vsp.json"), "--memory-fds", ",".join(fd_args)],
                    logs, secret=auth.peer_token(self.secret, "vsp", 0), fds=tuple(fds), stdout=subprocess.PIPE)
        self.procs.append(vsp)
        deadline = time.monotonic() + VSP_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if vsp.popen.poll() is not None:
                raise RunEnded(f"vsp {describe_exit(vsp.popen.returncode)} at start (see {vsp.log_path})", 1)
            if select.select([vsp.popen.stdout], [], [], 0.1)[0]:
                if vsp.popen.stdout.readline().startswith(b"READY"):
                    vsp.popen.stdout.close()
                    return
        raise RunEnded(f"vsp not ready in {VSP_READY_TIMEOUT_S} s (see {vsp.log_path})", 1)

    def _limit_cpu(self, pc, pid: int) -> None:
        """cpu.limit on the host as well, where cgroups allow (root/cgroups.py)."""
        limit = pc.cpu.get("limit", 100)
        if limit >= 100:
            return
        path, note = cgroups.limit_cpu(self.run.name, pc.name, pid, limit, pc.vps)
        self._cgroups[pc.name] = path
        self.out.print(f"partition {pc.name}: {note}")
        man = self.run.manifest().get("cpu_cgroups", {})
        man[pc.name] = {"cgroup": str(path) if path else None, "note": note}
        self._manifest_update(cpu_cgroups=man)

    def _spawn_tcp_hypervisor(self, args: list[str], logs) -> Proc:
        """A tcp endpoint is CURVE (proto.transport): a key pair per run, the public half in
        the manifest for clients, the secret half to the hypervisor on an inherited pipe."""
        self.server_key, curve_secret = curve_keypair()
        fd = confine.secret_pipe(curve_secret)
        return spawn("hypervisor", "hv", "hypervisor",
                     ["--endpoint", "tcp://127.0.0.1:0", "--curve-key-fd", str(fd), *args],
                     logs, secret=self.secret, fds=(fd,), stdout=subprocess.PIPE)

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

    def _start_vps_as_workers_ready(self) -> None:
        """Start each partition's VPs once its own worker has claimed its ranges (issue 12:
        one partition's boot need not wait for the other partitions' workers); not those
        that come by migration (their receiver starts them)."""
        waiting = {self.partition_ids[pc.name]: pc.vps for pc in self.topology.partitions
                   if pc.name not in self.incoming}
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while True:
            self._check_procs()
            for p in self._status_watched().partitions:
                if p.id in waiting and p.worker and p.ranges:
                    self.root.start_vps(p.id, waiting.pop(p.id))
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise RunEnded(f"workers not ready in {WORKER_READY_TIMEOUT_S} s", 1)
            # A forked worker is ready tens of ms after its fork; a status costs the hypervisor
            # and this process more the more partitions it holds: 10 ms a partition, ≤ 50 ms.
            time.sleep(min(0.05, 0.01 * len(waiting)))

    def _check_procs(self) -> None:
        for p in self.procs:
            code = p.popen.poll()
            if code is not None:
                if p.role == "worker" and self._restartable(p.name):
                    self._dead_workers.setdefault(p.name, p)  # supervise() restarts it
                    continue
                words = last_words(p.log_path)
                if words:  # why it died is usually there; the run's output is often all that is kept
                    self.out.print(f"{p.role} {p.name} (pid {p.pid}) {describe_exit(code)}; {words}")
                raise RunEnded(f"{p.role} {p.name} (pid {p.pid}) {describe_exit(code)}", 1)

    def status(self) -> HypervisorStatus:
        """The hypervisor's status now, typed."""
        return HypervisorStatus.from_wire(self.root.status())

    def _status_watched(self) -> HypervisorStatus:
        """The status, but a process that dies meanwhile ends the run at once and in its
        own name (not 5 s later as a launcher error about a status timeout)."""
        try:
            # Brief: no histograms nor TLB walk, which supervision does not read (issue 12).
            return HypervisorStatus.from_wire(self.root.status_watched(self._check_procs, brief=True))
        except (HvstackError, OSError):
            self._check_procs()
            raise

    def _hypervisor_alive(self) -> bool:
        return any(p.role == "hypervisor" and p.popen.poll() is None for p in self.procs)

    def request_stop(self, reason: str) -> None:
        self._stop_reason = reason

    @property
    def duration(self) -> float:
        return self.topology.duration_s if self.duration_s is None else self.duration_s

    def supervise(self) -> HypervisorStatus:
        """Until every VP has finished its workloads (a run with a duration), a stop
        request, a death, or every partition stopped by `ctl stop`."""
        grace = self.duration + FINISH_GRACE_S
        deadline = time.monotonic() + grace
        next_status = next_check = 0.0
        stopped: set[int] = set()
        while True:
            self._pump_console(100)
            if self.receiver is not None:
                self.receiver.poll()
            if self._stop_reason:
                raise RunEnded(self._stop_reason, 130 if "SIGINT" in self._stop_reason else 0)
            now = time.monotonic()
            if now >= next_check:
                # Not on every turn either: a turn ends at every burst of console output, and
                # this polls every process of the run (at N = 16, 33 waitpids a turn, ~400
                # turns a second while the guests boot: 170k calls in a 13 s run, cProfile).
                next_check = now + PROC_CHECK_S
                self._check_procs()
            if now < next_status:
                continue
            next_status = time.monotonic() + STATUS_INTERVAL_S
            # With the status, not on every turn: a turn ends at every burst of console
            # output, N partitions' worth, and the leases' directory scan was ~2 ms of each
            # (issue 12: 450 scans in 15 s at N = 16).
            self.leases.poll()
            status = self._status_watched()
            # The run's own partitions only: the root may have made others (the fuzzer does).
            ours = [p for p in status.partitions if p.id in self.partition_ids.values()]
            for p in ours:
                if p.state == "finalized" and p.id not in stopped:
                    stopped.add(p.id)
                    self._stop_partition(p.id)
            self._note_unresponsive(status)
            self._service_workers(stopped)
            if len(stopped) == len(self.partition_ids) and not self.arrivable:  # (a host waits for arrivals)
                raise RunEnded("every partition was stopped (ctl stop)", 0)
            if self.duration > 0:
                vps = [vp for p in ours if p.id not in stopped for vp in p.vps]
                if vps and all(vp.guest.get("workloads_done") for vp in vps):
                    self._pump_console(50)
                    return self.status()  # whole: the run's report prints its histograms
                if time.monotonic() > deadline:
                    raise RunEnded(f"guests did not finish within {grace:.0f} s", 1)

    def _restartable(self, name: str) -> bool:
        pc = next((p for p in self.topology.partitions if p.name == name), None)
        return pc is not None and pc.on_worker_exit == "restart" and self._hypervisor_alive() \
            and self.worker_restarts.get(name, 0) < servicing.MAX_RESTARTS

    def _service_workers(self, stopped: set[int]) -> None:
        """Restart the workers that died (``on_worker_exit = "restart"``) and service the
        partitions `ctl service` asked for (root/servicing.py)."""
        for name, proc in list(self._dead_workers.items()):
            del self._dead_workers[name]
            self.out.print(f"partition {name}: its worker (pid {proc.pid}) {describe_exit(proc.popen.returncode)}; "
                           "restarting it from its last checkpoint")
            self.worker_restarts[name] = self.worker_restarts.get(name, 0) + 1
            try:
                figures = servicing.replace_worker(self, name, restart=True)
            except HvstackError as e:
                raise RunEnded(f"worker {name} died and could not be restarted: {e}", 1) from None
            # Its stall ended with the new worker (the commit resumed the partition).
            self._unresponsive = [n for n in self._unresponsive if n != name]
            self._record_service(figures)
        for path in self.run.path.glob(f"service-*{servicing.REQUEST_SUFFIX}"):
            name = path.name.removeprefix("service-").removesuffix(servicing.REQUEST_SUFFIX)
            nonce = path.read_text().strip()[:64]
            path.unlink(missing_ok=True)
            if name not in self.partition_ids or self.partition_ids[name] in stopped:
                figures = {"partition": name, "error": "no such running partition"}
            else:
                try:
                    figures = servicing.replace_worker(self, name, restart=False)
                except HvstackError as e:
                    figures = {"partition": name, "error": str(e)}
            self._record_service({**figures, "nonce": nonce})

    def _record_service(self, figures: dict) -> None:
        self.out.print(servicing.describe(figures) if "error" not in figures
                       else f"partition {figures['partition']}: service failed: {figures['error']}")
        services = self.run.manifest().get("services", []) + [figures]
        self._manifest_update(services=services[-100:], worker_restarts=dict(self.worker_restarts),
                              unresponsive_partitions=self._unresponsive)

    def _note_unresponsive(self, status: HypervisorStatus) -> None:
        """The hypervisor paused a partition whose worker stopped answering (or it answers
        again): say so, and in the manifest (``unresponsive_partitions``)."""
        names = {v: k for k, v in self.partition_ids.items()}
        now = sorted(names.get(p.id, str(p.id)) for p in status.partitions if p.unresponsive)
        if now == self._unresponsive:
            return
        for name in sorted(set(now) - set(self._unresponsive)):
            self.out.print(f"partition {name}: its worker stopped answering; the partition is paused (unresponsive)")
        for name in sorted(set(self._unresponsive) - set(now)):
            self.out.print(f"partition {name}: its worker answers again; `ctl resume` lets it run")
        self._unresponsive = now
        self._manifest_update(unresponsive_partitions=now)

    def _stop_partition(self, pid: int) -> None:
        """`ctl stop`: end one partition's processes; the rest of the run goes on."""
        name = next(n for n, i in self.partition_ids.items() if i == pid)
        procs = [p for p in self.procs if p.role in ("partition", "worker") and p.name == name]
        exits = stop_procs(sorted(procs, key=lambda p: p.role != "partition"))
        for p in procs:
            self.procs.remove(p)
        cgroups.remove(self._cgroups.pop(name, None))
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
        if self.root is not None and self.final_status is None and self._hypervisor_alive():
            try:
                self.final_status = self.status()
            except (HvstackError, OSError):
                pass
        if self.receiver is not None:
            self.receiver.close()
        if self.leases is not None:
            self.leases.close()
        for c in (self.watcher, self.root):
            if c is not None:
                c.close()
        exits: dict = {}
        # A partition whose hypervisor is dead has nothing to finish (its VPs wait for
        # resumes that will never come): a short grace, then SIGKILL.
        hv_dead = not self._hypervisor_alive()
        for stage in sorted(set(STOP_ORDER.values())):
            grace = HV_DEAD_PARTITION_GRACE_S if hv_dead and stage == STOP_ORDER["partition"] else STOP_GRACE_S
            exits.update(stop_procs([p for p in self.procs if STOP_ORDER[p.role] == stage], grace))
        for z in self.zygotes.values():
            z.stop()
        if self.zygotes:  # nothing more to adopt: a bench running runs in-process stops being a subreaper
            zygote.become_subreaper(False)
        left = [p.pid for p in [*self.procs, *self.zygotes.values()] if pid_alive(p.pid)]
        for path in self._cgroups.values():
            cgroups.remove(path)
        if not left:
            for pattern in GUEST_MEMORY_FILES:
                for f in self.run.path.glob(pattern):
                    f.unlink(missing_ok=True)
        self._manifest_update(state="ended", ended={
            "reason": reason, "exit_code": exit_code, "at": datetime.now(timezone.utc).isoformat(),
            "exits": {k: describe_exit(v) for k, v in exits.items()}, "left_running": left})

    def _manifest_update(self, **changes) -> None:
        path = self.run.manifest_path
        man = json.loads(path.read_text()) if path.exists() else {
            "name": self.run.name, "created": datetime.now(timezone.utc).isoformat(),
            "launcher_pid": os.getpid(), "launcher": launcher_identity(),
            "config": self.topology.to_dict(), "isolation": self.isolation}
        man.update({
            "endpoint": self.endpoint,
            "server_key": self.server_key,
            "processes": {f"{p.role}:{p.name}": {"pid": p.pid, "log": str(p.log_path)} for p in self.procs},
            "zygotes": {z.module: {"pid": z.pid, "log": z.log_path and str(z.log_path), "forked": z.forked,
                                   "failure": z.failure} for z in self.zygotes.values()},
            "run_tag": self.run_tag,
            "partitions": {name: {"id": pid, "console": str(self.run.path / f"console-{name}.log")}
                           for name, pid in self.partition_ids.items()},
        })
        moved = follow.moves(self.run.path)  # partitions that live-migrated out (the migrate command's records)
        if moved:
            man["moved"] = moved
        man.update(changes)
        write_json(path, man)


def execute(topology: Topology, out: Output, duration_s: float | None = None,
            restores: dict | None = None, incoming: list | None = None,
            listen: str = "127.0.0.1", arrivable: dict | None = None, room_pages: int = 0) -> tuple[Run, str, int]:
    """Start a run, supervise it, end it; returns (run, reason, exit code).  Ctrl-C and
    SIGTERM end the run the same way as a dead process does: every process goes.
    ``restores``: partition name → a saved record to start it from (``run --restore``)."""
    run = Run(topology, out, duration_s, restores=restores or {}, incoming=incoming or [], listen=listen,
              arrivable=arrivable or {}, room_pages=room_pages)

    def on_signal(signum, frame):
        name = signal.Signals(signum).name
        stop_file = run.run.path / "stop-requested" if hasattr(run, "run") else None
        who = stop_file.read_text().strip() if stop_file is not None and stop_file.exists() else ""
        run.request_stop(f"{name}{' from ' + who if who else ''}")

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    old_umask = os.umask(RUN_UMASK)
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
        os.umask(old_umask)
        for s, h in old.items():
            signal.signal(s, h)
    return run, reason, code
