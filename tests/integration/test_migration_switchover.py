"""A migration's set-up off its critical path (issue 13, "the total within 2× of sending
the memory once"): the source measures the link before its begin (a probe without a
session is answered), the destination answers the begin at once and starts the
partition's processes beside the pre-copy, and says it can take the switch-over
(``migrate_switchover``) only once they are ready — so their start-up is in neither the
total nor the downtime."""

from __future__ import annotations

import pytest

from proto import messages as m, migration_messages as mm
from proto.errors import Refused
from proto.transport import Dealer
from tests.integration.test_migration import _begin, ended, incoming
from tests.support import REPO, short_run_root, start_run

CONFIG = str(REPO / "tests" / "configs" / "migrate.toml")
pytestmark = pytest.mark.timeout(60)


def test_a_probe_needs_no_begin_and_a_switchover_is_answered_once_the_processes_are_ready():
    dst = start_run(CONFIG, short_run_root(), extra=("--incoming", "alpha"))
    try:
        inc = incoming(dst)
        client = Dealer(inc["endpoint"], inc["server_key"])
        try:
            for _ in range(3):  # the link measured before any begin: only counted
                assert isinstance(client.request(mm.MigrateProbe(b"x" * 65536), 10_000), m.Ack)
            with pytest.raises(Refused, match="without a migrate_begin"):
                client.request(mm.MigrateSwitchover(), 10_000)
        finally:
            client.close()
        client, _ = _begin(dst)
        try:
            assert isinstance(client.request(mm.MigrateSwitchover(), 30_000), m.Ack)
            assert isinstance(client.request(mm.MigrateSwitchover(), 5_000), m.Ack)  # (ready already)
        finally:
            client.close()
        assert dst.manifest()["incoming"]["receiving"] == "alpha"
    finally:
        ended(dst)
