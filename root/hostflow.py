"""The TLFS host flow: how the root partition makes a child partition out of hypercalls.

For each partition: HvCallCreatePartition, HvCallSetPartitionProperty (privileges,
recommendations, spin-retry count, CPU reserve/cap/weight, memory size),
HvCallInitializePartition, HvCallCreateVp per VP (suspended); then HvCallDepositMemory of
host pages and HvCallMapGpaPages of them at the guest's RAM (below 640 KiB and from 1 MiB
up); then each VP started by clearing HvRegisterExplicitSuspend.  The root's memory manager
hands out host pages of one pool in a shuffled order, so a partition's contiguous guest
memory lies on scattered host pages, as it does on a real host.  The hypercalls themselves
are :class:`root.client.RootClient`'s.
"""

from __future__ import annotations

import random

from root.client import RootClient
from root.topology import PartitionConfig, Topology

POOL_SLACK_PAGES = 256
LEGACY_HOLE_PAGES = (0xA0, 0x100)  # 0xA0000–0xFFFFF: VGA memory, ROMs — device space, not RAM


def guest_ram_ranges(pages: int) -> list[tuple[int, int]]:
    """The guest-physical pages that are RAM, as (first page, count): a PC's conventional
    memory below 640 KiB and everything from 1 MiB up."""
    lo, hi = LEGACY_HOLE_PAGES
    ranges = [(0, min(pages, lo))]
    if pages > hi:
        ranges.append((hi, pages - hi))
    return ranges


def pool_pages(topology: Topology) -> int:
    """The host page pool the hypervisor is started with: every partition's memory, and slack."""
    return sum(pc.memory_mb << 8 for pc in topology.partitions) + POOL_SLACK_PAGES


def free_pages(pages: int, seed: str) -> list[int]:
    """The pool's page numbers in the order the root hands them out: shuffled (by ``seed``,
    the run's name, so a run can be told again)."""
    free = list(range(pages))
    random.Random(seed).shuffle(free)
    return free


def create_partition(root: RootClient, pc: PartitionConfig, free: list[int]) -> int:
    """Create ``pc``'s partition and its VPs (explicitly suspended: the root starts them once
    every worker is ready), give it the first pages of ``free`` (taken off the list) as its
    RAM; returns the partition ID."""
    pages = pc.memory_mb << 8
    pid = root.create_partition(pc.privileges, pc.recommendation_bits, pc.spin_retry, pc.vps, pc.cpu, pages)
    ram = guest_ram_ranges(pages)
    n = sum(count for _, count in ram)
    root.build_memory(pid, ram, free[:n])
    del free[:n]
    return pid
