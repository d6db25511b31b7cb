"""Running one bench topology to its end, in this process, and what stops a bench."""

from __future__ import annotations

import signal

from proto.errors import HvstackError
from proto.status import HypervisorStatus, PartitionStatus
from root.report import Output
from root.run import execute
from root.topology import load_topology


class BenchInterrupted(Exception):
    """Ctrl-C or SIGTERM: stop measuring, report what is complete."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum, frame):
    raise BenchInterrupted(signum)


def measure_run(topology_text: str, duration_s: float) -> HypervisorStatus:
    """The hypervisor's final status of a bench topology's run."""
    topology = load_topology(topology_text, "<bench>")
    with open("/dev/null", "w") as devnull:
        run, reason, code = execute(topology, Output(devnull), duration_s)
    # execute() took SIGINT and SIGTERM for the run's life and ended the run on one.
    for sig in (signal.SIGINT, signal.SIGTERM):
        if reason.startswith(sig.name):
            raise BenchInterrupted(sig)
    if code != 0 or not run.final_status:
        raise HvstackError(f"the bench run {topology.name} failed: {reason}")
    return run.final_status


def measure_stack(topology_text: str, duration_s: float) -> PartitionStatus:
    """The final status of the one partition of a bench topology."""
    return measure_run(topology_text, duration_s).partitions[0]
