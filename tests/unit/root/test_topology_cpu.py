"""The topology's real-CPU keys: cpu = "python" | "unicorn" | "kvm" (also `backend` beside
the CPU controls), firmware and kernel, refused plainly where they cannot run."""

from __future__ import annotations

import pytest

from proto.errors import ConfigError
from partitions.cpu import unavailable
from root.topology import load_topology

BASE = """
[run]
name = "t"
[[partition]]
name = "p"
"""


def parse(extra: str):
    return load_topology(BASE + extra, "t.toml").partitions[0]


def test_python_is_the_default_and_cpu_controls_still_parse():
    p = parse('cpu = { limit = 50, weight = 200 }\n')
    assert (p.backend, p.firmware, p.kernel, p.cpu) == ("python", None, None, {"limit": 50, "weight": 200})


@pytest.mark.skipif(bool(unavailable("unicorn")), reason=str(unavailable("unicorn")))
def test_a_real_cpu_with_a_kernel_of_ours_by_name():
    p = parse('cpu = "unicorn"\nkernel = "hvtest32"\n')
    assert (p.backend, p.kernel, p.cpu) == ("unicorn", "hvtest32", {})
    p = parse('cpu = { backend = "unicorn", limit = 50 }\nkernel = "hvtest32"\n')
    assert (p.backend, p.cpu) == ("unicorn", {"limit": 50})


@pytest.mark.parametrize("extra, key, says", [
    ('cpu = "quantum"\n', "cpu", "a backend is one of python, unicorn, kvm"),
    ('kernel = "hvtest32"\n', "kernel", "needs a real CPU"),
    ('firmware = "seabios"\n', "firmware", "needs a real CPU"),
    ('cpu = "unicorn"\n', "cpu", "give firmware = \"seabios\" or kernel = PATH"),
    ('cpu = "unicorn"\nkernel = "no-such-kernel.bin"\n', "kernel", "no such file"),
    ('cpu = "unicorn"\nkernel = "hvtest32"\nvps = 2\n', "vps", "runs one VP"),
    ('cpu = "unicorn"\nfirmware = "ovmf"\n', "firmware", "unknown 'ovmf'"),
])
def test_a_bad_real_cpu_setting_names_its_key(extra, key, says):
    if "unicorn" in extra and unavailable("unicorn"):
        pytest.skip(unavailable("unicorn"))
    with pytest.raises(ConfigError) as e:
        parse(extra)
    assert key in str(e.value) and says in str(e.value)


def test_a_firmware_partition_may_have_application_processors():
    from partitions.cpu.boot import seabios_missing
    if unavailable("unicorn") or seabios_missing():
        pytest.skip(unavailable("unicorn") or seabios_missing())
    p = parse('cpu = "unicorn"\nfirmware = "seabios"\nvps = 2\n')
    assert (p.backend, p.firmware, p.vps) == ("unicorn", "seabios", 2)
