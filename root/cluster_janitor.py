"""The cluster launcher's janitor (root/cluster.py): removes the run's network namespaces
once the launcher is gone — however it went, SIGKILL included.

Started by the launcher in a session of its own with a pipe on its stdin whose write end
only the launcher holds: EOF there means the launcher has exited.  It then removes every
namespace named on its command line (``ip netns del``: the name goes at once; the namespace,
and the veths in it, when its last process has — the hosts' launchers get SIGTERM at their
parent's death, PR_SET_PDEATHSIG, and end their runs).  A launcher that ended normally has
removed them itself: there is nothing left to do.  Standard library only: it starts fast.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m root.cluster_janitor")
    p.add_argument("--namespace", action="append", default=[])
    args = p.parse_args(argv)
    while os.read(0, 4096):  # until the launcher's end of the pipe closes
        pass
    for name in args.namespace:
        if os.path.exists(f"/run/netns/{name}"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
