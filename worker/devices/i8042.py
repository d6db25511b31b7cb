"""The PC/AT keyboard controller (Intel 8042 running the IBM/AMI PS/2 firmware) at ports
0x60 (data) and 0x64 (status read / command write), with a PS/2 keyboard on its first port
(IRQ1).  The second (aux) port is modelled as a port with no mouse plugged in (IRQ12).

Data flow.  The controller has one output buffer (read at 0x60; OBF in the status register).
Replies to controller commands are put straight into it.  The keyboard has its own queue:
replies to keyboard commands (ACK 0xFA, BAT 0xAA, ...) and, after them, scancodes pushed by
the host (``push_scancodes``), at most 16 like a real keyboard's buffer.  Whenever the output
buffer is empty and the keyboard interface is enabled, the next keyboard byte moves into it
and IRQ1 rises if command byte bit 0 says so.  A guest read of 0x60 empties the buffer, lowers
IRQ1 and lets the next byte in, raising IRQ1 again: a fresh edge per byte for the PIC.

Policies (where the documents leave room):

* A controller reply that finds an unread keyboard (or aux) byte in the output buffer puts
  that byte back at the head of its queue instead of destroying it: the guest reads the reply
  it asked for, and no keystroke is lost.  An unread controller reply is overwritten.
* Translation (command byte bit 6) is stored and reported but not applied: scancodes are
  passed on exactly as pushed, and so are keyboard replies (0xF2 answers 0xAB 0x83, 0xF0 00
  answers the set number).  The host pushes whatever set the guest expects to read.
* The byte after keyboard command 0xED, 0xF3 or 0xF0 is always taken as its data.
* Writing a byte for the keyboard to 0x60 clears the "keyboard disabled" bit, as AT-compatible
  controller firmware does.
* With scanning disabled (keyboard command 0xF5) the keyboard ignores keys: ``push_scancodes``
  accepts nothing.  With the interface disabled (0xAD, command byte bit 4) the keyboard still
  buffers keys, which are delivered when the interface is enabled again.
* Aux port: 0xA7/0xA8/0xA9/0xD3 work; a byte for the aux device (0xD4) finds no mouse and is
  answered 0xFE with the timeout status bit, which is how a controller reports an empty port.
* CPU reset (command 0xFE, any 0xF0-0xFF pulse with bit 0 clear, or 0xD1 with output port bit 0
  clear) calls ``reset_cpu`` as the very last thing the access does, so the worker may reset
  this device from inside the callback.  The reset line is a pulse: output port bit 0 reads 1.
* ``reset()`` is a power-on of controller and keyboard: queues are emptied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated, Callable

from worker.devices.base import ChipsetDevice, DeviceStats, IrqLine, NullIrqLine, PortRange
from worker.devices.config import I8042Config
from worker.devices.state import Byte, Length, OneOf

log = logging.getLogger(__name__)


# Status register (read at 0x64).
STATUS_OBF = 0x01  # output buffer full
STATUS_IBF = 0x02  # input buffer full (never: writes are handled at once)
STATUS_SYS = 0x04  # system flag, a copy of command byte bit 2
STATUS_A2 = 0x08  # 1: last write was to 0x64 (command), 0: to 0x60 (data)
STATUS_INH = 0x10  # 1: keyboard not inhibited by the key lock (there is no lock)
STATUS_AUXB = 0x20  # the output buffer holds aux data
STATUS_TIMEOUT = 0x40
STATUS_PARITY = 0x80

# Command byte (controller RAM byte 0).
CMD_KBD_INT = 0x01  # IRQ1 on keyboard data
CMD_AUX_INT = 0x02  # IRQ12 on aux data
CMD_SYS = 0x04
CMD_IGNORE_LOCK = 0x08
CMD_KBD_DISABLE = 0x10
CMD_AUX_DISABLE = 0x20
CMD_XLATE = 0x40

# Output port (0xD0 / 0xD1).
OUT_RESET = 0x01  # 0 holds the CPU in reset
OUT_A20 = 0x02
OUT_KBD_OBF = 0x10  # read-only here: mirrors OBF with keyboard data
OUT_AUX_OBF = 0x20  # read-only here: mirrors OBF with aux data
# Power-on: CPU running, A20 enabled, clock and data lines of both ports idle high.
OUTPUT_PORT_DEFAULT = 0xCF
# Input port (0xC0): bit 7 = keyboard not inhibited; the rest are board straps, all 0.
INPUT_PORT = 0x80

# Controller commands (written to 0x64).
CTRL_READ_RAM = 0x20  # 0x20-0x3F: read RAM byte (cmd & 0x1F); 0x20 is the command byte
CTRL_WRITE_RAM = 0x60  # 0x60-0x7F: write RAM byte, data follows at 0x60
CTRL_PASSWORD_INSTALLED = 0xA4
CTRL_DISABLE_AUX = 0xA7
CTRL_ENABLE_AUX = 0xA8
CTRL_TEST_AUX = 0xA9
CTRL_SELF_TEST = 0xAA
CTRL_TEST_KBD = 0xAB
CTRL_DISABLE_KBD = 0xAD
CTRL_ENABLE_KBD = 0xAE
CTRL_READ_INPUT = 0xC0
CTRL_READ_OUTPUT = 0xD0
CTRL_WRITE_OUTPUT = 0xD1
CTRL_WRITE_KBD_OBUF = 0xD2
CTRL_WRITE_AUX_OBUF = 0xD3
CTRL_WRITE_AUX = 0xD4
CTRL_READ_TEST_INPUTS = 0xE0
CTRL_PULSE = 0xF0  # 0xF0-0xFF: pulse output port bits 3:0 that are 0 in the command

SELF_TEST_OK = 0x55
INTERFACE_TEST_OK = 0x00
NO_PASSWORD = 0xF1

# Keyboard commands (written to 0x60) and replies.
KBD_SET_LEDS = 0xED
KBD_ECHO = 0xEE
KBD_SCANCODE_SET = 0xF0
KBD_IDENTIFY = 0xF2
KBD_SET_TYPEMATIC = 0xF3
KBD_ENABLE = 0xF4
KBD_DISABLE = 0xF5  # default disable
KBD_SET_DEFAULT = 0xF6
KBD_RESEND = 0xFE
KBD_RESET = 0xFF

KBD_ACK = 0xFA
KBD_NAK = 0xFE  # "resend": the keyboard did not understand
KBD_BAT_OK = 0xAA
KBD_ID = (0xAB, 0x83)  # MF2 keyboard
KBD_TYPEMATIC_DEFAULT = 0x2B  # 10.9 characters/s after 500 ms
KBD_SCANCODE_SET_DEFAULT = 2

# Commands that take one data byte; the keyboard waits for it.
KBD_COMMANDS_WITH_DATA = (KBD_SET_LEDS, KBD_SCANCODE_SET, KBD_SET_TYPEMATIC)
# Controller commands that take one data byte at 0x60.
CTRL_COMMANDS_WITH_DATA = frozenset(
    [*range(CTRL_WRITE_RAM, CTRL_WRITE_RAM + 0x20), CTRL_WRITE_OUTPUT, CTRL_WRITE_KBD_OBUF,
     CTRL_WRITE_AUX_OBUF, CTRL_WRITE_AUX]
)

# Power-on command byte: both interrupts on, no translation (the BIOS programs its own).
COMMAND_BYTE_DEFAULT = CMD_KBD_INT | CMD_AUX_INT
RAM_SIZE = 32
# Keyboard command replies pending at once are few; a bound keeps restore() honest.
MAX_REPLIES = 16


def _default_ram() -> list[int]:
    return [COMMAND_BYTE_DEFAULT] + [0] * (RAM_SIZE - 1)


# Reply queues may hold one byte over their bound: a controller reply pushes back the device
# byte it displaces.
Replies = Annotated[list[Byte], Length(at_most=MAX_REPLIES + 1)]


@dataclass
class I8042State:
    # ram[0] is the command byte
    ram: Annotated[list[Byte], Length(exactly=RAM_SIZE)] = field(default_factory=_default_ram)
    output_port: Byte = OUTPUT_PORT_DEFAULT  # bits 4/5 are computed from the buffer
    out_buf: Byte = 0  # the output buffer; keeps its last value after being read
    obf: bool = False
    out_aux: bool = False  # status AUXB: the byte in the output buffer is aux data
    out_from_device: bool = False  # it came from a device queue (not a controller reply)
    timeout: bool = False
    last_write_command: bool = True  # status A2
    # A controller command waiting for its data byte.
    pending_command: Annotated[int, OneOf(*CTRL_COMMANDS_WITH_DATA)] | None = None
    # The keyboard.
    kbd_replies: Replies = field(default_factory=list)  # sent before any scancode
    kbd_scancodes: list[Byte] = field(default_factory=list)  # at most the queue size
    kbd_scanning: bool = True
    # A keyboard command waiting for its data byte.
    kbd_pending: Annotated[int, OneOf(*KBD_COMMANDS_WITH_DATA)] | None = None
    kbd_leds: Byte = 0
    kbd_scancode_set: Annotated[int, OneOf(1, 2, 3)] = KBD_SCANCODE_SET_DEFAULT
    kbd_typematic: Byte = KBD_TYPEMATIC_DEFAULT
    kbd_last_sent: Byte = KBD_BAT_OK  # for the keyboard's own 0xFE resend command
    # The aux port: bytes waiting to reach the output buffer with AUXB.
    aux_queue: Replies = field(default_factory=list)


class I8042(ChipsetDevice):
    """8042 keyboard controller with a PS/2 keyboard; ``irq`` is IRQ1, ``aux_irq`` IRQ12.

    ``reset_cpu`` is called for a CPU reset request; ``set_a20`` (optional) with the new gate
    state when the guest changes output port bit 1.
    """

    name = "i8042"

    def __init__(
        self,
        config: I8042Config,
        irq: IrqLine,
        reset_cpu: Callable[[], None],
        aux_irq: IrqLine | None = None,
        set_a20: Callable[[bool], None] | None = None,
    ) -> None:
        self.config = config
        self.irq = irq
        self.aux_irq = aux_irq if aux_irq is not None else NullIrqLine()
        self.reset_cpu = reset_cpu
        self.set_a20 = set_a20
        self.stats = DeviceStats()
        self.unknown_commands = 0
        self.state = I8042State()
        self._aux_irq_level = False
        self._sync_irq(force=True)

    # --- the Device interface ---

    def port_ranges(self) -> list[PortRange]:
        return [PortRange(self.config.data_port, 1), PortRange(self.config.command_port, 1)]

    def io_read(self, port: int, size: int) -> int:
        if port == self.config.command_port:
            return self._status()
        return self._read_data()

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == self.config.command_port:
            reset = self._write_command(value)
        else:
            reset = self._write_data(value)
        self._fill_output_buffer()
        if reset:
            self.reset_cpu()  # last: the worker may reset this device from inside

    def reset(self) -> None:
        self.state = I8042State()
        self._sync_irq(force=True)

    def _check_state(self, state: I8042State) -> None:
        if len(state.kbd_scancodes) > self.config.keyboard_queue_size:
            raise ValueError(f"i8042 saved kbd_scancodes hold more than the keyboard's "
                             f"{self.config.keyboard_queue_size} bytes")
        state.kbd_leds &= 0x07  # a keyboard has three LEDs; other bits are not kept

    # --- host side ---

    def push_scancodes(self, data: bytes) -> int:
        """Queue scancodes from the host's keyboard; returns how many the keyboard took."""
        s = self.state
        if not s.kbd_scanning:
            return 0  # a keyboard that is not scanning does not see keys
        room = max(0, self.config.keyboard_queue_size - len(s.kbd_scancodes))
        accepted = bytes(data[:room])
        s.kbd_scancodes.extend(accepted)
        self._fill_output_buffer()
        return len(accepted)

    @property
    def keyboard_leds(self) -> int:
        """LED bits the guest set: 0 scroll lock, 1 num lock, 2 caps lock."""
        return self.state.kbd_leds

    @property
    def command_byte(self) -> int:
        return self.state.ram[0]

    # --- ports ---

    def _status(self) -> int:
        s = self.state
        status = STATUS_INH
        if s.obf:
            status |= STATUS_OBF | (STATUS_AUXB if s.out_aux else 0)
        if s.ram[0] & CMD_SYS:
            status |= STATUS_SYS
        if s.last_write_command:
            status |= STATUS_A2
        if s.timeout:
            status |= STATUS_TIMEOUT
        return status

    def _read_data(self) -> int:
        s = self.state
        value = s.out_buf  # with OBF clear this is the stale last byte, as on hardware
        if s.obf:
            s.obf = False
            s.timeout = False
            self._sync_irq()  # drop the line so the next byte makes a new edge
            self._fill_output_buffer()
        return value

    def _write_command(self, command: int) -> bool:
        """Run a controller command; True if it asks for a CPU reset."""
        s = self.state
        s.last_write_command = True
        s.pending_command = None  # a new command abandons one still waiting for data
        if command in CTRL_COMMANDS_WITH_DATA:
            s.pending_command = command
        elif CTRL_READ_RAM <= command < CTRL_READ_RAM + RAM_SIZE:
            self._reply(s.ram[command & 0x1F])
        elif command == CTRL_PASSWORD_INSTALLED:
            self._reply(NO_PASSWORD)
        elif command == CTRL_DISABLE_AUX:
            s.ram[0] |= CMD_AUX_DISABLE
        elif command == CTRL_ENABLE_AUX:
            s.ram[0] &= ~CMD_AUX_DISABLE
        elif command in (CTRL_TEST_AUX, CTRL_TEST_KBD):
            self._reply(INTERFACE_TEST_OK)
        elif command == CTRL_SELF_TEST:
            s.ram[0] |= CMD_SYS  # a passed self-test sets the system flag
            self._reply(SELF_TEST_OK)
        elif command == CTRL_DISABLE_KBD:
            s.ram[0] |= CMD_KBD_DISABLE
        elif command == CTRL_ENABLE_KBD:
            s.ram[0] &= ~CMD_KBD_DISABLE
        elif command == CTRL_READ_INPUT:
            self._reply(INPUT_PORT)
        elif command == CTRL_READ_OUTPUT:
            self._reply(self._output_port())
        elif command == CTRL_READ_TEST_INPUTS:
            self._reply(0x00)
        elif command >= CTRL_PULSE:
            # Bits 3:0 that are 0 are pulsed low for 6 us; bit 0 is the CPU reset line.
            return not command & OUT_RESET
        else:
            self.unknown_commands += 1
            log.debug("i8042: ignoring unknown controller command %#04x", command)
        self._sync_irq()
        return False

    def _write_data(self, value: int) -> bool:
        """A byte at 0x60: data for a pending controller command, else for the keyboard."""
        s = self.state
        s.last_write_command = False
        command, s.pending_command = s.pending_command, None
        if command is None:
            s.ram[0] &= ~CMD_KBD_DISABLE  # sending to the keyboard enables its interface
            self._keyboard_command(value)
        elif command in range(CTRL_WRITE_RAM, CTRL_WRITE_RAM + RAM_SIZE):
            s.ram[command & 0x1F] = value & 0x7F if command == CTRL_WRITE_RAM else value
        elif command == CTRL_WRITE_OUTPUT:
            return self._write_output_port(value)
        elif command == CTRL_WRITE_KBD_OBUF:
            self._reply(value)
        elif command == CTRL_WRITE_AUX_OBUF:
            self._reply(value, aux=True)
        elif command == CTRL_WRITE_AUX:
            # No mouse on the aux port: the transmission times out.
            _append_bounded(s.aux_queue, KBD_NAK)
            s.timeout = True
        self._sync_irq()
        return False

    def _output_port(self) -> int:
        s = self.state
        value = s.output_port & ~(OUT_KBD_OBF | OUT_AUX_OBF)
        if s.obf:
            value |= OUT_AUX_OBF if s.out_aux else OUT_KBD_OBF
        return value

    def _write_output_port(self, value: int) -> bool:
        s = self.state
        a20 = bool(value & OUT_A20)
        a20_changed = a20 != bool(s.output_port & OUT_A20)
        # The reset line is a pulse here: the CPU comes out of reset with bit 0 high again.
        s.output_port = (value | OUT_RESET) & ~(OUT_KBD_OBF | OUT_AUX_OBF)
        if a20_changed and self.set_a20 is not None:
            self.set_a20(a20)
        return not value & OUT_RESET

    # --- output buffer ---

    def _reply(self, value: int, aux: bool = False) -> None:
        """Put a controller-generated byte in the output buffer at once."""
        s = self.state
        if s.obf and s.out_from_device:
            # Give an unread device byte back to the head of its queue rather than overwrite
            # it; an unread controller reply is simply overwritten, as on the chip.
            (s.aux_queue if s.out_aux else s.kbd_replies).insert(0, s.out_buf)
        s.out_buf = value
        s.obf = True
        s.out_aux = aux
        s.out_from_device = False
        self._sync_irq()

    def _fill_output_buffer(self) -> None:
        s = self.state
        if not s.obf:
            if not s.ram[0] & CMD_KBD_DISABLE and (s.kbd_replies or s.kbd_scancodes):
                queue = s.kbd_replies if s.kbd_replies else s.kbd_scancodes
                s.out_buf = queue.pop(0)
                s.kbd_last_sent = s.out_buf
                s.obf, s.out_aux, s.out_from_device = True, False, True
            elif not s.ram[0] & CMD_AUX_DISABLE and s.aux_queue:
                s.out_buf = s.aux_queue.pop(0)
                s.obf, s.out_aux, s.out_from_device = True, True, True
        self._sync_irq()

    # --- the keyboard ---

    def _keyboard_command(self, value: int) -> None:
        s = self.state
        command, s.kbd_pending = s.kbd_pending, None
        if command == KBD_SET_LEDS:
            s.kbd_leds = value & 0x07
            self._kbd_reply(KBD_ACK)
        elif command == KBD_SET_TYPEMATIC:
            s.kbd_typematic = value & 0x7F
            self._kbd_reply(KBD_ACK)
        elif command == KBD_SCANCODE_SET:
            if value == 0:
                self._kbd_reply(KBD_ACK, s.kbd_scancode_set)
            elif value in (1, 2, 3):
                s.kbd_scancode_set = value
                self._kbd_reply(KBD_ACK)
            else:
                self._kbd_reply(KBD_NAK)
        elif value in KBD_COMMANDS_WITH_DATA:
            s.kbd_pending = value
            self._kbd_reply(KBD_ACK)
        elif value == KBD_ECHO:
            self._kbd_reply(KBD_ECHO)
        elif value == KBD_IDENTIFY:
            self._kbd_reply(KBD_ACK, *KBD_ID)
        elif value == KBD_ENABLE:
            s.kbd_scancodes.clear()  # "clears its output buffer, and starts scanning"
            s.kbd_scanning = True
            self._kbd_reply(KBD_ACK)
        elif value in (KBD_DISABLE, KBD_SET_DEFAULT):
            s.kbd_scancodes.clear()
            self._kbd_defaults()
            s.kbd_scanning = value == KBD_SET_DEFAULT
            self._kbd_reply(KBD_ACK)
        elif 0xF7 <= value <= 0xFD:
            self._kbd_reply(KBD_ACK)  # scancode set 3 key types: accepted, no effect
        elif value == KBD_RESEND:
            self._kbd_reply(s.kbd_last_sent)
        elif value == KBD_RESET:
            s.kbd_scancodes.clear()
            s.kbd_replies.clear()
            self._kbd_defaults()
            s.kbd_leds = 0
            s.kbd_scanning = True
            self._kbd_reply(KBD_ACK, KBD_BAT_OK)
        else:
            self._kbd_reply(KBD_NAK)

    def _kbd_defaults(self) -> None:
        s = self.state
        s.kbd_scancode_set = KBD_SCANCODE_SET_DEFAULT
        s.kbd_typematic = KBD_TYPEMATIC_DEFAULT

    def _kbd_reply(self, *values: int) -> None:
        _append_bounded(self.state.kbd_replies, *values)

    # --- IRQs ---

    def _irq_wanted(self) -> bool:
        s = self.state
        return s.obf and not s.out_aux and bool(s.ram[0] & CMD_KBD_INT)

    def _sync_irq(self, force: bool = False) -> None:
        """IRQ1 for keyboard data, IRQ12 for aux data, each as command byte bits 0/1 say."""
        super()._sync_irq(force)
        s = self.state
        level = s.obf and s.out_aux and bool(s.ram[0] & CMD_AUX_INT)
        if force or level != self._aux_irq_level:
            self._aux_irq_level = level
            self.aux_irq.set_level(level)


def _append_bounded(queue: list[int], *values: int) -> None:
    queue.extend(values)
    del queue[:-MAX_REPLIES]  # a guest that never reads keeps only the newest replies
