"""Starting a run's hypervisor and zygotes before the launcher has imported itself (issue 12).

``python launch.py run …`` spends ≈ 0.35–0.45 CPU-s importing root before its run exists,
and the hypervisor (≈ 0.35 CPU-s of imports) and the zygotes (root/zygote.py, ≈ 0.3 each)
used to start only then, one Python start-up after another.  ``launch.py`` calls
:func:`start` before anything else: for a ``run`` command it starts them at once, each
importing while the launcher does, with nothing of the run yet — the hypervisor then waits
on its stdin for its arguments and the run secret (``--secret-fd 0 --args-first``:
a JSON line, then the secret, then EOF; it appends its stderr to the log the line names),
the zygotes on their control sockets.  The run takes them (:func:`take_hypervisor`,
:func:`take_zygotes`); what it does not take (a topology over tcp, whose hypervisor needs
its CURVE key on the command line; a bad config; a run that never starts) is killed
(:func:`dismiss`, and at the launcher's exit).

They inherit what a run's processes get at spawn (root/procs.py): the launcher's
environment without its other HVSTACK_ variables, hvstack's directory, a session of their
own, SIGKILL at the launcher's death, and the run's umask (their files are 0600 as every
run file is).  Started before their run directory exists, their command lines carry
``--run-tag T`` (random; the manifest's ``run_tag``), by which ``stop`` recognises a dead
launcher's leftovers as it recognises the others by their run directory
(:func:`root.procs.leftovers`).

Only the standard library and root.zygote (itself standard-library only) are imported here:
this runs before the launcher's own imports, which it exists to overlap.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys

from root import REPO, zygote

DISABLE = "HVSTACK_PRESTART"  # "0": start them when the run does (measuring; a fallback)
RUN_UMASK = 0o077  # every file a run's processes create is theirs alone (root.run's, defined here)
# The HVSTACK_ variables a run's processes see: the run directory, and (the hypervisor
# only) where `bench --profile` wants its loop's cProfile statistics.
PASSED_ON = ("HVSTACK_RUN_DIR", "HVSTACK_PROFILE_HV", "HVSTACK_POSTED_DESCRIPTOR")
ZYGOTE_MODULES = ("worker", "partitions")

_started: dict = {}  # "hypervisor": Popen, and module → Zygote, until taken


def child_env(role: str) -> dict[str, str]:
    """The environment a run's ``role`` process gets: the launcher's without its other
    HVSTACK_ variables, with hvstack's packages on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HVSTACK_") or k in PASSED_ON}
    if role != "hypervisor":
        env.pop("HVSTACK_PROFILE_HV", None)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def new_tag() -> str:
    return os.urandom(8).hex()  # secrets.token_hex, without importing hashlib (proto/sha256.py)


def is_run_command(argv: list[str]) -> bool:
    """``launch.py [run] …`` (no command is ``run``), not its --help."""
    if any(a in ("-h", "--help") for a in argv):
        return False
    return not argv or argv[0] == "run" or argv[0].startswith("-")


def before_exec() -> None:
    """In a run process, before exec: the run's umask and SIGKILL at the launcher's death."""
    os.umask(RUN_UMASK)
    zygote.prctl(zygote.PR_SET_PDEATHSIG, signal.SIGKILL)


def start(argv: list[str]) -> None:
    """For a ``run`` command: the hypervisor and the zygotes, now."""
    if not is_run_command(argv) or os.environ.get(DISABLE, "1") == "0" or _started:
        return
    tag = new_tag()
    _started["tag"] = tag
    atexit.register(dismiss)
    try:
        _started["hypervisor"] = subprocess.Popen(
            [sys.executable, "-X", "faulthandler", "-m", "hypervisor", "--run-tag", tag, "--secret-fd", "0",
             "--args-first"],
            cwd=REPO, env=child_env("hypervisor"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            preexec_fn=before_exec, start_new_session=True)
        if zygote.enabled() and zygote.become_subreaper():
            for module in ZYGOTE_MODULES:
                _started[module] = zygote.Zygote(module, tag, None, child_env(module), REPO, before_exec)
    except OSError as e:  # the run starts them itself
        print(f"prestart: {e}", file=sys.stderr)
        dismiss()


def tag() -> str | None:
    """The run tag of what was started here (None: nothing was)."""
    return _started.get("tag")


def take_hypervisor(args: list[str], log_path, secret: str) -> subprocess.Popen | None:
    """The hypervisor started here, given its arguments (without --secret-fd), its log and
    the run secret; None if there is none (or it died meanwhile)."""
    hv = _started.pop("hypervisor", None)
    if hv is None:
        return None
    line = json.dumps({"args": args, "log": str(log_path)})
    try:
        if hv.poll() is not None:
            raise OSError(f"exited ({hv.returncode})")
        hv.stdin.write(line.encode("ascii") + b"\n" + secret.encode("ascii"))
        hv.stdin.close()
    except OSError:
        _kill(hv)
        return None
    return hv


def take_zygotes() -> dict:
    """module → the zygote started here ({} if none)."""
    return {m: _started.pop(m) for m in ZYGOTE_MODULES if m in _started}


def dismiss() -> None:
    """Kill whatever was started here and not taken (the run has read its tag by now)."""
    for key in ("hypervisor", *ZYGOTE_MODULES):
        p = _started.pop(key, None)
        if p is not None:
            _kill(p) if key == "hypervisor" else p.stop(0)
    _started.clear()


def _kill(popen: subprocess.Popen) -> None:
    if popen.poll() is None:
        popen.kill()
    try:
        popen.wait(5)
    except subprocess.TimeoutExpired:
        pass
