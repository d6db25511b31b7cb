"""The generation-1 chipset through the real processes: ticks, disk, RTC, screen, keyboard."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from root.client import RootClient

from tests.support import alive, short_run_root, start_run, wait_until

pytestmark = pytest.mark.integration

TOPOLOGY = """\
[run]
name = "chipset"
duration_s = 0

[[partition]]
name = "alpha"
vps = 1
memory_mb = 4
enlightenments = ["hypercall", "vp_index", "reference_counter"]
disk = {{ image = "alpha.img", size_mb = 4 }}
workloads = {workloads}
"""


def start(tmp_path: Path, workloads: list[str]):
    cfg = tmp_path / "chipset.toml"
    cfg.write_text(TOPOLOGY.format(workloads=repr(workloads).replace("'", '"')))
    return start_run(str(cfg), short_run_root())


@pytest.fixture
def quiet(tmp_path):
    """The chipset with a guest that only takes its timer ticks."""
    run = start(tmp_path, ["timer"])
    try:
        wait_until(lambda: "tick 100.00 Hz" in run.console("alpha"), 30, what="boot")
        yield run
    finally:
        pids = run.pids()
        run.stop()
        wait_until(lambda: not alive(pids), 10, what="every process gone")


def root(run) -> RootClient:
    return RootClient(run.manifest()["endpoint"], run.secret())


def guest(run) -> dict:
    with root(run) as c:
        return c.status()["partitions"][0]


@pytest.mark.timing
def test_the_guest_tick_rate_is_within_5_percent_of_the_programmed_rate(quiet):
    def ticks():
        return guest(quiet)["guest"].get("ticks", 0)

    wait_until(lambda: ticks() > 50, 20, what="ticks")
    t0, n0 = time.monotonic(), ticks()
    time.sleep(4)
    t1, n1 = time.monotonic(), ticks()
    rate = (n1 - n0) / (t1 - t0)
    programmed = 1193182 / 11932
    # The guest's counters reach the hypervisor every 0.25 s: allow for that in the window.
    slack = 0.5 / (t1 - t0) * programmed
    assert abs(rate - programmed) <= 0.05 * programmed + slack, f"{rate:.2f} Hz against {programmed:.2f} Hz"


def test_ticks_wake_the_halted_vp_and_cost_one_exit_each_in_the_handler(quiet):
    # Tick interrupts taken, not ticks: the guest counts ticks from the clock, and on a loaded
    # host the platform drops a tick that falls while the last is in service (tick_gate.py).
    wait_until(lambda: guest(quiet)["guest"].get("tick_interrupts", 0) > 100, 30, what="tick interrupts")
    # The idle VP sleeps in HLT between ticks (on a loaded host ticks can queue up behind a
    # slow VP, so give it time rather than sample once).
    wait_until(lambda: guest(quiet)["vps"][0]["exits"]["halt"] > 50, 30, what="HLTs between ticks")
    p = guest(quiet)
    vp = p["vps"][0]
    assert vp["interrupts"]["by_vector"].get("0x20", 0) > 100
    # The tick handler's only exit is the PIC EOI (outb 0x20).
    assert p["guest"]["vector_0x20_exits"] == p["guest"]["vector_0x20"]


def test_io_reads_the_rtc(quiet):
    r = quiet.launch("io", quiet.name, "alpha", "outb", "0x70", "0x0b", "inb", "0x71",
                     "outb", "0x70", "0x09", "inb", "0x71", "outb", "0x70", "0x32", "inb", "0x71")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    reg_b, year, century = (int(lines[i].split()[1], 16) for i in (1, 3, 5))
    bcd = not reg_b & 0x04
    dec = (lambda v: (v >> 4) * 10 + (v & 0xF)) if bcd else (lambda v: v)
    assert dec(century) * 100 + dec(year) == time.gmtime().tm_year


def test_io_reads_a_full_identify_device(quiet):
    ops = "outb 0x1f6 0xe0\noutb 0x1f7 0xec\ninb 0x1f7\n" + "inw 0x1f0\n" * 256 + "inb 0x1f7\n"
    r = quiet.launch("io", quiet.name, "alpha", stdin=ops)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert int(lines[2].split()[1], 16) & 0x08, "DRQ after IDENTIFY"
    words = [int(line.split()[1], 16) for line in lines[3:259]]
    model = "".join(chr(w >> 8) + chr(w & 0xFF) for w in words[27:47]).strip()
    assert model == "hvstack ATA disk"
    sectors = words[60] | words[61] << 16
    assert sectors == 4 * 2048 == words[100] | words[101] << 16
    assert sum(w & 0xFF for w in words) + sum(w >> 8 for w in words) & 0xFF == 0  # integrity word
    assert not int(lines[259].split()[1], 16) & 0x08, "DRQ clear after the last word"


def test_mmio_reaches_the_vga_buffer_and_screen_shows_it(quiet):
    row5 = 0xB8000 + 5 * 160
    r = quiet.launch("io", quiet.name, "alpha", "writew", hex(row5), "0x1f48", "writew", hex(row5 + 2), "0x1f69",
                     "readw", hex(row5), "readq", "0xfed00000", "readl", "0xfee00030")
    assert r.returncode == 0, r.stderr
    # Nothing answers at 0xFED00000 (no HPET): an unmapped GPA faults the guest.  The local
    # APIC's version register answers.
    assert r.stdout.splitlines()[2:] == ["OK 0x1f48", "FAULT #GP", "OK 0x50014"]
    r = quiet.launch("screen", quiet.name, "alpha")
    assert r.returncode == 0, r.stderr
    assert "│Hi " in r.stdout and "hvstack guest kernel" in r.stdout
    assert guest(quiet)["unmapped_gpa"] == 1


def test_keys_typed_from_outside_reach_the_guest(quiet):
    r = quiet.launch("keys", quiet.name, "alpha", "hello", "world", "--enter")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: "keyboard: hello world" in quiet.console("alpha"), 20, what="the typed line on the console")
    assert "typed: hello world" in quiet.launch("screen", quiet.name, "alpha").stdout


def test_the_i8042_reset_command_resets_the_partition(quiet):
    r = quiet.launch("io", quiet.name, "alpha", "outb", "0x64", "0xfe")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: quiet.console("alpha").count("hvstack guest kernel") == 2, 30,
               what="a second boot after the reset")
    assert guest(quiet)["resets"] == 1
    assert quiet.proc.poll() is None


def test_a_flushed_write_survives_sigkill_of_the_worker(tmp_path):
    run = start(tmp_path, ["disk"])
    pids = run.pids()
    try:
        wait_until(lambda: "verified" in run.console("alpha"), 60, what="a verified disk round")
        os.kill(run.manifest()["processes"]["worker:alpha"]["pid"], signal.SIGKILL)
        run.proc.wait(30)
    finally:
        run.stop()
        wait_until(lambda: not alive(pids), 10, what="every process gone")
    image = (tmp_path / "alpha.img").read_bytes()
    assert len(image) == 4 << 20
    m = re.search(rb"alpha round 000000 sector 000000 \.+", image)
    assert m and m.start() == 0
    assert b"alpha round 000000 sector 000007" in image[7 * 512:8 * 512]
