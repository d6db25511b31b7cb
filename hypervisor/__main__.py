"""``python -m hypervisor --endpoint ENDPOINT [--curve-key-fd FD]``; the run secret comes
in HVSTACK_SECRET.

The secret is passed in the environment, not on the command line, where any user's ``ps``
would show it.  A tcp endpoint's CURVE secret key comes on an inherited descriptor (a pipe
the root wrote it to, ``root.procs.secret_pipe``): neither argv nor the environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from proto.transport import Router

from hypervisor.service import Hypervisor


def read_secret_fd(fd: int, limit: int = 4096) -> str:
    """What the root wrote into the pipe at ``fd`` (up to EOF); the descriptor is closed."""
    data = b""
    try:
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data.decode("ascii").strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hypervisor")
    ap.add_argument("--endpoint", required=True, help="ZeroMQ endpoint to bind (ipc:// or tcp://)")
    ap.add_argument("--lps", type=int, default=2, help="logical processors the scheduler dispatches VPs on")
    ap.add_argument("--memory-dir", help="where the page pool and SLAT tables live (the run directory)")
    ap.add_argument("--pool-pages", type=int, default=4096, help="4 KiB pages of host memory in the pool")
    ap.add_argument("--curve-key-fd", type=int,
                    help="an inherited descriptor holding the tcp endpoint's CURVE secret key (Z85)")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s hypervisor %(levelname)s %(message)s")
    secret = os.environ.get("HVSTACK_SECRET")
    if not secret:
        print("python -m hypervisor: HVSTACK_SECRET is not set", file=sys.stderr)
        return 2
    curve_key = read_secret_fd(args.curve_key_fd) if args.curve_key_fd is not None else None
    # The one socket, bound here and handed to the loop (which tests drive with a fake).
    hv = Hypervisor(Router(args.endpoint, curve_key), secret, args.lps, args.memory_dir, args.pool_pages)

    def stop(signum, frame):
        hv.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # The launcher reads this line to learn the endpoint actually bound (tcp port 0).
    print(f"READY {hv.endpoint}", flush=True)
    hv.serve()
    logging.info("hypervisor stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
