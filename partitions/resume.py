"""The guest kernel's side of save and restore (issue 13): its checkpoint into guest memory
and its resume from one.

``checkpoint`` (VP 0, after a workload turn, at most every 50 ms): the kernel's globals
and every VP's counters, as :mod:`proto.guest_state`'s value, into guest RAM at
KERNEL_STATE_GPA — one store, no exit inside it.

``bsp_resume`` (VP 0 of a partition started with ``"resume": true`` in its spec, i.e. from
a saved record): instead of booting, read the kernel state from RAM (restored with the
rest of memory), take the kernel's globals back, and re-establish what lives in the
kernel's code rather than its data — the interrupt handlers — and the devices as a
kernel's resume path does (Linux's PM ``restore`` callbacks): the PIC re-initialized
(an interrupt that was in service when the VP was saved mid-handler would otherwise keep
its ISR bit for good, since the restored kernel does not resume inside that handler), the
PIT tick programmed again, the UART's interrupts enabled again.  Then the workloads go on
from their cursors.  ``resume_vp`` gives each VP its own exits and counters back.

Guest time: the uptime the kernel reports goes on from the checkpoint's (``started`` is
moved back by it); the hypervisor's reference time and the devices' clocks stood still
across the gap (hypervisor/vp_state.py, worker/devices), so the only time the guest
loses is between its last checkpoint and the save.  The RTC's wall clock lags by the gap,
as a Hyper-V guest's does until time synchronization sets it.
"""

from __future__ import annotations

import time

from proto import guest_state
from proto.guest_state import KERNEL_STATE_BYTES, KERNEL_STATE_GPA

from partitions import kernel
from partitions.drivers import ata, synic
from partitions.drivers.serial import Serial

ATA_SRST = 0x04
APIC_BASE, APIC_EOI, APIC_ISR0 = 0xFEE00000, 0xB0, 0x100
CHECKPOINT_INTERVAL_S = 0.05


def _ints(d: dict) -> dict:
    return {k: v for k, v in list(d.items()) if type(v) is int and 0 <= v < 1 << 64}


def capture(sys, now: float | None = None) -> dict:
    """The kernel state of ``sys`` (its VPs as registered in ``sys.resume_vps``), now."""
    now = time.monotonic() if now is None else now
    hv = sys.hv
    vps = [{"exits": vp.exits, "counters": _ints(vp.counters)} for vp in sys.resume_vps]
    return {
        "generation": sys.booted_generation, "uptime_ns": int((now - sys.started) * 1e9),
        "ticks": sys.ticks, "tick_hz": float(sys.tick_hz), "console_lines": sys.console_lines,
        "has_pic": sys.has_pic, "has_vga": sys.has_vga,
        "boot_time": sys.boot_time.isoformat() if sys.boot_time else None, "typed": sys.typed,
        "hv": {"present": hv.present, "hypercalls": hv.hypercalls, "vendor": hv.vendor, "interface": hv.interface,
               "privileges": hv.privileges, "recommendations": hv.recommendations, "spin_retry": hv.spin_retry},
        "disk": {"bytes": sys.disk_bytes, "exits": sys.disk_exits, "ns": sys.disk_ns, "errors": sys.disk_errors},
        "timers": _ints(sys.timers),
        "vps": vps,
    }


def checkpoint(vp, sys) -> None:
    """Write the kernel state into guest RAM (VP 0, between workload turns), at most every
    CHECKPOINT_INTERVAL_S: one costs ~0.1 ms of the VP's time, and a turn can be as short
    as one timer tick."""
    now = time.monotonic()
    if now < sys.checkpoint_due or None in sys.resume_vps:
        return  # not yet, or a VP has not started yet: nothing consistent to write
    sys.checkpoint_due = now + CHECKPOINT_INTERVAL_S
    vp.write_bytes(KERNEL_STATE_GPA, guest_state.encode(capture(sys, now)))


def read_state(vp) -> dict:
    """The kernel state in this partition's RAM (GuestStateError when there is none)."""
    return guest_state.decode(vp.mem.read(KERNEL_STATE_GPA, KERNEL_STATE_BYTES))


def resume_vp(vp, state: dict, sys) -> None:
    """A VP's own exits and counters, from the kernel state; its SynIC's interrupt handlers
    back before anything enables interrupts (drivers/synic.py ``resume_vp``); and its local
    APIC's in-service interrupts ended — the restored kernel resumes at the top of its
    workload loop, not inside the handler that was running (as the PIC is re-initialized)."""
    if vp.index >= len(state["vps"]):
        raise guest_state.GuestStateError(f"kernel state: no VP {vp.index} ({len(state['vps'])} VPs saved)")
    mine = state["vps"][vp.index]
    synic.resume_vp(vp, sys)
    in_service = sum(bin(vp.read(APIC_BASE + APIC_ISR0 + 0x10 * i, 4)).count("1") for i in range(8))
    for _ in range(in_service):
        vp.write(APIC_BASE + APIC_EOI, 4, 0)
    vp.exits = mine["exits"]
    vp.counters.update(mine["counters"])


def ata_soft_reset(vp) -> None:
    """SRST through the device control register (ATA-6 7.7): whatever command the saved
    device was in the middle of is abandoned.  Nothing answers there without a disk."""
    if vp.inb(ata.STATUS) == 0xFF:
        return  # a floating bus: no disk (waiting out BSY on it cost a thousand exits, ~1 s)
    vp.outb(ata.CTRL, ATA_SRST)
    vp.outb(ata.CTRL, 0)
    for _ in range(1000):
        if not vp.inb(ata.STATUS) & ata.ST_BSY:
            return


def bsp_resume(vp, sys, state: dict) -> None:
    """VP 0: the kernel's globals back from ``state``, devices and handlers re-established,
    then the workloads, from their cursors."""
    from datetime import datetime

    h = state["hv"]
    sys.hv = kernel.HvInfo(present=h["present"], vendor=h["vendor"], interface=h["interface"],
                           privileges=h["privileges"], recommendations=h["recommendations"],
                           spin_retry=h["spin_retry"], hypercalls=h["hypercalls"])
    sys.ticks, sys.tick_hz, sys.typed = state["ticks"], state["tick_hz"], state["typed"]
    sys.console_lines = state["console_lines"]
    sys.boot_time = datetime.fromisoformat(state["boot_time"]) if state["boot_time"] else None
    sys.has_vga = state["has_vga"]
    d = state["disk"]
    sys.disk_bytes, sys.disk_exits, sys.disk_ns, sys.disk_errors = d["bytes"], d["exits"], d["ns"], d["errors"]
    sys.timers = dict(state["timers"])
    sys.started = time.monotonic() - state["uptime_ns"] / 1e9
    vp.counters["ticks"] = sys.ticks
    # The tick's own counts (kernel.on_tick) are in VP 0's counters.
    sys.tick_interrupts = vp.counters.get("tick_interrupts", 0)
    sys.lost_ticks = vp.counters.get("lost_ticks", 0)
    sys.idle_ticks = vp.counters.get("idle_ticks", 0)
    sys.serial = Serial()
    # The UART as at boot (IER off, FIFOs cleared, then its interrupts on again): the saved
    # UART may hold IER.ETBEI set and a THRE interrupt the saved kernel was about to take,
    # which this kernel, with a new driver, would wait for in vain — a restored guest's
    # console once stopped after its first 16 bytes.
    sys.serial.init(vp)
    sys.has_pic = state["has_pic"]
    if sys.has_pic:
        kernel.start_interrupts(vp, sys)
    ata_soft_reset(vp)
    sys.console(vp, f"[{sys.name}] resumed from a saved state: {sys.ticks} ticks, "
                    f"disk round {sys.timers.get('disk_round', 0)}, {vp.exits} exits, "
                    f"uptime {state['uptime_ns'] / 1e9:.1f} s")
    with sys.booted_cv:
        sys.booted_generation = max(state["generation"], 1)
        sys.booted_cv.notify_all()
    kernel.run(vp, sys)
