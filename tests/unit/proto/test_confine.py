"""proto.confine: secrets by pipe, non-dumpable, dropping to a uid, hiding in namespaces.

The mechanisms are tried in forked children (each reports back as JSON through a pipe), so
the test process keeps its own credentials.
"""

from __future__ import annotations

import json
import os
import resource
import select

import pytest

from proto import confine

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="changing uid needs root (CI runs as root)")
UID = 1 << 30 | 0x3FFF00  # in the launcher's range, not one a run of this test would use


def in_child(body, timeout: float = 10.0):
    """Run ``body()`` in a forked child; what it returned (or the error it raised, by name)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            out = ["ok", body()]
        except OSError as e:
            out = ["oserror", e.errno]
        except BaseException as e:
            out = ["error", repr(e)]
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    ready, _, _ = select.select([r], [], [], timeout)
    data = os.read(r, 65536) if ready else b""
    os.close(r)
    if not data:
        os.kill(pid, 9)
    os.waitpid(pid, 0)
    assert data, "the child said nothing"
    return tuple(json.loads(data))


def test_a_secret_goes_down_a_pipe_and_the_pipe_is_closed_after():
    fd = confine.secret_pipe("abc123")
    assert os.get_inheritable(fd)
    assert confine.read_secret(fd) == "abc123"
    with pytest.raises(OSError):
        os.fstat(fd)


def test_the_level_is_never_stronger_than_what_is_available(monkeypatch):
    monkeypatch.setenv("HVSTACK_ISOLATION", "uids")
    best = confine.level()
    monkeypatch.setenv("HVSTACK_ISOLATION", "same-user")
    assert confine.level() == "same-user"
    if os.geteuid() != 0:
        assert best != "uids"


@ROOT_ONLY
def test_dropping_to_a_uid_leaves_no_way_back_and_no_capabilities():
    def body():
        confine.drop_to(UID, UID)
        try:
            os.setresuid(0, 0, 0)
            back = True
        except PermissionError:
            back = False
        with open("/proc/self/status") as f:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (1 << 20, 1 << 20))
            raised = True
        except (ValueError, OSError):
            raised = False
        return {"uid": os.getresuid(), "groups": os.getgroups(), "back": back, "cap": status["CapEff"],
                "nnp": status["NoNewPrivs"], "dumpable": confine.dumpable(),
                "nproc": resource.getrlimit(resource.RLIMIT_NPROC)[0], "raised": raised}

    assert in_child(body) == ("ok", {"uid": [UID] * 3, "groups": [], "back": False, "cap": "0" * 16,
                                     "nnp": "1", "dumpable": False, "nproc": confine.MAX_TASKS,
                                     "raised": False})


@ROOT_ONLY
def test_dropping_to_root_is_refused():
    assert in_child(lambda: confine.drop_to(0, 0))[0] == "oserror"  # ConfineError


@ROOT_ONLY
def test_a_process_that_is_not_dumpable_keeps_its_environment_and_memory_from_its_own_uid():
    """What the launcher and hypervisor rely on where every process is one user's."""
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    target = os.fork()
    if target == 0:  # pragma: no cover - the target: same uid as the prober
        confine.drop_to(UID, UID)
        confine.set_dumpable(True)
        os.write(w, b"1")
        os.read(go_r, 1)  # probed while dumpable
        confine.set_dumpable(False)
        os.write(w, b"2")
        os.read(go_r, 1)
        os._exit(0)
    try:
        assert os.read(r, 1) == b"1"

        def probe():
            confine.drop_to(UID, UID)
            out = []
            for what in ("environ", "mem"):
                try:
                    with open(f"/proc/{target}/{what}", "rb"):
                        out.append("opened")
                except OSError as e:
                    out.append(e.errno)
            return out

        assert in_child(probe) == ("ok", ["opened", "opened"])
        os.write(go_w, b"x")
        assert os.read(r, 1) == b"2"
        import errno
        assert in_child(probe) == ("ok", [errno.EACCES, errno.EACCES])
    finally:
        os.write(go_w, b"x")
        os.waitpid(target, 0)
        for fd in (r, w, go_r, go_w):
            os.close(fd)


@pytest.mark.skipif(not confine.user_namespaces_available(), reason="no user namespaces here")
def test_hiding_in_namespaces_covers_the_runs_root_for_good(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "secret").write_text("s3cret")

    def body():
        keep = confine.hide_in_namespaces(str(tmp_path), str(run))
        out = {}
        try:
            with open(run / "secret") as f:
                out["by_name"] = f.read()
        except OSError as e:
            out["by_name"] = os.strerror(e.errno)
        with open(f"/proc/self/fd/{keep}/secret") as f:  # what the socket is reached through
            out["through_fd"] = f.read()
        libc = confine._libc_handle()
        out["umount"] = libc.umount2(str(tmp_path).encode(), 2) == 0  # MNT_DETACH
        out["cap"] = confine.capabilities_effective()
        out["dumpable"] = confine.dumpable()
        return out

    ok, out = in_child(body)
    assert ok == "ok", out
    assert out["by_name"] in ("Permission denied", "No such file or directory")
    assert out == {"by_name": out["by_name"], "through_fd": "s3cret", "umount": False, "cap": 0, "dumpable": False}
    assert (run / "secret").read_text() == "s3cret", "nothing changed outside the namespace"


def test_through_rewrites_only_ipc_endpoints_in_the_directory():
    assert confine.through("ipc:///r/run-1/hv.sock", "/r/run-1", 7) == "ipc:///proc/self/fd/7/hv.sock"
    assert confine.through("tcp://127.0.0.1:5555", "/r/run-1", 7) == "tcp://127.0.0.1:5555"
    assert confine.through("ipc:///elsewhere/hv.sock", "/r/run-1", 7) == "ipc:///elsewhere/hv.sock"
