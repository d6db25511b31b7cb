"""The sections of a saved partition beyond its devices (issue 13): every field's type and
range, checked on restore with an error that names the field.

``shape``       what the record was saved from: VP count, memory size, CPU backend, devices
                (name and type), privileges; a restore into another shape is refused.
``hypervisor``  the partition-wide state the hypervisor keeps: HV_X64_MSR_GUEST_OS_ID,
                HV_X64_MSR_HYPERCALL, HV_X64_MSR_REFERENCE_TSC and its TscSequence, and the
                reference time (100 ns units) at the save — restored as the time it goes on
                from (Hyper-V freezes the reference time while a partition is saved).
``vps``         per VP, in index order: the register block (RFLAGS, CR3), the explicit
                suspend (recorded only), HV_X64_MSR_VP_ASSIST_PAGE, the local APIC (TPR, SVR, ISR, IRR, the
                LVT timer, its initial count and divide configuration, the time *left* on
                its timer, AutoEOI vectors, ICR high), the PIC vectors queued for it, the
                SynIC (SCONTROL, SIEFP, SIMP, SINT0–15, the messages waiting per SINT,
                STIMER0–3 with the time left on each), and the scheduler's accounting.
``memory``      the partition's GPA map (runs of mapped pages) and the contents of those
                pages, zlib-compressed, in map order.
``disks``       each ATA disk image's contents (zlib) and SHA-256, by device name.
``cpu``         a real-CPU backend's register file per VP (msgpack; ``cpu = "unicorn"`` only):
                the Python guest's registers are its Python frames, and its kernel's state
                is in its memory (proto/guest_state.py).

256-bit APIC masks travel as 32 little-endian bytes (msgpack integers stop at 64 bits).
Timer deadlines travel as what is left of them, so a timer's remaining count survives the
gap and device time stands still across it, as the worker's devices' does.

Every check raises :class:`InvalidField` (a :class:`~proto.saved_state.SavedStateError`)
naming the path of the field, e.g. ``vps[1].apic.timer_remaining_ns``.
"""

from __future__ import annotations

import zlib
from typing import Any

from proto.saved_state import SavedStateError

PAGE = 4096
U64_MAX = (1 << 64) - 1
MASK256_BYTES = 32
SINT_COUNT = 16
STIMER_COUNT = 4
MAX_QUEUED_PER_SINT = 16
MAX_VPS = 4096
MAX_MEMORY_PAGES = 1 << 22  # 16 GiB of guest memory: more than any topology asks for
MAX_DISK_BYTES = 1 << 34
MAX_CPU_STATE_BYTES = 1 << 19  # a VP's register file; VP 0's holds firmware's shadow RAM (zlib, hex)
# A VP's local APIC registers kept as u32s, and the scheduler's accounting kept in a record
# (hypervisor/vp_state.py saves and restores exactly these).  Not the scheduler's virtual run
# time: that orders a VP against the hypervisor's other VPs, and a restored VP's would starve
# or favour it against them (it is recorded and checked, not restored).
APIC_INTS = ("tpr", "svr", "lvt_timer", "timer_icr", "timer_dcr", "icr_hi")
SCHED_FIELDS = ("run_ns", "wait_ns", "dispatches", "preemptions", "yields", "forced")


class InvalidField(SavedStateError):
    """A field of a saved partition is missing, of the wrong type or out of range."""


def _fail(where: str, why: str):
    raise InvalidField(f"saved state: {where}: {why}")


def _int(obj: dict, key: str, where: str, lo: int = 0, hi: int = U64_MAX) -> int:
    if key not in obj:
        _fail(f"{where}.{key}", "missing")
    v = obj[key]
    if type(v) is not int:
        _fail(f"{where}.{key}", f"expected an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        _fail(f"{where}.{key}", f"{v} is outside {lo}..{hi}")
    return v


def _opt_int(obj: dict, key: str, where: str, hi: int = U64_MAX) -> int | None:
    if key in obj and obj[key] is None:
        return None
    return _int(obj, key, where, 0, hi)


def _bool(obj: dict, key: str, where: str) -> bool:
    if type(obj.get(key)) is not bool:
        _fail(f"{where}.{key}", "missing or not a bool")
    return obj[key]


def _bytes(obj: dict, key: str, where: str, exact: int | None = None) -> bytes:
    v = obj.get(key)
    if type(v) is not bytes:
        _fail(f"{where}.{key}", "missing or not bytes")
    if exact is not None and len(v) != exact:
        _fail(f"{where}.{key}", f"{len(v)} bytes, expected {exact}")
    return v


def _map(obj: Any, where: str) -> dict:
    if not isinstance(obj, dict):
        _fail(where, "missing or not a map")
    return obj


def _list(obj: dict, key: str, where: str, length: int | None = None, most: int | None = None) -> list:
    v = obj.get(key)
    if not isinstance(v, (list, tuple)):
        _fail(f"{where}.{key}", "missing or not a list")
    if length is not None and len(v) != length:
        _fail(f"{where}.{key}", f"{len(v)} entries, expected {length}")
    if most is not None and len(v) > most:
        _fail(f"{where}.{key}", f"{len(v)} entries, at most {most}")
    return list(v)


def mask_to_bytes(mask: int) -> bytes:
    return mask.to_bytes(MASK256_BYTES, "little")


def mask_from_bytes(data: bytes) -> int:
    return int.from_bytes(data, "little")


# -- the sections ---------------------------------------------------------------------------


def check_shape(s: Any) -> dict:
    s = _map(s, "shape")
    _int(s, "vps", "shape", 1, MAX_VPS)
    _int(s, "memory_mb", "shape", 1, MAX_MEMORY_PAGES >> 8)
    _int(s, "privileges", "shape")
    if type(s.get("cpu")) is not str:
        _fail("shape.cpu", "missing or not a string")
    for i, d in enumerate(_list(s, "devices", "shape", most=64)):
        if not (isinstance(d, (list, tuple)) and len(d) == 2 and all(type(x) is str for x in d)):
            _fail(f"shape.devices[{i}]", "not a [name, type] pair")
    return s


def check_hypervisor(h: Any) -> dict:
    h = _map(h, "hypervisor")
    for key in ("guest_os_id", "hypercall_msr", "reference_tsc", "reference_time_100ns"):
        _int(h, key, "hypervisor")
    _int(h, "tsc_sequence", "hypervisor", 0, 0xFFFFFFFF)
    _int(h, "clock_offset_ns", "hypervisor", -(1 << 62), 1 << 62)
    return h


def check_vps(vps: Any) -> list:
    if not isinstance(vps, (list, tuple)) or not 1 <= len(vps) <= MAX_VPS:
        _fail("vps", "missing, not a list, or not 1..4096 VPs")
    for i, vp in enumerate(vps):
        w = f"vps[{i}]"
        vp = _map(vp, w)
        if _int(vp, "index", w, 0, MAX_VPS - 1) != i:
            _fail(f"{w}.index", f"{vp['index']}, expected {i} (VPs in index order)")
        _int(vp, "rflags", w)
        _int(vp, "cr3", w)
        _int(vp, "assist_page", w)
        _bool(vp, "suspended", w)
        for j, v in enumerate(_list(vp, "pending", w, most=256)):
            if type(v) is not int or not 0 <= v <= 255:
                _fail(f"{w}.pending[{j}]", f"{v!r} is not a vector 0..255")
        a, aw = _map(vp.get("apic"), f"{w}.apic"), f"{w}.apic"
        for key in APIC_INTS:
            _int(a, key, aw, 0, 0xFFFFFFFF)
        for key in ("isr", "irr", "auto_eoi"):
            _bytes(a, key, aw, MASK256_BYTES)
        _opt_int(a, "timer_remaining_ns", aw)
        _bool(a, "assist_enabled", aw)
        s, sw = _map(vp.get("synic"), f"{w}.synic"), f"{w}.synic"
        for key in ("scontrol", "siefp", "simp"):
            _int(s, key, sw)
        for j, v in enumerate(_list(s, "sints", sw, length=SINT_COUNT)):
            if type(v) is not int or not 0 <= v <= U64_MAX:
                _fail(f"{sw}.sints[{j}]", f"{v!r} is not a u64")
        for j, q in enumerate(_list(s, "queues", sw, length=SINT_COUNT)):
            if not isinstance(q, (list, tuple)) or len(q) > MAX_QUEUED_PER_SINT:
                _fail(f"{sw}.queues[{j}]", f"not a list of at most {MAX_QUEUED_PER_SINT} messages")
            for k, msg in enumerate(q):
                if not (isinstance(msg, (list, tuple)) and len(msg) == 3 and type(msg[0]) is int
                        and 0 <= msg[0] <= 0xFFFFFFFF and type(msg[1]) is bytes and len(msg[1]) <= 240
                        and type(msg[2]) is int and 0 <= msg[2] <= U64_MAX):
                    _fail(f"{sw}.queues[{j}][{k}]", "not [message type u32, payload ≤ 240 bytes, origin u64]")
        for j, t in enumerate(_list(s, "stimers", sw, length=STIMER_COUNT)):
            tw = f"{sw}.stimers[{j}]"
            t = _map(t, tw)
            _int(t, "config", tw)
            _int(t, "count", tw)
            _int(t, "due_ref", tw)
            _opt_int(t, "remaining_ns", tw)
        c, cw = _map(vp.get("sched"), f"{w}.sched"), f"{w}.sched"
        for key in SCHED_FIELDS:
            _int(c, key, cw)
        if type(c.get("vruntime")) not in (int, float) or not c["vruntime"] >= 0:
            _fail(f"{cw}.vruntime", "missing or not a non-negative number")
    return list(vps)


def check_memory(mem: Any) -> dict:
    mem = _map(mem, "memory")
    gpa_pages = _int(mem, "gpa_pages", "memory", 1, MAX_MEMORY_PAGES)
    end = 0
    for i, run in enumerate(_list(mem, "runs", "memory", most=4096)):
        if not (isinstance(run, (list, tuple)) and len(run) == 2 and all(type(x) is int for x in run)):
            _fail(f"memory.runs[{i}]", "not a [first page, count] pair")
        first, count = run
        if first < end or count <= 0 or first + count > gpa_pages:
            _fail(f"memory.runs[{i}]", f"pages {first}+{count}: overlapping, empty or past {gpa_pages} pages")
        end = first + count
    _bytes(mem, "zlib", "memory")
    return mem


def memory_pages(mem: dict) -> int:
    return sum(count for _, count in mem["runs"])


def memory_contents(mem: dict) -> bytes:
    """The pages of a checked ``memory`` section, decompressed: exactly its runs' pages (a
    stream that would inflate past them is refused before it does)."""
    want = memory_pages(mem) * PAGE
    d = zlib.decompressobj()
    try:
        data = d.decompress(mem["zlib"], want + 1)
    except zlib.error as e:
        _fail("memory.zlib", f"not a zlib stream: {e}")
    if len(data) != want or d.unconsumed_tail or not d.eof:
        _fail("memory.zlib", f"holds {len(data)}{'+' if d.unconsumed_tail else ''} bytes, expected {want}")
    return data


def check_disks(disks: Any) -> dict:
    disks = _map(disks, "disks")
    for name, d in disks.items():
        w = f"disks[{name!r}]"
        if type(name) is not str:
            _fail(w, "not named by a string")
        d = _map(d, w)
        _int(d, "size", w, 0, MAX_DISK_BYTES)
        _bytes(d, "sha256", w, 32)
        _bytes(d, "zlib", w)
    return disks


def disk_contents(name: str, d: dict) -> bytes:
    dec = zlib.decompressobj()
    try:
        data = dec.decompress(d["zlib"], d["size"] + 1)
    except zlib.error as e:
        _fail(f"disks[{name!r}].zlib", f"not a zlib stream: {e}")
    if len(data) != d["size"] or dec.unconsumed_tail or not dec.eof:
        _fail(f"disks[{name!r}].zlib", f"holds {len(data)} bytes, expected {d['size']}")
    return data


def check_cpu(cpu: Any) -> list:
    """A real-CPU backend's register files, one msgpack blob per VP (the backend checks
    the registers in them as it restores them)."""
    if not isinstance(cpu, (list, tuple)) or not 1 <= len(cpu) <= MAX_VPS:
        _fail("cpu", "missing, not a list, or not 1..4096 VPs")
    for i, blob in enumerate(cpu):
        if type(blob) is not bytes or not 0 < len(blob) <= MAX_CPU_STATE_BYTES:
            _fail(f"cpu[{i}]", f"not a register file of 1..{MAX_CPU_STATE_BYTES} bytes")
    return list(cpu)


def check_worker_interrupts(section: Any) -> dict:
    """A worker checkpoint's interrupts taken (worker/service.py): how many so far, the
    last ones as [vector, seq] and the last reset requested as [reason, seq] (or none),
    which a successor sends again; and the partition resets its devices were put through
    (``device_resets``), so that a successor takes each once."""
    section = _map(section, "worker_interrupts")
    seq = _int(section, "seq", "worker_interrupts")
    taken = section.get("taken")
    if not isinstance(taken, list) or len(taken) > 256:
        _fail("worker_interrupts.taken", "missing, not a list, or over 256 entries")
    for i, entry in enumerate(taken):
        if not (isinstance(entry, list) and len(entry) == 2 and all(type(v) is int for v in entry)
                and 0 <= entry[0] <= 0xFF and 1 <= entry[1] <= seq):
            _fail(f"worker_interrupts.taken[{i}]", f"{entry!r} is not [vector, seq 1..{seq}]")
    reset = section.get("reset")
    if reset is not None and not (isinstance(reset, list) and len(reset) == 2 and type(reset[0]) is str
                                  and 0 < len(reset[0]) <= 64 and type(reset[1]) is int and 1 <= reset[1] <= seq):
        _fail("worker_interrupts.reset", f"{reset!r} is not [reason, seq 1..{seq}]")
    device_resets = section.get("device_resets", 0)
    if type(device_resets) is not int or device_resets < 0:
        _fail("worker_interrupts.device_resets", f"{device_resets!r} is not a count")
    return section


CHECKS = {"cpu": check_cpu, "shape": check_shape, "hypervisor": check_hypervisor, "vps": check_vps, "memory": check_memory,
          "disks": check_disks, "worker_interrupts": check_worker_interrupts}


def compare_shape(saved: dict, now: dict) -> None:
    """Refuse a restore into a partition of another shape, naming every difference."""
    diffs = [f"{key}: saved {saved.get(key)!r}, topology {now.get(key)!r}"
             for key in ("vps", "memory_mb", "cpu", "privileges", "devices")
             if _norm(saved.get(key)) != _norm(now.get(key))]
    if diffs:
        raise WrongShape("the saved partition does not fit this topology's: " + "; ".join(diffs))


def _norm(v):
    return [list(x) for x in v] if isinstance(v, (list, tuple)) else v


class WrongShape(InvalidField):
    """A record saved from a partition of another shape (VPs, memory, devices, …)."""


def check_vmbus(v: Any) -> dict:
    """The VMBus section (a partition with a ``vmbus`` topology section): its own module,
    which uses this one's checks (so imported when first needed, not at the top)."""
    from proto.vmbus_state import check_vmbus as check
    return check(v)


CHECKS["vmbus"] = check_vmbus
