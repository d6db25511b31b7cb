"""A live run takes in a partition it was not started with, for a migration that brings it
(issue 13: ``migrate RUN PARTITION --to HOST`` in a run of hosts, root/cluster.py).

A host's run knows the partitions of the other hosts (``Run.arrivable``) and has room in its
page pool for them (the host's ``memory_mb``).  When a ``migrate_begin`` names one of them,
the receiver (root/incoming.py) asks :func:`arrive`, which makes it as the run makes its
own at start — the TLFS host flow is hypercalls, so the hypervisor takes a new partition
while it runs: HvCallCreatePartition … HvCallCreateVp (suspended), HvCallDepositMemory and
HvCallMapGpaPages of pages from the pool — with its dirty log and its worker's and
partition process's specs, and from then on it waits for the migration as a partition of
``run --incoming`` does.  A partition that left this run earlier comes back as a new
partition (a new ID; its old one was stopped, and its pages stay with it: the hypervisor
withdraws no memory), so coming back needs room again.
"""

from __future__ import annotations

from root import hostflow, migration
from root.incoming import Refusal
from root.rundir import write_json


def pages_needed(pc) -> int:
    return sum(count for _, count in hostflow.guest_ram_ranges(pc.memory_mb << 8))


def arrive(run, name: str):
    """Partition ``name`` created in the live ``run`` for an incoming migration (its
    PartitionConfig), or None if the run may not take it; Refusal if it has no room."""
    pc = run.arrivable.get(name)
    if pc is None:
        return None
    man = run.run.manifest()
    if name in run.partition_ids and name not in man.get("stopped_partitions", []):
        raise Refusal("CONFLICT", f"partition {name} runs here already")
    need = pages_needed(pc)
    if need > len(run.free_pages):
        raise Refusal("CONFLICT", f"no room for partition {name} here: it needs {need} pages of the pool, "
                                  f"{len(run.free_pages)} are free (the host's memory_mb)")
    pid = hostflow.create_partition(run.root, pc, run.free_pages)
    run.partition_ids[name] = pid
    migration.create_dirty_log(run.run.path, pid)
    if pc not in run.topology.partitions:
        run.topology.partitions.append(pc)
    if name not in run.incoming:
        run.incoming.append(name)  # (its partition process resumes the saved kernel)
    devices = pc.worker_devices(run.run.path, run.topology.base_dir or run.run.path)
    write_json(run.run.path / f"worker-{name}.json", run.worker_spec(pc, devices))
    write_json(run.run.path / f"partition-{name}.json", run.partition_spec(pc))
    if run.watcher is not None:
        run.watcher.subscribe(pid)
    run.out.print(f"partition {name}: created for an incoming migration (id {pid}, {pc.memory_mb} MiB of the "
                  f"pool; {len(run.free_pages)} pages left)")
    run._manifest_update(config=run.topology.to_dict(),
                         stopped_partitions=[n for n in man.get("stopped_partitions", []) if n != name])
    return pc
