"""The hypervisor's event loop: one ROUTER, one thread; receive, decode, route, and the timers.

The socket is handed in (``__main__`` binds it; a test passes a fake that still encodes and
decodes real frames).  Every frame becomes a message or an ``error_reply`` and a counter;
a message from a peer that has not said hello, or of a type its role may not send, is
refused the same way, and so is an exit from a VP that is not executing guest code
(OUT_OF_TURN: it waits for a resume or sleeps in HLT; ``VpSched.executing`` says).  Nothing a
peer sends can stop the loop: every message is handled under one guard, and a handler that
raises anyway — a bug of ours — is counted (``handler_errors``), logged with the message type
and the peer (rate-limited), answered with an INTERNAL error, and the loop goes on.  Tests
still see such a bug: the unit tests' hypervisor is ``strict`` (it re-raises), and the
integration teardowns fail on the guard's log line.  What each message does is the business
of the component its route names (``routes.py``):

==================  ======================================================================
``peers``           hello: binding a routing identity to (role, partition, vp)
``intercepts``      one handler per VP exit kind
``forwarding``      accesses and questions sent to workers, their answers and timeouts
``dispatch``        resumes, dispatch on an LP, HLT and wake-up, INIT
``interrupts``      the PIC's vectors, the local APIC timers and IPIs
``root_requests``   io, partition control, console and input, worker queries, tracing
``telemetry``       trace events and status
``hypercalls``      the hypercall table
==================  ======================================================================

The measured paths, as DESIGN.md draws them:

* emulated port I/O — ``io_port_intercept`` (VP) → ``port_notify`` (worker) →
  ``access_complete`` (worker) → ``vp_resume`` (VP): four hops, eight stamps;
* hypervisor-handled intercepts (CPUID, synthetic MSRs) and hypercalls — intercept →
  ``vp_resume``: two hops, four stamps.

Each hop appends ``perf_counter_ns()`` to the message's stamps: on arrival, right after the
frame is read, and on departure, right before it is sent.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from time import perf_counter_ns

from proto import messages as m
from proto.errors import ProtocolError
from proto.status import HypervisorStatus

from hypervisor.dispatch import Dispatcher
from hypervisor.forwarding import Forwarding
from hypervisor.hypercalls import Hypercalls
from hypervisor.intercepts import ExitContext, Intercepts
from hypervisor.interrupts import Interrupts
from hypervisor.memory import MemoryManager
from hypervisor.outbox import Outbox
from hypervisor.partitions import PartitionTable
from hypervisor.peers import Peers
from hypervisor.posted import PostedDescriptors, enabled_by_env
from hypervisor.ratelog import RateLimitedLog
from hypervisor.registers import VpRegisters
from hypervisor.root_requests import RootRequests
from hypervisor.io_requests import IoRequests
from hypervisor.routes import build_routes
from hypervisor.scheduler import PREEMPTED, RUNNING
from hypervisor.synic import Synic
from hypervisor.synic_ports import SynicPorts
from hypervisor.telemetry import Telemetry, Tracer
from hypervisor.tlb import Tlbs

log = logging.getLogger("hypervisor")

HOUSEKEEPING_INTERVAL_MS = 100
# Handler errors logged per second at most (the rest are counted): a peer that hits one bug
# in a loop must not fill the disk.
HANDLER_ERROR_LOGS_PER_S = 5


class Hypervisor:
    def __init__(self, router, secret: str, lps: int = 2, memory_dir: str | None = None,
                 pool_pages: int = 4096, strict: bool = False) -> None:
        """``router``: the bound socket (``proto.transport.Router``, or a test's fake).
        ``strict``: a handler's exception is re-raised after it is counted and answered
        (the unit tests' fake stack), so that a bug of ours fails the test that hit it."""
        self.router = router
        self.strict = strict
        self._error_log = RateLimitedLog(log, HANDLER_ERROR_LOGS_PER_S)
        self.endpoint = router.endpoint
        self.session = os.urandom(8).hex()
        self.started_ns = time.monotonic_ns()
        self.running = True
        # In the order status lists them.
        self.counters = {
            "messages": 0,
            "malformed": 0,
            "not_authenticated": 0,
            "refused_hellos": 0,
            "peers_disconnected": 0,
            "not_permitted": 0,
            "stale_completions": 0,
            "unroutable_replies": 0,
            "isolation_refusals": 0,
            "trace_dropped": 0,
            "ipis_ignored": 0,
            "init_sipi": 0,  # INIT and startup IPIs delivered (interrupts.py)
            "out_of_turn": 0,  # exits from a VP that was not executing guest code
            "handler_errors": 0,  # exceptions in a handler: bugs of ours, each logged (rate-limited)
            "status_trimmed": 0,  # status replies too big to decode anywhere, sent without histograms
            "posted_interrupts": 0,  # interrupts posted to running VPs (interrupt_notify or descriptor)
            "posted_descriptor": 0,  # of those, posted through the VP's descriptor instead (posted.py)
            "posted_descriptor_refused": 0,  # a VP's posted_descriptor_ready not taken
            "posted_descriptor_busy": 0,  # a vector's PIR bit still set: sent by message (posted.py)
            "interrupts_resent": 0,  # a restarted worker's interrupts its predecessor took: taken now
            "interrupts_resent_dropped": 0,  # … or dropped, had they arrived (interrupts.py)
            "resets_resent": 0,  # a restarted worker's reset request its predecessor made: done now
            "resets_dropped": 0,  # … or dropped, had it arrived (its seq: dispatch.py)
        }
        counters = self.counters
        self.table = PartitionTable()
        # Without a directory (a test's in-process hypervisor) one of its own, removed when
        # serve() ends; `python -m hypervisor` is always given the run directory.
        self._own_memory_dir = None if memory_dir else tempfile.mkdtemp(prefix="hvmem")
        self.memory = MemoryManager(memory_dir or self._own_memory_dir, pool_pages)
        self.tlb = Tlbs(str(self.memory.dir), lps)
        self.tracer = Tracer(router, counters)
        self.outbox = Outbox(router, counters, self.tracer.tracers, self.table)
        self.dispatcher = Dispatcher(lps=lps, router=router, outbox=self.outbox, counters=counters,
                                     tracer=self.tracer)
        self.sched = self.dispatcher.sched
        self.hypercalls = Hypercalls(self.table, self.memory, self.tlb, VpRegisters(self.sched),
                                     wake=self.dispatcher.wake)
        # Posted-interrupt descriptors (posted.py): made when a partition is initialized.
        self.posted = PostedDescriptors(str(self.memory.dir), counters, enabled_by_env())
        self.hypercalls.posted = self.posted
        self.interrupts = Interrupts(self.table, counters, self.dispatcher.wake, router.send, self.tracer,
                                     posted=self.posted)
        # SynIC and synthetic timers (issue 10), and the ports of the root's VMBus server.
        self.synic = Synic(self.table, self.memory, self.interrupts.assert_vector)
        self.synic_ports = SynicPorts(table=self.table, synic=self.synic, memory=self.memory, outbox=self.outbox,
                                      counters=counters)
        self.hypercalls.synic_ports = self.synic_ports
        self.forwarding = Forwarding(router=router, outbox=self.outbox, counters=counters,
                                     resume=self.dispatcher.resume, tracer=self.tracer, pause=self.sched.pause)
        self.intercepts = Intercepts(dispatcher=self.dispatcher, forwarding=self.forwarding,
                                     interrupts=self.interrupts, tracer=self.tracer, outbox=self.outbox,
                                     hypercalls=self.hypercalls, memory=self.memory, tlb=self.tlb,
                                     synic=self.synic)
        self.peers = Peers(secret=secret, session=self.session, table=self.table, sched=self.sched,
                           outbox=self.outbox, counters=counters, memory=self.memory, tlb=self.tlb,
                           bind=router.bind, synic_ports=self.synic_ports)
        self.root_requests = RootRequests(table=self.table, router=router, outbox=self.outbox,
                                          intercepts=self.intercepts, dispatcher=self.dispatcher,
                                          forwarding=self.forwarding, tracer=self.tracer, memory=self.memory,
                                          interrupts=self.interrupts)
        self.io_requests = IoRequests(table=self.table, outbox=self.outbox, memory=self.memory,
                                      intercepts=self.intercepts, registers=self.hypercalls.registers,
                                      interrupts=self.interrupts, forwarding=self.forwarding)
        self.telemetry = Telemetry(tracer=self.tracer, outbox=self.outbox, counters=counters,
                                   session=self.session, started_ns=self.started_ns, table=self.table,
                                   sched=self.sched, memory=self.memory, tlb=self.tlb, hypercalls=self.hypercalls,
                                   peers=self.peers, forwarding=self.forwarding,
                                   transport_counters=router.counters)
        self.routes = build_routes(self)

    def serve(self) -> None:
        log.info("hypervisor listening on %s", self.endpoint)
        router, routes, peers = self.router, self.routes, self.peers.by_identity
        counters, error = self.counters, self.outbox.error
        sched, interrupts, left_guest = self.sched, self.interrupts, self.dispatcher.left_guest
        exited, QuantumExit = sched.exited, m.QuantumExit
        synic = self.synic
        next_housekeeping = time.monotonic_ns()
        while self.running:
            timeout = HOUSEKEEPING_INTERVAL_MS
            wake = sched.next_event_ns(perf_counter_ns()) if sched.ready else None
            next_timer = interrupts.next_timer_ns
            if next_timer is not None and (wake is None or next_timer < wake):
                wake = next_timer
            if synic.next_timer_ns is not None and (wake is None or synic.next_timer_ns < wake):
                wake = synic.next_timer_ns
            if wake is not None:
                timeout = max(0, min(timeout, -(-(wake - perf_counter_ns()) // 1_000_000)))
            if not router.wait(timeout):
                try:
                    if wake is not None:
                        now = perf_counter_ns()
                        if interrupts.next_timer_ns is not None and now >= interrupts.next_timer_ns:
                            interrupts.fire_timers(now)
                        if synic.next_timer_ns is not None and now >= synic.next_timer_ns:
                            synic.fire_timers(now)
                        sched.tick(now)
                    if time.monotonic_ns() >= next_housekeeping:
                        next_housekeeping = self._housekeeping()
                except Exception as e:  # the timers work on what peers set up: guarded alike
                    next_housekeeping = time.monotonic_ns() + HOUSEKEEPING_INTERVAL_MS * 1_000_000
                    self._handler_failed(None, None, None, e)
                continue
            frames = router.recv()
            t_in = perf_counter_ns()
            counters["messages"] += 1
            identity = frames[0]
            if len(frames) != 2:
                error(identity, 0, "MALFORMED", f"expected one message frame, got {len(frames) - 1}")
                counters["malformed"] += 1
                continue
            try:
                msg = m.decode(frames[1])
            except ProtocolError as e:
                counters["malformed"] += 1
                error(identity, 0, e.code, str(e))
                continue
            except Exception as e:  # the decoder's own bug: guarded like a handler's
                self._handler_failed(identity, peers.get(identity), None, e)
                continue
            peer = peers.get(identity)
            kind = type(msg)
            route = routes.get(kind)
            if peer is None:
                if kind is not m.Hello and kind is not m.HelloProof:
                    counters["not_authenticated"] += 1
                    error(identity, msg.TYPE, "NOT_AUTHENTICATED", "say hello first")
                    continue
            elif route is None or peer.role not in route[1]:
                counters["not_permitted"] += 1
                error(identity, msg.TYPE, "NOT_PERMITTED", f"a {peer.role} may not send {msg.NAME}")
                continue
            handler, _, is_exit = route
            try:
                if is_exit:
                    vp = peer.vp
                    if vp is not None:
                        state = vp.sched.state
                        if state is not RUNNING and state is not PREEMPTED:  # VpSched.executing, inline
                            if vp.sched.controls.stopped:
                                # Its partition was stopped while it ran: the late exit
                                # waits for nothing (the root is ending its thread; an
                                # error now could only make that thread fail first).
                                continue
                            # It is waiting for a resume, sleeping in HLT, or not started:
                            # it cannot have exited.  Handling it would queue the VP twice.
                            counters["out_of_turn"] += 1
                            error(identity, msg.TYPE, "OUT_OF_TURN",
                                  f"{peer.name} is {vp.sched.state.value}, not executing guest code")
                            continue
                        # Dispatcher.left_guest(vp, msg, t_in), written out: a call less on
                        # every exit (~500 instructions).  Keep the two alike.
                        if msg.regs and not vp.regs_written:
                            vp.rflags, vp.cr3 = msg.regs
                            # (min(stamp, t_in) as Dispatcher.left_guest takes it, without a builtin's call)
                            t_exit = msg.stamps[0] if msg.stamps else t_in
                            exited(vp.sched, t_exit if t_exit < t_in else t_in, kind is QuantumExit)
                        else:
                            left_guest(vp, msg, t_in)
                        # The VP's context from its last exit, reused: a VP has one exit in
                        # flight at most (another would be out of turn, above), so nothing
                        # holds its last one any more (the pending table, a servicing's held
                        # list and next_resume let go of an exit once it completes).  Three
                        # stores instead of a new context: ~2.2k instructions less per exit.
                        ctx = vp.exit_context
                        if ctx is not None and ctx.origin == identity:  # (==: each frame its own bytes)
                            ctx.seq, ctx.stamps, ctx.t_in = msg.seq, msg.stamps + (t_in,), t_in
                        else:
                            ctx = vp.exit_context = ExitContext(identity, peer.partition, vp, msg.seq,
                                                                msg.stamps + (t_in,), t_in)
                        handler(ctx, msg)
                    else:  # the root's own hypercall
                        handler(ExitContext(identity, peer.partition, vp, msg.seq, msg.stamps + (t_in,), t_in), msg)
                else:
                    handler(identity, peer, msg, t_in)
            except Exception as e:  # one guard per message: nothing a peer sends stops the loop
                self._handler_failed(identity, peer, msg, e)
            try:
                # The timers, the scheduler's tick and housekeeping, after every message, by
                # the clock read at its arrival (a clock read per message less: ~470
                # instructions).  One that fell due while the handler ran fires at the next
                # message or at once when none comes (the wait above times out at 0).
                now = t_in
                if interrupts.next_timer_ns is not None and now >= interrupts.next_timer_ns:
                    interrupts.fire_timers(now)
                if synic.next_timer_ns is not None and now >= synic.next_timer_ns:
                    synic.fire_timers(now)
                if wake is not None and sched.ready and now >= wake:
                    # A busy loop must not starve the scheduler: a VP that overran its quantum
                    # loses its LP to the ones waiting even while messages keep coming.  (A
                    # clock of its own: the handler may have made VPs ready after t_in, and
                    # a dispatch before their readiness would count negative waits.)
                    sched.tick(perf_counter_ns())
                # perf_counter_ns is CLOCK_MONOTONIC, time.monotonic_ns's clock, on Linux
                # (CPython's pymonotonic for both): the same read serves housekeeping.
                if now >= next_housekeeping:
                    next_housekeeping = self._housekeeping()
            except Exception as e:
                next_housekeeping = time.monotonic_ns() + HOUSEKEEPING_INTERVAL_MS * 1_000_000
                self._handler_failed(None, None, None, e)
        self.router.close()
        if self._own_memory_dir is not None:
            shutil.rmtree(self._own_memory_dir, ignore_errors=True)

    def _handler_failed(self, identity: bytes | None, peer, msg: m.Message | None, e: Exception) -> None:
        """A handler raised: a bug of ours (a peer's mistakes are refused before a handler
        runs, or by the handler with an error reply).  Count it, log it with the message
        type and the peer, answer INTERNAL, and go on — or, strict, re-raise.  No
        ``identity``: the timers (APIC timers, the scheduler's tick, housekeeping) raised."""
        self.counters["handler_errors"] += 1
        if identity is None:
            name, who, type_id = "(timers)", "the hypervisor", 0
        else:
            who = peer.name if peer is not None else f"unbound peer {identity.hex()[:16]}"
            name, type_id = (msg.NAME, msg.TYPE) if msg is not None else ("(decoding)", 0)
        # The traceback with the first line of each second; the rest say what and from whom.
        self._error_log.error("handler error: %s from %s: %s: %s", name, who, type(e).__name__, str(e)[:200],
                              traceback=True)
        if identity is not None:
            self.outbox.error(identity, type_id, "INTERNAL", f"the hypervisor failed handling {name}")
        if self.strict:
            raise

    def _housekeeping(self) -> int:
        """Every HOUSEKEEPING_INTERVAL_MS: workers that did not answer in time (and their
        health checks), the scheduler's accounting window and overrun quanta, and peers
        whose connection has gone."""
        for identity in self.router.disconnected():
            self.peers.forget(identity)
        self.peers.refusals.flush()
        now = time.monotonic_ns()
        self.forwarding.expire_accesses(now)
        self.sched.tick(perf_counter_ns())
        self.forwarding.expire_queries(now)
        self.forwarding.check_workers(self.table, now)
        self.synic.housekeeping()
        self.synic_ports.housekeeping()
        return now + HOUSEKEEPING_INTERVAL_MS * 1_000_000

    def status(self) -> HypervisorStatus:
        return self.telemetry.status()
