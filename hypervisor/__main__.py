"""``python -m hypervisor --endpoint ENDPOINT --secret-fd N [--curve-key-fd FD]``.

The run secret comes down the pipe whose read end is descriptor N (see
:mod:`proto.confine`): not on the command line, where any user's ``ps`` would show it, nor
in the environment, which ``/proc/PID/environ`` shows.  A tcp endpoint's CURVE secret key
comes the same way, on descriptor FD.  The hypervisor is not dumpable, so no process of its
uid can read either out of its memory.

``python -m hypervisor --run-tag T --secret-fd 0 --args-first``: started before its run
existed (root/prestart.py), so that its imports overlap the launcher's: it reads its
arguments (a JSON line: ``args``, and ``log``, the file its stderr then goes to) and then
the run secret from descriptor 0, up to EOF.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time

from proto import confine
from proto.transport import Router

from hypervisor.service import Hypervisor


def from_launcher() -> tuple[list[str], str] | None:
    """``--args-first``: the arguments and the secret from stdin (then /dev/null), stderr
    into the log the arguments name; None if the launcher closed stdin with nothing (it
    did not need this hypervisor after all)."""
    line, _, secret = confine.read_secret(0, limit=1 << 16).partition("\n")
    os.open(os.devnull, os.O_RDONLY)  # descriptor 0 again
    if not line:
        return None
    given = json.loads(line)
    log = os.open(given["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.dup2(log, 2)  # faulthandler (-X faulthandler) writes to descriptor 2 as well
    os.close(log)
    return [str(a) for a in given["args"]], secret.strip()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    confine.set_dumpable(False)  # before the secret is read
    secret = None
    if "--args-first" in argv:
        given = from_launcher()
        if given is None:
            return 0
        argv, secret = given
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
    ap.add_argument("--secret-fd", type=int, required=secret is None, help="a pipe holding the run secret")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s hypervisor %(levelname)s %(message)s")
    if secret is None:
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
