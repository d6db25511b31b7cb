"""Attach commands follow a migrated partition (issue 13, root/follow.py): after ``migrate
SRC alpha --to DST``, ``status SRC`` shows alpha as "moved → DST", and ``console``, ``ctl``
and ``io`` naming SRC and alpha reach alpha at DST (saying so on stderr in one line) — also
once the source run has ended."""

from __future__ import annotations

import re

import pytest

from tests.integration.test_migration import ended
from tests.support import REPO, short_run_root, start_run, wait_until

pytestmark = pytest.mark.timeout(150)
MOVED = re.compile(r"^alpha moved to run (\S+) at \d\d:\d\d:\d\d$", re.M)


def test_status_console_ctl_and_io_on_the_source_name_reach_the_moved_partition(tmp_path):
    # Two partitions, so that the source run goes on (with beta) after alpha has left it.
    config = tmp_path / "two.toml"
    config.write_text((REPO / "tests" / "configs" / "migrate.toml").read_text()
                      + '\n[[partition]]\nname = "beta"\nvps = 1\nmemory_mb = 4\nworkloads = ["serial"]\n')
    src = start_run(str(config), short_run_root())
    dst = start_run(str(config), short_run_root(), extra=("--incoming", "alpha"))
    try:
        # (what goes on at the destination is test_migration's: here, where commands go)
        wait_until(lambda: src.console("alpha").count("[alpha] vp0:") >= 2, 60, interval=0.2,
                   what="alpha to run (and its kernel to have saved its state once)")
        wait_until(lambda: dst.manifest().get("incoming"), 10, what="the destination's incoming endpoint")
        r = src.launch("migrate", src.name, "alpha", "--to", str(dst.path), timeout=90)
        assert r.returncode == 0, r.stderr
        # The source's record (and its manifest, once its launcher has stopped alpha there).
        wait_until(lambda: "alpha" in src.manifest().get("moved", {}), 10, what="the move in the source's manifest")
        assert src.manifest()["moved"]["alpha"][-1]["to"] == dst.name

        st = src.launch("status", src.name)
        assert st.returncode == 0, st.stderr
        assert re.search(rf"partition alpha \(id \d+\): moved → {dst.name} at \d\d:\d\d:\d\d", st.stdout), st.stdout
        assert re.search(r"partition beta \(id \d+\): active", st.stdout), st.stdout

        # console SRC alpha attaches to alpha's console at the destination.
        con = src.launch("console", src.name, "alpha", "--linger", "1", stdin="", timeout=30)
        assert con.returncode == 0, con.stderr
        assert MOVED.search(con.stderr).group(1) == dst.name, con.stderr
        assert f"Connected to partition alpha of run {dst.name}" in con.stderr, con.stderr

        # ctl SRC alpha pauses and resumes it where it runs; io reads its registers there.
        for action in ("pause", "resume"):
            c = src.launch("ctl", src.name, action, "alpha", timeout=30)
            assert c.returncode == 0 and MOVED.search(c.stderr), c.stdout + c.stderr
        io = src.launch("io", src.name, "alpha", "rdmsr", "HV_X64_MSR_VP_INDEX", timeout=30)
        assert io.returncode == 0 and io.stdout.startswith("OK"), io.stdout + io.stderr

        # Once the source has ended, the records stay: status follows alpha to the destination.
        src.stop()
        wait_until(lambda: src.manifest().get("state") == "ended", 20, what="the source run to end")
        st = src.launch("status", src.name)
        assert st.returncode == 0 and f"run {dst.name}:" in st.stdout and MOVED.search(st.stderr), st.stderr
        assert "MISMATCH" not in dst.console("alpha")
    finally:
        ended(src, dst)
