"""The test suite keeps its runs and files to itself (issue 9: it left dozens of hvmem*/hvt*
directories in the system's temporary directory and its runs in the user's ``launch.py ls``).

A pytest of its own runs the tests that start hypervisors and runs, with the system's
temporary directory and the user's runtime directory (the default runs root's home) pointed
at empty directories; afterwards both must still be empty."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
# Tests that start a hypervisor in-process (its memory directory) and real runs.
LEAKY = ["tests/unit/hypervisor",
         "tests/unit/root/test_run_in_process.py::test_a_one_second_run_prints_banners_and_tables_and_leaves_nothing_running"]


@pytest.mark.timeout(180)
def test_a_test_session_leaves_nothing_in_the_temporary_or_runtime_directory(tmp_path):
    # Short (ipc socket paths under it are limited to 107 bytes); in this session's own
    # temporary directory, and removed at the end.
    top = Path(tempfile.mkdtemp(prefix="hvk"))
    try:
        _check(top, tmp_path)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _check(top: Path, tmp_path: Path) -> None:
    system_tmp, runtime = top / "t", top / "x"
    system_tmp.mkdir()
    runtime.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k not in ("HVSTACK_RUN_DIR", "PYTEST_DEBUG_TEMPROOT")}
    env.update(TMPDIR=str(system_tmp), XDG_RUNTIME_DIR=str(runtime), PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                        f"--basetemp={tmp_path / 'basetemp'}", *LEAKY],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=170)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(os.listdir(system_tmp)) == [], "left in the temporary directory"
    assert sorted(os.listdir(runtime)) == [], "left in the runtime directory (the user's runs root)"
