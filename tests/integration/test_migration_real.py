"""Live migration of a real-CPU guest (issue 13): a unicorn VP writes its RAM past the dirty
log, so its pages are found by comparing the RAM with the copy that was sent
(root/content_dirty.py) and its registers go with the record.  The guest stamps 256 pages
pass after pass, each page checked to hold the last pass's stamp before it is written; a
page whose write the migration lost prints X.  At the destination it goes on from its
registers: more passes, no X."""

from __future__ import annotations

import pytest

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
cpu = "unicorn"
kernel = "stamps.bin"
memory_mb = 4
enlightenments = ["hypercall", "vp_index", "reference_counter", "apic"]
"""


def test_a_unicorn_guest_migrates_and_no_page_write_is_lost(tmp_path):
    pytest.importorskip("unicorn", reason="the unicorn backend needs the unicorn package")
    (tmp_path / "stamps.bin").write_bytes(STAMPS)
    config = tmp_path / "stamps.toml"
    config.write_text(TOPOLOGY)
    src = start_run(str(config), short_run_root())
    dst = start_run(str(config), short_run_root(), extra=("--incoming", "real"))
    try:
        wait_until(lambda: src.console("real").count(".") >= 3, 60, interval=0.1, what="three rounds of passes")
        inc = wait_until(lambda: dst.manifest().get("incoming"), 10, what="the destination's endpoint")
        r = src.launch("migrate", src.name, "real", "--to", inc["endpoint"], "--key", inc["server_key"], timeout=90)
        assert r.returncode == 0, r.stdout + r.stderr
        print(r.stdout)
        assert "X" not in src.console("real")
        # It goes on there from its registers: its stamp counter (EBX) and the pages agree.
        wait_until(lambda: dst.console("real").count(".") >= 3 or "X" in dst.console("real"), 60, interval=0.1,
                   what="three rounds of passes at the destination")
        assert "X" not in dst.console("real"), f"a page lost a write: {dst.console('real')!r}"
        wait_until(lambda: src.manifest().get("state") == "ended", 20, what="the source run to end")
    finally:
        pids = src.pids() + dst.pids()
        src.stop()
        dst.stop()
        assert wait_until(lambda: not alive(pids), 15, what="every process of both runs to exit") is True
