"""The root partition's management service (Hyper-V's VMMS): topologies, run directories,
the TLFS host flow that creates partitions, supervision of a run's processes, and the
commands that attach to a live run.  ``launch.py`` is only the door into it
(``root.cli.main``).

    topology     the TOML schema and its defaults; errors name file, line and key
    rundir       run directories and their manifest; finding a run by name
    procs        spawning and stopping a run's processes (PR_SET_PDEATHSIG)
    zygote       a process per role that forks the workers and partition processes
    prestart     a run's hypervisor and zygotes, started before the launcher imports root
    hostflow     the TLFS host flow: create a partition, deposit pages, map its memory
    run          a run's life cycle and supervision
    client       the root's client of the hypervisor (root-only hypercalls, attach)
    report       tables: one exit total, one path order (from proto.exits)
    trace_format what `trace` makes of the hypervisor's trace events
    commands/    one module per command: its name, help, arguments and run function
    cli          the argument parser assembled from the commands; ``main(argv) -> int``
    testrun      a run started from a test, and its handle (no pytest needed)
    pytest_plugin  the hvstack_run / hvstack_floor fixtures and the timing assertions

Layering: root imports proto (the hypervisor's status is proto.status), and the other
packages only for their configuration vocabulary (worker.devices.config's device settings
and chipsets, the guest's workload names); it starts them as ``python -m <package>``.  benchmarks may import root, never the reverse: the ``bench``
command and the plugin's floor import benchmarks lazily, inside the functions that need it.
"""

from __future__ import annotations

from pathlib import Path

# The directory that holds hvstack's packages and launch.py (a checkout, or site-packages):
# the processes of a run start there, with it on their PYTHONPATH.
REPO = Path(__file__).resolve().parent.parent
