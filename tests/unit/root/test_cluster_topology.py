"""[[host]] sections (issue 13, root/cluster.py): what each host runs, and bad configs named
by file, line and key like every other topology error."""

from __future__ import annotations

import pytest

from proto.errors import ConfigError
from root.cluster import host_topology
from root.topology import load_topology

HOSTS = '''[run]
name = "c"
duration_s = 0

[[host]]
name = "a"
lps = 2

[[host]]
name = "b"
memory_mb = 8

[[partition]]
name = "alpha"
host = "a"
memory_mb = 4

[[partition]]
name = "beta"
host = "b"
memory_mb = 4

[[partition]]
name = "gamma"
host = "a"
memory_mb = 16
'''


def test_each_host_runs_its_partitions_and_has_room_for_the_others():
    t = load_topology(HOSTS, "c.toml")
    assert [h["name"] for h in t.hosts] == ["a", "b"] and t.to_dict()["hosts"][0]["lps"] == 2
    a, arrivable_a, room_a = host_topology(t, "a")
    assert a.logical_processors == 2 and a.hosts is None and a.name == "c-a"
    assert [p.name for p in a.partitions] == ["alpha", "gamma"] and list(arrivable_a) == ["alpha", "beta", "gamma"]
    assert room_a == 4 << 8  # (default: every other host's partition at once)
    b, arrivable_b, room_b = host_topology(t, "b")
    assert [p.name for p in b.partitions] == ["beta"] and list(arrivable_b) == ["alpha", "beta", "gamma"]
    assert room_b == 8 << 8  # its memory_mb
    # A topology without hosts is as it was.
    plain = load_topology('[[partition]]\nname = "p"\n', "p.toml")
    assert plain.hosts is None and plain.partitions[0].host is None


@pytest.mark.parametrize("change, message", [
    (('name = "b"\nmemory_mb = 8', 'name = "a"'), r"c.toml:10: \[\[host\]\] #2 name: 'a' is used by another host"),
    (("lps = 2", "lps = 0"), r"c.toml:7: \[\[host\]\] #1 lps: 0 is outside 1..64"),
    (('host = "b"', 'host = "z"'), r"c.toml:20: \[\[partition\]\] #2 host: unknown host 'z' \(known: a, b\)"),
    (('host = "b"\n', ''), r"c.toml:18: \[\[partition\]\] #2 partition 'beta' names no host"),
    (("memory_mb = 8", "memory_mb = -1"), r"c.toml:11: \[\[host\]\] #2 memory_mb: -1 is outside 0..65536"),
    (("lps = 2", "lps = 2\ncores = 4"), r"c.toml:8: \[\[host\]\] #1 cores: unknown key"),
    (('name = "a"', 'name = "a-long-name"'), r"c.toml:6: \[\[host\]\] #1 name: 'a-long-name' must be"),
])
def test_bad_hosts_name_the_file_line_and_key(change, message):
    with pytest.raises(ConfigError, match=message):
        load_topology(HOSTS.replace(*change, 1), "c.toml")


def test_a_partition_naming_a_host_needs_hosts():
    with pytest.raises(ConfigError, match=r"p.toml:3: \[\[partition\]\] #1 host: 'a': the topology has no \[\[host\]\]"):
        load_topology('[[partition]]\nname = "p"\nhost = "a"\n', "p.toml")


def test_without_namespaces_a_run_of_hosts_says_why_and_starts_nothing(runs, tmp_path, monkeypatch, capsys):
    from root import cluster
    from root.cli import main

    config = tmp_path / "c.toml"
    config.write_text(HOSTS)
    monkeypatch.setattr(cluster.hostnet, "unavailable", lambda: "network namespaces and veth pairs need root")
    assert main(["run", str(config)]) == 2
    assert capsys.readouterr().out.strip() == ("run failed: a topology with [[host]] sections runs each host in a "
                                               "network namespace: network namespaces and veth pairs need root")
    assert list(runs.iterdir()) == []  # no run directory made


@pytest.mark.parametrize("extra, message", [
    (["--host", "z"], "--host z: the topology has no such [[host]]"),
    (["--incoming", "alpha"], "--restore and --incoming are not for a topology with [[host]] sections"),
])
def test_run_options_that_do_not_fit_hosts_are_refused(extra, message, runs, tmp_path, capsys):
    from root.cli import main

    config = tmp_path / "c.toml"
    config.write_text(HOSTS)
    assert main(["run", str(config), *extra]) == 2
    assert message in capsys.readouterr().err
