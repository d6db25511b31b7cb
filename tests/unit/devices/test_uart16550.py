"""Unit tests for the PC16550D UART, in virtual time (FakeClock)."""

from __future__ import annotations

import math

import pytest

from tests.unit.devices.support import RecordingIrqLine, plug
from worker.devices.backends import MemoryConsole
from worker.devices.base import Device, FakeClock, IoError, PortRange
from worker.devices.uart16550 import (
    FIFO_DEPTH,
    Fcr,
    Ier,
    IirId,
    Lcr,
    Lsr,
    Mcr,
    Msr,
    Register,
    Uart16550,
    Uart16550Config,
)

BASE = 0x3F8
LCR_8N1 = Lcr.WLS0 | Lcr.WLS1  # 10 bits per character
FIFO_ON = Fcr.FIFO_ENABLE
IIR_FIFO = 0xC0


def char_ns(divisor: int, bits: float = 10) -> float:
    """Exact character time in ns: ``bits`` bit times at 115200/divisor baud."""
    return bits * divisor * 1e9 / 115200


class Rig:
    def __init__(self, config: Uart16550Config | None = None, start_ns: int = 0) -> None:
        self.clock = FakeClock(start_ns)
        self.irq = RecordingIrqLine()
        self.console = MemoryConsole()
        self.sent = self.console.chunks
        self.uart = Uart16550(config or Uart16550Config(), self.irq, self.clock, self.console)

    @property
    def output(self) -> bytes:
        return b"".join(self.sent)


def read_reg(uart: Uart16550, reg: int) -> int:
    value = uart.io_read(uart.config.base + reg, 1)
    assert isinstance(value, int), value
    return value


def write_reg(uart: Uart16550, reg: int, value: int) -> None:
    assert uart.io_write(uart.config.base + reg, 1, int(value)) is None


def set_divisor(uart: Uart16550, divisor: int, lcr: int = LCR_8N1) -> None:
    write_reg(uart, Register.LCR, Lcr.DLAB)
    write_reg(uart, Register.DLL, divisor & 0xFF)
    write_reg(uart, Register.DLM, divisor >> 8)
    write_reg(uart, Register.LCR, lcr)


def iir_id(uart: Uart16550) -> int:
    return read_reg(uart, Register.IIR) & 0x0F


@pytest.fixture
def rig() -> Rig:
    return Rig()


# ------------------------------------------------------------------------ basics


def test_uart_is_a_device_with_eight_ports_at_its_base():
    rig = Rig(Uart16550Config(base=0x2F8, irq=3, name="com2"))
    assert isinstance(rig.uart, Device)
    assert rig.uart.name == "com2"
    assert rig.uart.port_ranges() == [PortRange(0x2F8, 8)]


def test_power_on_registers_hold_datasheet_reset_values(rig):
    u = rig.uart
    assert read_reg(u, Register.IER) == 0
    assert read_reg(u, Register.IIR) == 0x01
    assert read_reg(u, Register.LCR) == 0
    assert read_reg(u, Register.MCR) == 0
    assert read_reg(u, Register.LSR) == Lsr.THRE | Lsr.TEMT
    assert read_reg(u, Register.MSR) == Msr.CTS | Msr.DSR | Msr.DCD
    assert rig.irq.levels == []


def test_dlab_maps_offsets_0_and_1_to_the_divisor_latch(rig):
    u = rig.uart
    write_reg(u, Register.IER, Ier.ERBFI)
    write_reg(u, Register.LCR, Lcr.DLAB | LCR_8N1)
    write_reg(u, Register.DLL, 0x34)
    write_reg(u, Register.DLM, 0x12)
    assert read_reg(u, Register.DLL) == 0x34
    assert read_reg(u, Register.DLM) == 0x12
    assert u.divisor == 0x1234
    write_reg(u, Register.LCR, LCR_8N1)
    assert read_reg(u, Register.IER) == Ier.ERBFI
    assert rig.sent == []  # the DLL write did not transmit


def test_scratch_register_keeps_what_is_written(rig):
    for value in (0x00, 0x5A, 0xA5, 0xFF):
        write_reg(rig.uart, Register.SCR, value)
        assert read_reg(rig.uart, Register.SCR) == value


def test_reserved_ier_and_mcr_bits_read_as_zero(rig):
    write_reg(rig.uart, Register.IER, 0xFF)
    write_reg(rig.uart, Register.MCR, 0xEF)
    assert read_reg(rig.uart, Register.IER) == 0x0F
    assert read_reg(rig.uart, Register.MCR) == 0x0F


# ------------------------------------------------------------------------ FIFOs


def test_enabling_fifos_sets_iir_bits_7_and_6(rig):
    write_reg(rig.uart, Register.FCR, FIFO_ON)
    assert read_reg(rig.uart, Register.IIR) == IIR_FIFO | 0x01
    write_reg(rig.uart, Register.FCR, 0)
    assert read_reg(rig.uart, Register.IIR) == 0x01


def test_fcr_receiver_reset_empties_the_rx_fifo(rig):
    write_reg(rig.uart, Register.FCR, FIFO_ON)
    assert rig.uart.push_rx(b"abc") == 3
    write_reg(rig.uart, Register.FCR, FIFO_ON | Fcr.RCVR_FIFO_RESET)
    assert not read_reg(rig.uart, Register.LSR) & Lsr.DR


def test_fcr_transmitter_reset_empties_the_tx_fifo_but_not_the_shift_register(rig):
    u = rig.uart
    set_divisor(u, 1)
    write_reg(u, Register.FCR, FIFO_ON)
    for byte in b"abcd":
        write_reg(u, Register.THR, byte)
    write_reg(u, Register.FCR, FIFO_ON | Fcr.XMIT_FIFO_RESET)
    assert read_reg(u, Register.LSR) & (Lsr.THRE | Lsr.TEMT) == Lsr.THRE
    rig.clock.advance(math.ceil(char_ns(1) * 10))
    assert read_reg(u, Register.LSR) & Lsr.TEMT
    assert rig.output == b"a"


def test_changing_fifo_enable_clears_both_fifos(rig):
    u = rig.uart
    write_reg(u, Register.FCR, FIFO_ON)
    u.push_rx(b"xyz")
    write_reg(u, Register.FCR, 0)
    assert not read_reg(u, Register.LSR) & Lsr.DR


@pytest.mark.parametrize(
    ("fcr_bits", "trigger"), [(0x00, 1), (0x40, 4), (0x80, 8), (0xC0, 14)]
)
def test_received_data_interrupt_fires_at_the_fifo_trigger_level(rig, fcr_bits, trigger):
    u = rig.uart
    write_reg(u, Register.FCR, FIFO_ON | fcr_bits)
    write_reg(u, Register.IER, Ier.ERBFI)
    write_reg(u, Register.MCR, Mcr.OUT2)
    u.push_rx(b"x" * (trigger - 1))
    assert iir_id(u) == IirId.NONE
    assert not rig.irq.level
    u.push_rx(b"x")
    assert iir_id(u) == IirId.RECEIVED_DATA_AVAILABLE
    assert rig.irq.level
    read_reg(u, Register.RBR)  # below the trigger again
    assert iir_id(u) == IirId.NONE
    assert not rig.irq.level


def test_rx_fifo_holds_sixteen_bytes_and_push_rx_refuses_the_rest(rig):
    u = rig.uart
    write_reg(u, Register.FCR, FIFO_ON)
    assert u.push_rx(bytes(range(20))) == FIFO_DEPTH
    assert u.push_rx(b"more") == 0
    assert not read_reg(u, Register.LSR) & Lsr.OE
    assert bytes(read_reg(u, Register.RBR) for _ in range(16)) == bytes(range(16))
    assert not read_reg(u, Register.LSR) & Lsr.DR
    assert u.stats.rx_bytes == 16
    assert u.stats.overruns == 0


def test_16450_mode_receiver_holds_one_byte(rig):
    assert rig.uart.push_rx(b"ab") == 1
    assert read_reg(rig.uart, Register.RBR) == ord("a")


def test_lossy_push_into_full_fifo_sets_overrun_and_lsr_read_clears_it(rig):
    u = rig.uart
    write_reg(u, Register.FCR, FIFO_ON)
    assert u.push_rx(bytes(range(18)), lossy=True) == 18
    lsr = read_reg(u, Register.LSR)
    assert lsr & Lsr.OE and lsr & Lsr.DR
    assert not read_reg(u, Register.LSR) & Lsr.OE
    # The FIFO kept its first sixteen characters; the late ones were lost.
    assert bytes(read_reg(u, Register.RBR) for _ in range(16)) == bytes(range(16))
    assert u.stats.overruns == 2


def test_loopback_overruns_when_the_guest_does_not_read(rig):
    u = rig.uart
    set_divisor(u, 1)
    write_reg(u, Register.FCR, FIFO_ON)
    write_reg(u, Register.MCR, Mcr.LOOP)
    for byte in range(17):  # 16 in the TX FIFO plus one in the shift register
        write_reg(u, Register.THR, byte)
    rig.clock.advance(math.ceil(char_ns(1) * 17))
    assert read_reg(u, Register.LSR) & (Lsr.OE | Lsr.DR) == Lsr.OE | Lsr.DR
    assert u.stats.overruns == 1
    assert read_reg(u, Register.RBR) == 0


def test_16450_mode_overrun_overwrites_the_unread_character(rig):
    u = rig.uart
    u.push_rx(b"a")
    u.push_rx(b"b", lossy=True)
    assert read_reg(u, Register.LSR) & (Lsr.OE | Lsr.DR) == Lsr.OE | Lsr.DR
    assert read_reg(u, Register.RBR) == ord("b")


# ------------------------------------------------------------------------ interrupts


def test_iir_reports_the_four_sources_in_priority_order(rig):
    u = rig.uart
    write_reg(u, Register.FCR, FIFO_ON)
    write_reg(u, Register.MCR, Mcr.OUT2)
    u.push_rx(b"x" * 17, lossy=True)  # received data + overrun
    u.set_modem_inputs(cts=False)  # modem status delta
    write_reg(u, Register.IER, Ier.ERBFI | Ier.ETBEI | Ier.ELSI | Ier.EDSSI)
    assert rig.irq.level

    assert read_reg(u, Register.IIR) == IIR_FIFO | IirId.RECEIVER_LINE_STATUS
    read_reg(u, Register.LSR)
    assert read_reg(u, Register.IIR) == IIR_FIFO | IirId.RECEIVED_DATA_AVAILABLE
    for _ in range(16):
        read_reg(u, Register.RBR)
    assert read_reg(u, Register.IIR) == IIR_FIFO | IirId.THR_EMPTY
    assert read_reg(u, Register.IIR) == IIR_FIFO | IirId.MODEM_STATUS
    read_reg(u, Register.MSR)
    assert read_reg(u, Register.IIR) == IIR_FIFO | IirId.NONE
    assert not rig.irq.level


def test_enabling_etbei_with_thr_empty_raises_the_thre_interrupt(rig):
    u = rig.uart
    write_reg(u, Register.MCR, Mcr.OUT2)
    write_reg(u, Register.IER, Ier.ETBEI)
    assert rig.irq.level
    assert iir_id(u) == IirId.THR_EMPTY


def test_reading_iir_clears_the_thre_interrupt(rig):
    u = rig.uart
    write_reg(u, Register.MCR, Mcr.OUT2)
    write_reg(u, Register.IER, Ier.ETBEI)
    assert read_reg(u, Register.IIR) == IirId.THR_EMPTY
    assert read_reg(u, Register.IIR) == IirId.NONE
    assert not rig.irq.level
    assert read_reg(u, Register.LSR) & Lsr.THRE  # the status bit stays


def test_reenabling_etbei_rearms_the_thre_interrupt(rig):
    u = rig.uart
    write_reg(u, Register.IER, Ier.ETBEI)
    read_reg(u, Register.IIR)
    write_reg(u, Register.IER, 0)
    write_reg(u, Register.IER, Ier.ETBEI)
    assert iir_id(u) == IirId.THR_EMPTY


def test_writing_thr_clears_the_thre_interrupt_until_the_fifo_drains(rig):
    u = rig.uart
    set_divisor(u, 1)
    write_reg(u, Register.FCR, FIFO_ON)
    write_reg(u, Register.MCR, Mcr.OUT2)
    write_reg(u, Register.IER, Ier.ETBEI)
    read_reg(u, Register.IIR)  # acknowledge the initial THRE
    write_reg(u, Register.THR, ord("a"))  # straight into the shift register: THR empty again
    assert iir_id(u) == IirId.THR_EMPTY
    write_reg(u, Register.THR, ord("b"))  # waits in the FIFO
    write_reg(u, Register.THR, ord("c"))
    assert iir_id(u) == IirId.NONE
    assert not rig.irq.level
    rig.clock.advance(math.ceil(char_ns(1) * 2))  # 'b' has moved on, 'c' is shifting
    u.poll(rig.clock.now_ns())
    assert rig.irq.level
    assert iir_id(u) == IirId.THR_EMPTY


def test_out2_gates_the_irq_line(rig):
    u = rig.uart
    write_reg(u, Register.IER, Ier.ETBEI)
    assert iir_id(u) == IirId.THR_EMPTY  # pending, but OUT2 is low
    write_reg(u, Register.IER, 0)
    write_reg(u, Register.IER, Ier.ETBEI)
    assert not rig.irq.level
    write_reg(u, Register.MCR, Mcr.OUT2)
    assert rig.irq.level
    write_reg(u, Register.MCR, 0)
    assert not rig.irq.level
    assert rig.irq.levels == [True, False]


def test_irq_line_is_driven_only_when_the_level_changes(rig):
    u = rig.uart
    write_reg(u, Register.MCR, Mcr.OUT2)
    write_reg(u, Register.IER, Ier.ERBFI)
    u.push_rx(b"a")
    for _ in range(5):
        read_reg(u, Register.LSR)
        read_reg(u, Register.SCR)
    read_reg(u, Register.RBR)
    assert rig.irq.levels == [True, False]


def test_character_timeout_fires_after_four_character_times(rig):
    u = rig.uart
    set_divisor(u, 12)  # 9600 baud
    write_reg(u, Register.FCR, FIFO_ON | 0xC0)  # trigger 14
    write_reg(u, Register.MCR, Mcr.OUT2)
    write_reg(u, Register.IER, Ier.ERBFI)
    u.push_rx(b"abc")
    timeout = 4 * char_ns(12)
    deadline = u.poll(rig.clock.now_ns())
    assert deadline == math.ceil(timeout)
    rig.clock.advance(math.floor(timeout))
    assert iir_id(u) == IirId.NONE
    rig.clock.advance(1)
    assert u.poll(rig.clock.now_ns()) is None
    assert rig.irq.level
    assert read_reg(u, Register.IIR) == IIR_FIFO | IirId.CHARACTER_TIMEOUT
    assert read_reg(u, Register.RBR) == ord("a")  # one read clears it and restarts the timer
    assert iir_id(u) == IirId.NONE
    assert not rig.irq.level


def test_reading_the_fifo_restarts_the_timeout_timer(rig):
    u = rig.uart
    set_divisor(u, 12)
    write_reg(u, Register.FCR, FIFO_ON | 0xC0)
    write_reg(u, Register.IER, Ier.ERBFI)
    u.push_rx(b"abc")
    timeout = math.ceil(4 * char_ns(12))
    rig.clock.advance(timeout - 100)
    read_reg(u, Register.RBR)
    rig.clock.advance(200)
    assert iir_id(u) == IirId.NONE
    rig.clock.advance(timeout)
    assert iir_id(u) == IirId.CHARACTER_TIMEOUT


def test_character_timeout_needs_fifo_mode(rig):
    u = rig.uart
    write_reg(u, Register.IER, Ier.ERBFI)
    u.push_rx(b"a")
    rig.clock.advance(10**9)
    assert iir_id(u) == IirId.RECEIVED_DATA_AVAILABLE


# ------------------------------------------------------------------------ line status


def test_parity_error_shows_when_its_character_reaches_the_top_of_the_fifo(rig):
    u = rig.uart
    write_reg(u, Register.FCR, FIFO_ON)
    write_reg(u, Register.IER, Ier.ELSI)
    u.push_rx(b"a")
    assert u.push_rx_char(ord("b"), parity_error=True)
    lsr = read_reg(u, Register.LSR)
    assert lsr & (Lsr.PE | Lsr.RCVR_FIFO_ERROR) == Lsr.RCVR_FIFO_ERROR
    assert iir_id(u) == IirId.NONE
    read_reg(u, Register.RBR)  # 'b' is now at the top
    assert iir_id(u) == IirId.RECEIVER_LINE_STATUS
    lsr = read_reg(u, Register.LSR)
    assert lsr & (Lsr.PE | Lsr.RCVR_FIFO_ERROR) == Lsr.PE | Lsr.RCVR_FIFO_ERROR
    read_reg(u, Register.RBR)
    # No erroneous character is left: this LSR read reports bit 7 once more and clears it.
    assert read_reg(u, Register.LSR) & (Lsr.PE | Lsr.RCVR_FIFO_ERROR) == Lsr.RCVR_FIFO_ERROR
    assert not read_reg(u, Register.LSR) & Lsr.RCVR_FIFO_ERROR


def test_break_sets_bi_and_raises_the_line_status_interrupt(rig):
    u = rig.uart
    write_reg(u, Register.IER, Ier.ELSI)
    assert u.push_rx_char(0, break_interrupt=True, framing_error=True)
    assert iir_id(u) == IirId.RECEIVER_LINE_STATUS
    lsr = read_reg(u, Register.LSR)
    assert lsr & (Lsr.BI | Lsr.FE | Lsr.DR) == Lsr.BI | Lsr.FE | Lsr.DR
    assert not lsr & Lsr.RCVR_FIFO_ERROR  # bit 7 is 0 in 16450 mode
    assert iir_id(u) == IirId.NONE
    assert read_reg(u, Register.RBR) == 0


# ------------------------------------------------------------------------ transmit timing


def test_transmission_takes_character_time_at_9600_baud(rig):
    u = rig.uart
    set_divisor(u, 12)
    write_reg(u, Register.FCR, FIFO_ON)
    for byte in b"hey":
        write_reg(u, Register.THR, byte)
    assert read_reg(u, Register.LSR) & (Lsr.THRE | Lsr.TEMT) == 0
    one = char_ns(12)  # 1041666.67 ns
    rig.clock.advance(math.floor(one))
    assert rig.output == b""
    rig.clock.advance(1)
    assert u.poll(rig.clock.now_ns()) == math.ceil(2 * one)
    assert rig.output == b"h"
    rig.clock.advance(math.ceil(2 * one) - rig.clock.now_ns())
    u.poll(rig.clock.now_ns())
    assert rig.output == b"he"
    assert read_reg(u, Register.LSR) & (Lsr.THRE | Lsr.TEMT) == Lsr.THRE  # 'y' shifting
    rig.clock.advance(math.ceil(3 * one) - rig.clock.now_ns())
    assert read_reg(u, Register.LSR) & (Lsr.THRE | Lsr.TEMT) == Lsr.THRE | Lsr.TEMT
    assert rig.output == b"hey"
    assert u.stats.tx_bytes == 3
    assert u.poll(rig.clock.now_ns()) is None


@pytest.mark.parametrize(
    ("lcr", "bits"),
    [
        (0x00, 7),  # 5N1
        (0x03, 10),  # 8N1
        (0x0B, 11),  # 8E1 (parity enable)
        (0x07, 11),  # 8N2
        (0x0F, 12),  # 8P2
        (0x04, 7.5),  # 5N1.5
        (0x02, 9),  # 7N1
    ],
)
def test_word_length_parity_and_stop_bits_set_the_character_time(rig, lcr, bits):
    u = rig.uart
    set_divisor(u, 3, lcr)
    write_reg(u, Register.THR, 0x55)
    assert u.poll(0) == math.ceil(char_ns(3, bits))
    assert u.char_time_ns == pytest.approx(char_ns(3, bits))


def test_divisor_zero_counts_as_65536(rig):
    u = rig.uart
    set_divisor(u, 0)
    assert u.divisor == 65536
    write_reg(u, Register.THR, 0x41)
    assert u.poll(0) == math.ceil(char_ns(65536))


def test_back_to_back_transmission_loses_no_time_to_rounding(rig):
    u = rig.uart
    set_divisor(u, 1)
    write_reg(u, Register.FCR, FIFO_ON)
    data = bytes(i & 0xFF for i in range(1000))
    sent = 0
    while True:
        # Refill whenever THR is empty; the shift register is still busy then.
        if read_reg(u, Register.LSR) & Lsr.THRE and sent < len(data):
            chunk = data[sent : sent + FIFO_DEPTH]
            for byte in chunk:
                write_reg(u, Register.THR, byte)
            sent += len(chunk)
        deadline = u.poll(rig.clock.now_ns())
        if deadline is None:
            break
        rig.clock.advance(deadline - rig.clock.now_ns())
    # The first byte started at t=0 and each byte took exactly 10 bit times.
    assert rig.output == data
    assert rig.clock.now_ns() == math.ceil(1000 * char_ns(1))


def test_changing_baud_mid_stream_keeps_the_character_on_the_wire(rig):
    u = rig.uart
    set_divisor(u, 1)
    write_reg(u, Register.FCR, FIFO_ON)
    write_reg(u, Register.THR, ord("a"))
    write_reg(u, Register.THR, ord("b"))
    set_divisor(u, 2)  # 'a' keeps its old end time, 'b' goes slower
    assert u.poll(0) == math.ceil(char_ns(1))
    rig.clock.advance(math.ceil(char_ns(1)))
    assert u.poll(rig.clock.now_ns()) == math.ceil(char_ns(1) + char_ns(2))


def test_poll_is_none_when_idle_and_time_never_goes_backwards(rig):
    u = rig.uart
    assert u.poll(0) is None
    write_reg(u, Register.THR, 1)
    deadline = u.poll(0)
    assert u.poll(deadline) is None
    assert u.poll(0) is None  # an earlier time changes nothing
    assert rig.output == b"\x01"


# ------------------------------------------------------------------------ loopback / modem


def test_loopback_returns_transmitted_bytes_instead_of_sending_them(rig):
    u = rig.uart
    set_divisor(u, 1)
    write_reg(u, Register.FCR, FIFO_ON)
    write_reg(u, Register.MCR, Mcr.LOOP)
    write_reg(u, Register.THR, 0x5A)
    assert not read_reg(u, Register.LSR) & Lsr.DR
    rig.clock.advance(math.ceil(char_ns(1)))
    assert read_reg(u, Register.LSR) & Lsr.DR
    assert read_reg(u, Register.RBR) == 0x5A
    assert rig.sent == []
    assert u.stats.tx_bytes == 0
    assert u.stats.rx_bytes == 1


def test_loopback_msr_mirrors_rts_dtr_out1_out2(rig):
    u = rig.uart
    write_reg(u, Register.MCR, Mcr.LOOP)
    read_reg(u, Register.MSR)  # drop the deltas from entering loopback
    cases = [
        (Mcr.RTS, Msr.CTS),
        (Mcr.DTR, Msr.DSR),
        (Mcr.OUT1, Msr.RI),
        (Mcr.OUT2, Msr.DCD),
    ]
    for mcr, msr in cases:
        write_reg(u, Register.MCR, Mcr.LOOP | mcr)
        assert read_reg(u, Register.MSR) & 0xF0 == msr
        write_reg(u, Register.MCR, Mcr.LOOP)
        read_reg(u, Register.MSR)


def test_push_rx_is_refused_in_loopback(rig):
    write_reg(rig.uart, Register.MCR, Mcr.LOOP)
    assert rig.uart.push_rx(b"abc") == 0
    assert not rig.uart.push_rx_char(1)


def test_modem_input_change_sets_delta_bits_and_the_modem_status_interrupt(rig):
    u = rig.uart
    write_reg(u, Register.MCR, Mcr.OUT2)
    write_reg(u, Register.IER, Ier.EDSSI)
    assert not rig.irq.level
    u.set_modem_inputs(cts=False, dcd=False)
    assert rig.irq.level
    assert iir_id(u) == IirId.MODEM_STATUS
    assert read_reg(u, Register.MSR) == Msr.DSR | Msr.DCTS | Msr.DDCD
    assert read_reg(u, Register.MSR) == Msr.DSR  # deltas clear on read
    assert not rig.irq.level


def test_ring_indicator_sets_teri_only_on_its_trailing_edge(rig):
    u = rig.uart
    u.set_modem_inputs(ri=True)
    assert not read_reg(u, Register.MSR) & Msr.TERI
    u.set_modem_inputs(ri=False)
    assert read_reg(u, Register.MSR) & Msr.TERI


def test_entering_loopback_produces_modem_status_deltas(rig):
    u = rig.uart
    write_reg(u, Register.MCR, Mcr.LOOP | Mcr.RTS)  # CTS stays, DSR and DCD drop
    assert read_reg(u, Register.MSR) == Msr.CTS | Msr.DDSR | Msr.DDCD


# ------------------------------------------------------------------------ guest mistakes


@pytest.mark.parametrize("size", [0, 2, 4, 8])
def test_wrong_access_size_is_an_error_and_counted(rig, size):
    u, bus = rig.uart, plug(rig.uart)
    assert bus.io_read(BASE, size) is IoError.INVALID_ACCESS_SIZE
    assert bus.io_write(BASE + Register.SCR, size, 0x12) is IoError.INVALID_ACCESS_SIZE
    assert bus.io_read(BASE + Register.SCR, 1) == 0  # the write was dropped
    assert (u.stats.missed_reads, u.stats.missed_writes) == (1, 1)
    assert (u.stats.reads, u.stats.writes) == (1, 0)


@pytest.mark.parametrize("port", [BASE - 1, BASE + 8, 0x2F8, 0xFFFF])
def test_port_outside_the_range_never_reaches_the_uart(rig, port):
    u, bus = rig.uart, plug(rig.uart)
    assert bus.io_read(port, 1) is IoError.INVALID_REGISTER
    assert bus.io_write(port, 1, 0) is IoError.INVALID_REGISTER
    assert (bus.stats.unclaimed_reads, bus.stats.unclaimed_writes) == (1, 1)
    assert (u.stats.reads, u.stats.writes, u.stats.missed_reads, u.stats.missed_writes) == (0, 0, 0, 0)


def test_writes_to_lsr_and_msr_are_ignored(rig):
    write_reg(rig.uart, Register.LSR, 0)
    write_reg(rig.uart, Register.MSR, 0)
    assert read_reg(rig.uart, Register.LSR) == Lsr.THRE | Lsr.TEMT


# ------------------------------------------------------------------------ reset / save / restore


def busy_rig() -> Rig:
    """A UART with something in every corner of its state."""
    rig = Rig(start_ns=5_000)
    u = rig.uart
    set_divisor(u, 12, LCR_8N1 | Lcr.PEN)
    write_reg(u, Register.FCR, FIFO_ON | 0x80)
    write_reg(u, Register.IER, 0x0F)
    write_reg(u, Register.MCR, Mcr.OUT2 | Mcr.DTR)
    write_reg(u, Register.SCR, 0x77)
    for byte in b"transmit":
        write_reg(u, Register.THR, byte)
    u.push_rx(b"rx")
    u.push_rx_char(ord("!"), framing_error=True)
    u.set_modem_inputs(dsr=False)
    rig.clock.advance(1_500_000)  # mid-character
    return rig


def registers(u: Uart16550) -> list[int]:
    """Reads every register, as a guest would (this changes the state)."""
    values = [read_reg(u, reg) for reg in (1, 2, 3, 4, 5, 6, 7)]
    values.append(read_reg(u, Register.RBR))
    write_reg(u, Register.LCR, read_reg(u, Register.LCR) | Lcr.DLAB)
    values += [read_reg(u, Register.DLL), read_reg(u, Register.DLM)]
    return values


def test_save_restore_into_a_fresh_device_is_identical():
    src = busy_rig()
    saved = src.uart.save()
    dst = Rig(start_ns=123_456_789)  # another clock: saved times are relative
    dst.uart.restore(saved)
    assert dst.uart.save() == saved
    assert dst.irq.level == src.irq.level is True
    assert registers(dst.uart) == registers(src.uart)


def test_restored_device_finishes_transmission_on_the_same_schedule():
    src = busy_rig()
    dst = Rig(start_ns=10**12)
    dst.uart.restore(src.uart.save())
    offset = dst.clock.now_ns() - src.clock.now_ns()
    deadline = src.uart.poll(src.clock.now_ns())
    assert dst.uart.poll(dst.clock.now_ns()) == deadline + offset
    for rig in (src, dst):
        rig.clock.advance(10**9)
        rig.uart.poll(rig.clock.now_ns())
    assert src.output == b"transmit"
    assert dst.output == b"ransmit"  # 't' had left before the save


def test_save_holds_only_plain_values():
    saved = busy_rig().uart.save()
    assert saved["version"] == 1
    for key, value in saved.items():
        assert type(value) in (int, bool, bytes), key


def test_saved_state_survives_a_msgpack_round_trip():
    msgpack = pytest.importorskip("msgpack")
    src = busy_rig()
    saved = src.uart.save()
    unpacked = msgpack.unpackb(msgpack.packb(saved, use_bin_type=True), raw=False)
    dst = Rig()
    dst.uart.restore(unpacked)
    assert dst.uart.save() == saved


def bad_states() -> list[tuple[str, dict]]:
    good = busy_rig().uart.save()
    cases = []

    def case(name: str, **changes) -> None:
        cases.append((name, {**good, **changes}))

    case("rx fifo longer than 16", rx_fifo=b"x" * 17, rx_flags=bytes(17))
    case("tx fifo longer than 16", tx_fifo=b"x" * 17)
    case("two bytes in 16450 mode", fcr=0, rx_fifo=b"ab", rx_flags=bytes(2))
    case("flags and fifo differ", rx_flags=b"")
    case("unknown version", version=2)
    case("register out of range", lcr=0x100)
    case("reserved IER bits", ier=0xFF)
    case("bool as int", tsr_busy=1)
    case("negative remaining time", tsr_remaining_ticks=-1)
    case("tx data with an idle shift register", tsr_busy=False, tsr_remaining_ticks=0)
    missing = dict(good)
    del missing["scr"]
    cases.append(("missing key", missing))
    cases.append(("unknown key", {**good, "extra": 1}))
    cases.append(("not a dict", []))  # type: ignore[list-item]
    return cases


@pytest.mark.parametrize(("name", "state"), bad_states(), ids=[n for n, _ in bad_states()])
def test_restore_rejects_a_bad_state_and_keeps_the_old_one(name, state):
    rig = busy_rig()
    before = rig.uart.save()
    with pytest.raises(ValueError):
        rig.uart.restore(state)
    assert rig.uart.save() == before


def test_restore_rederives_the_irq_level():
    src = busy_rig()
    dst = Rig()
    dst.uart.restore(src.uart.save())
    assert dst.irq.levels == [True]
    dst.uart.restore(Rig().uart.save())
    assert dst.irq.levels == [True, False]


def test_reset_returns_to_power_on_values():
    rig = busy_rig()
    rig.uart.reset()
    assert rig.uart.save() == Rig().uart.save() | {"modem_inputs": Msr.DCD | Msr.CTS}
    assert not rig.irq.level
    assert rig.uart.poll(rig.clock.now_ns()) is None


def test_stats_count_bytes_each_way(rig):
    u = rig.uart
    write_reg(u, Register.THR, 0x41)
    rig.clock.advance(10**9)
    u.push_rx(b"xy")
    u.poll(rig.clock.now_ns())
    assert (u.stats.tx_bytes, u.stats.rx_bytes, u.stats.overruns) == (1, 1, 0)
