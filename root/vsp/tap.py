"""The virtual switch's external port: a Linux TAP device in a network namespace of the
run's own, so that the host reaches the partitions (``[switch] external = true``).

One thread of the VSP process leaves the host's network namespace for a new one
(unshare(CLONE_NEWNET): it is per thread), creates ``hvtap0`` there with address
10.0.0.254/24 and reads frames from it into :attr:`ExternalPort.inbox`, which the
process's loop hands to the switch; frames the switch sends this port are written to the
TAP.  The host's own interfaces are never touched.  The namespace lives as long as that
thread (the process): ``nsenter --net=NETNS`` (the path is in ``vsp-status.json`` under
``switch.external``) runs a command in it, e.g. a ping of 10.0.0.ID.  Where this is not
permitted (not root, no /dev/net/tun) the port says why and the switch runs without it.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import struct
import subprocess
import threading
from collections import deque

from proto import nvsp as nv

log = logging.getLogger("vsp.tap")

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
TAP_NAME = "hvtap0"
ADDRESS = "10.0.0.254/24"
READY_TIMEOUT_S = 10.0
MAX_INBOX = 1024  # frames from the host waiting for the loop; beyond, dropped


class ExternalPort:
    name = "external"

    def __init__(self) -> None:
        self.inbox: deque[bytes] = deque()
        self.error: str | None = None
        self.netns: str | None = None
        self.fd = -1
        self.stats = {"to_host": 0, "from_host": 0, "dropped": 0}
        self._ready = threading.Event()
        threading.Thread(target=self._run, name="tap", daemon=True).start()
        if not self._ready.wait(READY_TIMEOUT_S):
            self.error = f"the TAP was not up within {READY_TIMEOUT_S} s"

    def _run(self) -> None:
        try:
            if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) != 0:  # this thread only
                raise OSError(ctypes.get_errno(), f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}")
            fd = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", TAP_NAME.encode(), IFF_TAP | IFF_NO_PI))
            # ip runs in this thread's namespace (a fork copies the calling thread's).
            for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", ADDRESS, "dev", TAP_NAME],
                        ["ip", "link", "set", TAP_NAME, "up"]):
                subprocess.run(cmd, check=True, capture_output=True, timeout=5)
            self.netns = f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net"
            self.fd = fd
        except (OSError, AttributeError, subprocess.SubprocessError) as e:
            detail = e.stderr.decode(errors="replace").strip() if getattr(e, "stderr", None) else str(e)
            self.error = f"no TAP port: {detail}"
            self._ready.set()
            return
        self._ready.set()
        while True:
            try:
                frame = os.read(fd, 65536)
            except OSError:
                return
            if len(self.inbox) < MAX_INBOX:
                self.inbox.append(frame)
            else:
                self.stats["dropped"] += 1

    def frames(self) -> list[bytes]:
        """The frames the host sent since last asked (valid Ethernet sizes only)."""
        out = []
        while self.inbox:
            frame = self.inbox.popleft()
            if 14 <= len(frame) <= nv.MAX_FRAME:
                self.stats["from_host"] += 1
                out.append(frame)
            else:
                self.stats["dropped"] += 1
        return out

    def receive(self, frame: bytes, broadcast: bool) -> None:
        """A frame from the switch for the host."""
        if self.fd < 0:
            return
        try:
            os.write(self.fd, frame)
            self.stats["to_host"] += 1
        except OSError:
            self.stats["dropped"] += 1

    def status(self) -> dict:
        return {"netns": self.netns, "address": ADDRESS, "error": self.error, **self.stats}
