"""i8042 keyboard controller with a PS/2 keyboard, driven through its two ports."""

from __future__ import annotations

import pytest

from tests.unit.devices.support import RecordingIrqLine as RecordingIrq
from tests.unit.devices.support import plug
from worker.devices.base import Device, IoError
from worker.devices.i8042 import I8042, I8042Config

DATA, CMD = 0x60, 0x64
OBF, SYS, A2, INH, AUXB, TIMEOUT = 0x01, 0x04, 0x08, 0x10, 0x20, 0x40
ACK, NAK = 0xFA, 0xFE


class Harness:
    def __init__(self) -> None:
        self.irq1 = RecordingIrq()
        self.irq12 = RecordingIrq()
        self.resets = 0
        self.a20: list[bool] = []
        self.dev = I8042(I8042Config(), self.irq1, self.reset, self.irq12, self.a20.append)

    def reset(self) -> None:
        self.resets += 1

    def status(self) -> int:
        return self.dev.io_read(CMD, 1)

    def command(self, value: int, *data: int) -> None:
        assert self.dev.io_write(CMD, 1, value) is None
        for byte in data:
            self.write(byte)

    def write(self, value: int) -> None:
        assert self.dev.io_write(DATA, 1, value) is None

    def read(self) -> int:
        value = self.dev.io_read(DATA, 1)
        assert isinstance(value, int)
        return value

    def drain(self) -> list[int]:
        out = []
        while self.status() & OBF:
            out.append(self.read())
        return out


@pytest.fixture
def kbc() -> Harness:
    return Harness()


def test_the_device_satisfies_the_device_protocol(kbc):
    assert isinstance(kbc.dev, Device)
    assert [(r.base, r.count) for r in kbc.dev.port_ranges()] == [(0x60, 1), (0x64, 1)]
    assert kbc.dev.poll(0) is None


def test_power_on_status_is_empty_with_the_keyboard_not_inhibited(kbc):
    assert kbc.status() == INH | A2
    assert not kbc.irq1.level


def test_self_test_answers_0x55_and_sets_the_system_flag(kbc):
    kbc.command(0xAA)
    assert kbc.status() & (OBF | SYS) == OBF | SYS
    assert kbc.read() == 0x55
    assert not kbc.status() & OBF


def test_interface_tests_answer_zero(kbc):
    kbc.command(0xAB)
    assert kbc.read() == 0x00
    kbc.command(0xA9)
    assert kbc.read() == 0x00


def test_command_byte_reads_back_what_was_written_and_sys_follows_bit_2(kbc):
    kbc.command(0x60, 0x47)
    kbc.command(0x20)
    assert kbc.read() == 0x47
    assert kbc.status() & SYS
    kbc.command(0x60, 0x43)
    assert not kbc.status() & SYS


def test_status_a2_tells_which_port_was_written_last(kbc):
    kbc.command(0x20)
    assert kbc.status() & A2
    kbc.read()
    kbc.write(0xEE)
    assert not kbc.status() & A2


def test_disable_and_enable_commands_flip_command_byte_bits(kbc):
    kbc.command(0xAD)
    kbc.command(0xA7)
    assert kbc.dev.command_byte & 0x30 == 0x30
    kbc.command(0xAE)
    kbc.command(0xA8)
    assert kbc.dev.command_byte & 0x30 == 0


def test_controller_ram_bytes_read_back(kbc):
    kbc.command(0x65, 0x9C)
    kbc.command(0x25)
    assert kbc.read() == 0x9C


def test_scancodes_pushed_appear_on_port_0x60_with_obf_and_irq1(kbc):
    assert kbc.dev.push_scancodes(b"\x1e\x9e") == 2
    assert kbc.status() & (OBF | AUXB) == OBF
    assert kbc.irq1.level
    assert kbc.read() == 0x1E
    assert kbc.irq1.level
    assert kbc.read() == 0x9E
    assert not kbc.irq1.level
    assert not kbc.status() & OBF


def test_each_byte_read_gives_irq1_a_new_rising_edge(kbc):
    kbc.dev.push_scancodes(b"\x01\x02\x03")
    kbc.drain()
    assert kbc.irq1.rising_edges() == 3


def test_irq1_stays_low_when_the_command_byte_disables_it(kbc):
    kbc.command(0x60, 0x00)
    kbc.dev.push_scancodes(b"\x1e")
    assert kbc.status() & OBF
    assert not kbc.irq1.level


def test_reading_an_empty_output_buffer_returns_the_last_byte(kbc):
    kbc.dev.push_scancodes(b"\x2a")
    kbc.read()
    assert kbc.read() == 0x2A
    assert not kbc.status() & OBF


def test_the_keyboard_queue_takes_at_most_16_scancodes(kbc):
    assert kbc.dev.push_scancodes(bytes(range(1, 21))) == 16
    assert kbc.drain() == list(range(1, 17))


def test_the_queue_frees_room_as_the_guest_reads(kbc):
    kbc.dev.push_scancodes(bytes(range(1, 17)))  # 1 moves to the output buffer at once
    assert kbc.dev.push_scancodes(b"\x30\x31") == 1
    kbc.read()
    assert kbc.dev.push_scancodes(b"\x31") == 1
    assert kbc.drain()[-2:] == [0x30, 0x31]


def test_keyboard_reset_answers_ack_then_bat_ok(kbc):
    kbc.write(0xFF)
    assert kbc.drain() == [ACK, 0xAA]


def test_keyboard_reset_discards_queued_scancodes(kbc):
    kbc.command(0xAD)
    kbc.dev.push_scancodes(b"\x1e\x9e")
    kbc.write(0xFF)
    assert kbc.drain() == [ACK, 0xAA]


def test_keyboard_identify_answers_ack_ab_83(kbc):
    kbc.write(0xF2)
    assert kbc.drain() == [ACK, 0xAB, 0x83]


def test_keyboard_echo_answers_ee(kbc):
    kbc.write(0xEE)
    assert kbc.drain() == [0xEE]


def test_set_leds_acks_the_command_and_the_data_byte(kbc):
    kbc.write(0xED)
    assert kbc.drain() == [ACK]
    kbc.write(0x07)
    assert kbc.drain() == [ACK]
    assert kbc.dev.keyboard_leds == 0x07


def test_scancode_set_can_be_read_and_changed(kbc):
    kbc.write(0xF0)
    kbc.write(0x00)
    assert kbc.drain() == [ACK, ACK, 0x02]
    kbc.write(0xF0)
    kbc.write(0x01)
    kbc.write(0xF0)
    kbc.write(0x00)
    assert kbc.drain() == [ACK, ACK, ACK, ACK, 0x01]


def test_an_invalid_scancode_set_is_refused_with_resend(kbc):
    kbc.write(0xF0)
    kbc.write(0x07)
    assert kbc.drain() == [ACK, NAK]


def test_set_typematic_acks_command_and_data(kbc):
    kbc.write(0xF3)
    kbc.write(0x20)
    assert kbc.drain() == [ACK, ACK]


def test_an_unknown_keyboard_command_is_answered_with_resend(kbc):
    kbc.write(0x01)
    assert kbc.drain() == [NAK]


def test_keyboard_resend_repeats_the_last_byte_sent(kbc):
    kbc.write(0xEE)
    kbc.drain()
    kbc.write(0xFE)
    assert kbc.drain() == [0xEE]


def test_command_replies_come_before_queued_scancodes(kbc):
    kbc.command(0xAD)
    kbc.dev.push_scancodes(b"\x1e")
    kbc.write(0xEE)  # also re-enables the keyboard interface
    assert kbc.drain() == [0xEE, 0x1E]


def test_disabled_keyboard_interface_holds_scancodes_until_enabled(kbc):
    kbc.command(0xAD)
    assert kbc.dev.push_scancodes(b"\x1e\x9e") == 2
    assert not kbc.status() & OBF
    assert not kbc.irq1.level
    kbc.command(0xAE)
    assert kbc.status() & OBF
    assert kbc.irq1.level
    assert kbc.drain() == [0x1E, 0x9E]


def test_the_command_byte_disable_bit_also_holds_scancodes(kbc):
    kbc.command(0x60, 0x11)
    kbc.dev.push_scancodes(b"\x1e")
    assert not kbc.status() & OBF
    kbc.command(0x60, 0x01)
    assert kbc.drain() == [0x1E]


def test_a_keyboard_with_scanning_disabled_takes_no_scancodes(kbc):
    kbc.write(0xF5)
    assert kbc.drain() == [ACK]
    assert kbc.dev.push_scancodes(b"\x1e") == 0
    kbc.write(0xF4)
    assert kbc.drain() == [ACK]
    assert kbc.dev.push_scancodes(b"\x1e") == 1


def test_a_controller_reply_displaces_an_unread_scancode_without_losing_it(kbc):
    kbc.dev.push_scancodes(b"\x1e\x9e")
    kbc.command(0x20)
    assert kbc.drain() == [0x03, 0x1E, 0x9E]


def test_write_keyboard_output_buffer_appears_as_keyboard_data(kbc):
    kbc.command(0xD2, 0x5B)
    assert kbc.status() & (OBF | AUXB) == OBF
    assert kbc.irq1.level
    assert kbc.read() == 0x5B


def test_write_aux_output_buffer_appears_as_aux_data_on_irq12(kbc):
    kbc.command(0xD3, 0x5A)
    assert kbc.status() & (OBF | AUXB) == OBF | AUXB
    assert kbc.irq12.level
    assert not kbc.irq1.level
    assert kbc.read() == 0x5A
    assert not kbc.irq12.level


def test_a_byte_for_the_absent_mouse_times_out(kbc):
    kbc.command(0xD4, 0xF4)
    assert kbc.status() & (OBF | AUXB | TIMEOUT) == OBF | AUXB | TIMEOUT
    assert kbc.read() == NAK
    assert not kbc.status() & TIMEOUT


def test_command_0xfe_pulses_the_cpu_reset_line(kbc):
    kbc.command(0xFE)
    assert kbc.resets == 1
    kbc.command(0xFF)  # pulses nothing
    assert kbc.resets == 1


def test_writing_the_output_port_with_bit_0_clear_resets_the_cpu(kbc):
    kbc.command(0xD1, 0xCE)
    assert kbc.resets == 1
    kbc.command(0xD0)
    assert kbc.read() & 0x01


def test_the_output_port_gates_a20(kbc):
    kbc.command(0xD1, 0xCD)
    kbc.command(0xD1, 0xCF)
    assert kbc.a20 == [False, True]
    assert kbc.resets == 0
    kbc.command(0xD0)
    assert kbc.read() & 0x02


def test_the_cpu_reset_callback_may_reset_the_device_from_inside():
    irq1 = RecordingIrq()
    holder = {}
    dev = I8042(I8042Config(), irq1, lambda: holder["dev"].reset())
    holder["dev"] = dev
    dev.io_write(CMD, 1, 0x60)
    dev.io_write(DATA, 1, 0x47)
    dev.io_write(CMD, 1, 0xFE)
    dev.io_write(CMD, 1, 0x20)
    assert dev.io_read(DATA, 1) == 0x03


def test_accesses_wider_than_a_byte_are_refused_and_counted(kbc):
    kbc.dev.push_scancodes(b"\x1e")
    bus = plug(kbc.dev)
    assert bus.io_read(DATA, 2) is IoError.INVALID_ACCESS_SIZE
    assert bus.io_write(CMD, 4, 0xFE) is IoError.INVALID_ACCESS_SIZE
    assert (kbc.dev.stats.missed_reads, kbc.dev.stats.missed_writes) == (1, 1)
    assert kbc.resets == 0
    assert kbc.read() == 0x1E  # the refused read consumed nothing


def test_reset_returns_to_power_on_state_and_lowers_irq1(kbc):
    kbc.dev.push_scancodes(b"\x1e\x9e")
    kbc.command(0x60, 0x45)
    kbc.dev.reset()
    assert not kbc.irq1.level
    assert kbc.status() == INH | A2
    kbc.command(0x20)
    assert kbc.read() == 0x03


def test_save_then_restore_resumes_the_same_state():
    source = Harness()
    source.command(0x60, 0x45)
    source.write(0xED)
    source.write(0x02)
    source.dev.push_scancodes(b"\x1e\x9e\x30")
    source.read()  # the ACK of 0xED
    source.command(0xD1)  # waiting for its data byte
    saved = source.dev.save()

    target = Harness()
    target.dev.restore(saved)
    assert target.irq1.level
    assert target.dev.keyboard_leds == 0x02
    target.write(0xDD)  # the pending 0xD1 gets its data: A20 off
    assert target.a20 == [False]
    assert target.drain() == [ACK, 0x1E, 0x9E, 0x30]
    target.command(0x20)
    assert target.read() == 0x45


def test_saved_state_survives_a_msgpack_round_trip(kbc):
    msgpack = pytest.importorskip("msgpack")
    kbc.dev.push_scancodes(b"\x1e\x9e")
    target = Harness()
    target.dev.restore(msgpack.unpackb(msgpack.packb(kbc.dev.save())))
    assert target.drain() == [0x1E, 0x9E]


def test_restore_rejects_a_malformed_state_and_keeps_the_old_one(kbc):
    kbc.dev.push_scancodes(b"\x1e")
    good = kbc.dev.save()
    for bad in [
        {**good, "version": 2},
        {**good, "ram": [0] * 31},
        {**good, "out_buf": 256},
        {**good, "obf": 1},
        {**good, "kbd_scancodes": list(range(17))},
        {**good, "kbd_scancode_set": 4},
        {**good, "pending_command": 0xAA},
        {**good, "kbd_pending": 0xF4},
        {k: v for k, v in good.items() if k != "aux_queue"},
        [],
    ]:
        with pytest.raises(ValueError):
            kbc.dev.restore(bad)
    assert kbc.read() == 0x1E
