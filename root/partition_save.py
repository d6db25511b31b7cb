"""Saving a whole partition of a live run into a file, and restoring it into a new run
(issue 13): ``ctl RUN save PARTITION FILE [--paused]`` and ``run TOPOLOGY --restore
PARTITION=FILE``.

The record (:mod:`proto.saved_state`, its sections checked by
:mod:`proto.partition_state`) holds the partition's shape, the hypervisor's state of it
(``partition_save_request``), its worker's devices (``service_request save``: the worker
writes them into its checkpoint file, from which they are copied), its memory (the GPA map
and the mapped pages, read from the partition's RAM file through its SLAT) and its ATA
disks' contents.  All of it is taken while the partition is paused and none of its VPs
executes guest code, so the pieces are of one moment.  The Python guest kernel's own
state is in its memory (proto/guest_state.py), and is checked here so that a save of a
guest that has not checkpointed yet is refused rather than written.

A restore creates the partition as usual (same shape, a refusal naming every difference
otherwise), writes the pages into its RAM and the disk contents into its image, gives the
hypervisor its state before any VP connects, starts its worker from the saved devices and
its partition process with ``resume``.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from time import perf_counter_ns

import msgpack

from proto import guest_state, messages as m, partition_state as ps, saved_state
from proto.errors import HvstackError, Refused
from proto.memory import PAGE_SHIFT, GuestMemory, memory_path, slat_path
from proto.saved_state import CheckpointFile
from proto.sha256 import sha256
from proto.status import QUERY_ERROR, HypervisorStatus
from root import vmbus_save
from root.topology import PartitionConfig

SAVE_TIMEOUT_S = 5.0  # for every VP to reach an exit after the pause
# For every VP to be between two instructions at an exit (_cpu_state).  A firmware's POST
# offers one only at its HLTs and quantum ends (partitions/cpu/unicorn_cpu.py _after_exit):
# 1.3–1.9 s after SeaBIOS's VGA BIOS starts on a quiet machine, over 5 s on a busy one.
# A migration's stop-and-copy passes its own, shorter (the partition runs on at the source).
BOUNDARY_TIMEOUT_S = 15.0
SAVEABLE_BACKENDS = ("python", "unicorn", "kvm")
PAGE = 1 << PAGE_SHIFT


class RestoreRefused(HvstackError):
    """A record that cannot be restored into this topology; the message says why."""


def shape(pc: PartitionConfig, devices: list[dict]) -> dict:
    """What a record must match to be restored into a partition: from the topology."""
    return {"vps": pc.vps, "memory_mb": pc.memory_mb, "cpu": pc.backend, "privileges": pc.privileges,
            "devices": [[d.get("name") or d["type"], d["type"]] for d in devices]}


def _ms(ns: int) -> float:
    return round(ns / 1e6, 2)


def _runs(mem: GuestMemory) -> list[list[int]]:
    return [[gpa >> PAGE_SHIFT, length >> PAGE_SHIFT] for gpa, length in mem.mapped_runs()]


# -- save ------------------------------------------------------------------------------------


def saveable(man: dict, name: str) -> PartitionConfig:
    """Partition ``name``'s topology entry, refused unless its state can be saved whole."""
    pc = PartitionConfig(**next(p for p in man["config"]["partitions"] if p["name"] == name))
    if pc.backend not in SAVEABLE_BACKENDS:
        raise HvstackError(f"partition {name} runs on cpu = {pc.backend!r}: saving that backend's registers is "
                           f"not built yet ({', '.join(SAVEABLE_BACKENDS)} only)")
    return pc


def capture(run_dir, root, pc: PartitionConfig, pid: int, with_memory: bool = True,
            boundary_timeout_s: float = BOUNDARY_TIMEOUT_S) -> tuple[dict, dict, dict]:
    """Everything of the paused partition ``pid`` but compression: (sections — memory's
    pages uncompressed under ``pages``, disks as their bytes —, the guest kernel's state if
    a Python guest, timings in ns).  The caller paused it and thaws its worker after."""
    worker_spec = json.loads((run_dir / f"worker-{pc.name}.json").read_text())
    t0 = perf_counter_ns()
    cpu = _cpu_state(root, pid, boundary_timeout_s) if pc.backend != "python" else None
    # The VSP first: what it completes at its save is then in the SynIC state and the memory.
    vmbus, vmbus_disk = vmbus_save.capture(root, run_dir, pc, pid) if pc.vmbus is not None else (None, {})
    t_vmbus = perf_counter_ns()
    # The worker before the hypervisor: its devices run on through the pause until its save
    # freezes them, and a PIT tick meanwhile is taken by the PIC (INTA: IR0 in service)
    # and sent as an assert_interrupt.  Saved after the hypervisor, that vector was in
    # neither record — the restored PIC held IR0 in service for an interrupt no VP would
    # ever end, and dropped every later tick (a KVM hvtest64 saved unpaused halted for
    # good).  Saved first, the worker's last assert_interrupt reaches the hypervisor ahead
    # of its reply, so ahead of the hypervisor's save: the vector is pending there.
    worker = _worker_state(root, run_dir, pc.name, pid)
    t_worker = perf_counter_ns()
    hv_state = _hypervisor_state(root, pid)
    t_hv = perf_counter_ns()
    memory, kernel = _memory(run_dir, pid, python_guest=cpu is None, with_pages=with_memory)
    disks = {**_disks(worker_spec["devices"]), **vmbus_disk}
    sections = {"shape": shape(pc, worker_spec["devices"]), **hv_state, "worker": worker,
                "memory": memory, "disks": disks, **({"cpu": cpu} if cpu is not None else {}),
                **({"vmbus": vmbus} if vmbus is not None else {})}
    # "hypervisor" holds the VSP's part too, as it always has ("of which the VSP's VMBus").
    return sections, kernel, {"hypervisor": (t_vmbus - t0) + (t_hv - t_worker), "vmbus": t_vmbus - t0,
                              "worker": t_worker - t_vmbus, "memory_disk": perf_counter_ns() - t_hv}


def save(run_dir, man: dict, root, name: str, path: str, keep_running: bool) -> dict:
    """Save partition ``name`` of the live run in ``run_dir`` (``root``: a RootClient)
    into ``path``; the figures.  The partition is paused for the save and resumed after
    it unless ``keep_running`` is False."""
    pid = man["partitions"][name]["id"]
    pc = saveable(man, name)
    status = HypervisorStatus.from_wire(root.status()).partition(pid)
    was_paused = status is not None and status.state == "paused"  # by `ctl pause`: it stays so
    t0 = perf_counter_ns()
    root.control(pid, "pause")
    thawed = False
    try:
        sections, kernel, took = capture(run_dir, root, pc, pid)
        _thaw(root, pid)
        thawed = True
        if keep_running and not was_paused:
            root.control(pid, "resume")
    finally:
        if not thawed:
            resume_after_failure(root, pid, resume=not was_paused)
    t_resumed = perf_counter_ns()
    sections["memory"], sections["disks"] = _compressed(sections["memory"], sections["disks"])
    data = saved_state.encode(pid, name, sections)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {"partition": name, "file": str(path), "bytes": len(data), "paused_ms": _ms(t_resumed - t0),
            "hypervisor_ms": _ms(took["hypervisor"]), "vmbus_ms": _ms(took["vmbus"]) if pc.vmbus is not None else None,
            "worker_ms": _ms(took["worker"]),
            "memory_disk_ms": _ms(took["memory_disk"]), "write_ms": _ms(perf_counter_ns() - t_resumed),
            "memory_pages": sum(c for _, c in sections["memory"]["runs"]),
            "kept_running": keep_running and not was_paused, "kernel": kernel_figures(kernel)}


def kernel_figures(kernel: dict | None) -> dict | None:
    return kernel and {"ticks": kernel["ticks"], "disk_round": kernel["timers"].get("disk_round", 0),
                       "console_lines": kernel["console_lines"], "exits": kernel["vps"][0]["exits"]}


def resume_after_failure(root, pid: int, resume: bool = True) -> None:
    """A save that failed leaves the partition as it was: its worker thawed, and running
    unless it was paused before."""
    try:
        _thaw(root, pid)
        if resume:
            root.control(pid, "resume")
    except HvstackError:
        pass


def describe(f: dict) -> str:
    return (f"partition {f['partition']} saved to {f['file']}: {f['bytes']} bytes ({f['memory_pages']} pages "
            f"of memory); paused {f['paused_ms']:.1f} ms (VPs and hypervisor {f['hypervisor_ms']:.1f}"
            + (f" of which the VSP's VMBus {f['vmbus_ms']:.1f}" if f.get("vmbus_ms") is not None else "")
            + f", devices "
            f"{f['worker_ms']:.1f}, copying memory and disks {f['memory_disk_ms']:.1f}); compressed and written "
            f"after the resume in {f['write_ms']:.0f} ms; "
            + (f"its kernel at the save: {k['ticks']} ticks, disk round {k['disk_round']}, {k['exits']} exits on "
               f"VP 0, {k['console_lines']} console lines; " if (k := f["kernel"]) else "its CPU registers saved; ")
            + ("running again" if f["kept_running"] else "left paused"))


def _at_exits(root, msg, what: str, deadline: float):
    """``msg``'s answer once every VP of the paused partition is at an exit: the hypervisor
    refuses (OUT_OF_TURN) while one still executes guest code."""
    while True:
        try:
            return root.dealer.request(msg)
        except Refused as e:
            if e.code != "OUT_OF_TURN" or time.monotonic() > deadline:
                raise HvstackError(f"{what}: {e.reason}") from None
            time.sleep(0.005)


def _hypervisor_state(root, pid: int) -> dict:
    reply = _at_exits(root, m.PartitionSaveRequest(pid), f"the hypervisor did not save partition {pid}",
                      time.monotonic() + SAVE_TIMEOUT_S)
    state = msgpack.unpackb(reply.state, raw=False, strict_map_key=True)
    return {"hypervisor": ps.check_hypervisor(state.get("hypervisor")), "vps": ps.check_vps(state.get("vps"))}


def _worker_state(root, run_dir, name: str, pid: int) -> dict:
    try:
        reply = root.dealer.request(m.ServiceRequest(pid, "save"), 10_000)
    except Refused as e:
        raise HvstackError(f"partition {name}: its worker did not save: {e.reason}") from None
    if not isinstance(reply, m.WorkerQueryReply) or QUERY_ERROR in reply.result:
        raise HvstackError(f"partition {name}: its worker did not save: {getattr(reply, 'result', reply)}")
    fd = os.open(run_dir / f"checkpoint-{name}.bin", os.O_RDONLY | os.O_CLOEXEC)
    try:
        record = CheckpointFile(fd).latest()
    finally:
        os.close(fd)
    if record["sequence"] != reply.result.get("sequence") or "worker" not in record["sections"]:
        raise HvstackError(f"partition {name}: its checkpoint file does not hold the save it reported")
    return record["sections"]["worker"]


def _thaw(root, pid: int) -> None:
    root.dealer.request(m.ServiceRequest(pid, "thaw"))


def _cpu_state(root, pid: int, timeout_s: float) -> list[bytes]:
    """Each VP's register file from the partition process, taken with every VP between
    two instructions: a VP held at an exit inside one (an emulator's I/O hook) has no
    register file to resume from, so the partition runs on for a moment and is asked again.
    Asked, such a VP makes the instruction boundaries after its exits exits too, for a
    moment (partitions/cpu/exitport.py ``cpu_state``): the next pause likely holds one."""
    deadline = time.monotonic() + timeout_s
    while True:
        reply = _at_exits(root, m.VpStateRequest(pid), f"partition {pid}'s VPs did not give their CPU state",
                          deadline)
        states = _vp_states(reply.states)
        if all(boundary for boundary, _ in states):
            return [state for _, state in states]
        if time.monotonic() > deadline:
            raise HvstackError(f"partition {pid}: its VPs were not between two instructions at an exit "
                               f"within {timeout_s:g} s")
        root.control(pid, "resume")
        time.sleep(0.002)
        root.control(pid, "pause")


def _vp_states(blob: bytes) -> list[tuple[bool, bytes]]:
    try:
        states = msgpack.unpackb(blob, raw=False)
    except (ValueError, msgpack.UnpackException):
        states = None
    if not isinstance(states, list) or not all(
            isinstance(s, list) and len(s) == 2 and type(s[0]) is bool and type(s[1]) is bytes for s in states):
        raise HvstackError("the hypervisor's vp_states is not a list of [boundary, state]")
    return [(b, st) for b, st in states]


def _memory(run_dir, pid: int, python_guest: bool, with_pages: bool = True) -> tuple[dict, dict | None]:
    """The memory section (without ``pages`` unless ``with_pages``), and (the Python guest)
    the kernel's state found in it."""
    mem = GuestMemory(memory_path(run_dir, pid), slat_path(run_dir, pid))
    pages = b""
    try:
        runs = _runs(mem)
        # The RAM file is indexed by GPA.  One copy of the mapped pages (joining views of
        # the mapping; reading them would copy twice): the one thing the pause must wait for.
        view = memoryview(mem.ram)
        try:
            if with_pages:
                pages = b"".join(view[first << PAGE_SHIFT:(first + count) << PAGE_SHIFT] for first, count in runs)
        finally:
            view.release()
        kernel = guest_state.decode(mem.read(guest_state.KERNEL_STATE_GPA, guest_state.KERNEL_STATE_BYTES)) \
            if python_guest else None
        gpa_pages = mem.pages
    except guest_state.GuestStateError as e:
        raise HvstackError(f"partition {pid}: {e}") from None
    finally:
        mem.close()
    return {"gpa_pages": gpa_pages, "runs": runs, "pages": pages}, kernel


def _disks(devices: list[dict]) -> dict:
    disks = {}
    for d in devices:
        if d["type"] == "ata":
            with open(d["image_path"], "rb") as f:
                data = f.read()
            disks[d.get("name") or d["type"]] = data
    return disks


def _compressed(memory: dict, disks: dict) -> tuple[dict, dict]:
    """The memory and disk sections as the record holds them (after the resume: copying
    is what the pause needs, compressing is not)."""
    pages = memory.pop("pages")
    return {**memory, "zlib": zlib.compress(pages, 1)}, compressed_disks(disks)


def compressed_disks(disks: dict) -> dict:
    """The disks section as the record holds it, from each disk's bytes."""
    return {name: {"size": len(data), "sha256": sha256(data).digest(), "zlib": zlib.compress(data, 1)}
            for name, data in disks.items()}


# -- restore ---------------------------------------------------------------------------------


def read_for(pc: PartitionConfig, path: str, devices: list[dict], base_dir=".") -> dict:
    """The record in ``path``, checked whole, and refused unless it fits ``pc`` (its shape,
    its disks) — before anything of a run starts."""
    try:
        record = saved_state.read_file(path)
    except OSError as e:
        raise RestoreRefused(f"--restore {pc.name}={path}: {e.strerror}") from None
    except saved_state.SavedStateError as e:
        raise RestoreRefused(f"--restore {pc.name}={path}: {e}") from None
    return check_record(pc, record, devices, f"--restore {pc.name}={path}", base_dir=base_dir)


def check_record(pc: PartitionConfig, record: dict, devices: list[dict], where: str,
                 sections_needed: frozenset = saved_state.PARTITION_SECTIONS | {"worker"}, base_dir=".") -> dict:
    """``record`` (decoded: its fields checked), refused unless it fits ``pc``: its
    sections, shape, registers and disks.  A migration's record has no ``memory`` section
    (its pages came before it)."""
    sections = record["sections"]
    missing = sorted(sections_needed - set(sections))
    if missing:
        raise RestoreRefused(f"{where}: not a whole partition's record (no {', '.join(missing)})")
    try:
        ps.compare_shape(sections["shape"], shape(pc, devices))
    except ps.WrongShape as e:
        raise RestoreRefused(f"{where}: {e}") from None
    if pc.backend != "python":
        try:
            regs = cpu_state(record) or []
        except (ValueError, msgpack.UnpackException):
            regs = []
        if len(regs) != pc.vps or not all(isinstance(r, dict) for r in regs):
            raise RestoreRefused(f"{where}: no CPU state (a register file) for each of its {pc.vps} VPs")
    for d in devices:
        if d["type"] != "ata":
            continue
        saved = sections["disks"].get(d.get("name") or d["type"])
        if saved is None or saved["size"] != d["size_bytes"]:
            raise RestoreRefused(f"{where}: the disk {d.get('name') or d['type']} is "
                                 f"{d['size_bytes']} bytes here, {saved and saved['size']} in the record")
        if pc.disk.get("image"):
            # A disk the topology names stays where it is (shared storage): it must be the
            # one saved with the partition, else the guest's view of it would be torn.
            have = _sha256(d["image_path"])
            if have != saved["sha256"]:
                raise RestoreRefused(f"{where}: the disk image {d['image_path']} is not the "
                                     "one saved with the partition (its SHA-256 differs)")
    vmbus_save.check(pc, record, base_dir, where)
    return record


def _sha256(image: str) -> bytes | None:
    try:
        with open(image, "rb") as f:
            return sha256(f.read()).digest()
    except OSError:
        return None


def cpu_state(record: dict | None) -> list | None:
    """A real-CPU backend's register files for the partition process's spec (JSON)."""
    if record is None or "cpu" not in record["sections"]:
        return None
    return [msgpack.unpackb(blob, raw=False, strict_map_key=True) for blob in record["sections"]["cpu"]]


def restore_memory_and_state(root, run_dir, pid: int, record: dict) -> None:
    """The pages into the new partition's RAM, then the hypervisor's state (before any VP
    of it connects)."""
    sections = record["sections"]
    mem_section = sections["memory"]
    mem = GuestMemory(memory_path(run_dir, pid), slat_path(run_dir, pid))
    try:
        if _runs(mem) != [list(r) for r in mem_section["runs"]]:
            raise RestoreRefused(f"the saved GPA map {mem_section['runs']} is not the new partition's {_runs(mem)}")
    finally:
        mem.close()
    data, at = ps.memory_contents(mem_section), 0
    fd = os.open(memory_path(run_dir, pid), os.O_WRONLY | os.O_CLOEXEC)
    try:
        for first, count in mem_section["runs"]:
            os.pwrite(fd, memoryview(data)[at:at + (count << PAGE_SHIFT)], first << PAGE_SHIFT)
            at += count << PAGE_SHIFT
    finally:
        os.close(fd)
    restore_hypervisor(root, pid, record)


def restore_hypervisor(root, pid: int, record: dict) -> None:
    """The hypervisor's state of the partition, before any of its VPs connects."""
    sections = record["sections"]
    blob = msgpack.packb({"hypervisor": sections["hypervisor"], "vps": sections["vps"]}, use_bin_type=True)
    try:
        root.dealer.request(m.PartitionRestoreRequest(pid, blob))
    except Refused as e:
        raise RestoreRefused(f"the hypervisor refused the saved state: {e.reason}") from None


def restore_devices(run_dir, pid: int, pc: PartitionConfig, devices: list[dict], record: dict) -> None:
    """Before the worker starts: the disks' contents, and its devices to restore from."""
    restore_disks(record, devices, pc)
    restore_worker_checkpoint(run_dir, pid, pc.name, record)


def restore_disks(record: dict, devices: list[dict], pc: PartitionConfig) -> None:
    """A disk in the run directory gets the saved contents (one the topology names was
    checked to be the saved one already)."""
    if pc.disk is None or pc.disk.get("image"):
        return
    for d in devices:
        if d["type"] == "ata":
            name = d.get("name") or d["type"]
            data = ps.disk_contents(name, record["sections"]["disks"][name])
            fd = os.open(d["image_path"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)


def restore_worker_checkpoint(run_dir, pid: int, name: str, record: dict) -> None:
    """The saved devices as the first record of the new worker's checkpoint file, which it
    restores from (``--restore``) before its hello."""
    fd = os.open(run_dir / f"checkpoint-{name}.bin", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        CheckpointFile(fd).write(saved_state.encode(pid, name, {"worker": record["sections"]["worker"]}))
    finally:
        os.close(fd)
