"""The VGA's sequencer, graphics controller and graphics window, as a VGA BIOS's mode set
and font load use them."""

from tests.unit.devices.support import plug, plug_mmio
from worker.devices.base import IoError
from worker.devices.vga_graphics import MODE3_GRAPHICS, MODE3_SEQUENCER, VgaGraphics


def test_registers_read_back_by_byte_and_by_outw():
    vga = VgaGraphics()
    bus = plug(vga)
    assert [(bus.write(0x3C4, 1, i), bus.read(0x3C5, 1))[1] for i in range(5)] == list(MODE3_SEQUENCER)
    bus.write(0x3C4, 2, 0x0402)  # outw: sequencer map mask = plane 2
    assert bus.read(0x3C4, 1) == 0x02 and bus.read(0x3C5, 1) == 0x04
    assert bus.read(0x3C4, 2) == 0x0402
    bus.write(0x3CE, 2, 0x0406)  # graphics controller: memory map A0000h, 64 KiB
    assert bus.read(0x3CF, 1) == 0x04
    bus.write(0x3CE, 1, 8)
    assert bus.read(0x3CF, 1) == MODE3_GRAPHICS[8]


def test_an_index_past_the_last_register_is_a_guest_mistake_not_a_crash():
    vga = VgaGraphics()
    bus = plug(vga)
    bus.write(0x3C4, 1, 0x77)
    assert vga.io_read(0x3C5, 1) is IoError.INVALID_REGISTER
    assert vga.io_write(0x3C5, 1, 1) is IoError.INVALID_REGISTER
    assert vga.io_write(0x3CE, 2, 0xFF09) is IoError.INVALID_REGISTER
    assert bus.read(0x3CF, 1) == 0xFF and vga.state.graphics == list(MODE3_GRAPHICS)


def test_the_graphics_window_keeps_what_the_font_load_writes_and_survives_save_restore():
    vga = VgaGraphics()
    mmio = plug_mmio(vga)
    mmio.write(0xA0000, 4, 0x7E81A5FF)
    mmio.write(0xB7FFF, 1, 0x42)
    assert mmio.read(0xA0000, 4) == 0x7E81A5FF and mmio.read(0xB7FFF, 1) == 0x42
    assert mmio.device_at(0xB8000) is None  # the text window is vga_text's
    other = VgaGraphics()
    other.restore(vga.save())
    assert plug_mmio(other).read(0xA0000, 4) == 0x7E81A5FF
    vga.reset()
    assert mmio.read(0xA0000, 4) == 0
