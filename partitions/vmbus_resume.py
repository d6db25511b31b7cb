"""The guest's VMBus drivers across a save and restore (issue 13): their state as the
kernel's integer cursors, and the drivers taken up again from them without a word to the
host.

A real guest's VMBus drivers keep their state in its memory (the connection, each open
channel's ring addresses, storvsc's protocol version and disk size), so a restored guest
goes on using its channels, and the host's restored bus (root/vsp/saved.py) answers
exactly as before the save.  The Python guest's drivers are Python objects; so, as the
kernel keeps its other globals, their cursors go into ``sys.timers`` and with it into the
checkpoint in guest RAM (partitions/resume.py), under the boot's generation.  A resumed
kernel whose checkpoint holds them builds its drivers from them: no INITIATE_CONTACT, no
OPENCHANNEL, no storvsc initialisation — the host's restored bus must already be in that
state, or the first request fails and says so.

netvsc is not taken up where it was: its sends in flight, free send sections and receive
sections not yet given back are the driver's alone.  A resumed kernel's netvsc does what
Linux's does on resume from hibernation: it closes its channel (CLOSECHANNEL, its GPADLs
torn down — the host's restored bus knows them) and opens and initialises it again, on the
same ring pages.  Frames on the wire meanwhile are lost, as on any link reset.

The kernel resumes from its checkpoint, not from the instant of the save: requests it
sent after the checkpoint were completed by the host before the save (the VSP quiesces),
and their completions are still in the ring.  So a resumed storvsc's transaction ids start
:data:`TID_SKIP` past the checkpoint's: a completion of a request the restored kernel did
not send again is never taken for one it did.
"""

from __future__ import annotations

from proto.vmbus import HV_NIC_GUID, HV_SCSI_GUID, VMBUS_MESSAGE_SINT

from partitions.drivers import synic
from partitions.drivers.storvsc import Storvsc
from partitions.drivers.vmbus import Vmbus, offered

TID_SKIP = 1 << 32
BUS = ("version", "connection_id", "next_gpadl", "next_ring_gpa")
DISK = ("relid", "connection_id", "ring_gpa", "ring_pages", "suppress")
STORVSC = ("version", "blocks", "max_transfer", "tid")
OFFER = ("child_relid", "connection_id")
KINDS = {"scsi": HV_SCSI_GUID, "nic": HV_NIC_GUID}  # the offers a resumed bus knows again
NIC = ("relid", "ring_gpa", "ring_gpadl", "recv_gpadl", "send_gpadl")


def remember_bus(sys, bus: Vmbus) -> None:
    sys.timers["vmbus.generation"] = sys.booted_generation
    for k in BUS:
        sys.timers[f"vmbus.{k}"] = getattr(bus, k)
    for kind, guid in KINDS.items():
        offer = next((o for o in bus.offers if o["if_type"] == guid), None)
        for k in OFFER if offer else ():
            sys.timers[f"vmbus.offer.{kind}.{k}"] = offer[k]


def remember_disk(sys, sc: Storvsc) -> None:
    """The disk's channel and storvsc (again after each round: its transaction id moves)."""
    ch = sc.ch
    remember_bus(sys, ch.bus)  # (its next GPADL id and ring pages moved)
    for k in DISK:
        sys.timers[f"vmbus.disk.{k}"] = int(getattr(ch, k))
    for k in STORVSC:
        sys.timers[f"storvsc.{k}"] = getattr(sc, k)


def _saved(sys, keys: tuple, prefix: str) -> dict | None:
    """The cursors under ``prefix`` if the checkpoint of this boot holds them all."""
    t = sys.timers
    if t.get("vmbus.generation") != sys.booted_generation or not all(f"{prefix}{k}" in t for k in keys):
        return None
    return {k: t[f"{prefix}{k}"] for k in keys}


def resume_bus(vp, sys) -> Vmbus | None:
    """The connection the checkpoint holds (the SynIC's handlers installed again: kernel
    code, not data), or None if it holds none."""
    saved = _saved(sys, BUS, "vmbus.")
    if saved is None or not offered(sys):
        return None
    bus = Vmbus()
    bus.init_synic(vp, sys)
    for k, v in saved.items():
        setattr(bus, k, v)
    for kind, guid in KINDS.items():
        offer = _saved(sys, OFFER, f"vmbus.offer.{kind}.")
        if offer is not None:
            bus.offers.append({"if_type": guid, **offer})
    # A message the hypervisor had put in the slot by the save, whose SINT interrupt this
    # kernel did not take before its checkpoint, is read now: nothing else would read it,
    # and the host's later messages wait behind it (TLFS: a slot is freed only by the guest).
    synic.take_message(vp, sys, VMBUS_MESSAGE_SINT)
    return bus


def remember_nic(sys, nic) -> None:
    remember_bus(sys, nic.bus)
    ring_gpadl, (recv, send) = nic.ch.gpadl, (nic.gpadls + [-1, -1])[:2]
    for k, v in zip(NIC, (nic.ch.relid, nic.ch.ring_gpa, ring_gpadl, recv, send)):
        sys.timers[f"vmbus.nic.{k}"] = v & 0xFFFFFFFF


def reset_nic(vp, sys, bus: Vmbus) -> int | None:
    """A resumed kernel whose netvsc had its channel open: closed (its GPADLs torn down),
    to be opened again at the ring pages returned; None when there was none."""
    nic = _saved(sys, NIC, "vmbus.nic.")
    if nic is None:
        return None
    for k in NIC:
        del sys.timers[f"vmbus.nic.{k}"]  # (a failure below must not close it twice)
    gpadls = [g for g in (nic["ring_gpadl"], nic["recv_gpadl"], nic["send_gpadl"]) if g != 0xFFFFFFFF]
    bus.close_channel(vp, nic["relid"], gpadls)
    return nic["ring_gpa"]


def resume_disk(vp, sys, bus: Vmbus) -> Storvsc | None:
    disk, sc_state = _saved(sys, DISK, "vmbus.disk."), _saved(sys, STORVSC, "storvsc.")
    if disk is None or sc_state is None:
        return None
    ch = bus.channel_at(vp, disk["relid"], disk["connection_id"], disk["ring_gpa"], disk["ring_pages"],
                        bool(disk["suppress"]))
    sc = Storvsc(ch)
    sc.version, sc.blocks, sc.max_transfer = sc_state["version"], sc_state["blocks"], sc_state["max_transfer"]
    sc.tid = (sc_state["tid"] + TID_SKIP) & 0xFFFFFFFFFFFFFFFF
    return sc
