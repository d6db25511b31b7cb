"""The i8259A PIC pair: programming model, priorities, cascade, spurious IRQs, save/restore."""

from __future__ import annotations

import pytest

from tests.unit.devices.support import RecordingIrqLine as RecordingLine
from tests.unit.devices.support import plug
from worker.devices.base import Device, IoError
from worker.devices.pic8259 import Pic8259, Pic8259Config

MASTER_CMD, MASTER_DATA, SLAVE_CMD, SLAVE_DATA = 0x20, 0x21, 0xA0, 0xA1
ELCR1, ELCR2 = 0x4D0, 0x4D1
MASTER_BASE, SLAVE_BASE = 0x20, 0x28

NON_SPECIFIC_EOI = 0x20
READ_IRR = 0x0A
READ_ISR = 0x0B
POLL = 0x0C


def specific_eoi(level: int) -> int:
    return 0x60 | level


def wr(pic: Pic8259, port: int, value: int) -> None:
    assert pic.io_write(port, 1, value) is None


def rd(pic: Pic8259, port: int) -> int:
    value = pic.io_read(port, 1)
    assert isinstance(value, int)
    return value


def init_pair(pic: Pic8259, icw4: int = 0x01, master_base: int = MASTER_BASE,
              slave_base: int = SLAVE_BASE) -> None:
    """The PC BIOS/Linux sequence: ICW1 edge+cascade+IC4, ICW2, ICW3, ICW4."""
    for cmd, data, base, icw3 in ((MASTER_CMD, MASTER_DATA, master_base, 0x04),
                                  (SLAVE_CMD, SLAVE_DATA, slave_base, 0x02)):
        wr(pic, cmd, 0x11)
        wr(pic, data, base)
        wr(pic, data, icw3)
        wr(pic, data, icw4)


@pytest.fixture
def intr() -> RecordingLine:
    return RecordingLine()


@pytest.fixture
def pic(intr: RecordingLine) -> Pic8259:
    device = Pic8259(Pic8259Config(), intr)
    init_pair(device)
    intr.levels.clear()
    return device


def raise_irq(pic: Pic8259, irq: int) -> None:
    pic.irq_line(irq).set_level(True)


def lower_irq(pic: Pic8259, irq: int) -> None:
    pic.irq_line(irq).set_level(False)


def pulse_irq(pic: Pic8259, irq: int) -> None:
    raise_irq(pic, irq)
    lower_irq(pic, irq)


def read_isr(pic: Pic8259, cmd: int = MASTER_CMD) -> int:
    wr(pic, cmd, READ_ISR)
    value = rd(pic, cmd)
    wr(pic, cmd, READ_IRR)
    return value


def read_irr(pic: Pic8259, cmd: int = MASTER_CMD) -> int:
    wr(pic, cmd, READ_IRR)
    return rd(pic, cmd)


# --- wiring ------------------------------------------------------------------------------


def test_the_pic_satisfies_the_device_protocol_and_lists_its_ports(pic: Pic8259) -> None:
    assert isinstance(pic, Device)
    ports = {p for r in pic.port_ranges() for p in range(r.base, r.last + 1)}
    assert ports == {0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1}
    assert pic.poll(123) is None


def test_irq2_is_the_cascade_and_has_no_device_line(pic: Pic8259) -> None:
    with pytest.raises(ValueError):
        pic.irq_line(2)
    with pytest.raises(ValueError):
        pic.irq_line(16)


# --- initialization ----------------------------------------------------------------------


def test_init_sequence_programs_vector_bases_and_unmasks_everything(pic: Pic8259) -> None:
    assert rd(pic, MASTER_DATA) == 0 and rd(pic, SLAVE_DATA) == 0
    raise_irq(pic, 1)
    assert pic.acknowledge() == MASTER_BASE + 1
    raise_irq(pic, 12)
    wr(pic, MASTER_CMD, NON_SPECIFIC_EOI)
    assert pic.acknowledge() == SLAVE_BASE + 4


def test_icw2_low_three_bits_are_replaced_by_the_level(intr: RecordingLine) -> None:
    pic = Pic8259(Pic8259Config(), intr)
    init_pair(pic, master_base=0x0F, slave_base=0x77)
    raise_irq(pic, 3)
    assert pic.acknowledge() == 0x08 + 3
    wr(pic, MASTER_CMD, NON_SPECIFIC_EOI)
    raise_irq(pic, 9)
    assert pic.acknowledge() == 0x70 + 1


def test_single_mode_skips_icw3_so_the_third_write_is_icw4(intr: RecordingLine) -> None:
    pic = Pic8259(Pic8259Config(), intr)
    wr(pic, MASTER_CMD, 0x13)  # ICW1: SNGL, IC4
    wr(pic, MASTER_DATA, 0x40)  # ICW2
    wr(pic, MASTER_DATA, 0x03)  # ICW4: 8086, AEOI
    wr(pic, MASTER_DATA, 0xF0)  # OCW1
    assert rd(pic, MASTER_DATA) == 0xF0
    raise_irq(pic, 3)
    assert pic.acknowledge() == 0x43
    assert read_isr(pic) == 0  # AEOI came from that ICW4


def test_without_ic4_the_write_after_icw3_is_the_imr(intr: RecordingLine) -> None:
    pic = Pic8259(Pic8259Config(), intr)
    wr(pic, MASTER_CMD, 0x10)  # ICW1 without IC4
    wr(pic, MASTER_DATA, 0x50)
    wr(pic, MASTER_DATA, 0x04)
    wr(pic, MASTER_DATA, 0xAA)
    assert rd(pic, MASTER_DATA) == 0xAA


def test_icw1_clears_imr_isr_and_edge_requests(pic: Pic8259) -> None:
    raise_irq(pic, 4)
    pic.acknowledge()
    raise_irq(pic, 5)
    wr(pic, MASTER_DATA, 0x80)
    init_pair(pic)
    assert rd(pic, MASTER_DATA) == 0
    assert read_isr(pic) == 0
    assert read_irr(pic) == 0
    assert pic.pending_vector() is None


def test_after_icw1_a_high_edge_input_must_go_low_and_high_again(pic: Pic8259) -> None:
    raise_irq(pic, 6)
    init_pair(pic)
    assert pic.pending_vector() is None
    lower_irq(pic, 6)
    raise_irq(pic, 6)
    assert pic.pending_vector() == MASTER_BASE + 6


# --- INTR and masking --------------------------------------------------------------------


def test_a_request_raises_intr_once_and_the_acknowledge_lowers_it(
    pic: Pic8259, intr: RecordingLine
) -> None:
    raise_irq(pic, 3)
    raise_irq(pic, 4)  # lower priority: INTR already high, not driven again
    assert intr.levels == [True]
    assert pic.acknowledge() == MASTER_BASE + 3
    assert intr.levels == [True, False]  # IRQ4 waits behind IRQ3 in service


def test_masked_irq_does_not_raise_intr_until_unmasked(pic: Pic8259, intr: RecordingLine) -> None:
    wr(pic, MASTER_DATA, 0x10)
    raise_irq(pic, 4)
    assert not intr.level
    assert read_irr(pic) == 0x10  # requested, just masked
    wr(pic, MASTER_DATA, 0x00)
    assert intr.level
    assert pic.acknowledge() == MASTER_BASE + 4


def test_masking_irq2_masks_the_whole_slave(pic: Pic8259, intr: RecordingLine) -> None:
    wr(pic, MASTER_DATA, 0x04)
    raise_irq(pic, 10)
    assert not intr.level
    wr(pic, MASTER_DATA, 0x00)
    assert pic.acknowledge() == SLAVE_BASE + 2


def test_pending_vector_has_no_side_effects(pic: Pic8259) -> None:
    raise_irq(pic, 5)
    assert pic.pending_vector() == MASTER_BASE + 5
    assert pic.pending_vector() == MASTER_BASE + 5
    assert read_isr(pic) == 0
    assert read_irr(pic) == 0x20


# --- priority and EOI --------------------------------------------------------------------


def test_lower_irq_number_has_higher_priority(pic: Pic8259) -> None:
    for irq in (7, 5, 3):
        raise_irq(pic, irq)
    assert pic.acknowledge() == MASTER_BASE + 3


def test_an_in_service_level_blocks_lower_levels_but_not_higher_ones(pic: Pic8259) -> None:
    raise_irq(pic, 4)
    assert pic.acknowledge() == MASTER_BASE + 4
    raise_irq(pic, 6)
    assert pic.pending_vector() is None
    raise_irq(pic, 1)
    assert pic.acknowledge() == MASTER_BASE + 1  # nests
    assert read_isr(pic) == 0x12


def test_non_specific_eoi_ends_the_highest_priority_in_service_level(pic: Pic8259) -> None:
    raise_irq(pic, 4)
    pic.acknowledge()
    raise_irq(pic, 1)
    pic.acknowledge()
    wr(pic, MASTER_CMD, NON_SPECIFIC_EOI)
    assert read_isr(pic) == 0x10
    assert pic.counters.eois == 1


def test_specific_eoi_ends_only_the_named_level(pic: Pic8259) -> None:
    raise_irq(pic, 4)
    pic.acknowledge()
    raise_irq(pic, 1)
    pic.acknowledge()
    wr(pic, MASTER_CMD, specific_eoi(4))
    assert read_isr(pic) == 0x02


def test_eoi_lets_the_waiting_lower_priority_request_through(
    pic: Pic8259, intr: RecordingLine
) -> None:
    raise_irq(pic, 3)
    raise_irq(pic, 5)
    pic.acknowledge()
    assert not intr.level
    wr(pic, MASTER_CMD, NON_SPECIFIC_EOI)
    assert intr.level
    assert pic.acknowledge() == MASTER_BASE + 5


def test_rotate_on_non_specific_eoi_makes_the_ended_level_lowest(pic: Pic8259) -> None:
    raise_irq(pic, 3)
    pic.acknowledge()
    wr(pic, MASTER_CMD, 0xA0)  # rotate on non-specific EOI: IR3 lowest, IR4 highest
    lower_irq(pic, 3)
    for irq in (1, 3, 5):
        raise_irq(pic, irq)
    assert pic.acknowledge() == MASTER_BASE + 5


def test_rotate_on_specific_eoi_sets_the_named_level_lowest(pic: Pic8259) -> None:
    raise_irq(pic, 1)
    pic.acknowledge()
    wr(pic, MASTER_CMD, 0xE0 | 6)  # rotate on specific EOI for IR6 (IR1 stays in service)
    assert read_isr(pic) == 0x02
    wr(pic, MASTER_CMD, specific_eoi(1))
    raise_irq(pic, 0)
    raise_irq(pic, 7)
    assert pic.acknowledge() == MASTER_BASE + 7  # IR7 is now the highest


def test_set_priority_command_rotates_without_an_eoi(pic: Pic8259) -> None:
    wr(pic, MASTER_CMD, 0xC0 | 4)  # IR4 lowest, so IR5 highest
    for irq in (0, 4, 6):
        raise_irq(pic, irq)
    assert pic.acknowledge() == MASTER_BASE + 6
    assert pic.counters.eois == 0


def test_aeoi_acknowledges_without_setting_isr(intr: RecordingLine) -> None:
    pic = Pic8259(Pic8259Config(), intr)
    init_pair(pic, icw4=0x03)
    raise_irq(pic, 4)
    assert pic.acknowledge() == MASTER_BASE + 4
    assert read_isr(pic) == 0
    raise_irq(pic, 5)
    assert pic.acknowledge() == MASTER_BASE + 5  # nothing in service blocks it


def test_rotate_in_aeoi_mode_makes_each_acknowledged_level_lowest(intr: RecordingLine) -> None:
    pic = Pic8259(Pic8259Config(), intr)
    init_pair(pic, icw4=0x03)
    wr(pic, MASTER_CMD, 0x80)  # rotate in AEOI mode (set)
    for irq in (1, 3):
        raise_irq(pic, irq)
    assert pic.acknowledge() == MASTER_BASE + 1
    lower_irq(pic, 1)
    raise_irq(pic, 1)
    assert pic.acknowledge() == MASTER_BASE + 3  # IR1 went to the back of the queue
    wr(pic, MASTER_CMD, 0x00)  # rotate in AEOI mode (clear)
    assert pic.acknowledge() == MASTER_BASE + 1


# --- cascade -----------------------------------------------------------------------------


def test_a_slave_irq_arrives_through_master_irq2_with_the_slave_vector(
    pic: Pic8259, intr: RecordingLine
) -> None:
    raise_irq(pic, 11)
    assert intr.level
    assert read_irr(pic) == 0x04
    assert pic.acknowledge() == SLAVE_BASE + 3
    assert read_isr(pic) == 0x04
    assert read_isr(pic, SLAVE_CMD) == 0x08
    assert pic.counters.acknowledged[11] == 1


def test_a_slave_irq_needs_an_eoi_to_both_chips(pic: Pic8259) -> None:
    raise_irq(pic, 8)
    pic.acknowledge()
    lower_irq(pic, 8)
    wr(pic, SLAVE_CMD, NON_SPECIFIC_EOI)
    assert read_isr(pic, SLAVE_CMD) == 0
    raise_irq(pic, 9)
    assert pic.pending_vector() is None  # master IR2 still in service
    wr(pic, MASTER_CMD, NON_SPECIFIC_EOI)
    assert pic.acknowledge() == SLAVE_BASE + 1


def test_slave_irqs_rank_at_master_irq2(pic: Pic8259) -> None:
    for irq in (3, 8, 1):
        raise_irq(pic, irq)
    assert pic.acknowledge() == MASTER_BASE + 1
    wr(pic, MASTER_CMD, NON_SPECIFIC_EOI)
    assert pic.acknowledge() == SLAVE_BASE + 0
    wr(pic, SLAVE_CMD, NON_SPECIFIC_EOI)
    wr(pic, MASTER_CMD, NON_SPECIFIC_EOI)
    assert pic.acknowledge() == MASTER_BASE + 3


def test_a_second_slave_request_follows_after_both_eois(pic: Pic8259) -> None:
    raise_irq(pic, 12)
    raise_irq(pic, 14)
    assert pic.acknowledge() == SLAVE_BASE + 4
    wr(pic, SLAVE_CMD, NON_SPECIFIC_EOI)
    wr(pic, MASTER_CMD, NON_SPECIFIC_EOI)
    assert pic.acknowledge() == SLAVE_BASE + 6


def test_a_slave_in_aeoi_mode_does_not_lose_its_second_request(intr: RecordingLine) -> None:
    pic = Pic8259(Pic8259Config(), intr)
    init_pair(pic, icw4=0x03)
    raise_irq(pic, 9)
    raise_irq(pic, 10)
    assert pic.acknowledge() == SLAVE_BASE + 1
    assert intr.level
    assert pic.acknowledge() == SLAVE_BASE + 2


def test_special_fully_nested_mode_lets_a_higher_slave_irq_nest(intr: RecordingLine) -> None:
    pic = Pic8259(Pic8259Config(), intr)
    init_pair(pic)
    wr(pic, MASTER_CMD, 0x11)
    wr(pic, MASTER_DATA, MASTER_BASE)
    wr(pic, MASTER_DATA, 0x04)
    wr(pic, MASTER_DATA, 0x11)  # ICW4: 8086, SFNM
    raise_irq(pic, 12)
    assert pic.acknowledge() == SLAVE_BASE + 4
    raise_irq(pic, 9)  # higher priority on the slave while IR2 is in service on the master
    assert pic.acknowledge() == SLAVE_BASE + 1
    raise_irq(pic, 13)  # lower than the slave's in-service levels: the slave holds it back
    assert pic.pending_vector() is None


def test_without_sfnm_a_slave_in_service_blocks_higher_slave_irqs(pic: Pic8259) -> None:
    raise_irq(pic, 12)
    pic.acknowledge()
    raise_irq(pic, 9)
    assert pic.pending_vector() is None


# --- spurious IRQs -----------------------------------------------------------------------


def test_a_request_gone_before_inta_gives_spurious_irq7_without_isr(
    pic: Pic8259, intr: RecordingLine
) -> None:
    raise_irq(pic, 5)
    assert intr.level
    lower_irq(pic, 5)
    assert not intr.level
    assert pic.acknowledge() == MASTER_BASE + 7  # the CPU had already seen INTR
    assert read_isr(pic) == 0
    assert pic.counters.spurious_irq7 == 1
    assert sum(pic.counters.acknowledged) == 0


def test_a_request_masked_before_inta_gives_spurious_irq7(pic: Pic8259) -> None:
    raise_irq(pic, 5)
    wr(pic, MASTER_DATA, 0x20)
    assert pic.acknowledge() == MASTER_BASE + 7
    assert read_isr(pic) == 0


def test_a_real_irq7_sets_its_isr_bit(pic: Pic8259) -> None:
    raise_irq(pic, 7)
    assert pic.acknowledge() == MASTER_BASE + 7
    assert read_isr(pic) == 0x80
    assert pic.counters.spurious_irq7 == 0
    assert pic.counters.acknowledged[7] == 1


def test_a_slave_request_gone_before_inta_gives_spurious_irq15_with_master_isr2(
    pic: Pic8259
) -> None:
    raise_irq(pic, 10)
    lower_irq(pic, 10)
    assert pic.pending_vector() == SLAVE_BASE + 7
    assert pic.acknowledge() == SLAVE_BASE + 7
    assert read_isr(pic, SLAVE_CMD) == 0
    assert read_isr(pic) == 0x04  # the guest's spurious handler must EOI the master
    assert pic.counters.spurious_irq15 == 1
    assert pic.counters.spurious == 1


# --- edge and level ----------------------------------------------------------------------


def test_an_edge_irq_needs_a_new_rising_edge_after_the_acknowledge(pic: Pic8259) -> None:
    raise_irq(pic, 3)
    pic.acknowledge()
    wr(pic, MASTER_CMD, NON_SPECIFIC_EOI)
    assert pic.pending_vector() is None  # still high, but no new edge
    lower_irq(pic, 3)
    raise_irq(pic, 3)
    assert pic.acknowledge() == MASTER_BASE + 3


def test_a_level_irq_set_in_elcr_is_requested_again_after_eoi_while_high(pic: Pic8259) -> None:
    wr(pic, ELCR2, 0x08)  # IRQ11 level
    raise_irq(pic, 11)
    assert pic.acknowledge() == SLAVE_BASE + 3
    assert read_irr(pic, SLAVE_CMD) == 0x08  # IRR follows the input through INTA
    wr(pic, SLAVE_CMD, NON_SPECIFIC_EOI)
    wr(pic, MASTER_CMD, NON_SPECIFIC_EOI)
    assert pic.acknowledge() == SLAVE_BASE + 3
    lower_irq(pic, 11)
    wr(pic, SLAVE_CMD, NON_SPECIFIC_EOI)
    wr(pic, MASTER_CMD, NON_SPECIFIC_EOI)
    assert pic.pending_vector() is None


def test_elcr_reads_back_with_the_fixed_edge_bits_clear(pic: Pic8259) -> None:
    wr(pic, ELCR1, 0xFF)
    wr(pic, ELCR2, 0xFF)
    assert rd(pic, ELCR1) == 0xF8  # IRQ0, 1, 2 fixed edge
    assert rd(pic, ELCR2) == 0xDE  # IRQ8, 13 fixed edge


def test_making_a_high_input_level_triggered_requests_at_once(pic: Pic8259) -> None:
    raise_irq(pic, 5)
    pic.acknowledge()
    wr(pic, MASTER_CMD, NON_SPECIFIC_EOI)
    assert pic.pending_vector() is None
    wr(pic, ELCR1, 0x20)
    assert pic.pending_vector() == MASTER_BASE + 5


def test_ltim_in_icw1_makes_every_input_of_the_chip_level_triggered(pic: Pic8259) -> None:
    wr(pic, MASTER_CMD, 0x19)  # ICW1 with LTIM
    wr(pic, MASTER_DATA, MASTER_BASE)
    wr(pic, MASTER_DATA, 0x04)
    wr(pic, MASTER_DATA, 0x01)
    raise_irq(pic, 1)
    pic.acknowledge()
    wr(pic, MASTER_CMD, NON_SPECIFIC_EOI)
    assert pic.pending_vector() == MASTER_BASE + 1


# --- OCW3 --------------------------------------------------------------------------------


def test_ocw3_selects_irr_or_isr_for_reads_of_the_command_port(pic: Pic8259) -> None:
    raise_irq(pic, 3)
    raise_irq(pic, 6)
    pic.acknowledge()
    assert rd(pic, MASTER_CMD) == 0x40  # IRR is the power-on selection
    wr(pic, MASTER_CMD, READ_ISR)
    assert rd(pic, MASTER_CMD) == 0x08
    assert rd(pic, MASTER_CMD) == 0x08  # the selection sticks
    wr(pic, MASTER_CMD, 0x08)  # OCW3 with RR=0 leaves the selection alone
    assert rd(pic, MASTER_CMD) == 0x08
    wr(pic, MASTER_CMD, READ_IRR)
    assert rd(pic, MASTER_CMD) == 0x40


def test_poll_command_reads_the_highest_request_and_acknowledges_it(pic: Pic8259) -> None:
    raise_irq(pic, 6)
    raise_irq(pic, 4)
    wr(pic, MASTER_CMD, POLL)
    assert rd(pic, MASTER_CMD) == 0x80 | 4
    assert read_isr(pic) == 0x10
    assert rd(pic, MASTER_CMD) == 0x40  # one read only: back to the IRR


def test_poll_without_a_request_reads_zero(pic: Pic8259) -> None:
    wr(pic, MASTER_CMD, POLL)
    assert rd(pic, MASTER_CMD) == 0x00


def test_polling_the_master_then_the_slave_finds_a_slave_irq(
    pic: Pic8259, intr: RecordingLine
) -> None:
    raise_irq(pic, 13)
    wr(pic, MASTER_CMD, POLL)
    assert rd(pic, MASTER_CMD) == 0x82
    wr(pic, SLAVE_CMD, POLL)
    assert rd(pic, SLAVE_CMD) == 0x85
    assert not intr.level
    assert pic.counters.acknowledged[13] == 1


def test_special_mask_mode_lets_lower_priority_levels_interrupt(pic: Pic8259) -> None:
    raise_irq(pic, 3)
    pic.acknowledge()  # IR3 in service
    wr(pic, MASTER_DATA, 0x08)  # mask IR3 ...
    wr(pic, MASTER_CMD, 0x68)  # ... and set special mask mode
    raise_irq(pic, 5)
    assert pic.acknowledge() == MASTER_BASE + 5
    wr(pic, MASTER_CMD, NON_SPECIFIC_EOI)  # skips the masked IR3
    assert read_isr(pic) == 0x08
    wr(pic, MASTER_CMD, 0x48)  # special mask mode off
    raise_irq(pic, 6)
    assert pic.pending_vector() is None  # IR3 in service blocks again


# --- guest mistakes ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [2, 4])
@pytest.mark.parametrize("port", [0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1])
def test_wider_accesses_are_refused_and_counted(pic: Pic8259, port: int, size: int) -> None:
    bus = plug(pic)
    assert bus.io_read(port, size) is IoError.INVALID_ACCESS_SIZE
    assert bus.io_write(port, size, 0) is IoError.INVALID_ACCESS_SIZE
    assert pic.stats.missed_reads == 1 and pic.stats.missed_writes == 1
    assert rd(pic, MASTER_DATA) == 0  # nothing was written


def test_a_port_that_is_not_ours_never_reaches_the_pic(pic: Pic8259) -> None:
    bus = plug(pic)
    assert bus.io_read(0x22, 1) is IoError.INVALID_REGISTER
    assert bus.io_write(0x22, 1, 0) is IoError.INVALID_REGISTER
    assert bus.stats.unclaimed_reads == bus.stats.unclaimed_writes == 1
    assert pic.stats == type(pic.stats)()  # nothing counted against the PIC


# --- lifecycle ---------------------------------------------------------------------------


def assert_plain(value: object) -> None:
    """Only what msgpack carries: dicts with str keys, lists, ints, bools, str, None."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str)
            assert_plain(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain(item)
    else:
        assert value is None or isinstance(value, (bool, int, str))


def busy_pic(intr: RecordingLine) -> Pic8259:
    pic = Pic8259(Pic8259Config(), intr)
    init_pair(pic)
    wr(pic, ELCR2, 0x08)
    wr(pic, MASTER_DATA, 0x40)
    wr(pic, MASTER_CMD, 0xC0 | 3)  # rotated priority
    raise_irq(pic, 11)
    pic.acknowledge()  # slave IR3 and master IR2 in service
    raise_irq(pic, 5)
    raise_irq(pic, 6)
    wr(pic, MASTER_CMD, READ_ISR)
    return pic


def test_save_is_plain_data_with_a_version(intr: RecordingLine) -> None:
    saved = busy_pic(intr).save()
    assert_plain(saved)
    assert saved["version"] == 1


def test_restore_reproduces_registers_and_behaviour(intr: RecordingLine) -> None:
    original = busy_pic(intr)
    saved = original.save()
    line = RecordingLine()
    copy = Pic8259(Pic8259Config(), line)
    copy.restore(saved)
    assert copy.save() == saved
    for pic in (original, copy):
        assert rd(pic, MASTER_CMD) == 0x04  # ISR selection survived
        assert rd(pic, MASTER_DATA) == 0x40
        assert rd(pic, ELCR2) == 0x08
    for pic in (original, copy):
        wr(pic, MASTER_CMD, NON_SPECIFIC_EOI)  # ends master IR2; slave IR3 stays in service
    # Rotated priority (IR4 highest) and IMR (IR6 masked) survived: IR5 comes first.
    assert original.acknowledge() == copy.acknowledge() == MASTER_BASE + 5
    for pic in (original, copy):
        wr(pic, MASTER_CMD, NON_SPECIFIC_EOI)
        wr(pic, SLAVE_CMD, NON_SPECIFIC_EOI)
    assert original.acknowledge() == copy.acknowledge() == SLAVE_BASE + 3  # level IRQ11 again


def test_restore_rederives_intr(intr: RecordingLine) -> None:
    pic = Pic8259(Pic8259Config(), intr)
    init_pair(pic)
    raise_irq(pic, 4)
    saved = pic.save()
    line = RecordingLine()
    Pic8259(Pic8259Config(), line).restore(saved)
    assert line.level is True


@pytest.mark.parametrize("mutate", [
    lambda s: s.update(version=99),
    lambda s: s.pop("slave_int"),
    lambda s: s["master"].update(imr=0x100),
    lambda s: s["master"].update(vector_base=0x21),
    lambda s: s["slave"].update(lowest_priority=8),
    lambda s: s["slave"].update(init_step=1),
    lambda s: s["slave"].update(poll="yes"),
    lambda s: s["master"].update(elcr=0x01),
    lambda s: s["master"].pop("isr"),
])
def test_restore_rejects_bad_state_and_changes_nothing(pic: Pic8259, mutate) -> None:
    raise_irq(pic, 3)
    before = pic.save()
    bad = pic.save()
    mutate(bad)
    with pytest.raises(ValueError):
        pic.restore(bad)
    assert pic.save() == before


def test_reset_returns_to_power_on_state_and_lowers_intr(pic: Pic8259, intr: RecordingLine) -> None:
    wr(pic, ELCR1, 0x20)
    wr(pic, MASTER_DATA, 0x0F)
    raise_irq(pic, 4)
    assert intr.level
    pic.reset()
    assert not intr.level
    assert rd(pic, MASTER_DATA) == 0 and rd(pic, ELCR1) == 0
    lower_irq(pic, 4)
    raise_irq(pic, 4)
    assert pic.acknowledge() == 0x00 + 4  # power-on vector base


def test_acknowledge_counts_per_irq(pic: Pic8259) -> None:
    for _ in range(3):
        pulse_irq(pic, 1)
        raise_irq(pic, 1)
        pic.acknowledge()
        lower_irq(pic, 1)
        wr(pic, MASTER_CMD, NON_SPECIFIC_EOI)
    assert pic.counters.acknowledged[1] == 3
    assert pic.counters.eois == 3
