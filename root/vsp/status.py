"""The VSP process's figures as ``status`` shows them: it writes them to
``vsp-status.json`` in the run directory every 0.5 s (root/vsp/service.py); this reads
them back and says them per partition — channels, packets, signals sent and suppressed,
ring occupancy, refusals — and the virtual switch's forwarding table."""

from __future__ import annotations

import json
from pathlib import Path

STATUS_FILE = "vsp-status.json"


def load(run_path: Path) -> dict | None:
    try:
        return json.loads((Path(run_path) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


def partition_lines(vsp: dict | None, partition: int) -> list[str]:
    if not vsp:
        return []
    bus = vsp.get("partitions", {}).get(str(partition))
    if bus is None:
        return []
    version = bus.get("version", 0)
    out = [f"vmbus: {'version %d.%d' % (version >> 16, version & 0xFFFF) if version else 'not connected'}, "
           f"{bus.get('messages', 0)} messages, {bus.get('gpadls', 0)} GPADLs"
           + (", refused: " + ", ".join(f"{k} {v}" for k, v in bus["errors"].items()) if bus.get("errors") else "")]
    devices = vsp.get("devices", {}).get(str(partition), {})
    for relid, ch in bus.get("channels", {}).items():
        line = f"  channel {relid} {ch.get('device')}: {ch.get('state')}"
        if "packets_in" in ch:
            line += (f", packets in {ch['packets_in']} out {ch['packets_out']}, signals to guest "
                     f"{ch['signals_out']} (suppressed {ch['signals_suppressed']}), guest signals {ch['events_in']}, "
                     f"ring bytes to host {ch.get('to_host_bytes', '?')} to guest {ch.get('to_guest_bytes', '?')}")
        dev = devices.get(relid) or {}
        figures = {k: v for k, v in dev.items() if k != "errors" and v}
        if figures:
            line += "; " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in figures.items())
        if dev.get("errors"):
            line += "; refused: " + ", ".join(f"{k} {v}" for k, v in dev["errors"].items())
        out.append(line)
    return out


def switch_line(vsp: dict | None) -> str | None:
    sw = (vsp or {}).get("switch")
    if not sw:
        return None
    table = ", ".join(f"{mac} → {port}" for mac, port in sw.get("table", {}).items()) or "empty"
    return f"virtual switch: {sw.get('forwarded', 0)} forwarded, {sw.get('flooded', 0)} flooded; MACs: {table}"
