"""The worker polls only the devices an access may have moved (PortBus.deadline_after), and
at a deadline only the devices that are due (PortBus.poll_due), not every clocked device:
held here against polling them all, on the gen-1 chipset plus a
second UART driven by random accesses, so an access that moves another device's deadline
(a PIC EOI and the PIT's ticks, the RTC's periodic interrupt behind the cascade, one UART's
interrupt and the other's timing) fails the test."""

from __future__ import annotations

import random
import time

import pytest

from worker.bus import PortBus
from worker.chipset import Chipset
from worker.devices.base import ChipsetDevice, DeviceStats, NullIrqLine, PortRange, SteppableClock
from worker.devices.config import CHIPSETS

COM2 = {"type": "uart16550", "name": "com2", "base": 0x2F8, "irq": 3}
START_NS = 10**12


class ManualClock(SteppableClock):
    """Device time that moves only when stepped."""

    def now_ns(self) -> int:
        return START_NS + self.offset_ns


# Boot-time programming, as the guest kernel's drivers do it, then the same ports at random.
SETUP = [(0x20, 0x11), (0xA0, 0x11), (0x21, 0x20), (0xA1, 0x28), (0x21, 4), (0xA1, 2), (0x21, 1), (0xA1, 1),
         (0x21, 0xE2), (0xA1, 0xFE),  # IRQ0, 2 (cascade), 3, 4 and 8 unmasked
         (0x43, 0x34), (0x40, 0x9C), (0x40, 0x04),  # PIT channel 0: mode 2, ~1 kHz
         (0x70, 0x0A), (0x71, 0x26), (0x70, 0x0B), (0x71, 0x42),  # RTC: 1024 Hz periodic interrupt
         (0x3FB, 0x03), (0x3FA, 0x07), (0x3FC, 0x0B), (0x3F9, 0x03),  # COM1: FIFO, OUT2, IER
         (0x2FB, 0x03), (0x2FA, 0x01), (0x2FC, 0x0B), (0x2F9, 0x02)]  # COM2: FIFO, OUT2, THRE
# Values worth writing to a port beside random ones: EOIs, RTC indices, PIT modes, bytes to send.
USEFUL = {0x20: [0x20, 0x0B, 0x0A], 0xA0: [0x20], 0x70: [0x0A, 0x0B, 0x0C], 0x71: [0x26, 0x42, 0x12, 0x00],
          0x43: [0x34, 0x36, 0x30, 0x00, 0xC2], 0x40: [0x10, 0x00, 0x04], 0x61: [0x01, 0x03, 0x00],
          0x3F8: [0x41], 0x2F8: [0x42], 0x3F9: [0x03, 0x00, 0x01], 0x2F9: [0x02, 0x00]}


def build(monkeypatch) -> Chipset:
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.25)  # the RTC's wall clock, alike in both
    return Chipset(CHIPSETS["gen1"] + [COM2], clock=ManualClock())


def run(all_polled: Chipset, incremental: Chipset, seed: int, steps: int) -> int:
    """The same accesses and time on both; after each, ``all_polled`` polls every device (the
    worker before) and ``incremental`` what the access moved; at each deadline, the first
    polls every device and the second those that are due.  Returns the interrupts taken."""
    rng = random.Random(seed)
    ports = sorted(set(p for r in all_polled.bus.ranges() for p in range(r.base, r.base + r.count)))
    taken = 0

    def compare(where: str, a: int | None, b: int | None) -> None:
        nonlocal taken
        assert a == b, f"{where}: deadline {b} where polling every device gives {a}"
        assert all_polled.intr == incremental.intr, where
        got = (all_polled.take_interrupts(), incremental.take_interrupts())
        assert [v for v, _ in got[0]] == [v for v, _ in got[1]], where
        taken += len(got[0])
        assert all_polled.reset_requested == incremental.reset_requested, where
        all_polled.reset_requested = incremental.reset_requested = ""

    deadline = all_polled.bus.poll(all_polled.clock.now_ns())
    compare("start", deadline, incremental.bus.poll(incremental.clock.now_ns()))
    for i in range(steps):
        if i < len(SETUP):
            port, value, write = *SETUP[i], True
        else:
            port = rng.choice(ports)
            write = rng.random() < 0.6
            value = rng.choice(USEFUL.get(port, [0])) if rng.random() < 0.7 else rng.getrandbits(8)
            target = all_polled.clock.now_ns()
            if rng.random() < 0.5:  # time passes
                target += rng.choice([1_000, 100_000, 900_000, 3_000_000])
            while deadline is not None and deadline <= target:  # the worker polls when one is due
                at = max(deadline, all_polled.clock.now_ns())
                for c in (all_polled, incremental):
                    c.clock.step(at - c.clock.now_ns())
                a = all_polled.bus.poll(at)
                compare(f"step {i}: at the deadline", a, incremental.bus.poll_due(at))
                if a is not None and a <= at:
                    raise AssertionError(f"step {i}: a deadline that does not move on")
                deadline = a
            for c in (all_polled, incremental):
                c.clock.step(target - c.clock.now_ns())
        now = all_polled.clock.now_ns()
        if write:
            all_polled.bus.write(port, 1, value)
            incremental.bus.write(port, 1, value)
        else:
            assert all_polled.bus.read(port, 1) == incremental.bus.read(port, 1), f"step {i}: in {port:#x}"
        deadline = all_polled.bus.poll(now)
        compare(f"step {i}: {'out' if write else 'in'} {port:#x}", deadline,
                incremental.bus.deadline_after(port, incremental.clock.now_ns))
    return taken


@pytest.mark.parametrize("seed", range(3))
def test_polling_what_an_access_moved_matches_polling_every_device(monkeypatch, seed):
    taken = run(build(monkeypatch), build(monkeypatch), seed, 2000)
    assert taken > 10, taken  # the timers did run and interrupt


def test_the_comparison_catches_a_deadline_left_unpolled(monkeypatch):
    """The test above can fail: with COM1's port table emptied, a write to its THR does not
    reach its deadline."""
    incremental = build(monkeypatch)
    for port in range(0x3F8, 0x400):
        incremental.bus._moves.pop(port)
    with pytest.raises(AssertionError, match="deadline"):
        run(build(monkeypatch), incremental, 0, 3000)


def test_the_comparison_catches_a_due_device_left_unpolled(monkeypatch):
    """And at a deadline: a poll_due that polls nothing (the due devices' deadlines left as
    they were) fails it."""
    incremental = build(monkeypatch)
    monkeypatch.setattr(incremental.bus, "poll_due", lambda now: min(incremental.bus._due.values()))
    with pytest.raises(AssertionError, match="deadline"):
        run(build(monkeypatch), incremental, 0, 3000)


class _Timer(ChipsetDevice):
    """A clocked device whose deadline another device's register sets."""

    def __init__(self, name: str, base: int) -> None:
        self.name, self.base, self.stats, self.irq = name, base, DeviceStats(), NullIrqLine()
        self.due: int | None = None

    def port_ranges(self) -> list[PortRange]:
        return [PortRange(self.base, 1)]

    def io_read(self, port: int, size: int) -> int:
        return 0

    def io_write(self, port: int, size: int, value: int) -> None:
        self.due = value

    def poll(self, now_ns: int) -> int | None:
        return self.due


class _Arm(_Timer):
    """A device whose write arms ``timer`` (the wire ``moves`` declares)."""

    def __init__(self, timer: _Timer) -> None:
        super().__init__("arm", 0x10)
        self.timer = timer

    def io_write(self, port: int, size: int, value: int) -> None:
        self.timer.due = value

    def poll(self, now_ns: int) -> int | None:
        return None


@pytest.mark.parametrize("declared", [True, False])
def test_a_device_that_moves_another_ones_deadline_says_so(declared):
    bus, timer = PortBus(), _Timer("timer", 0x20)
    arm = _Arm(timer)
    bus.register(timer)
    bus.register(arm, moves=(timer,) if declared else ())
    assert bus.poll(0) is None
    bus.write(0x10, 1, 50)
    assert bus.deadline_after(0x10, lambda: 1) == (50 if declared else None)
    bus.write(0x20, 1, 70)  # the timer's own port: always its own deadline
    assert bus.deadline_after(0x20, lambda: 2) == 70


def test_a_deadline_that_passes_while_accesses_keep_coming_is_polled_between_them(tmp_path):
    """The serve loop polls every device once the earliest deadline has passed, before it
    waits for the next message: a PIT tick is raised amid a stream of UART accesses that
    never lets the loop's wait time out (the access path re-polls only the UART)."""
    from proto import messages as m
    from tests.unit.worker.test_service import FakeEndpoint, port
    from worker.backends import ConsoleLog
    from worker.service import Worker

    clock = ManualClock()
    console = ConsoleLog(str(tmp_path / "console.log"))
    endpoint = FakeEndpoint()
    worker = Worker(endpoint, Chipset(CHIPSETS["gen1"], console, clock=clock), console, strict=True)
    for ref, (address, value) in enumerate(SETUP[:13], start=1):  # the PIC, and the PIT at ~1 kHz
        endpoint.put(port(ref, address, value=value))
    for ref in range(100, 140):  # 40 accesses 100 us apart (4 ms), every fourth the tick's EOI
        endpoint.put(port(ref, 0x20, value=0x20) if ref % 4 == 0 else port(ref, 0x3FF, value=ref))
    recv = endpoint.recv_ready

    def recv_later() -> bytes:
        clock.step(100_000)
        return recv()

    endpoint.recv_ready = recv_later
    endpoint.on_idle = lambda: setattr(worker, "running", False)
    worker.serve()
    kinds = [type(s) for s in endpoint.sent]
    assert kinds.count(m.AccessComplete) == 53
    # One as the PIT is programmed (OUT rises), then a tick a ms: none is lost to the stream.
    assert kinds.count(m.AssertInterrupt) >= 4, kinds
