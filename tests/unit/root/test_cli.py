"""Every command of launch.py driven in-process through root.cli.main: help, usage errors,
runs that are missing, ended or not what the command needs, each with its message and exit
status — as click's CliRunner tests a CLI.  No hypervisor is started here (see
test_run_in_process.py for a real run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from root.cli import commands, main
from root.commands.common import PROG
from root.rundir import launcher_identity

COMMANDS = commands()
NAMES = [c.NAME for c in COMMANDS]
# Arguments that name a run (and what else the command requires), per command.
RUN_ARGS = {
    "status": [], "stop": ["--timeout", "0.5"], "io": ["alpha", "inb", "0x3f8"], "screen": ["alpha"],
    "keys": ["alpha", "hi"], "trace": ["--duration", "1"], "console": ["alpha"], "top": ["--once"],
    "stats": [],
}


def ctl_args(run: str) -> list[str]:
    return ["ctl", run, "pause", "alpha"]


def args_for(command: str, run: str) -> list[str]:
    return ctl_args(run) if command == "ctl" else [command, run, *RUN_ARGS[command]]


ATTACHING = [*RUN_ARGS, "ctl"]


# -- the commands and their help ------------------------------------------------------------


def test_the_commands_are_the_fifteen_of_launch_py_in_help_order():
    assert NAMES == ["run", "ls", "status", "stop", "io", "screen", "keys", "trace", "console", "ctl", "bench",
                     "top", "stats", "fuzz", "migrate"]
    for c in COMMANDS:
        assert c.HELP and callable(c.arguments) and callable(c.run), c.__name__


def test_help_lists_every_command_with_its_help(capsys):
    assert main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps long help lines
    assert out.startswith("usage: launch.py [-h]")
    assert "{" + ",".join(NAMES) + "}" in out
    assert "hvstack's launcher: the root partition's management service, and the attach commands." in out
    for c in COMMANDS:
        assert f"{c.NAME} {c.HELP}" in out, c.NAME


def test_a_command_of_roots_own_is_parsed_without_looking_for_the_plugins():
    """(Start-up: `run` does not pay for importlib.metadata and the plugins' modules.)"""
    from root.cli import build_parser

    def subcommands(ap):
        return set(next(a for a in ap._actions if a.dest == "cmd").choices)

    assert "bench" not in subcommands(build_parser("run")) and "run" in subcommands(build_parser("run"))
    assert {"bench", "fuzz", "run"} <= subcommands(build_parser("bench")) == subcommands(build_parser())


@pytest.mark.parametrize("command", NAMES)
def test_each_command_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: launch.py {command} [-h]")
    assert "show this help message and exit" in out


@pytest.mark.parametrize("argv, message", [
    (["bogus"], "argument cmd: invalid choice: 'bogus'"),
    (["status"], "the following arguments are required: run"),
    (["stop", "r", "--timeout", "soon"], "argument --timeout: invalid float value: 'soon'"),
    (["io", "r"], "the following arguments are required: partition"),
    (["screen", "r"], "the following arguments are required: partition"),
    (["keys", "r", "alpha"], "the following arguments are required: text"),
    (["trace", "r", "--reason", "bogus"], "argument --reason: invalid choice: 'bogus'"),
    (["trace", "r", "--csv", "--json"], "argument --json: not allowed with argument --csv"),
    (["console", "r", "alpha", "--linger", "x"], "argument --linger: invalid float value: 'x'"),
    (["ctl", "r", "frob", "alpha"], "argument action: invalid choice: 'frob'"),
    (["top", "r", "--sort", "bogus"], "argument --sort: invalid choice: 'bogus'"),
    (["stats"], "the following arguments are required: run"),
    (["run", "--duration", "x"], "argument --duration: invalid float value: 'x'"),
    (["--duration", "x"], "argument --duration: invalid float value: 'x'"),  # no command: run
    (["bench", "--samples", "many"], "argument --samples: invalid int value: 'many'"),
    (["ls", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_a_usage_error_is_status_2_with_the_usage(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: launch.py") and message in err, err


# -- ls -------------------------------------------------------------------------------------


def test_ls_of_an_empty_runs_directory(runs, capsys):
    assert main(["ls"]) == 0
    assert capsys.readouterr().out == f"no live runs in {runs}\n"
    assert main(["ls", "--all"]) == 0
    assert capsys.readouterr().out == f"no runs in {runs}\n"


def test_ls_of_a_runs_directory_that_does_not_exist(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HVSTACK_RUN_DIR", str(tmp_path / "nowhere"))
    assert main(["ls", "--all"]) == 0
    assert capsys.readouterr().out == f"no runs in {tmp_path / 'nowhere'}\n"
    assert not (tmp_path / "nowhere").exists()


def test_ls_shows_live_runs_and_with_all_the_ended_ones(fake_run, capsys):
    import os

    old = fake_run("old-1", state="ended", reason="guests finished their workloads", launcher_pid=1)
    os.utime(old, (0, 0))  # ls lists the oldest first
    fake_run("live-1", partitions=("alpha", "beta"))
    assert main(["ls"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["run", "state", "launcher", "partitions"]
    assert out[2].split() == ["live-1", "running", str(os.getpid()), "alpha,", "beta"] and len(out) == 3
    assert main(["ls", "--all"]) == 0
    rows = [line.split("  ") for line in capsys.readouterr().out.splitlines()[2:]]
    assert [[c.strip() for c in row if c.strip()] for row in rows] == [
        ["old-1", "guests finished their workloads", "1", "alpha"],
        ["live-1", "running", str(os.getpid()), "alpha, beta"]]


# -- a run that is not there, or not running ------------------------------------------------


@pytest.mark.parametrize("command", ATTACHING)
def test_a_missing_run_is_an_error_naming_it(command, runs, capsys):
    assert main(args_for(command, "nosuch")) == 1
    assert capsys.readouterr().err == f"launch.py {command}: no run 'nosuch' in {runs} (see `python launch.py ls`)\n"


@pytest.mark.parametrize("command", [c for c in ATTACHING if c != "stop"])
def test_an_ended_run_is_an_error_saying_how_it_ended(command, fake_run, capsys):
    fake_run("old-1", state="ended", reason="guests finished their workloads", launcher_pid=1)
    assert main(args_for(command, "old")) == 1
    err = capsys.readouterr().err
    assert err == f"launch.py {command}: run old-1 is not running (guests finished their workloads)\n"


def test_stop_of_an_ended_run_says_so(fake_run, capsys):
    fake_run("old-1", state="ended", reason="SIGINT", launcher_pid=1)
    assert main(["stop", "old-1"]) == 1
    assert capsys.readouterr().out == "run old-1 is not running (SIGINT)\n"


def test_a_run_whose_launcher_is_gone_is_not_running(fake_run, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    fake_run("gone-1", launcher_pid=dead.pid)
    assert main(["status", "gone-1"]) == 1
    assert capsys.readouterr().err == ("launch.py status: run gone-1 is not running (its launcher died without "
                                       "ending the run; `launch.py ls --prune` cleans it up)\n")


def test_a_prefix_that_matches_several_runs_names_them(fake_run, capsys):
    fake_run("twin-1", state="ended", launcher_pid=1)
    fake_run("twin-2", state="ended", launcher_pid=1)
    assert main(["stats", "twin"]) == 1
    assert capsys.readouterr().err == "launch.py stats: 'twin' matches 2 runs: twin-1, twin-2\n"


def test_a_run_is_found_by_its_path_too(fake_run, capsys):
    path = fake_run("old-1", state="ended", reason="done", launcher_pid=1)
    assert main(["top", str(path)]) == 1
    assert capsys.readouterr().err == "launch.py top: run old-1 is not running (done)\n"


# -- a live run: what each command checks before it talks to the hypervisor -----------------


@pytest.mark.parametrize("argv", [
    ["screen", "live-1", "nope"], ["keys", "live-1", "nope", "hi"], ["console", "live-1", "nope"],
    ["ctl", "live-1", "reset", "nope"], ["trace", "live-1", "--partition", "nope"],
])
def test_an_unknown_partition_is_an_error_naming_the_ones_there_are(argv, fake_run, capsys):
    fake_run("live-1", partitions=("alpha", "beta"))
    assert main(argv) == 1
    assert capsys.readouterr().err == f"launch.py {argv[0]}: run live-1 has no partition 'nope' (it has alpha, beta)\n"


@pytest.mark.parametrize("ops, status, message", [
    (["inb", "0x3f8"], 2, "run live-1 has no partition 'nope' (it has alpha)"),
    (["bogus", "1"], 2, "unknown operation 'bogus' (known: "),
    (["outb", "0x3f8"], 2, "outb takes 2 operand(s), got 1"),
    (["cpuid"], 2, "cpuid takes 1–2 operand(s), got 0"),
    (["--vp", "x", "inb", "1"], 2, "--vp 'x' is not a number"),
])
def test_io_checks_its_operations_before_it_connects(ops, status, message, fake_run, capsys):
    fake_run("live-1")
    partition = "nope" if "no partition" in message else "alpha"
    assert main(["io", "live-1", partition, *ops]) == status
    err = capsys.readouterr().err
    assert err.startswith(f"launch.py io: {message}"), err


def test_trace_needs_a_positive_duration(fake_run, capsys):
    fake_run("live-1")
    assert main(["trace", "live-1", "--duration", "0"]) == 2
    assert capsys.readouterr().err == "launch.py trace: --duration must be > 0\n"


def test_top_needs_a_positive_interval(fake_run, capsys):
    fake_run("live-1")
    assert main(["top", "live-1", "--interval", "0"]) == 2
    assert capsys.readouterr().err == "launch.py top: --interval must be > 0\n"


def test_ctl_and_console_refuse_a_stopped_partition(fake_run, capsys):
    fake_run("live-1", partitions=("alpha", "beta"), stopped=("alpha",))
    assert main(["ctl", "live-1", "resume", "alpha"]) == 1
    assert capsys.readouterr().err == "launch.py ctl: partition alpha of run live-1 is stopped\n"
    assert main(["console", "live-1", "alpha", "--no-input"]) == 1
    assert capsys.readouterr().err == "launch.py console: partition alpha of run live-1 was stopped\n"


# -- stop, against a launcher that is a stand-in ---------------------------------------------

FAKE_LAUNCHER = textwrap.dedent("""
    import json, pathlib, signal, sys, time

    run, mode = pathlib.Path(sys.argv[1]), sys.argv[2]

    def on_term(signum, frame):
        if mode == "ignore":
            return
        man = json.loads((run / "manifest.json").read_text())
        who = (run / "stop-requested").read_text().strip()
        man.update(state="ended", ended={"reason": "SIGTERM from " + who, "exit_code": 0})
        # As the real launcher does: a reader never sees half a manifest.
        (run / "manifest.tmp").write_text(json.dumps(man))
        (run / "manifest.tmp").replace(run / "manifest.json")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    while True:
        time.sleep(0.05)
""")


@pytest.fixture
def launcher(fake_run):
    """``launcher(mode)``: a live fake run whose launcher is a process that ends the run on
    SIGTERM (mode 'end') or ignores it ('ignore'); killed after the test."""
    procs = []

    def start(mode: str):
        path = fake_run("live-1", launcher_pid=0)
        proc = subprocess.Popen([sys.executable, "-c", FAKE_LAUNCHER, str(path), mode], stdout=subprocess.PIPE,
                                text=True)
        procs.append(proc)
        assert proc.stdout.readline() == "ready\n"
        man = json.loads((path / "manifest.json").read_text())
        (path / "manifest.json").write_text(json.dumps({**man, "launcher_pid": proc.pid,
                                                        "launcher": launcher_identity(proc.pid)}))
        return path, proc

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_stop_asks_the_launcher_to_end_the_run_and_waits_for_it(launcher, capsys):
    import os

    path, proc = launcher("end")
    assert main(["stop", "live-1"]) == 0
    assert capsys.readouterr().out == f"run live-1 ended: SIGTERM from {PROG} stop (pid {os.getpid()})\n"
    assert proc.wait(5) == 0


def test_stop_gives_up_after_its_timeout(launcher, capsys):
    launcher("ignore")
    assert main(["stop", "live-1", "--timeout", "0.3"]) == 1
    assert capsys.readouterr().err == "run live-1 did not end within 0.3 s\n"


# -- run and bench ---------------------------------------------------------------------------


def test_run_of_a_bad_topology_names_file_line_and_key_and_is_status_2(runs, tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[run]\n[[partition]]\nname = 'a'\nvps = 0\n")
    assert main(["run", str(cfg)]) == 2
    assert capsys.readouterr().err == f"launch.py: {cfg}:4: [[partition]] #1 vps: 0 is outside 1..128\n"
    assert not any(runs.iterdir()), "no run directory for a topology that cannot run"


def test_run_of_a_missing_topology_is_status_2(runs, capsys):
    assert main(["run", "configs/nope.toml"]) == 2
    assert capsys.readouterr().err == "launch.py: configs/nope.toml: cannot read: No such file or directory\n"


def test_bench_hands_its_arguments_to_the_benchmarks_package(monkeypatch):
    import benchmarks.bench

    seen = []
    monkeypatch.setattr(benchmarks.bench, "run_bench", lambda args: seen.append(args) or 7)
    assert main(["bench", "--json", "--rounds", "1", "--no-experiments"]) == 7
    (args,) = seen
    assert (args.json, args.rounds, args.experiments, args.duration, args.samples, args.plot) == \
        (True, 1, False, 6.0, 6000, None)


def test_bench_plot_without_matplotlib_fails_before_measuring(monkeypatch, tmp_path, capsys):
    import benchmarks.bench

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    monkeypatch.setattr(benchmarks.bench, "run_bench", lambda args: pytest.fail("the bench ran"))
    assert main(["bench", "--plot", str(tmp_path / "x.png")]) == 2
    assert "pip install -e '.[plot]'" in capsys.readouterr().err


def test_root_imports_benchmarks_only_when_bench_runs():
    code = ("import sys, root.cli; "
            "assert not [m for m in sys.modules if m.startswith(('benchmarks', 'launch'))], sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("bad", [["--messages", "0"], ["--duration", "0"], ["--status-timeout", "-1"]])
def test_fuzz_refuses_bounds_that_are_not_positive(bad, capsys):
    assert main(["fuzz", "no-such-run", *bad]) == 2
    assert "must be positive" in capsys.readouterr().err


# -- commands that would do nothing say so (issue 9) ----------------------------------------


def test_io_on_a_stopped_partition_says_nothing_was_executed(fake_run, capsys):
    fake_run("live-1", partitions=("alpha", "beta"), stopped=("alpha",))
    assert main(["io", "live-1", "alpha", "inb", "0x3fd"]) == 1
    assert capsys.readouterr().err == "launch.py io: partition alpha of run live-1 was stopped: nothing executed\n"


def test_keys_into_a_partition_without_a_keyboard_types_nothing(fake_run, capsys):
    path = fake_run("live-1")
    man = json.loads((path / "manifest.json").read_text())
    man["config"]["partitions"][0]["chipset"] = "minimal"  # COM1 alone
    (path / "manifest.json").write_text(json.dumps(man))
    assert main(["keys", "live-1", "alpha", "hello"]) == 1
    assert capsys.readouterr().err == ("launch.py keys: partition alpha of run live-1 has no keyboard "
                                       "(no i8042 in its devices): nothing typed\n")


def test_keys_into_a_stopped_partition_types_nothing(fake_run, capsys):
    fake_run("live-1", partitions=("alpha", "beta"), stopped=("alpha",))
    assert main(["keys", "live-1", "alpha", "hello"]) == 1
    assert capsys.readouterr().err == "launch.py keys: partition alpha of run live-1 was stopped: nothing typed\n"


def test_a_reader_that_has_gone_ends_ls_quietly(fake_run, monkeypatch, capsys):
    """Issue 9: `ls --all | head` printed a BrokenPipeError.  Here stdout is a pipe whose
    reader has gone before anything is written."""
    for i in range(3):
        fake_run(f"old-{i}", state="ended", reason="done", launcher_pid=1)
    r, w = os.pipe()
    os.close(r)
    pipe = os.fdopen(w, "w")
    monkeypatch.setattr(sys, "stdout", pipe)
    assert main(["ls", "--all"]) == 1
    pipe.flush()  # what the interpreter does at exit: nothing left to fail
    pipe.close()
    assert capsys.readouterr().err == ""


def test_ctl_save_needs_a_file_and_no_other_action_takes_one(capsys):
    assert main(["ctl", "r", "save", "alpha"]) == 2
    assert "save takes a FILE" in capsys.readouterr().err
    assert main(["ctl", "r", "pause", "alpha", "x.hvs"]) == 2


def test_run_restore_is_refused_before_anything_starts(runs, tmp_path, capsys):
    bad = tmp_path / "bad.hvs"
    bad.write_bytes(b"not a record")
    assert main(["run", "--restore", f"alpha={bad}"]) == 2  # the default topology has no alpha
    assert "no partition 'alpha'" in capsys.readouterr().err
    assert main(["run", "--restore", f"enlightened={bad}"]) == 2
    assert "not one msgpack record" in capsys.readouterr().err
    assert main(["run", "--restore", "enlightened"]) == 2
    assert "expected PARTITION=FILE" in capsys.readouterr().err
    assert not list(runs.glob("*/manifest.json"))
