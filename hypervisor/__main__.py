"""``python -m hypervisor --endpoint ENDPOINT --secret-fd N [--curve-key-fd FD]``.

The run secret comes down the pipe whose read end is descriptor N (see
:mod:`proto.confine`): not on the command line, where any user's ``ps`` would show it, nor
in the environment, which ``/proc/PID/environ`` shows.  A tcp endpoint's CURVE secret key
comes the same way, on descriptor FD.  The hypervisor is not dumpable, so no process of its
uid can read either out of its memory.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

from proto import confine
from proto.transport import Router

from hypervisor.service import Hypervisor


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hypervisor")
    ap.add_argument("--endpoint", required=True, help="ZeroMQ endpoint to bind (ipc:// or tcp://)")
    ap.add_argument("--lps", type=int, default=2, help="logical processors the scheduler dispatches VPs on")
    ap.add_argument("--memory-dir", required=True,
                    help="where the partitions' RAM, SLAT and TLB files live (the run directory): "
                         "a directory of the run's, so that nothing of a run is left elsewhere")
    ap.add_argument("--pool-pages", type=int, default=4096, help="4 KiB pages of host memory in the pool")
    ap.add_argument("--curve-key-fd", type=int,
                    help="an inherited descriptor holding the tcp endpoint's CURVE secret key (Z85)")
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--secret-fd", type=int, required=True, help="a pipe holding the run secret")
    args = ap.parse_args(argv)
    confine.set_dumpable(False)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s hypervisor %(levelname)s %(message)s")
    secret = confine.read_secret(args.secret_fd)
    if not secret:
        print("python -m hypervisor: no secret on --secret-fd", file=sys.stderr)
        return 2
    curve_key = confine.read_secret(args.curve_key_fd) if args.curve_key_fd is not None else None
    # The one socket, bound here and handed to the loop (which tests drive with a fake).
    hv = Hypervisor(Router(args.endpoint, curve_key), secret, args.lps, args.memory_dir, args.pool_pages)

    def stop(signum, frame):
        hv.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # The launcher reads this line to learn the endpoint actually bound (tcp port 0).
    print(f"READY {hv.endpoint}", flush=True)
    profile = os.environ.get("HVSTACK_PROFILE_HV")
    if profile:  # `bench --profile`: the loop under cProfile, its statistics written at the end
        import cProfile

        # By the loop thread's CPU time, not the wall clock: on a shared host the wall
        # clock charges a function for the time its process waited for a core, and the
        # loop's idle waits (poll) would fill the top of the list.
        with cProfile.Profile(time.thread_time_ns, 1e-9) as prof:
            # SIGUSR2 (the bench, as its window starts): forget what was profiled so far —
            # start-up and the guests' boot — so that the statistics are the steady state's.
            signal.signal(signal.SIGUSR2, lambda *_: prof.clear())
            hv.serve()
        prof.dump_stats(profile)
    else:
        hv.serve()
    logging.info("hypervisor stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
