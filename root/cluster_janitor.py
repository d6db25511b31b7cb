"""The cluster launcher's janitor (root/cluster.py): removes the run's network namespaces
once the launcher is gone — however it went, SIGKILL included.

Started by the launcher in a session of its own with a pipe on its stdin whose write end
only the launcher holds: EOF there means the launcher has exited.  It then waits (at most
``--grace`` seconds) for the hosts' launchers to go — they get SIGTERM at their parent's
death (PR_SET_PDEATHSIG) and end their runs — and removes every namespace named on its
command line (``ip netns del``; the veths go with them).  A launcher that ended normally
has removed them itself: there is nothing left to do.  Standard library only: it starts fast.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m root.cluster_janitor")
    p.add_argument("--namespace", action="append", default=[])
    p.add_argument("--pid", action="append", type=int, default=[], help="a host launcher to wait for")
    p.add_argument("--grace", type=float, default=30.0)
    args = p.parse_args(argv)
    while os.read(0, 4096):  # until the launcher's end of the pipe closes
        pass
    deadline = time.monotonic() + args.grace
    while any(_alive(pid) for pid in args.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    for name in args.namespace:
        if os.path.exists(f"/run/netns/{name}"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
