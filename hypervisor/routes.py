"""The route table: for every message the hypervisor takes, its handler and who may send it.

The one place that says so.  The loop (``service.py``) refuses a message whose type has no
route, or whose sender's role is not among the route's (NOT_PERMITTED), and otherwise calls
the handler.  A route marked ``exit`` is a VP leaving guest mode: the loop saves the VP's
registers and frees its LP first, then hands the handler an
:class:`~hypervisor.intercepts.ExitContext` and the message; every other handler gets
``(identity, peer, message, t_in)``.

A new exit kind is a member of :class:`proto.exits.Exit`, its message in
:mod:`proto.messages`, one handler in ``intercepts.py`` and one line here.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from proto import messages as m
from proto import synic_messages as sm

from hypervisor.coalesced_mmio import CoalescedMmio
from hypervisor.servicing import Servicing
from hypervisor.vp_state import PartitionStates
from hypervisor.vsp_relay import VspRelay

VP, WORKER, ROOT = ("vp",), ("worker",), ("root",)
VSP = ("vsp",)  # the root's VMBus server (issue 10)


class Route(NamedTuple):
    handler: Callable
    roles: tuple[str, ...]  # the roles that may send it
    exit: bool = False  # a VP exit: the handler takes (ExitContext, message)


def build_routes(hv) -> dict[type, Route]:
    """The table, bound to the components of ``hv`` (a :class:`~hypervisor.service.Hypervisor`)."""
    peers, exits, fwd = hv.peers, hv.intercepts, hv.forwarding
    root, tel, irq, disp = hv.root_requests, hv.telemetry, hv.interrupts, hv.dispatcher
    coalesced = CoalescedMmio(outbox=hv.outbox, router=hv.router)
    return {
        # A connection's first message, from a peer not yet bound; a bound peer may not
        # say hello again.
        m.Hello: Route(peers.on_hello, ()),
        m.HelloProof: Route(peers.on_hello_proof, ()),
        # VP exits: one handler per exit kind (intercepts.py).  The root makes its own
        # hypercalls (building partitions) the way a VP does.
        m.IoPortIntercept: Route(exits.io_port_intercept, VP, exit=True),
        m.IoStringIntercept: Route(exits.io_string_intercept, VP, exit=True),
        m.MmioIntercept: Route(exits.mmio_intercept, VP, exit=True),
        m.CpuidIntercept: Route(exits.cpuid, VP, exit=True),
        m.MsrIntercept: Route(exits.msr, VP, exit=True),
        m.HypercallIntercept: Route(exits.hypercall, ("vp", "root"), exit=True),
        m.HaltIntercept: Route(exits.halt, VP, exit=True),
        m.QuantumExit: Route(exits.quantum, VP, exit=True),
        m.Cr3Intercept: Route(exits.cr3, VP, exit=True),
        m.InvlpgIntercept: Route(exits.invlpg, VP, exit=True),
        # From VPs and workers, outside the measured paths.
        m.VpStats: Route(tel.on_vp_stats, VP),
        m.MemoryRequest: Route(peers.on_memory_request, ("worker", "vp")),
        m.PostedDescriptorReady: Route(hv.posted.on_ready, VP),
        # From workers.
        m.InstallIntercept: Route(fwd.on_install_intercept, WORKER),
        m.AccessComplete: Route(fwd.on_access_complete, WORKER),
        m.StringAccessComplete: Route(fwd.on_string_access_complete, WORKER),
        m.WorkerQueryReply: Route(fwd.on_worker_query_reply, WORKER),
        m.AssertInterrupt: Route(irq.on_assert_interrupt, WORKER),
        m.ResetRequest: Route(disp.on_reset_request, WORKER),
        m.ConsoleOutput: Route(root.on_console_output, WORKER),
        # From the root.
        m.StatusRequest: Route(tel.on_status_request, ROOT),
        m.ExecuteRequest: Route(root.on_execute_request, ROOT),
        m.PartitionControl: Route(root.on_partition_control, ROOT),
        m.ConsoleSubscribe: Route(root.on_console_subscribe, ROOT),
        m.InputRequest: Route(root.on_input_request, ROOT),
        m.WorkerQueryRequest: Route(root.on_worker_query_request, ROOT),
        m.TraceSubscribe: Route(root.on_trace_subscribe, ROOT),
        # From the vsp (hypervisor/synic_ports.py).
        sm.SynicConnect: Route(hv.synic_ports.on_connect, VSP),
        sm.SynicDisconnect: Route(hv.synic_ports.on_disconnect, VSP),
        sm.SynicPost: Route(hv.synic_ports.on_post, VSP),
        sm.SynicSignal: Route(hv.synic_ports.on_signal, VSP),
        sm.GpaMapRequest: Route(hv.synic_ports.on_gpa_map, VSP),
        m.IoRequest: Route(hv.io_requests.on_io_request, ROOT),
        # Worker servicing (hypervisor/servicing.py).
        m.ServiceRequest: Route(Servicing(table=hv.table, outbox=hv.outbox, forwarding=fwd,
                                          sched=hv.dispatcher.sched, peers=peers).on_service_request, ROOT),
        # Coalesced MMIO (coalesced_mmio.py): zones from workers, batches from VPs.
        m.CoalescedMmioRegister: Route(coalesced.on_register, WORKER),
        m.CoalescedMmioQuery: Route(coalesced.on_query, VP),
        m.CoalescedMmioBatch: Route(coalesced.on_batch, VP),
        # Saving and restoring a whole partition (hypervisor/vp_state.py).
        **_partition_states(hv),
        **_vsp_states(hv),
    }


def _partition_states(hv) -> dict[type, Route]:
    states = PartitionStates(table=hv.table, outbox=hv.outbox, synic=hv.synic, interrupts=hv.interrupts,
                             posted=hv.posted)
    return {m.PartitionSaveRequest: Route(states.on_save_request, ROOT),
            m.PartitionRestoreRequest: Route(states.on_restore_request, ROOT),
            m.VpStateRequest: Route(states.on_vp_state_request, ROOT),
            m.VpStateReply: Route(states.on_vp_state_reply, VP)}


def _vsp_states(hv) -> dict[type, Route]:
    """A partition's VMBus state relayed between the root and the VSP (hypervisor/vsp_relay.py)."""
    relay = VspRelay(table=hv.table, outbox=hv.outbox, synic_ports=hv.synic_ports)
    return {m.VspStateRequest: Route(relay.on_request, ROOT), m.VspStateReply: Route(relay.on_reply, VSP)}
