"""benchmarks/real_guest.py's in-process limit: the port-I/O loop on unicorn with every exit
answered in the VP's thread is timed, exit by exit (the through-the-stack figures need runs:
`python -m benchmarks.real_guest`)."""

from __future__ import annotations

import pytest

from partitions.cpu import unavailable

pytestmark = pytest.mark.skipif(bool(unavailable("unicorn")), reason=str(unavailable("unicorn")))


def test_the_in_process_loop_times_each_exit():
    from benchmarks.real_guest import in_process

    got = in_process("unicorn", 600)
    assert got["samples"] == 500  # the first 100 (translation) are left out
    assert 0 < got["p50_us"] <= got["p99_us"]
