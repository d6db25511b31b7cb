"""Fixtures of the integration tests."""

from __future__ import annotations

import pytest

from tests.support import alive, short_run_root, start_run, wait_until

ONE = "tests/configs/one.toml"  # one partition, "alpha", one VP, the generation-1 chipset


@pytest.fixture
def live():
    """tests/configs/one.toml running until the test ends; then every process must be gone."""
    run = start_run(ONE, short_run_root())
    try:
        yield run
    finally:
        pids = run.pids()
        run.stop()
        assert wait_until(lambda: not alive(pids), 10, what="every process of the run to exit") is True
