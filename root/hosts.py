"""Two hosts on one machine: two network namespaces joined by a veth pair (issue 13), for
running a migration's source and destination runs each on a "host" of its own — the stack
then talks across them over tcp (CURVE) on the veth, not on a shared loopback.

``two_hosts()`` makes them (root only: ``ip netns add``, ``ip link add … type veth``) and
removes them afterwards; :class:`HostsUnavailable` says plainly why where they cannot be had.
A command runs on a host with ``host.command([...])`` (``ip netns exec NAME …``: the
filesystem, and so the runs root, stays shared, as a cluster's shared storage would).

``make_cluster()`` makes any number of hosts for a run with ``[[host]]`` sections
(root/cluster.py): one namespace per host, each with a veth to a bridge in a namespace of
its own (the switch), so that the launcher's own namespace is left as it was; every
address is in CLUSTER_SUBNET, which exists only inside those namespaces (two clusters at
once do not collide).  ``remove_namespaces()`` removes them again; a namespace's veth end
goes with it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass

from proto.errors import HvstackError

SUBNET = "10.213.{n}.{host}/30"  # a /30 per pair: .1 the first host, .2 the second
CLUSTER_SUBNET = "10.214.0.{host}/24"  # host i of a cluster is .(i + 1)


class HostsUnavailable(HvstackError):
    """Network namespaces cannot be made here; the message says why."""


@dataclass(frozen=True)
class Host:
    netns: str
    address: str  # its side of the veth

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise HostsUnavailable(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")


def unavailable() -> str | None:
    """Why two hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces and veth pairs need root"
    if shutil.which("ip") is None:
        return "no ip command (iproute2)"
    return None


@contextlib.contextmanager
def two_hosts(tag: str, n: int = 1):
    """``(first, second)``: namespaces ``hv-TAG-a`` and ``hv-TAG-b``, each with its loopback
    up and one end of a veth pair addressed in 10.213.N.0/30; removed on exit."""
    why = unavailable()
    if why:
        raise HostsUnavailable(why)
    names = [f"hv-{tag}-a", f"hv-{tag}-b"]
    links = [f"hv{tag[:8]}a", f"hv{tag[:8]}b"]  # (interface names: at most 15 characters)
    hosts = [Host(names[i], SUBNET.format(n=n, host=i + 1).split("/")[0]) for i in range(2)]
    made: list[str] = []
    try:
        for name in names:
            _ip("netns", "add", name)
            made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("link", "add", links[0], "netns", names[0], "type", "veth", "peer", "name", links[1], "netns", names[1])
        for i in range(2):
            _ip("-n", names[i], "addr", "add", SUBNET.format(n=n, host=i + 1), "dev", links[i])
            _ip("-n", names[i], "link", "set", links[i], "up")
        yield hosts[0], hosts[1]
    finally:
        for name in made:  # a namespace's veth end goes with it (and so its peer)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def make_cluster(tag: str, names: list[str]) -> tuple[list[str], dict[str, Host]]:
    """Namespaces ``hv-TAG-NAME`` for each host and ``hv-TAG-sw`` for the bridge joining
    them: (every namespace made, for :func:`remove_namespaces`; host name → Host).  On a
    failure, what was made is removed and HostsUnavailable says why."""
    why = unavailable()
    if why:
        raise HostsUnavailable(why)
    switch = f"hv-{tag}-sw"
    made: list[str] = []
    try:
        _ip("netns", "add", switch)
        made.append(switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        hosts = {}
        for i, name in enumerate(names):
            netns = f"hv-{tag}-{name}"
            _ip("netns", "add", netns)
            made.append(netns)
            _ip("-n", netns, "link", "set", "lo", "up")
            # (interface names are per namespace: "eth0" in each host, "hN" on the switch)
            _ip("-n", switch, "link", "add", f"h{i}", "type", "veth", "peer", "name", "eth0", "netns", netns)
            _ip("-n", switch, "link", "set", f"h{i}", "master", "br0", "up")
            _ip("-n", netns, "addr", "add", CLUSTER_SUBNET.format(host=i + 1), "dev", "eth0")
            _ip("-n", netns, "link", "set", "eth0", "up")
            hosts[name] = Host(netns, CLUSTER_SUBNET.format(host=i + 1).split("/")[0])
        return made, hosts
    except BaseException:
        remove_namespaces(made)
        raise


def remove_namespaces(names: list[str]) -> list[str]:
    """``ip netns del`` each (those already gone are fine); the ones that could not be removed."""
    left = []
    for name in names:
        r = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True, timeout=10)
        if r.returncode != 0 and os.path.exists(f"/run/netns/{name}"):
            left.append(name)
    return left


CLONE_NEWNET = 0x40000000


def enter(netns: str) -> None:
    """Move this process (its one thread: call it before any ZeroMQ context exists, whose
    I/O threads would stay behind) into network namespace ``netns`` — how ``migrate`` runs
    on the source host of a run of hosts, where the destination's veth address is reachable."""
    import ctypes

    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise HostsUnavailable(f"cannot enter network namespace {netns}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)
