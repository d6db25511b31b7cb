"""The tables of a bench's result, as ``bench`` prints them (``--json`` prints the dict)."""

from __future__ import annotations

import sys

from root.report import table


def path_rows(result: dict) -> list[list[str]]:
    return [[e["label"], f"{e['hops']}{' (one way)' if e['one_way'] else ''}", str(e["samples"]),
             f"{e['p50_us']:.1f}", f"{e['p99_us']:.1f}", f"{e['floor_p50_us']:.1f}",
             f"{e['floor_p99_us']:.1f}", f"{e['ratio_p50']:.2f}×", f"{e['ratio_p99']:.2f}×"]
            for e in result["paths"].values()]


def print_cpu(cpu: dict) -> None:
    print("\nCPU per round trip (user + system, every process of the run; µs):")
    rows = []
    for path, v in cpu.items():
        st, fl = v["stack"], v["floor"]
        ratio = f"{v['ratio']:.2f}×" if v["ratio"] is not None else "-"
        paced = v.get("floor_at_stack_pace")
        paced_cells = ([f"{paced['cpu_us']:.1f}", f"{v['ratio_at_stack_pace']:.2f}×"]
                       if paced and v.get("ratio_at_stack_pace") is not None else ["-", "-"])
        dec = v.get("floor_decoding")
        dec_cells = ([f"{dec['cpu_us']:.1f}", f"{v['ratio_decoding']:.2f}×"]
                     if dec and v.get("ratio_decoding") is not None else ["-", "-"])
        rows.append([path, f"{st['cpu_us']:.1f}", f"{fl['cpu_us']:.1f}", ratio, *paced_cells, *dec_cells,
                     ", ".join(f"{k} {x:.0f}" for k, x in st["by_process_us"].items()),
                     ", ".join(f"{k} {x:.0f}" for k, x in fl["by_process_us"].items()),
                     f"{st['per_s']:.0f} / {fl['per_s']:.0f}"])
    print(table(["path", "stack", "floor", "ratio", "floor at stack's pace", "ratio", "decoding floor", "ratio",
                 "stack by process", "floor by process", "round trips/s stack / floor"], rows, "lrrrrrrrllr"))


def print_result(result: dict) -> None:
    """The tables of a bench's result."""
    io = result["paths"].get("io_port")
    print(f"bench of {result.get('started', '?')}: {result.get('command', '')}")
    print(table(["path", "hops", "samples", "p50 µs", "p99 µs", "floor p50", "floor p99",
                        "p50 ratio", "p99 ratio"], path_rows(result), "llrrrrrrr"))
    if "disk" in result:
        dk = result["disk"]
        print(f"\nemulated ATA disk (PIO, 32-bit data port): {dk['mb_per_s'] * 1000:.1f} KB/s, "
              f"{dk['exits_per_4k']:.0f} exits per 4 KiB; the floor for as many round trips: "
              f"{dk['floor_mb_per_s'] * 1000:.1f} KB/s ({dk['ratio']:.2f}×)")
    if "experiments" in result:
        ex = result["experiments"]
        print("\nspinlock, 4 VPs on 2 LPs (long-spin-wait notifications on / off):")
        print(table(["", "acquisitions/s", "s spinning", "s on LPs", "notifications"],
                           [[k, f"{v['acquisitions_per_s']:.0f}", f"{v['spin_s']:.2f}", f"{v['lp_s']:.2f}",
                             str(v["notifications"])] for k, v in ex["spinlock"].items()]))
        print("\nEOI of a 1 kHz local APIC timer (MMIO to the APIC page / HV_X64_MSR_EOI / VP assist page):")
        print(table(["", "interrupts", "exits per interrupt", "EOI exits", "EOI round trip p50 µs",
                            "timer → handler p50 µs"],
                           [[k, str(v["interrupts"]), f"{v['exits_per_interrupt']:.2f}", f"{v['eoi_exits_per_interrupt']:.2f}",
                             f"{v['eoi_round_trip_p50_us']:.1f}", f"{v['timer_to_handler_p50_us']}"]
                            for k, v in ex["eoi"].items()]))
        print("\nTLB, a reader and a flusher sharing one LP (flushes by hypercall / by MOV CR3 and INVLPG):")
        print(table(["flusher", "reader misses per 1000 loads", "reader loads/s", "flusher switches"],
                           [[k, f"{v['misses_per_1000']:.2f}", f"{v['reads_per_s']:.0f}", str(v["flusher_switches"])]
                            for k, v in ex["tlb"].items()]))
    if "experiments" in result and "per_operation" in result["experiments"]:
        print("\nround trip per operation, enlightened against emulated (p50 µs):")
        rows = [[op, f"{e[0]}", f"{e[1]}", f"{m_[0]}", f"{m_[1]}"]
                for op, v in result["experiments"]["per_operation"].items()
                for e, m_ in [(v["enlightened"], v["emulated"])]]
        print(table(["operation", "enlightened", "µs", "emulated", "µs"], rows, "llrlr"))
    if "cpu" in result:
        print_cpu(result["cpu"])
    if "compared" in result:
        from benchmarks.baseline import print_comparison

        print_comparison(result["compared"])
    irq = result["goal"].get("interrupt")
    if irq:
        e = result["paths"]["interrupt"]
        print(f"\ninterrupt line → handler: p50 {e['ratio_p50']:.2f}×, p99 {e['ratio_p99']:.2f}× its floor "
              f"(goal ≤ {irq['p50_at_most']}× and ≤ {irq['p99_at_most']}×: {'met' if irq['met'] else 'NOT met'})")
    if "cpu" in result["goal"]:
        g = result["goal"]["cpu"]
        print(f"CPU per round trip ≤ {g['ratio_at_most']}× the floor's on every intercept path: "
              f"{'met' if g['met'] else 'NOT met'}")
    if io:
        print(f"\nemulated I/O p50 is {io['ratio_p50']:.2f}× its floor "
              f"(goal ≤ {result['goal']['io_port_ratio_p50_at_most']}×: {'met' if result['goal']['met'] else 'NOT met'})")
    sys.stdout.flush()
