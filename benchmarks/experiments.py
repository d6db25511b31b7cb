"""The enlightenment experiments ``bench`` runs after its paths: each enlightenment on and
off, side by side — the spinlock, the EOI of a 1 kHz APIC timer, the TLB — and the round
trip per operation of each enlightened path beside the emulated one it replaces."""

from __future__ import annotations

from benchmarks.runs import measure_run, measure_stack
from proto.stats import PathStats
from proto.status import PartitionStatus

EXPERIMENT = """\
[run]
name = "{name}"
duration_s = 3.0
logical_processors = 2

[[partition]]
name = "bench"
vps = {vps}
memory_mb = 4
chipset = "minimal"
enlightenments = {enlightenments}
spin_retry = {spin_retry}
workloads = ["{workload}"]
"""
ALL_ENLIGHTENMENTS = '["hypercall", "vp_index", "reference_counter", "apic"]'

# Two partitions on one LP: a reader going round its mapped pages, and a flusher switching
# address spaces and flushing — by hypercall (only its own TLB entries) or by MOV CR3 and
# INVLPG (the whole LP's, the reader's included).
TLB = """\
[run]
name = "{name}"
duration_s = 3.0
logical_processors = 1

[[partition]]
name = "reader"
vps = 1
memory_mb = 4
chipset = "minimal"
workloads = ["tlb_reader"]

[[partition]]
name = "flusher"
vps = 1
memory_mb = 4
chipset = "minimal"
enlightenments = {enlightenments}
recommendations = {recommendations}
workloads = ["tlb_flusher"]
"""
TLB_MODES = {"hypercall": ('["hypercall"]', '["address_space_switch_hypercall", "local_flush_hypercall"]'),
             "mov_cr3": ("[]", "[]")}


def tlb_experiment(mode: str, duration_s: float) -> dict:
    """The reader's TLB misses and loads with the flusher in ``mode`` (hypercall / mov_cr3)."""
    enl, rec = TLB_MODES[mode]
    status = measure_run(TLB.format(name=f"bench-tlb-{mode}", enlightenments=enl, recommendations=rec),
                         duration_s)
    reader, flusher = status.partitions[0].guest, status.partitions[1].guest
    reads = max(1, reader.get("tlb_reads", 0))
    return {"reads": reader.get("tlb_reads", 0),
            "misses_per_1000": round(1000 * reader.get("tlb_misses", 0) / reads, 2),
            "reads_per_s": round(reader.get("tlb_reads", 0) / duration_s, 1),
            "reader_misses": reader.get("tlb_misses", 0),
            "flusher_switches": flusher.get("tlb_switches", 0),
            "flushes": status.tlb.lps[0].flushes,
            "flusher_p50_us": _p50s(status.partitions[1].paths)}


def _p50s(paths: dict[str, PathStats]) -> dict[str, float]:
    """Each path's round-trip p50 in µs."""
    return {name: round(st.total.percentile(50) / 1000, 1) for name, st in paths.items()}


def experiment(name: str, workload: str, duration_s: float, vps: int = 1, enlightenments: str = "[]",
               spin_retry: str = "0xFFFFFFFF") -> PartitionStatus:
    text = EXPERIMENT.format(name=name, vps=vps, enlightenments=enlightenments, spin_retry=spin_retry,
                             workload=workload)
    return measure_stack(text, duration_s)


def run_experiments(duration_s: float) -> dict:
    """Each enlightenment on and off, side by side (issue: the microkernel's experiments)."""
    out = {}
    spin = {}
    for label, enl, retry in (("on", ALL_ENLIGHTENMENTS, "0x400"), ("off", "[]", "0xFFFFFFFF")):
        p = experiment(f"bench-spin-{label}", "spinlock", duration_s, 4, enl, retry)
        g = p.guest
        run_s = sum(vp.sched.run_s for vp in p.vps)
        spin[label] = {"acquisitions_per_s": round(g.get("acquisitions", 0) / duration_s, 1),
                       "spin_s": round(g.get("spin_ns", 0) / 1e9, 3), "lp_s": round(run_s, 3),
                       "notifications": g.get("spin_notifies", 0)}
    out["spinlock"] = spin
    eoi = {}
    for mode in ("mmio", "msr", "assist"):
        p = experiment(f"bench-eoi-{mode}", f"eoi_{mode}", duration_s, 1, ALL_ENLIGHTENMENTS)
        vp = p.vps[0]
        ticks = max(1, p.guest.get("apic_ticks", 0))
        handler_exits = p.guest.get("vector_0xef_exits", 0)
        timer = p.paths["apic_timer"].total if "apic_timer" in p.paths else None
        eoi_path = {"mmio": "apic", "msr": "msr"}.get(mode)
        eoi_rt = p.paths[eoi_path].total if eoi_path in p.paths else None
        eoi[mode] = {"p50_us": _p50s(p.paths), "interrupts": ticks,
                     "exits_per_interrupt": round((handler_exits + vp.exits["halt"]) / ticks, 2),
                     "eoi_exits_per_interrupt": round(handler_exits / ticks, 2),
                     "eoi_round_trip_p50_us": round(eoi_rt.percentile(50) / 1000, 1) if eoi_rt else 0.0,
                     "timer_to_handler_p50_us": round(timer.percentile(50) / 1000, 1) if timer else None}
    out["eoi"] = eoi
    out["tlb"] = {mode: tlb_experiment(mode, duration_s) for mode in ("hypercall", "mov_cr3")}
    # The round trip of each enlightened operation beside the emulated one it replaces.
    hc, cr3 = out["tlb"]["hypercall"]["flusher_p50_us"], out["tlb"]["mov_cr3"]["flusher_p50_us"]
    out["per_operation"] = {
        "EOI": {"enlightened": ("HV_X64_MSR_EOI", eoi["msr"]["p50_us"].get("msr")),
                "emulated": ("APIC page MMIO write", eoi["mmio"]["p50_us"].get("apic"))},
        "EOI (assist page)": {"enlightened": ("no exit", 0.0),
                              "emulated": ("APIC page MMIO write", eoi["mmio"]["p50_us"].get("apic"))},
        "address-space switch + flush": {"enlightened": ("HvCallSwitchVirtualAddressSpace / Flush*", hc.get("hypercall")),
                                         "emulated": ("MOV CR3 intercept", cr3.get("cr3"))},
        "flush one page": {"enlightened": ("HvCallFlushVirtualAddressList", hc.get("hypercall")),
                           "emulated": ("INVLPG intercept", cr3.get("invlpg"))},
    }
    return out
