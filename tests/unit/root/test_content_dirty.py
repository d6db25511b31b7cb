"""root/content_dirty.py: a real-CPU guest's dirty pages found by comparing its RAM with the
copy that was sent — every change found, whoever wrote it, and the pages sent from the copy."""

from __future__ import annotations

import mmap

from root.content_dirty import CHUNK, ShadowDirtyLog

PAGE = 4096


def test_finds_every_changed_page_and_only_mapped_ones():
    ram = mmap.mmap(-1, 300 * PAGE)
    mapped = bytearray(300)
    mapped[10:200] = b"\x01" * 190  # pages 10..199
    log = ShadowDirtyLog(ram, mapped)
    assert log.harvest() == list(range(10, 200))  # the first: every mapped page
    assert log.harvest() == []
    for p in (10, 10 + CHUNK - 1, 10 + CHUNK, 199, 250):  # chunk edges; 250 is not mapped
        ram[p * PAGE + PAGE - 1] = 7
    assert log.harvest() == [10, 10 + CHUNK - 1, 10 + CHUNK, 199]
    # What is sent is the copy: a later write is found even when it puts back what the
    # RAM held before the last harvest.
    assert log.pages[199 * PAGE + PAGE - 1] == 7
    ram[199 * PAGE + PAGE - 1] = 0
    assert log.harvest() == [199] and log.pages[199 * PAGE + PAGE - 1] == 0
    # A write that puts back the copy's own contents is no change: the destination has them.
    ram[11 * PAGE] = 1
    ram[11 * PAGE] = 0
    assert log.harvest() == []
    log.close()
    ram.close()
