"""The cascaded Intel 8259A programmable interrupt controller pair of a PC, plus the PIIX ELCR.

Wiring (as on the PC/AT and the PIIX south bridges a Hyper-V generation-1 VM emulates):

* master at ports 0x20 (A0=0) and 0x21 (A0=1), IRQ0..7 on its IR0..IR7;
* slave at ports 0xA0/0xA1, IRQ8..15, its INT output wired to the master's IR2;
* ELCR1/ELCR2 at 0x4D0/0x4D1, one bit per IRQ, 1 = level triggered.  IRQ0, 1, 2, 8 and 13
  are fixed edge on PIIX (their bits read 0 and ignore writes).

Names follow the 8259A datasheet: IRR (interrupt request register), ISR (in-service
register), IMR (interrupt mask register), ICW1..4 (initialization command words), OCW1..3
(operation command words), AEOI (automatic end of interrupt), SFNM (special fully nested
mode), SMM (special mask mode), LTIM (level triggered mode bit of ICW1).

Modelling choices (datasheet first, then what an emulator needs):

* An IR input must stay high until INTA.  A request whose input falls before the CPU's
  acknowledge is withdrawn, in edge and in level mode; the acknowledge then returns the IR7
  vector without setting an ISR bit (a "spurious IRQ7").
* Edge mode: a low-to-high transition sets the IRR bit; the acknowledge clears it and the
  input must go low and high again for the next request.  Level mode (ELCR bit, or LTIM for
  the whole chip as the 8259A datasheet says; PIIX ignores LTIM but PC guests write 0 there):
  the IRR bit follows the input and survives the acknowledge.
* The cascade input (master IR2) latches rising edges of the slave's INT output and is not
  withdrawn when INT falls again: that is how a slave request that went away before INTA
  becomes a "spurious IRQ15" (master ISR2 set, slave vector 7 returned, no slave ISR bit).
  Acknowledging the slave counts as a fresh edge when the slave still has a request, as the
  real slave drops INT during the INTA sequence; without it a slave in AEOI mode with two
  requests would lose the second.
* Only the 8086 INTA protocol is modelled: ``acknowledge()`` returns the vector byte whatever
  ICW4's microprocessor-mode bit says, as an x86 CPU cannot use the 8080 CALL sequence.
* Before the guest initializes the chips they answer as if initialized with vector bases
  0x00 (master) and 0x08 (slave), IMR 0, cascade on IR2: the power-on state of the chip is
  undefined and the firmware always programs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from worker.devices.base import ChipsetDevice, DeviceStats, IrqLine, PortRange
from worker.devices.config import Pic8259Config
from worker.devices.state import Byte, Mask, OneOf, Range

SAVE_VERSION = 1

MASTER_PORT = 0x20
SLAVE_PORT = 0xA0
ELCR_PORT = 0x4D0

CASCADE_IR = 2  # the master input the slave's INT drives
SPURIOUS_IR = 7  # the level whose vector a chip returns when no request is left at INTA

# ICW1 (A0=0, D4=1)
ICW1_IC4 = 0x01  # ICW4 will be written
ICW1_SNGL = 0x02  # single chip, no ICW3
ICW1_LTIM = 0x08  # level triggered mode for every input
ICW1_INIT = 0x10
# ICW4
ICW4_UPM = 0x01  # 8086/8088 mode
ICW4_AEOI = 0x02
ICW4_SFNM = 0x10
# OCW3 (A0=0, D4=0, D3=1)
OCW3_RIS = 0x01  # read ISR (else IRR) ...
OCW3_RR = 0x02  # ... when this bit says to change the selection
OCW3_P = 0x04  # poll command
OCW3_SELECT = 0x08
OCW3_SMM = 0x20  # special mask mode on (else off) ...
OCW3_ESMM = 0x40  # ... when this bit says to change it

# Initialization sequence steps: which ICW the A0=1 port expects next.
READY = 0
EXPECT_ICW2 = 2
EXPECT_ICW3 = 3
EXPECT_ICW4 = 4


@dataclass
class ChipState:
    """One 8259A.  Defaults are the state this model gives a chip at reset."""

    irr: Byte = 0
    isr: Byte = 0
    imr: Byte = 0
    lines: Byte = 0  # IR input levels as last driven
    elcr: Byte = 0  # this chip's half of the ELCR
    init_step: Annotated[int, OneOf(READY, EXPECT_ICW2, EXPECT_ICW3, EXPECT_ICW4)] = READY
    icw1: Annotated[int, Mask(0x1F)] = ICW1_INIT | ICW1_IC4
    vector_base: Annotated[int, Mask(0xF8)] = 0  # ICW2 with T2..T0 cleared
    icw3: Byte = 0
    icw4: Annotated[int, Mask(0x1F)] = ICW4_UPM
    rotate_in_aeoi: bool = False
    # The level with the lowest priority; the next one is highest.
    lowest_priority: Annotated[int, Range(0, 7)] = 7
    read_isr: bool = False  # OCW3 RIS: what a read of A0=0 returns
    poll: bool = False  # OCW3 P: the next read of A0=0 is a poll
    special_mask: bool = False

    # --- decoded ICW bits -------------------------------------------------------------
    @property
    def aeoi(self) -> bool:
        return bool(self.icw4 & ICW4_AEOI)

    @property
    def sfnm(self) -> bool:
        return bool(self.icw4 & ICW4_SFNM)

    @property
    def single(self) -> bool:
        return bool(self.icw1 & ICW1_SNGL)

    def level_mask(self) -> int:
        """Inputs that are level triggered."""
        return 0xFF if self.icw1 & ICW1_LTIM else self.elcr

    def priority_order(self) -> list[int]:
        """Levels from highest to lowest priority (rotation moves the start)."""
        return [(self.lowest_priority + 1 + i) & 7 for i in range(8)]


@dataclass
class Pic8259State:
    master: ChipState = field(default_factory=ChipState)
    slave: ChipState = field(default_factory=ChipState)
    slave_int: bool = False  # the slave's INT output as the master's IR2 last saw it


@dataclass
class PicCounters:
    """What the PIC pair has done, for metrics (not guest state: not saved)."""

    acknowledged: list[int] = field(default_factory=lambda: [0] * 16)  # per IRQ
    spurious_irq7: int = 0
    spurious_irq15: int = 0
    eois: int = 0  # OCW2 commands that end an interrupt (specific or not, rotating or not)

    @property
    def spurious(self) -> int:
        return self.spurious_irq7 + self.spurious_irq15


class PicInput:
    """The IrqLine a device drives for one IRQ."""

    def __init__(self, pic: Pic8259, irq: int) -> None:
        self._pic = pic
        self.irq = irq

    def set_level(self, high: bool) -> None:
        self._pic.set_irq(self.irq, high)


class Pic8259(ChipsetDevice):
    """The master/slave 8259A pair with the ELCR registers.  ``irq`` is the master's INT
    output, the CPU's INTR."""

    def __init__(self, config: Pic8259Config, irq: IrqLine) -> None:
        self.config = config
        self.name = self.config.name
        self.irq = irq
        self.stats = DeviceStats()
        self.counters = PicCounters()
        self._inputs = [None if n == CASCADE_IR else PicInput(self, n) for n in range(16)]
        self.state = Pic8259State()
        self._power_on()

    @property
    def master(self) -> ChipState:
        return self.state.master

    @property
    def slave(self) -> ChipState:
        return self.state.slave

    # --- wiring --------------------------------------------------------------------------
    def port_ranges(self) -> list[PortRange]:
        return [PortRange(MASTER_PORT, 2), PortRange(SLAVE_PORT, 2), PortRange(ELCR_PORT, 2)]

    def irq_line(self, n: int) -> IrqLine:
        """The line a device raises for IRQn.  IRQ2 is the cascade and has no device input."""
        if not 0 <= n <= 15:
            raise ValueError(f"IRQ {n} is not 0..15")
        line = self._inputs[n]
        if line is None:
            raise ValueError("IRQ2 is the cascade from the slave PIC; ISA IRQ2 is wired to IRQ9")
        return line

    def set_irq(self, irq: int, high: bool) -> None:
        """Drive the IR input of IRQ ``irq`` (what :class:`PicInput` calls)."""
        chip, bit = self._chip_bit(irq)
        was_high = bool(chip.lines & bit)
        if was_high == high:
            return
        if high:
            chip.lines |= bit
            chip.irr |= bit  # edge: the rising edge latches; level: IRR follows the input
        else:
            chip.lines &= ~bit
            chip.irr &= ~bit  # the request is withdrawn (both modes; see module docstring)
        self._sync_irq()

    def input_high(self, irq: int) -> bool:
        """Whether the IR input of IRQ ``irq`` is driven high."""
        chip, bit = self._chip_bit(irq)
        return bool(chip.lines & bit)

    def in_service(self, irq: int) -> bool:
        """Whether IRQ ``irq``'s ISR bit is set: acknowledged and not yet ended by an EOI."""
        chip, bit = self._chip_bit(irq)
        return bool(chip.isr & bit)

    # --- CPU side ------------------------------------------------------------------------
    def pending_vector(self) -> int | None:
        """The vector ``acknowledge()`` would return now, or None when INTR is low."""
        level = self._highest_request(self.master, is_master=True)
        if level is None:
            return None
        if level == CASCADE_IR and self._cascade_active():
            slave_level = self._highest_request(self.slave, is_master=False)
            return self.slave.vector_base | (SPURIOUS_IR if slave_level is None else slave_level)
        return self.master.vector_base | level

    def acknowledge(self) -> int:
        """The INTA cycle: the vector of the highest-priority request, or a spurious IR7 one."""
        master = self.master
        level = self._highest_request(master, is_master=True)
        if level is None:
            # The request went away (or was masked) after INTR was seen: the master answers
            # with IR7's vector and sets no ISR bit.
            self.counters.spurious_irq7 += 1
            self._sync_irq()
            return master.vector_base | SPURIOUS_IR
        self._inta(master, level, is_master=True)
        if level == CASCADE_IR and self._cascade_active():
            slave = self.slave
            slave_level = self._highest_request(slave, is_master=False)
            if slave_level is None:
                # Same on the slave: master ISR2 stays set (the guest must EOI the master),
                # the slave sets nothing.
                self.counters.spurious_irq15 += 1
                vector = slave.vector_base | SPURIOUS_IR
            else:
                self._inta(slave, slave_level, is_master=False)
                self.counters.acknowledged[8 + slave_level] += 1
                vector = slave.vector_base | slave_level
            self._sync_irq(slave_acknowledged=True)
            return vector
        self.counters.acknowledged[level] += 1
        self._sync_irq()
        return master.vector_base | level

    # --- port I/O ------------------------------------------------------------------------
    # The chips decode A0 only: every port of the three ranges is a register.
    def io_read(self, port: int, size: int) -> int:
        if port in (MASTER_PORT, SLAVE_PORT):
            is_master = port == MASTER_PORT
            chip = self.master if is_master else self.slave
            if chip.poll:
                return self._poll_read(chip, is_master)
            return chip.isr if chip.read_isr else chip.irr
        if port in (MASTER_PORT + 1, SLAVE_PORT + 1):
            return (self.master if port == MASTER_PORT + 1 else self.slave).imr  # OCW1
        return (self.master if port == ELCR_PORT else self.slave).elcr

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port in (MASTER_PORT, SLAVE_PORT):
            self._write_a0_0(self.master if port == MASTER_PORT else self.slave, value)
        elif port in (MASTER_PORT + 1, SLAVE_PORT + 1):
            self._write_a0_1(self.master if port == MASTER_PORT + 1 else self.slave, value)
        else:
            self._write_elcr(port == ELCR_PORT, value)
        self._sync_irq()

    # --- lifecycle -----------------------------------------------------------------------
    def reset(self) -> None:
        self._power_on()

    def _check_state(self, state: Pic8259State) -> None:
        fixed = self.config.elcr_fixed_edge
        if state.master.elcr & (fixed & 0xFF) or state.slave.elcr & (fixed >> 8):
            raise ValueError("PIC saved state sets an ELCR bit that is fixed edge")
        for which, chip in (("master", state.master), ("slave", state.slave)):
            if not chip.icw1 & ICW1_INIT:
                raise ValueError(f"PIC saved state: {which}.icw1 lacks the ICW1 bit")

    # --- internals -----------------------------------------------------------------------
    def _power_on(self) -> None:
        # Input levels belong to the devices and survive a PIC reset; requests do not.
        master = ChipState(lines=self.master.lines & ~(1 << CASCADE_IR), vector_base=0x00,
                           icw3=1 << CASCADE_IR, elcr=self.config.elcr_at_reset & 0xFF)
        slave = ChipState(lines=self.slave.lines, vector_base=0x08, icw3=CASCADE_IR,
                          elcr=self.config.elcr_at_reset >> 8)
        for chip in (master, slave):
            chip.irr = chip.lines & chip.level_mask()  # level inputs request at once
        self.state = Pic8259State(master, slave)
        # Drive INTR even if unchanged, so whatever is wired to it agrees with the reset state.
        self._sync_irq(force=True)

    def _chip_bit(self, irq: int) -> tuple[ChipState, int]:
        if not 0 <= irq <= 15 or irq == CASCADE_IR:
            raise ValueError(f"IRQ {irq} has no device input")
        return (self.master, 1 << irq) if irq < 8 else (self.slave, 1 << (irq - 8))

    def _cascade_active(self) -> bool:
        """Whether an acknowledge of master IR2 is passed on to the slave (ICW3 says so)."""
        return not self.master.single and bool(self.master.icw3 & (1 << CASCADE_IR))

    def _highest_request(self, chip: ChipState, is_master: bool) -> int | None:
        """The level the chip would interrupt for now, per the priority resolver."""
        pending = chip.irr & ~chip.imr
        if not pending:
            return None
        if chip.special_mask:
            # SMM: every unmasked level may interrupt except one already in service.
            for level in chip.priority_order():
                bit = 1 << level
                if pending & bit and not chip.isr & bit:
                    return level
            return None
        for level in chip.priority_order():
            bit = 1 << level
            if chip.isr & bit:
                # A level in service blocks itself and everything below it, except that in
                # SFNM the master lets the cascade input through again: the slave has
                # already checked that its new request beats the one in service.
                if is_master and chip.sfnm and level == CASCADE_IR and pending & bit:
                    return level
                return None
            if pending & bit:
                return level
        return None

    def _inta(self, chip: ChipState, level: int, is_master: bool) -> None:
        """The chip's side of an acknowledge: ISR bit (or AEOI), edge latch consumed."""
        bit = 1 << level
        if chip.aeoi:
            if chip.rotate_in_aeoi:
                chip.lowest_priority = level
        else:
            chip.isr |= bit
        if (is_master and level == CASCADE_IR) or not chip.level_mask() & bit:
            chip.irr &= ~bit

    def _poll_read(self, chip: ChipState, is_master: bool) -> int:
        """OCW3 poll: this read is the acknowledge; returns I (bit 7) and W2..W0."""
        chip.poll = False
        level = self._highest_request(chip, is_master)
        if level is None:
            return 0x00
        self._inta(chip, level, is_master)
        if not is_master:
            self.counters.acknowledged[8 + level] += 1
        elif level != CASCADE_IR or not self._cascade_active():
            self.counters.acknowledged[level] += 1
        self._sync_irq(slave_acknowledged=not is_master)
        return 0x80 | level

    def _write_a0_0(self, chip: ChipState, value: int) -> None:
        if value & ICW1_INIT:
            self._icw1(chip, value)
        elif value & OCW3_SELECT:
            self._ocw3(chip, value)
        else:
            self._ocw2(chip, value)

    def _write_a0_1(self, chip: ChipState, value: int) -> None:
        step = chip.init_step
        if step == EXPECT_ICW2:
            chip.vector_base = value & 0xF8  # T7..T3; the level fills the low bits
            if chip.single:
                chip.init_step = EXPECT_ICW4 if chip.icw1 & ICW1_IC4 else READY
            else:
                chip.init_step = EXPECT_ICW3
        elif step == EXPECT_ICW3:
            chip.icw3 = value
            chip.init_step = EXPECT_ICW4 if chip.icw1 & ICW1_IC4 else READY
        elif step == EXPECT_ICW4:
            chip.icw4 = value & 0x1F
            chip.init_step = READY
        else:
            chip.imr = value  # OCW1

    def _icw1(self, chip: ChipState, value: int) -> None:
        """Start initialization; the datasheet lists what ICW1 resets."""
        chip.icw1 = value & 0x1F
        chip.init_step = EXPECT_ICW2
        chip.imr = 0
        chip.isr = 0
        chip.lowest_priority = 7  # IR7 lowest, IR0 highest
        chip.special_mask = False
        chip.read_isr = False  # status read set to IRR
        chip.poll = False
        chip.rotate_in_aeoi = False
        if not value & ICW1_IC4:
            chip.icw4 = 0  # "all functions selected in ICW4 are set to zero"
        # The edge sense circuit is reset: an edge input that is high now must go low and
        # high again; level inputs keep requesting.
        chip.irr &= chip.level_mask()
        chip.irr |= chip.lines & chip.level_mask()
        if chip is self.master:
            chip.irr &= ~(1 << CASCADE_IR)

    def _ocw2(self, chip: ChipState, value: int) -> None:
        command = value >> 5  # R, SL, EOI
        level = value & 7
        if command == 0b001:  # non-specific EOI
            self.counters.eois += 1
            self._non_specific_eoi(chip)
        elif command == 0b011:  # specific EOI
            self.counters.eois += 1
            chip.isr &= ~(1 << level)
        elif command == 0b101:  # rotate on non-specific EOI
            self.counters.eois += 1
            ended = self._non_specific_eoi(chip)
            if ended is not None:
                chip.lowest_priority = ended
        elif command == 0b100:  # rotate in AEOI mode (set)
            chip.rotate_in_aeoi = True
        elif command == 0b000:  # rotate in AEOI mode (clear)
            chip.rotate_in_aeoi = False
        elif command == 0b111:  # rotate on specific EOI
            self.counters.eois += 1
            chip.isr &= ~(1 << level)
            chip.lowest_priority = level
        elif command == 0b110:  # set priority command
            chip.lowest_priority = level
        # 0b010: no operation

    @staticmethod
    def _non_specific_eoi(chip: ChipState) -> int | None:
        """Clear the highest-priority ISR bit; in SMM, masked levels are skipped."""
        in_service = chip.isr & ~chip.imr if chip.special_mask else chip.isr
        for level in chip.priority_order():
            if in_service & (1 << level):
                chip.isr &= ~(1 << level)
                return level
        return None

    @staticmethod
    def _ocw3(chip: ChipState, value: int) -> None:
        if value & OCW3_ESMM:
            chip.special_mask = bool(value & OCW3_SMM)
        if value & OCW3_RR:
            chip.read_isr = bool(value & OCW3_RIS)
        if value & OCW3_P:
            chip.poll = True

    def _write_elcr(self, is_master: bool, value: int) -> None:
        chip = self.master if is_master else self.slave
        fixed_edge = self.config.elcr_fixed_edge
        fixed = fixed_edge & 0xFF if is_master else fixed_edge >> 8
        chip.elcr = value & ~fixed & 0xFF
        # An input that becomes level triggered while high requests at once.
        chip.irr |= chip.lines & chip.level_mask()

    def _irq_wanted(self) -> bool:
        return self._highest_request(self.master, is_master=True) is not None

    def _sync_irq(self, force: bool = False, slave_acknowledged: bool = False) -> None:
        """Propagate the slave's INT to master IR2, then the master's INT to INTR."""
        slave_int = self._highest_request(self.slave, is_master=False) is not None
        bit = 1 << CASCADE_IR
        if slave_int and (not self.state.slave_int or slave_acknowledged):
            self.master.irr |= bit  # a rising edge (or the INTA-time dip) of the slave INT
        self.state.slave_int = slave_int
        self.master.lines = (self.master.lines & ~bit) | (bit if slave_int else 0)
        super()._sync_irq(force)
