"""root.procs: the uids of a run's confined processes, and what a spawned process inherits."""

from __future__ import annotations

import os
import subprocess

import pytest

from root import procs


def test_each_worker_and_partition_of_each_run_gets_a_uid_of_its_own():
    uids = {procs.partition_uid(launcher, partition, role)
            for launcher in (1, 4242, (1 << 22) - 1) for partition in (1, 2, 127) for role in ("worker", "partition")}
    assert len(uids) == 3 * 3 * 2
    assert all(procs.UID_BASE <= u < 1 << 31 for u in uids)


@pytest.mark.parametrize("partition", [0, -1, "1"])
def test_a_partition_id_that_is_no_child_partitions_is_refused(partition):
    with pytest.raises(ValueError):
        procs.partition_uid(4242, partition, "worker", in_use=set())


def test_any_partition_id_gets_uids_of_its_own_even_beyond_the_runs_block():
    """IDs from 128 up (the hypervisor hands IDs out without bound) got no uid before."""
    ids = [1, 127, 128, 129, 1000, 65536, 1 << 40]
    uids = [procs.partition_uid(launcher, p, role, in_use=set())
            for launcher in (1, 4242) for p in ids for role in ("worker", "partition")]
    assert len(set(uids)) == len(uids)
    assert all(procs.UID_BASE <= u < procs.UID_LIMIT for u in uids)
    assert procs.partition_uid(4242, 128, "worker", in_use=set()) >= procs.UID_HASHED


def test_a_uid_a_live_process_has_is_passed_over():
    first = procs.partition_uid(4242, 3, "partition", in_use=set())
    second = procs.partition_uid(4242, 3, "partition", in_use={first})
    assert second != first and procs.UID_HASHED <= second < procs.UID_LIMIT
    assert procs.partition_uid(4242, 3, "partition", in_use={first, second}) not in (first, second)
    assert os.getuid() in procs.uids_in_use()  # read from /proc by default


def test_a_spawned_process_gets_its_secret_by_pipe_and_nothing_in_its_environment(tmp_path, monkeypatch):
    """The secret is on the descriptor named by --secret-fd; HVSTACK_* variables (but the
    runs root) are not passed on; the descriptors the parent handed over are closed in it."""
    monkeypatch.setenv("HVSTACK_SECRET", "leaked")
    monkeypatch.setenv("HVSTACK_RUN_DIR", str(tmp_path))
    handed = os.open(os.devnull, os.O_RDONLY)
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "__init__.py").write_text("")
    (probe / "__main__.py").write_text(
        "import os, sys\n"
        "fd = int(sys.argv[sys.argv.index('--secret-fd') + 1])\n"
        "print(os.read(fd, 100).decode(), os.environ.get('HVSTACK_SECRET'),"
        " os.environ.get('HVSTACK_RUN_DIR') is not None,"
        " os.path.exists(f'/proc/self/fd/{sys.argv[1]}'))\n")
    monkeypatch.setattr(procs, "REPO", tmp_path)
    p = procs.spawn("worker", "x", "probe", [str(handed)], tmp_path, secret="s3cret", fds=(handed,),
                    stdout=subprocess.PIPE)
    out, _ = p.popen.communicate(timeout=30)
    assert out.decode().split() == ["s3cret", "None", "True", "True"]
    with pytest.raises(OSError):
        os.fstat(handed)  # closed in the parent once the child has it
