"""``migrate RUN PARTITION --to DEST``: move a running partition to another run — one
started with ``run TOPOLOGY --incoming PARTITION`` (another host's launcher) — by pre-copy
then stop-and-copy (root/migration.py), printing its progress as it goes and a summary.
DEST is that run's name (its manifest gives the endpoint and the CURVE server key) or a
``tcp://`` endpoint with ``--key``; in a run of hosts (root/cluster.py), RUN is that run
and DEST one of its hosts.  The move is recorded in the source run (root/follow.py), so
that attach commands naming it find the partition where it went."""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
from pathlib import Path

from proto.errors import HvstackError
from root import follow, hosts as hostnet, migration, migration_throttle
from root.cluster import host_runs
from root.client import RootClient
from root.rundir import RunDir, checked_runs_root, find_run, live_run, partition_of

NAME = "migrate"
# Z85 (ZeroMQ RFC 32): digits, letters and these 23 symbols; a 32-byte key is 40 characters.
_Z85_KEY = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
HELP = "live-migrate a partition of a run to another run (started with --incoming), or to another host of its run"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("partition")
    p.add_argument("--to", required=True, metavar="DEST",
                   help="the destination run, or its tcp:// endpoint; in a run of [[host]]s, a host's name")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--key", help="with a tcp:// DEST: the destination's CURVE server key (its manifest's incoming); "
                                     "give it as --key=KEY, since a Z85 key may begin with '-'")
    keys.add_argument("--key-file", metavar="FILE",
                      help="the same key read from FILE, or from standard input for '-' (no quoting to get right)")
    p.add_argument("--max-downtime-ms", type=float, default=30.0,
                   help="stop pre-copy once the pages left would take this long to send (default 30)")
    p.add_argument("--max-rounds", type=int, default=10, help="pre-copy rounds at most (default 10)")
    p.add_argument("--max-bandwidth", type=float, default=0.0, metavar="MB/S",
                   help="pace the pages to this many MB/s (QEMU's max-bandwidth; default: none)")
    p.add_argument("--auto-converge", action="store_true",
                   help="throttle a guest whose pre-copy does not converge (dirtying more than half of what a round "
                        "sends, two rounds running) through its CPU cap, as QEMU's auto-converge; put back if the "
                        "migration fails")
    p.add_argument("--throttle-initial", type=int, default=migration_throttle.INITIAL_PCT, metavar="PCT",
                   help=f"auto-converge's first throttle (default {migration_throttle.INITIAL_PCT}%%)")
    p.add_argument("--throttle-increment", type=int, default=migration_throttle.INCREMENT_PCT, metavar="PCT",
                   help=f"and each one after it (default {migration_throttle.INCREMENT_PCT}%%; at most "
                        f"{migration_throttle.MAX_PCT}%% in all)")
    p.add_argument("--timeout", type=float, default=migration.TIMEOUT_S,
                   help="seconds to wait for each answer of the destination (default 30)")
    p.add_argument("--json", action="store_true", help="the summary as JSON")


def destination(to: str, key: str | None, source: str, src: RunDir) -> tuple[str, str, RunDir | None]:
    """(endpoint, server key, run — None where this machine knows no run listening there) of DEST:
    in a run of hosts (root/cluster.py), DEST may be one of its hosts — and then this process
    enters the source host's network namespace, where the destination's address is."""
    top = find_run(source).manifest()
    if top.get("cluster") and not to.startswith("tcp://"):
        return _host(top, to, src)
    if to.startswith("tcp://"):
        if not key:
            raise HvstackError(f"--to {to}: a tcp endpoint needs its CURVE server key (--key=KEY)")
        return to, key, _run_listening(to)
    run, man = live_run(to)
    incoming = man.get("incoming") or {}
    if not incoming.get("endpoint"):
        raise HvstackError(f"run {run.name} waits for no migration (start it with run TOPOLOGY --incoming PARTITION)")
    return incoming["endpoint"], key or incoming["server_key"], run


def server_key(key: str | None, key_file: str | None) -> str | None:
    """The destination's CURVE public key from ``--key`` or ``--key-file`` (``-``: standard
    input), checked for the 40 Z85 characters of a Curve25519 key, so a truncated paste is
    refused here rather than as a handshake that never completes."""
    if key_file is not None:
        try:
            key = (sys.stdin.read() if key_file == "-" else Path(key_file).read_text()).strip()
        except (OSError, UnicodeDecodeError) as e:
            raise HvstackError(f"--key-file {key_file}: {e}") from None
    if key is not None and not _Z85_KEY.fullmatch(key):
        source = f"--key-file {key_file}" if key_file is not None else "--key"
        raise HvstackError(f"{source}: a CURVE server key is 40 Z85 characters (a manifest's incoming.server_key), "
                           f"not {key[:48]!r}")
    return key


def _host(top: dict, to: str, src: RunDir) -> tuple[str, str, RunDir]:
    hosts = top["cluster"]["hosts"]
    runs = host_runs(top)
    if to not in runs:
        raise HvstackError(f"run {top['name']} has no host {to!r} (it has {', '.join(hosts)})")
    run, man = live_run(str(runs[to].path))
    incoming = man.get("incoming") or {}
    if not incoming.get("endpoint"):
        raise HvstackError(f"host {to} (run {run.name}) has no room for a partition that migrates in")
    here = next((n for n, r in runs.items() if r.path == src.path), None)
    if here == to:
        raise HvstackError(f"the partition already runs on host {to}")
    if here is not None:
        hostnet.enter(hosts[here]["netns"])
    return incoming["endpoint"], incoming["server_key"], run


def _run_listening(endpoint: str) -> RunDir | None:
    """The live run of this runs root whose incoming endpoint is ``endpoint`` (so that the
    move's record names it and attach commands can follow the partition there)."""
    root = checked_runs_root()
    for d in sorted(root.iterdir()) if root is not None else ():
        run = RunDir(d)
        try:
            if run.is_live() and (run.manifest().get("incoming") or {}).get("endpoint") == endpoint:
                return run
        except (HvstackError, OSError):
            continue
    return None


def run(args) -> int:
    if not 1 <= args.max_rounds <= 1000 or not args.max_downtime_ms >= 0 or not args.max_bandwidth >= 0 \
            or not 0 < args.timeout <= 600:
        raise HvstackError("--max-rounds is 1..1000, --max-downtime-ms and --max-bandwidth are not negative, "
                           "--timeout is 0..600 s")
    migration_throttle.check_steps(args.throttle_initial, args.throttle_increment)
    key = server_key(args.key, args.key_file)
    src, man = follow.live_partition(args.run, args.partition)
    endpoint, key, dest = destination(args.to, key, args.run, src)
    partition_of(src, man, args.partition)
    if args.partition in man.get("stopped_partitions", []):
        raise HvstackError(f"partition {args.partition} of run {src.name} is stopped")
    if args.partition in (man.get("incoming") or {}).get("partitions", []):
        raise HvstackError(f"partition {args.partition} of run {src.name} has not come yet (it waits for it)")
    # SIGTERM as Ctrl-C: before the go, the migration's own unwinding resumes the partition
    # here (root/migration.py); Python's default would leave it paused with nobody to thaw it.
    signal.signal(signal.SIGTERM, _interrupted)
    with RootClient(man["endpoint"], src.secret(), server_key=man.get("server_key")) as root:
        figures = migration.migrate(src.path, man, root, args.partition, endpoint, key,
                                    max_downtime_ms=args.max_downtime_ms, max_rounds=args.max_rounds,
                                    max_bandwidth=args.max_bandwidth * 1e6, timeout_s=args.timeout,
                                    progress=None if args.json else (lambda line: print(line, flush=True)),
                                    on_handover=lambda: follow.record_move(src.path, args.partition, dest, endpoint),
                                    auto_converge=(args.throttle_initial, args.throttle_increment)
                                    if args.auto_converge else None)
    print(json.dumps(figures, indent=1) if args.json else migration.describe(figures))
    return 0


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")
