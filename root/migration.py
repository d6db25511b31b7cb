"""Live migration of a running partition to another run (``migrate RUN PARTITION --to
DEST``), the source's side; the destination's is root/incoming.py, the messages
proto/migration_messages.py.

**Pre-copy** (as QEMU, Xen and Hyper-V do it): every mapped page is sent once while the
guest runs (the bulk round; all-zero pages as their numbers only), then, round after round,
the pages written since the round before — until what is left would take no more than
``max_downtime_ms`` to send over the link as measured, or ``max_rounds`` have gone (Hyper-V
2008 R2 stopped after 10).  Then **stop-and-copy**: the partition is paused, its state
taken as ``ctl save`` takes it (root/partition_save.py: the hypervisor's, the devices', the
disks'), the pages written since the last round sent, then the record (the saved-state
format of proto/saved_state.py, without its memory section), and the destination is told
to commit.  Only once it says it is ready is it told to go; only once it says it runs is the
source's partition stopped.  A destination that fails or goes silent before the go leaves
the partition running on the source (its worker thawed, the partition resumed); after the
go this command never resumes it: if the go's answer was lost, it leaves its lease (root/
migration_lease.py) and the source run asks the destination, resuming the partition only if
the destination does not run it — as it does when this command dies.  The destination's
processes start beside the pre-copy; ``migrate_switchover`` waits for them before the pause.

**Dirty pages.**  Each partition has a dirty log (``dirty-ID.bin``: one byte per guest
page, :func:`proto.memory.dirty_path`), given to its partition process and worker, whose
every :class:`proto.memory.GuestMemory` write marks the page after storing; a harvest
clears a mark before the page is copied, so a write is never missed.  The hypervisor's own
writes into guest memory (SynIC message and event pages, the reference TSC page, the
hypercall page, VP assist pages) are not logged: the final round sends those pages
always, from the addresses in the hypervisor's saved state.  A partition process may mark
falsely in its own log; that only makes its own migration slower (or, by not marking,
wrong): the destination checks every page number it is sent against its own map.

**Auto-converge** (``--auto-converge``, root/migration_throttle.py): a guest that dirties
pages faster than half the rate they go, two rounds running, is throttled through its CPU
cap, more each time, as QEMU's cpu-throttle does; the cap is put back if it runs on here.

**Downtime** is the destination's wall clock when its VPs were started minus the source's
when it asked for the pause: from about the last guest instruction on the source (the VPs
stop at their next exit after the pause) to about the first on the destination.
"""

from __future__ import annotations

import array
import json
import mmap
import os
import re
import sys
import time
from time import perf_counter_ns

import msgpack

from proto import saved_state
from proto import migration_messages as mm
from proto.errors import HvstackError, PeerTimeout, Refused, TransportError
from proto.memory import PAGE_SHIFT, GuestMemory, dirty_path, memory_path, slat_path
from proto.messages import ErrorReply, decode, encode
from proto.transport import Dealer
from root import content_dirty, partition_save
from root.content_dirty import ShadowDirtyLog
from root.migration_lease import Lease
from root.migration_throttle import Throttle

PAGE = 1 << PAGE_SHIFT
ZERO_PAGE = bytes(PAGE)
TIMEOUT_S = 30.0  # for each answer (a begin starts processes, a commit restores the partition)
WINDOW = 4  # messages in flight on the link (answers come in order)
PROBE_BYTES = 16 << 20  # sent once to measure the link (its throughput: the physical limit)
_NONZERO = re.compile(rb"[^\x00]")


def create_dirty_log(run_dir, pid: int) -> None:
    """The partition's dirty log, all clear: one byte per guest page of its SLAT."""
    pages = os.path.getsize(slat_path(run_dir, pid)) // 4
    fd = os.open(dirty_path(run_dir, pid), os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, pages)
    finally:
        os.close(fd)


class DirtyLog:
    """The root's view of a partition's dirty log (proto/memory.py): ``harvest`` gives the
    pages marked since the last harvest and clears them."""

    def __init__(self, run_dir, pid: int, mapped: bytearray) -> None:
        fd = os.open(dirty_path(run_dir, pid), os.O_RDWR | os.O_CLOEXEC)
        try:
            self._log = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        self._mapped = mapped  # only pages the partition has mapped count, whatever is marked

    def harvest(self) -> list[int]:
        log, mapped = self._log, self._mapped
        found = [m.start() for m in _NONZERO.finditer(log[:len(mapped)])]
        for p in found:
            log[p] = 0  # cleared before the page is copied: a write after this marks it again
        return [p for p in found if mapped[p]]

    def close(self) -> None:
        self._log.close()


def hypervisor_pages(sections: dict) -> set[int]:
    """The guest pages the hypervisor writes itself (not through a dirty-logged mapping):
    the hypercall page, the reference TSC page, and per VP its assist page and SynIC
    message and event-flag pages — each where its MSR enables it."""
    msrs = [sections["hypervisor"]["hypercall_msr"], sections["hypervisor"]["reference_tsc"]]
    for vp in sections["vps"]:
        msrs += [vp["assist_page"], vp["synic"]["simp"], vp["synic"]["siefp"]]
    return {v >> PAGE_SHIFT for v in msrs if v & 1}


class Link:
    """The source's connection to the destination's migration endpoint (CURVE)."""

    def __init__(self, endpoint: str, server_key: str, timeout_s: float = TIMEOUT_S) -> None:
        try:
            self.dealer = Dealer(endpoint, server_key)
        except TransportError as e:
            raise HvstackError(f"cannot connect to the destination {endpoint}: {e}") from None
        self.endpoint = endpoint
        self.bytes_sent = 0
        self.timeout_ms = int(timeout_s * 1000)
        self._in_flight: list = []

    def request(self, msg):
        """Send ``msg`` and return its answer (after those of every message in flight)."""
        self.drain()
        self._send(msg)
        return self._answer(msg)

    def pipelined(self, msg) -> None:
        """Send ``msg`` without waiting for its answer, but with at most WINDOW in flight:
        the destination's work on one overlaps the source's on the next."""
        while len(self._in_flight) >= WINDOW:
            self._answer(self._in_flight.pop(0))
        self._send(msg)
        self._in_flight.append(msg)

    def drain(self) -> None:
        while self._in_flight:
            self._answer(self._in_flight.pop(0))

    def _send(self, msg) -> None:
        frame = encode(msg)
        self.bytes_sent += len(frame)
        self.dealer.send(frame)

    def _answer(self, msg):
        try:
            reply = decode(self.dealer.recv(self.timeout_ms))
        except PeerTimeout:
            raise PeerTimeout(f"the destination {self.endpoint} did not answer {msg.NAME} within "
                              f"{self.timeout_ms / 1000:.0f} s (over tcp only a client with its server key is answered)") \
                from None
        if isinstance(reply, ErrorReply):
            raise Refused(reply.code, f"the destination refused {msg.NAME}: {reply.message}")
        return reply

    def close(self) -> None:
        self.dealer.close()


class PageSender:
    """Pages from the source partition's RAM to the link, zero pages as numbers only; a
    ``max_bandwidth`` (bytes/s, 0: none) paces it as QEMU's max-bandwidth does."""

    def __init__(self, link: Link, ram, max_bandwidth: float) -> None:
        self.link, self.ram, self.max_bandwidth = link, ram, max_bandwidth
        self.started = time.monotonic()
        self.paced_bytes = 0

    def send(self, round_: int, pages, final: bool = False) -> dict:
        """``pages`` (ascending), read a run of up to PAGES_PER_MESSAGE pages at a time."""
        t0 = perf_counter_ns()
        before = self.link.bytes_sent
        zero_count = 0
        batch_zero, batch, data = [], [], []
        i = 0
        while i < len(pages):
            j = i + 1  # pages[i:j]: consecutive page numbers, one read
            while j < len(pages) and j - i < mm.PAGES_PER_MESSAGE and pages[j] == pages[j - 1] + 1:
                j += 1
            chunk = self.ram[pages[i] << PAGE_SHIFT:(pages[j - 1] + 1) << PAGE_SHIFT]
            for k in range(j - i):
                page = chunk[k * PAGE:(k + 1) * PAGE]
                if page == ZERO_PAGE:
                    batch_zero.append(pages[i + k])
                    zero_count += 1
                else:
                    batch.append(pages[i + k])
                    data.append(page)
                if len(batch) == mm.PAGES_PER_MESSAGE or len(batch_zero) == mm.MAX_PAGE_LIST // 4:
                    self._flush(round_, batch_zero, batch, data)
                    batch_zero, batch, data = [], [], []
            i = j
        if batch or batch_zero:
            self._flush(round_, batch_zero, batch, data)
        if not final:
            self.link.drain()  # (the last round's answers come with the commit's)
        return {"round": round_, "pages": len(pages), "zero": zero_count,
                "bytes": self.link.bytes_sent - before, "ms": round((perf_counter_ns() - t0) / 1e6, 2)}

    def _flush(self, round_: int, zero: list, pages: list, data: list) -> None:
        self.link.pipelined(mm.MigratePages(round_, _u32s(zero), _u32s(pages), b"".join(data)))
        if self.max_bandwidth:
            self.paced_bytes += len(pages) * PAGE + 4 * len(zero)
            ahead = self.paced_bytes / self.max_bandwidth - (time.monotonic() - self.started)
            if ahead > 0:
                time.sleep(ahead)


def _u32s(values: list[int]) -> bytes:
    a = array.array("I", values)
    if a.itemsize != 4:
        raise HvstackError("array 'I' is not 32 bits here")
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


def probe(link: Link, total: int = PROBE_BYTES, max_bandwidth: float = 0.0) -> float:
    """The link's throughput (bytes/s): incompressible chunks, each acknowledged, as pages
    go; paced as the pages will be (``max_bandwidth``), and then at most half a second."""
    chunk = os.urandom(mm.PAGES_PER_MESSAGE * PAGE)
    if max_bandwidth:
        total = min(total, max(len(chunk), int(max_bandwidth / 2)))
    t0, sent = perf_counter_ns(), 0
    while sent < total:
        link.pipelined(mm.MigrateProbe(chunk))
        sent += len(chunk)
        ahead = sent / max_bandwidth - (perf_counter_ns() - t0) / 1e9 if max_bandwidth else 0
        if ahead > 0:
            time.sleep(ahead)
    link.drain()
    return sent / max((perf_counter_ns() - t0) / 1e9, 1e-9)


def migrate(run_dir, man: dict, root, name: str, endpoint: str, server_key: str, *, max_downtime_ms: float = 30.0,
            max_rounds: int = 10, max_bandwidth: float = 0.0, timeout_s: float = TIMEOUT_S, progress=None,
            on_handover=None, auto_converge: tuple[int, int] | None = None) -> dict:
    """Move partition ``name`` of the live run in ``run_dir`` (``root``: a RootClient of it)
    to the run listening at ``endpoint``; the figures.  ``progress(line)`` is told as it goes;
    ``on_handover()`` once the destination runs it, before it is stopped here (root/follow.py
    records the move then, so that the source's launcher sees the record when it stops it).
    ``auto_converge``: (initial, increment) throttle percentages, to throttle a guest whose
    pre-copy does not converge (root/migration_throttle.py); None: never."""
    say = progress or (lambda line: None)
    pc = partition_save.saveable(man, name)
    if pc.backend != "python" and pc.backend not in content_dirty.BACKENDS:
        raise HvstackError(f"partition {name} runs on cpu = {pc.backend!r}: its RAM is written past the dirty "
                           f"log and its registers are not migrated yet ({', '.join(('python', *content_dirty.BACKENDS))} "
                           "only)")
    pid = man["partitions"][name]["id"]
    devices = json.loads((run_dir / f"worker-{name}.json").read_text())["devices"]
    lease = Lease(run_dir, name, endpoint, server_key)  # the source run settles it if this process dies
    try:
        link = Link(endpoint, server_key, timeout_s)
    except BaseException:
        lease.release()
        raise
    throttle = Throttle(root, pid, lease, *auto_converge) if auto_converge else None
    mem = dirty = None
    try:
        try:
            mem = GuestMemory(memory_path(run_dir, pid), slat_path(run_dir, pid))
            runs = [[gpa >> PAGE_SHIFT, length >> PAGE_SHIFT] for gpa, length in mem.mapped_runs()]
            mapped = bytearray(mem.pages)
            for first, count in runs:
                mapped[first:first + count] = b"\x01" * count
            all_pages = [p for first, count in runs for p in range(first, first + count)]
            # The link first, before the begin: what it measures is the link, not the migration
            # (the total starts at the begin; the probe's bytes are not in bytes_on_wire).
            t_probe = perf_counter_ns()
            bandwidth = probe(link, max_bandwidth=max_bandwidth)
            probe_bytes = link.bytes_sent
            say(f"link to {endpoint}: {bandwidth / 1e6:.1f} MB/s (random bytes, each MiB acknowledged)")
            t_start = perf_counter_ns()
            link.request(mm.MigrateBegin(name, msgpack.packb(partition_save.shape(pc, devices), use_bin_type=True),
                                         msgpack.packb(runs), mem.pages, lease.handover))
            t_setup = perf_counter_ns()
            # A real CPU writes RAM past the dirty log: its pages are found by comparison
            # and sent from the copy compared (root/content_dirty.py).
            dirty = ShadowDirtyLog(mem.ram, mapped) if pc.backend != "python" else DirtyLog(run_dir, pid, mapped)
            sender = PageSender(link, dirty.pages if pc.backend != "python" else mem.ram, max_bandwidth)
            budget = min(bandwidth, max_bandwidth or bandwidth)
            rounds, pending, budget = _precopy(sender, dirty, all_pages, budget, max_downtime_ms, max_rounds, say,
                                               throttle=throttle)
            t_precopy = perf_counter_ns()
            switchover_ms = _switchover(link)
            if switchover_ms > max_downtime_ms and len(rounds) < max_rounds:
                # The destination's processes were still starting: what the guest wrote meanwhile
                # goes now, not in the stop-and-copy.
                rounds, pending, budget = _precopy(sender, dirty, pending, budget, max_downtime_ms, max_rounds,
                                                   say, rounds, throttle)
            t_switch = perf_counter_ns()
        except (HvstackError, OSError, KeyboardInterrupt) as e:  # nothing was paused: the guest never stopped here
            _unthrottle(throttle, say)
            lease.release()
            raise HvstackError(f"migration of {name} failed; it runs on here: {_why(e)}") from None
        try:
            figures, t_go = _stop_and_copy(run_dir, root, link, sender, dirty, pc, pid, name, pending, mapped,
                                           len(rounds), say, lease, on_handover)
        except BaseException:
            _unthrottle(throttle, say)  # (resumed here; or stopped here, where a cap is harmless)
            raise
    finally:
        for held in (dirty, mem, link):
            if held is not None:
                held.close()
    t_end = perf_counter_ns()
    figures.update(partition=name, destination=endpoint, memory_pages=len(all_pages),
                   link_bytes_per_s=round(bandwidth), setup_ms=round((t_setup - t_start) / 1e6, 1),
                   total_ms=round((t_end - t_start) / 1e6, 1), rounds=rounds,
                   precopy_rounds=len(rounds), bytes_on_wire=link.bytes_sent - probe_bytes,
                   probe_bytes=probe_bytes, throttle_pct=throttle.pct if throttle else 0, send_once_ms=round(len(all_pages) * PAGE / bandwidth * 1000, 1),
                   # Where the time went, in order (the probe before the total's start).
                   phases_ms={"probe": _ms(t_start - t_probe), "begin": _ms(t_setup - t_start),
                              "precopy": _ms(t_precopy - t_setup), "switchover_wait": switchover_ms,
                              "precopy_after_wait": _ms(t_switch - t_precopy) - switchover_ms,
                              "stop_and_copy": _ms(t_go - t_switch), "stop_source": _ms(t_end - t_go)})
    return figures


def _ms(ns: int) -> float:
    return round(ns / 1e6, 2)


def _switchover(link: Link) -> float:
    """Ask the destination whether it can take the switch-over (its processes started at
    the begin are ready): the ms it took to say so."""
    t0 = perf_counter_ns()
    link.request(mm.MigrateSwitchover())
    return _ms(perf_counter_ns() - t0)


def _unthrottle(throttle, say) -> None:
    why = throttle.undo() if throttle is not None else None
    if why:
        say(f"auto-converge: the partition's CPU cap could not be put back: {why}")


def _precopy(sender, dirty, pending, budget, max_downtime_ms, max_rounds, say,
             rounds: list | None = None, throttle: Throttle | None = None) -> tuple[list, list, float]:
    """Rounds while the guest runs: every page (``pending``), then those dirtied during the
    round before — or, given the ``rounds`` so far, more of them from ``pending``; (the
    rounds' figures, the pages still dirty, the budget).  ``budget``: the link's bytes/s,
    lowered to the pages' own rate as rounds measure it.  ``throttle``: told each round's
    pages, to slow a guest that dirties them faster than they go (auto-converge)."""
    if rounds is None:
        dirty.harvest()  # the bulk round sends every page: marks from before it mean nothing
        rounds = []
    else:
        pending = sorted(set(pending) | set(dirty.harvest()))
    t_round = time.monotonic()
    while True:
        r = sender.send(len(rounds), pending)
        pending = dirty.harvest()
        took = max(time.monotonic() - t_round, 1e-6)
        t_round = time.monotonic()
        if r["pages"] - r["zero"] >= 64:
            # Pages go slower than the probe's bytes (each is read, checked and written):
            # what the next pages will take is what these took.
            budget = min(budget, (r["pages"] - r["zero"]) * PAGE / max(r["ms"] / 1000, 1e-6))
        r.update(dirty_after=len(pending), dirty_rate_pages_s=round(len(pending) / took, 1),
                 est_downtime_ms=round(len(pending) * PAGE / budget * 1000, 2))
        rounds.append(r)
        say(f"round {r['round']}: sent {r['pages']} pages ({r['zero']} zero, {r['bytes']} bytes) in "
            f"{r['ms']:.0f} ms; {len(pending)} dirtied meanwhile ({len(pending) / took * PAGE / 1e6:.2f} MB/s); "
            f"pages left {len(pending)}, estimated downtime {r['est_downtime_ms']:.1f} ms + state")
        if throttle is not None:
            raised = throttle.after_round(r["pages"], len(pending))
            r["throttle_pct"] = throttle.pct
            if raised is not None:
                say(f"auto-converge: the guest dirties pages faster than half the rate they go; throttled by "
                    f"{raised}% (its CPU cap now {throttle.cap / 1000:.3g}% of an LP per VP)")
        if r["est_downtime_ms"] <= max_downtime_ms or len(rounds) >= max_rounds:
            return rounds, pending, budget


def _stop_and_copy(run_dir, root, link, sender, dirty, pc, pid, name, pending, mapped, final_round, say,
                   lease, on_handover=None) -> tuple[dict, int]:
    """The partition paused, its state and last pages sent, the destination committed and
    told to go: (the figures, when it said it runs)."""
    lease.phase("paused")  # (before the pause: a resume of a partition that runs is harmless)
    paused_at = time.time_ns()
    t0 = perf_counter_ns()
    root.control(pid, "pause")
    gone_over = False
    try:
        sections, kernel, took = partition_save.capture(run_dir, root, pc, pid, with_memory=False,
                                                        boundary_timeout_s=partition_save.SAVE_TIMEOUT_S)
        lease.stall("paused")
        t_state = perf_counter_ns()
        final = sorted(set(pending) | set(dirty.harvest())
                       | {p for p in hypervisor_pages(sections) if p < len(mapped) and mapped[p]})
        last = sender.send(final_round, final, final=True)
        t_pages = perf_counter_ns()
        del sections["memory"]
        sections["disks"] = partition_save.compressed_disks(sections["disks"])
        record = saved_state.encode(pid, name, sections)
        for at in range(0, len(record), mm.MAX_CHUNK):
            link.pipelined(mm.MigrateState(at, len(record), record[at:at + mm.MAX_CHUNK]))
        link.request(mm.MigrateCommit(len(record)))
        t_ready = perf_counter_ns()
        lease.phase("go", paused_at)  # before the go: a lease left from here makes the source run ask
        gone_over = True  # from the go on, the partition is the destination's
        lease.stall("before_go")
        running = link.request(mm.MigrateGo(paused_at))
        lease.stall("after_go")
    except BaseException as e:
        if not gone_over:
            partition_save.resume_after_failure(root, pid)
            lease.release()
            if isinstance(e, (HvstackError, OSError, KeyboardInterrupt)):
                raise HvstackError(f"migration of {name} failed; it runs on here: {_why(e)}") from None
        elif isinstance(e, (HvstackError, OSError, KeyboardInterrupt)):
            # The lease stays: the source run asks the destination, and resumes the partition
            # here only if it does not run it there (root/migration_lease.py).
            raise HvstackError(f"migration of {name}: the destination was told to run it but did not say it does "
                               f"({_why(e)}); it stays paused here until the source run has asked the destination "
                               "(its output says what it decided)") from None
        raise
    t_go = perf_counter_ns()
    if on_handover is not None:
        try:
            on_handover()
        except (HvstackError, OSError) as e:  # (the partition is the destination's whatever happens here)
            say(f"the move was not recorded in the source run: {e}")
    root.control(pid, "stop")  # its processes end (the launcher sees it finalized)
    lease.release()
    figures = {"downtime_ms": round((running.started_at_ns - paused_at) / 1e6, 2),
               "state_ms": round((t_state - t0) / 1e6, 2), "final_pages": last["pages"],
               "final_pages_ms": round((t_pages - t_state) / 1e6, 2), "record_bytes": len(record),
               "commit_ms": round((t_ready - t_pages) / 1e6, 2), "go_ms": round((t_go - t_ready) / 1e6, 2),
               "state_took_ms": {k: round(v / 1e6, 2) for k, v in took.items()},
               "kernel": partition_save.kernel_figures(kernel)}
    say(f"stop-and-copy: paused, state taken in {figures['state_ms']:.1f} ms, {last['pages']} pages sent in "
        f"{figures['final_pages_ms']:.1f} ms, record {len(record)} bytes, destination ready in "
        f"{figures['commit_ms']:.1f} ms, running there {figures['go_ms']:.1f} ms later")
    return figures, t_go


def _why(e: BaseException) -> str:
    """What stopped a migration, for its error (Ctrl-C, or SIGTERM as the command has it)."""
    return f"interrupted ({e or 'Ctrl-C'})" if isinstance(e, KeyboardInterrupt) else str(e)


def describe(f: dict) -> str:
    rounds = ", ".join(str(r["pages"]) for r in f["rounds"])
    k = f.get("kernel")
    return (f"partition {f['partition']} migrated to {f['destination']} in {f['total_ms'] / 1000:.2f} s: "
            f"downtime {f['downtime_ms']:.1f} ms; {f['precopy_rounds']} pre-copy rounds (pages {rounds}) and "
            f"{f['final_pages']} in the stop-and-copy; {f['bytes_on_wire']} bytes on the wire for "
            f"{f['memory_pages']} pages; link {f['link_bytes_per_s'] / 1e6:.1f} MB/s (sending the memory once: "
            f"{f['send_once_ms']:.0f} ms)"
            + (f"; auto-converge throttled the guest by {f['throttle_pct']}%" if f.get("throttle_pct") else "")
            + (f"; its kernel at the hand-over: {k['ticks']} ticks, disk round {k['disk_round']}, "
               f"{k['console_lines']} console lines" if k else ""))
