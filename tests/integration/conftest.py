"""Fixtures of the integration tests."""

from __future__ import annotations

import pytest

from root.testrun import handler_errors_in_logs
from tests.support import alive, short_run_root, start_run, wait_until

ONE = "tests/configs/one.toml"  # one partition, "alpha", one VP, the generation-1 chipset


@pytest.fixture
def live():
    """tests/configs/one.toml running until the test ends; then every process must be gone,
    and no handler may have raised in the hypervisor or the worker (a bug of ours that
    their guards survived).  A test that fuzzes the run sets ``run.fuzzed = True``."""
    run = start_run(ONE, short_run_root())
    try:
        yield run
    finally:
        pids = run.pids()
        run.stop()
        assert wait_until(lambda: not alive(pids), 10, what="every process of the run to exit") is True
        if not getattr(run, "fuzzed", False):
            assert not handler_errors_in_logs(run.path), "a handler raised in the hypervisor or a worker"
