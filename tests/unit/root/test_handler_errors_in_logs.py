"""A run's teardown finds the guards' lines (a handler raised in the hypervisor or a worker)."""

from __future__ import annotations

from root.testrun import HANDLER_ERROR, handler_errors_in_logs


def test_handler_errors_are_found_in_every_process_log(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "hypervisor.log").write_text("INFO hello from vp:1:0\n"
                                         f"ERROR {HANDLER_ERROR} status_request from root:1: KeyError: 'x'\n")
    (logs / "worker-alpha.log").write_text(f"ERROR {HANDLER_ERROR} port_notify from the hypervisor: ...\n")
    (logs / "partition-alpha.log").write_text("all well\n")
    found = handler_errors_in_logs(tmp_path)
    assert len(found) == 2 and found[0].startswith("hypervisor.log: ") and "worker-alpha.log" in found[1]
    assert handler_errors_in_logs(tmp_path / "nowhere") == []


def test_the_guards_log_what_the_teardown_looks_for():
    import inspect

    import hypervisor.service
    import worker.service

    for module in (hypervisor.service, worker.service):
        assert f'"{HANDLER_ERROR} ' in inspect.getsource(module), module.__name__
