"""Live migration, and save and restore, of a real-CPU guest (issue 13): a unicorn or KVM VP
writes its RAM past the dirty log, so its pages are found by comparing the RAM with the
copy that was sent (root/content_dirty.py) and its registers go with the record (KVM's:
kvm_regs, kvm_sregs and kvm_vcpu_events, taken at a quantum end or HLT after a KVM_RUN with
immediate_exit has completed what the last exit left).  The guest stamps 256 pages
pass after pass, each page checked to hold the last pass's stamp before it is written; a
page whose write the migration lost prints X.  At the destination it goes on from its
registers: more passes, no X."""

from __future__ import annotations

import pytest

from partitions.cpu import unavailable
from tests.support import alive, short_run_root, start_run, wait_until

pytestmark = pytest.mark.timeout(150)

# 32-bit protected mode at 1 MiB (partitions/cpu/boot.py), assembled from:
#         cli
#         movl $1, %ebx                 /* this pass's stamp */
# pass:   movl $0x200000, %edi          /* 256 pages from 2 MiB */
#         movl $256, %ecx
# page:   leal -1(%ebx), %edx
#         cmpl %edx, (%edi)             /* the page holds the last pass's stamp */
#         jne  bad
#         movl %ebx, (%edi)
#         addl $4096, %edi
#         loop page
#         incl %ebx
#         testl $0x3F, %ebx             /* every 64 passes: '.' on COM1 */
#         jnz  pass
#         movw $0x3F8, %dx; movb $0x2E, %al; outb %al, %dx
#         jmp  pass
# bad:    movw $0x3F8, %dx; movb $0x58, %al; outb %al, %dx    /* 'X' */
# 1:      hlt; jmp 1b
STAMPS = bytes.fromhex("fabb01000000bf00002000b9000100008d53ff3917751c891f81c700100000e2ef43f7c33f00000075dc"
                       "66baf803b02eeeebd366baf803b058eef4ebfd")
TOPOLOGY = """
[run]
name = "stamps"
duration_s = 0
logical_processors = 1

[[partition]]
name = "real"
cpu = "{cpu}"
kernel = "stamps.bin"
memory_mb = 4
enlightenments = ["hypercall", "vp_index", "reference_counter", "apic"]
"""


def topology(tmp_path, cpu: str) -> str:
    why = unavailable(cpu)
    if why:
        pytest.skip(f"cpu = {cpu!r}: {why}")
    (tmp_path / "stamps.bin").write_bytes(STAMPS)
    config = tmp_path / "stamps.toml"
    config.write_text(TOPOLOGY.format(cpu=cpu))
    return str(config)


def stopped(*runs) -> None:
    pids = [p for r in runs for p in r.pids()]
    for r in runs:
        r.stop()
    assert wait_until(lambda: not alive(pids), 15, what="every process of the runs to exit") is True


def went_on(run, what: str) -> None:
    """Three more rounds of passes, and no page that lost its stamp."""
    wait_until(lambda: run.console("real").count(".") >= 3 or "X" in run.console("real"), 60, interval=0.1,
               what=what)
    assert "X" not in run.console("real"), f"a page lost a write: {run.console('real')!r}"


@pytest.mark.parametrize("cpu", ["unicorn", "kvm"])
def test_a_real_cpu_guest_migrates_and_no_page_write_is_lost(tmp_path, cpu):
    config = topology(tmp_path, cpu)
    src = start_run(config, short_run_root())
    dst = start_run(config, short_run_root(), extra=("--incoming", "real"))
    try:
        wait_until(lambda: src.console("real").count(".") >= 3, 60, interval=0.1, what="three rounds of passes")
        inc = wait_until(lambda: dst.manifest().get("incoming"), 10, what="the destination's endpoint")
        r = src.launch("migrate", src.name, "real", "--to", inc["endpoint"], f"--key={inc['server_key']}", timeout=90)
        assert r.returncode == 0, r.stdout + r.stderr
        print(r.stdout)
        assert "X" not in src.console("real")
        # It goes on there from its registers: its stamp counter (EBX) and the pages agree.
        went_on(dst, "three rounds of passes at the destination")
        wait_until(lambda: src.manifest().get("state") == "ended", 20, what="the source run to end")
    finally:
        stopped(src, dst)


def test_a_kvm_guest_saved_goes_on_from_its_registers(tmp_path):
    """ctl save of a KVM guest (its registers were not saved before: refused), restored into
    a new run: its stamp counter and its pages agree there (a VP started over would find
    the pages' stamps ahead of its own and print X at once)."""
    config, path = topology(tmp_path, "kvm"), tmp_path / "real.hvs"
    run = start_run(config, short_run_root())
    try:
        wait_until(lambda: run.console("real").count(".") >= 3, 60, interval=0.1, what="three rounds of passes")
        r = run.launch("ctl", run.name, "save", "real", str(path), timeout=60)
        assert r.returncode == 0 and "its CPU registers saved" in r.stdout, r.stdout + r.stderr
    finally:
        stopped(run)
    run = start_run(config, short_run_root(), extra=("--restore", f"real={path}"))
    try:
        went_on(run, "three rounds of passes after the restore")
    finally:
        stopped(run)
