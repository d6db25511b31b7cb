"""Shared test set-up: the repository on sys.path, and a private temporary directory and runs
root for the whole session.

The tests keep their runs and files to themselves (issue 9: they used to leave dozens of
hvmem*/hvt* directories in the system's temporary directory and their runs in the user's
``launch.py ls``).  Before anything is collected, the session makes one short directory of
its own in the system's temporary directory and points ``TMPDIR`` (and ``tempfile``) into it
— so a hypervisor's ``mkdtemp(prefix="hvmem")``, the ipc run roots of the fixtures and every
process a test starts use it — and ``HVSTACK_RUN_DIR`` at ``runs/`` inside it; a test that
wants other places sets its own.  pytest's own ``tmp_path`` stays where it was (its
retention of the last sessions is pytest's).  At the end the directory is removed, unless a
test failed or ``--hvstack-keep-runs`` was given and something is in it: then its path is
printed.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The variables the session changes, and what they were.
_SESSION_ENV = ("TMPDIR", "HVSTACK_RUN_DIR", "PYTEST_DEBUG_TEMPROOT")
_saved: dict = {}


def pytest_addhooks(pluginmanager):
    """hvstack's pytest plugin (root/pytest_plugin.py) comes with `pip install -e .` through
    its pytest11 entry point; in a checkout that is not installed, register it here (early
    enough for its command-line options), unless it is loaded already or `-p no:hvstack`."""
    if pluginmanager.has_plugin("hvstack") or pluginmanager.is_blocked("hvstack"):
        return
    import root.pytest_plugin

    if not pluginmanager.is_registered(root.pytest_plugin):
        pluginmanager.register(root.pytest_plugin, "hvstack")


def pytest_configure(config):
    system_tmp = tempfile.gettempdir()
    # Short: ipc socket paths (runs under it) are limited to 107 bytes.
    session = Path(tempfile.mkdtemp(prefix="hvs", dir=system_tmp))
    (session / "runs").mkdir(mode=0o700)
    _saved.update(env={k: os.environ.get(k) for k in _SESSION_ENV}, tempdir=tempfile.tempdir, dir=session)
    os.environ["PYTEST_DEBUG_TEMPROOT"] = os.environ.get("PYTEST_DEBUG_TEMPROOT") or system_tmp
    os.environ["TMPDIR"] = str(session)
    os.environ["HVSTACK_RUN_DIR"] = str(session / "runs")
    tempfile.tempdir = str(session)


def pytest_sessionfinish(session, exitstatus):
    _saved["failed"] = exitstatus != 0


def pytest_unconfigure(config):
    if "dir" not in _saved:
        return
    for k, v in _saved["env"].items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    tempfile.tempdir = _saved["tempdir"]
    keep = _saved.get("failed") or config.getoption("hvstack_keep_runs", False)
    if keep and any(p.is_file() for p in _saved["dir"].rglob("*")):
        print(f"\nhvstack: this session's runs and temporary files are kept in {_saved['dir']}", file=sys.stderr)
    else:
        shutil.rmtree(_saved["dir"], ignore_errors=True)
