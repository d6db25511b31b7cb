"""The order of a save's parts (root/partition_save.py ``capture``): the worker's devices
before the hypervisor's state.  The worker's devices run on through the pause until its save
freezes them; a PIT tick meanwhile is taken by its PIC (IR0 in service) and sent to the
hypervisor as an assert_interrupt, which arrives ahead of the worker's reply.  Saved in the
other order, a tick between the two saves was in neither record as a vector, while the
PIC's record held IR0 in service: restored, nothing ever ended it, and the PIC gave no
tick again (a KVM hvtest64 saved unpaused halted for good)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from root import partition_save


class Platform:
    """The partition's PIC (in the worker) and the hypervisor's pending vectors; a PIT tick
    comes after each request is answered, as one may at any time while the worker runs."""

    def __init__(self) -> None:
        self.ir0_in_service = False
        self.pending: list[int] = []
        self.frozen = False

    def tick(self) -> None:
        if not self.frozen and not self.ir0_in_service:
            self.ir0_in_service = True  # INTA: IR0 in service, vector 0x20 to the hypervisor
            self.pending.append(0x20)


def test_a_tick_taken_by_the_pic_during_the_save_is_pending_in_the_record(tmp_path, monkeypatch):
    platform = Platform()

    def worker_state(root, run_dir, name, pid):
        platform.frozen = True  # (device_save freezes the worker's devices)
        saved = {"pic": {"ir0_in_service": platform.ir0_in_service}}
        platform.tick()
        return saved

    def hypervisor_state(root, pid):
        saved = {"hypervisor": {}, "vps": [{"pending": list(platform.pending)}]}
        platform.tick()
        return saved

    monkeypatch.setattr(partition_save, "_worker_state", worker_state)
    monkeypatch.setattr(partition_save, "_hypervisor_state", hypervisor_state)
    monkeypatch.setattr(partition_save, "_memory", lambda *a, **k: ({}, None))
    monkeypatch.setattr(partition_save, "shape", lambda pc, devices: {})
    (tmp_path / "worker-alpha.json").write_text(json.dumps({"devices": []}))
    pc = SimpleNamespace(name="alpha", backend="kvm", vmbus=None)
    monkeypatch.setattr(partition_save, "_cpu_state", lambda root, pid, timeout_s: [b""])
    sections, _, took = partition_save.capture(tmp_path, None, pc, 1)
    in_service = sections["worker"]["pic"]["ir0_in_service"]
    assert not in_service or 0x20 in sections["vps"][0]["pending"], \
        "IR0 in service in the PIC's record, its vector nowhere: no VP will ever end it"
    assert set(took) == {"hypervisor", "vmbus", "worker", "memory_disk"} and min(took.values()) >= 0
