"""A partition's VMBus state on the root's side, as the ``vmbus`` section of its saved record
(issue 13; the VSP process saves and restores it, root/vsp/saved.py).

What the guest's memory already holds survives with it: the rings' indices, interrupt masks
and packets, the GPADLs' pages, the SIM and SIEF pages.  What only the root's VMBus server
and its VSPs know is here (as OpenVMM's ``vmbus_server/src/channels/saved_state.rs`` keeps
the connection, each channel's open request and the GPADLs)::

    {"version": u32,             # the negotiated VMBus protocol, 0: not connected
     "target_vp": u32, "sint": 0..15, "offers_sent": bool,
     "gpadls": [{"id": u32, "relid": u32, "expected": 1..MAX_GPADL_PAGES,
                 "pfns": bytes,  # u64 LE each, at most ``expected`` (a GPADL still being described)
                 "created": bool, "revoked": bool}, …],
     "offers": [{"relid": u32, "device": "storvsp" | "netvsp", "instance": 16 bytes,
                 "rescinded": bool,
                 "channel": None | {"gpadl": u32, "downstream": u32, "target_vp": u32,
                                    "backlog": [bytes, …]},   # completions not yet in the ring
                 "device": {…}}, …]}              # the VSP's own state (it checks it)

In-flight requests are not saved: the VSP completes every request in a ring before it
saves (storvsp's work is synchronous), so what a record holds is at most completions that
did not fit the host→guest ring yet (``backlog``).  Every field is checked here; the VSP
checks again that the record fits what it offers (relids, device kinds) and that every
GPADL's pages are still the partition's.
"""

from __future__ import annotations

from typing import Any

from proto.partition_state import _bool, _bytes, _fail, _int, _list, _map

U32_MAX = (1 << 32) - 1
MAX_GPADLS = 64  # per partition, created or being described
MAX_GPADL_PAGES = 4096  # 16 MiB per GPADL
MAX_OFFERS = 16
MAX_BACKLOG = 1024  # completions waiting for room in a host→guest ring
MAX_PACKET_BYTES = 1 << 16
DEVICE_KINDS = ("storvsp", "netvsp")


def check_vmbus(v: Any) -> dict:
    v = _map(v, "vmbus")
    _int(v, "version", "vmbus", 0, U32_MAX)
    _int(v, "target_vp", "vmbus", 0, U32_MAX)
    _int(v, "sint", "vmbus", 0, 15)
    _bool(v, "offers_sent", "vmbus")
    ids = set()
    for i, g in enumerate(_list(v, "gpadls", "vmbus", most=MAX_GPADLS)):
        w = f"vmbus.gpadls[{i}]"
        g = _map(g, w)
        gid = _int(g, "id", w, 0, U32_MAX)
        if gid in ids:
            _fail(f"{w}.id", f"{gid:#x} appears twice")
        ids.add(gid)
        _int(g, "relid", w, 1, U32_MAX)
        expected = _int(g, "expected", w, 1, MAX_GPADL_PAGES)
        pfns = _bytes(g, "pfns", w)
        if len(pfns) % 8 or len(pfns) // 8 > expected:
            _fail(f"{w}.pfns", f"{len(pfns)} bytes: not u64 page numbers, at most {expected}")
        created, revoked = _bool(g, "created", w), _bool(g, "revoked", w)
        if created and len(pfns) // 8 != expected:
            _fail(f"{w}.pfns", f"a created GPADL of {len(pfns) // 8} of its {expected} pages")
        if revoked and not created:
            _fail(f"{w}.revoked", "a GPADL not created cannot be revoked")
    relids = set()
    for i, o in enumerate(_list(v, "offers", "vmbus", most=MAX_OFFERS)):
        w = f"vmbus.offers[{i}]"
        o = _map(o, w)
        relid = _int(o, "relid", w, 1, U32_MAX)
        if relid in relids:
            _fail(f"{w}.relid", f"{relid} appears twice")
        relids.add(relid)
        if o.get("device") not in DEVICE_KINDS:
            _fail(f"{w}.device", f"not one of {', '.join(DEVICE_KINDS)}")
        _bytes(o, "instance", w, 16)
        _bool(o, "rescinded", w)
        _map(o.get("device_state"), f"{w}.device_state")
        ch = o.get("channel", ...)
        if ch is ...:
            _fail(f"{w}.channel", "missing")
        if ch is None:
            continue
        cw = f"{w}.channel"
        ch = _map(ch, cw)
        gpadl = _int(ch, "gpadl", cw, 0, U32_MAX)
        if gpadl not in ids:
            _fail(f"{cw}.gpadl", f"{gpadl:#x} is not one of the saved GPADLs")
        _int(ch, "downstream", cw, 1, MAX_GPADL_PAGES)
        _int(ch, "target_vp", cw, 0, U32_MAX)
        for j, p in enumerate(_list(ch, "backlog", cw, most=MAX_BACKLOG)):
            if type(p) is not bytes or not 0 < len(p) <= MAX_PACKET_BYTES or len(p) % 8:
                _fail(f"{cw}.backlog[{j}]", "not a packet (8-byte aligned bytes, at most 64 KiB)")
    return v
