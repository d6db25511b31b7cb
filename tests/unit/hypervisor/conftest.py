"""Fixtures: a hypervisor driven in-process through a fake socket (see fake_stack.py)."""

from __future__ import annotations

import pytest

from proto import messages as m
from tests.unit.hypervisor.fake_stack import ROOT, Stack


@pytest.fixture
def stack(tmp_path) -> Stack:
    """A hypervisor with the root bound and no partitions."""
    s = Stack(tmp_path)
    assert isinstance(s.hello(ROOT, "root").one(ROOT), m.HelloReply)
    return s


@pytest.fixture
def two(stack) -> Stack:
    """Partition 1 (enlightened, 2 VPs) and partition 2 (no enlightenments, 1 VP), both running."""
    assert stack.partition() == 1
    assert stack.partition(vps=1, privileges=0, recommendations=0) == 2
    return stack
