"""cpu.limit on the host: the partition process's cgroup (root/cgroups.py), against a fake
controller directory."""

from __future__ import annotations

from root import cgroups


def fake_controller(tmp_path):
    (tmp_path / "cpu.cfs_quota_us").write_text("-1\n")
    return tmp_path


def test_a_limit_becomes_a_cfs_quota_for_all_the_partitions_vps(tmp_path):
    ctl = fake_controller(tmp_path)
    path, note = cgroups.limit_cpu("run-1", "web", 4242, 30, 2, controller=ctl)
    assert path == ctl / "hvstack" / "run-1" / "web"
    assert (path / "cpu.cfs_period_us").read_text() == "100000"
    assert (path / "cpu.cfs_quota_us").read_text() == "60000"  # 30 % of a CPU for each of 2 VPs
    assert (path / "cgroup.procs").read_text() == "4242"
    assert "enforced on the host" in note and "60000" in note


def test_a_tiny_limit_gets_the_smallest_quota_the_kernel_takes(tmp_path):
    path, _ = cgroups.limit_cpu("r", "p", 1, 0, 1, controller=fake_controller(tmp_path))
    assert (path / "cpu.cfs_quota_us").read_text() == str(cgroups.MIN_QUOTA_US)


def test_without_the_controller_the_run_goes_on_and_says_so(tmp_path):
    path, note = cgroups.limit_cpu("r", "p", 1, 50, 1, controller=tmp_path / "nothing")
    assert path is None and note.startswith("cpu limit not enforced on the host: no cgroup v1 cpu controller")


def test_a_cgroup_that_cannot_be_written_is_reported_not_fatal(tmp_path):
    ctl = fake_controller(tmp_path)
    (ctl / "hvstack").write_text("a file where the directory should be")
    path, note = cgroups.limit_cpu("r", "p", 1, 50, 1, controller=ctl)
    assert path is None and "not enforced on the host" in note


def test_remove_takes_the_empty_directories_away(tmp_path):
    ctl = tmp_path / "ctl"
    leaf = ctl / "hvstack" / "run" / "p"
    leaf.mkdir(parents=True)
    cgroups.remove(leaf)
    assert not (ctl / "hvstack").exists() and ctl.exists()
    cgroups.remove(None)
