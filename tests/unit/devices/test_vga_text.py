import pytest

from tests.unit.devices.support import plug, plug_mmio
from worker.devices.base import IoError
from worker.devices.vga_text import MODE3_CRTC, VgaText

BASE = 0xB8000
END = 0xC0000
CRTC_INDEX, CRTC_DATA = 0x3D4, 0x3D5


@pytest.fixture
def vga():
    return VgaText()


def put(vga, row, col, text, attr=0x07):
    for i, ch in enumerate(text.encode("cp437")):
        gpa = BASE + 2 * (row * 80 + col + i)
        assert vga.mmio_write(gpa, 2, ch | (attr << 8)) is None


def set_crtc(vga, index, value):
    assert vga.io_write(CRTC_INDEX, 1, index) is None
    assert vga.io_write(CRTC_DATA, 1, value) is None


def set_cursor(vga, location):
    # The way drivers do it: one 16-bit write per register.
    assert vga.io_write(CRTC_INDEX, 2, 0x0E | ((location >> 8) << 8)) is None
    assert vga.io_write(CRTC_INDEX, 2, 0x0F | ((location & 0xFF) << 8)) is None


def set_start(vga, address):
    set_crtc(vga, 0x0C, address >> 8)
    set_crtc(vga, 0x0D, address & 0xFF)


# ----------------------------------------------------------------- memory


def test_byte_writes_put_a_character_and_its_attribute_in_a_cell(vga):
    assert vga.mmio_write(BASE, 1, ord("A")) is None
    assert vga.mmio_write(BASE + 1, 1, 0x1F) is None
    assert vga.mmio_read(BASE, 2) == 0x1F41
    assert vga.screen_text()[0][0] == "A"


def test_wide_writes_are_little_endian_cells(vga):
    assert vga.mmio_write(BASE + 160, 4, 0x0742_0741) is None  # "AB" on row 1
    assert vga.mmio_write(BASE + 164, 8, 0x0746_0745_0744_0743) is None  # "CDEF"
    assert vga.screen_text()[1][:6] == "ABCDEF"
    assert vga.mmio_read(BASE + 161, 1) == 0x07
    assert vga.mmio_read(BASE + 160, 8) == 0x0744_0743_0742_0741


def test_a_write_wider_than_its_size_keeps_only_the_low_bytes(vga):
    vga.mmio_write(BASE, 1, 0x1234)
    assert vga.mmio_read(BASE, 2) == 0x0734


def test_an_unaligned_write_inside_the_window_is_allowed(vga):
    assert vga.mmio_write(BASE + 3, 2, 0x4807) is None  # attribute of cell 1, char of cell 2
    assert vga.mmio_read(BASE + 2, 4) == 0x0748_0720


def test_the_last_byte_of_the_window_is_addressable(vga):
    assert vga.mmio_write(END - 1, 1, 0x5A) is None
    assert vga.mmio_read(END - 1, 1) == 0x5A


def test_an_access_running_past_the_window_is_unaligned(vga):
    bus = plug_mmio(vga)
    assert bus.mmio_read(END - 1, 2) is IoError.UNALIGNED_ACCESS
    assert bus.mmio_write(END - 4, 8, 0) is IoError.UNALIGNED_ACCESS
    assert vga.stats.mmio_missed_reads == 1 and vga.stats.mmio_missed_writes == 1


def test_an_address_outside_the_window_is_an_invalid_register(vga):
    bus = plug_mmio(vga)
    assert bus.mmio_read(END, 1) is IoError.INVALID_REGISTER
    assert bus.mmio_write(BASE - 1, 1, 0) is IoError.INVALID_REGISTER


@pytest.mark.parametrize("size", [0, 3, 16])
def test_an_mmio_size_other_than_1_2_4_8_is_an_invalid_access_size(vga, size):
    bus = plug_mmio(vga)
    assert bus.mmio_read(BASE, size) is IoError.INVALID_ACCESS_SIZE
    assert bus.mmio_write(BASE, size, 0) is IoError.INVALID_ACCESS_SIZE


def test_mmio_ranges_is_the_32k_window_at_b8000(vga):
    assert [(r.base, r.length) for r in vga.mmio_ranges()] == [(0xB8000, 0x8000)]


# ----------------------------------------------------------------- screen text


def test_power_on_screen_is_25_blank_lines_of_80(vga):
    lines = vga.screen_text()
    assert len(lines) == 25
    assert all(line == " " * 80 for line in lines)
    assert vga.mmio_read(BASE, 2) == 0x0720


def test_screen_text_places_text_by_row_and_column(vga):
    put(vga, 3, 10, "Hello, world")
    put(vga, 24, 70, "bottom")
    lines = vga.screen_text()
    assert lines[3][10:22] == "Hello, world"
    assert lines[24][70:76] == "bottom"


def test_screen_text_decodes_cp437_and_shows_control_bytes_as_glyphs(vga):
    for i, byte in enumerate([0x01, 0x03, 0x10, 0x7F, 0xB0, 0xC9, 0xE1, 0x00, 0xFF]):
        vga.mmio_write(BASE + 2 * i, 1, byte)
    assert vga.screen_text()[0][:9] == "☺♥►⌂░╔ß  "


# ----------------------------------------------------------------- CRTC and cursor


def test_power_on_crtc_registers_are_the_mode3_values(vga):
    values = []
    for index in range(0x19):
        vga.io_write(CRTC_INDEX, 1, index)
        values.append(vga.io_read(CRTC_DATA, 1))
    assert values == list(MODE3_CRTC)


def test_cursor_location_set_with_byte_writes_gives_row_and_column(vga):
    set_crtc(vga, 0x0E, (5 * 80 + 7) >> 8)
    set_crtc(vga, 0x0F, (5 * 80 + 7) & 0xFF)
    assert vga.cursor() == (5, 7, True)


def test_cursor_location_set_with_16_bit_writes_gives_row_and_column(vga):
    set_cursor(vga, 24 * 80 + 79)
    assert vga.cursor() == (24, 79, True)
    assert vga.io_read(CRTC_INDEX, 1) == 0x0F
    assert vga.io_read(CRTC_DATA, 1) == (24 * 80 + 79) & 0xFF


def test_a_16_bit_read_of_the_index_port_returns_index_and_data(vga):
    set_crtc(vga, 0x0F, 0x42)
    assert vga.io_read(CRTC_INDEX, 2) == 0x420F


def test_the_cursor_disable_bit_hides_the_cursor(vga):
    set_cursor(vga, 80)
    set_crtc(vga, 0x0A, 0x20 | 0x0D)
    assert vga.cursor() == (1, 0, False)
    set_crtc(vga, 0x0A, 0x0D)
    assert vga.cursor() == (1, 0, True)


def test_a_cursor_start_below_its_end_is_not_drawn(vga):
    set_crtc(vga, 0x0A, 0x0F)
    set_crtc(vga, 0x0B, 0x0E)
    assert vga.cursor()[2] is False


def test_the_start_address_scrolls_the_screen_and_the_cursor(vga):
    put(vga, 0, 0, "first")
    put(vga, 1, 0, "second")
    put(vga, 25, 0, "below")
    set_cursor(vga, 25 * 80 + 3)
    assert vga.cursor()[2] is False  # below the screen
    set_start(vga, 80)
    lines = vga.screen_text()
    assert lines[0].startswith("second")
    assert lines[24].startswith("below")
    assert vga.cursor() == (24, 3, True)


def test_a_start_address_near_the_end_of_the_window_wraps_to_its_start(vga):
    put(vga, 0, 0, "wrapped")
    set_start(vga, 0x4000 - 80)  # the last row of the 32 KiB window
    assert vga.screen_text()[1].startswith("wrapped")


def test_crtc_protect_bit_ignores_writes_to_registers_0_to_7_except_line_compare(vga):
    set_crtc(vga, 0x01, 0x27)
    set_crtc(vga, 0x07, 0x00)
    vga.io_write(CRTC_INDEX, 1, 0x01)
    assert vga.io_read(CRTC_DATA, 1) == 0x4F
    vga.io_write(CRTC_INDEX, 1, 0x07)
    assert vga.io_read(CRTC_DATA, 1) == 0x1F & ~0x10
    set_crtc(vga, 0x11, 0x0E)  # clear protect
    set_crtc(vga, 0x01, 0x27)
    vga.io_write(CRTC_INDEX, 1, 0x01)
    assert vga.io_read(CRTC_DATA, 1) == 0x27


# ----------------------------------------------------------------- other ports


def test_input_status_1_alternates_between_retrace_and_display(vga):
    reads = [vga.io_read(0x3DA, 1) for _ in range(4)]
    assert reads == [0x09, 0x00, 0x09, 0x00]


def test_misc_output_is_written_at_3c2_and_read_at_3cc(vga):
    assert vga.io_read(0x3CC, 1) == 0x67
    assert vga.io_write(0x3C2, 1, 0x63) is None
    assert vga.io_read(0x3CC, 1) == 0x63


def test_a_crtc_index_past_0x18_is_an_invalid_register_on_the_data_port(vga):
    bus = plug(vga)
    assert bus.io_write(CRTC_INDEX, 1, 0x19) is None
    assert bus.io_read(CRTC_DATA, 1) is IoError.INVALID_REGISTER
    assert bus.io_write(CRTC_DATA, 1, 0) is IoError.INVALID_REGISTER
    assert bus.io_write(CRTC_INDEX, 2, 0x3040) is IoError.INVALID_REGISTER
    assert (vga.stats.missed_reads, vga.stats.missed_writes) == (1, 2)


def test_writes_to_read_only_or_unemulated_ports_are_invalid_registers(vga):
    bus = plug(vga)
    assert bus.io_write(0x3CC, 1, 0) is IoError.INVALID_REGISTER
    assert bus.io_write(0x3DA, 1, 0) is IoError.INVALID_REGISTER
    assert bus.io_read(0x3C0, 1) is IoError.INVALID_REGISTER  # not a VGA port: nobody's


@pytest.mark.parametrize("port,size", [(CRTC_DATA, 2), (CRTC_INDEX, 4), (0x3DA, 2), (0x3CC, 2)])
def test_wide_accesses_other_than_16_bit_to_the_index_port_are_invalid_sizes(vga, port, size):
    bus = plug(vga)
    assert bus.io_read(port, size) is IoError.INVALID_ACCESS_SIZE
    assert bus.io_write(port, size, 0) is IoError.INVALID_ACCESS_SIZE


def test_port_ranges_cover_the_decoded_ports(vga):
    ports = {p for r in vga.port_ranges() for p in range(r.base, r.last + 1)}
    assert ports == {0x3C2, 0x3CC, 0x3D4, 0x3D5, 0x3DA}


# ----------------------------------------------------------------- render


def test_render_frames_the_screen_and_marks_the_cursor(vga):
    put(vga, 2, 4, "C:\\>")
    set_cursor(vga, 2 * 80 + 8)
    lines = vga.render().split("\n")
    assert len(lines) == 28
    assert lines[0] == "┌" + "─" * 8 + "▼" + "─" * 71 + "┐"
    assert lines[26] == "└" + "─" * 8 + "▲" + "─" * 71 + "┘"
    assert lines[3] == "►    C:\\>" + " " * 72 + "◄"
    assert lines[1] == "│" + " " * 80 + "│"
    assert lines[27] == "cursor row 2 col 8"


def test_render_without_a_visible_cursor_has_a_plain_frame(vga):
    set_crtc(vga, 0x0A, 0x20)
    lines = vga.render().split("\n")
    assert lines[0] == "┌" + "─" * 80 + "┐"
    assert all(line.startswith("│") for line in lines[1:26])
    assert lines[27] == "cursor hidden"


# ----------------------------------------------------------------- reset, save, restore


def test_reset_blanks_the_screen_and_restores_mode3_registers(vga):
    put(vga, 0, 0, "text")
    set_cursor(vga, 500)
    vga.reset()
    assert vga.screen_text()[0] == " " * 80
    assert vga.cursor() == (0, 0, True)


def test_save_restore_brings_back_buffer_and_registers(vga):
    put(vga, 10, 5, "saved", attr=0x4E)
    set_cursor(vga, 10 * 80 + 10)
    set_start(vga, 80)
    vga.io_write(0x3C2, 1, 0x63)
    saved = vga.save()
    assert saved["version"] == 1 and isinstance(saved["memory"], bytes)
    other = VgaText()
    other.restore(saved)
    assert other.screen_text() == vga.screen_text()
    assert other.cursor() == (9, 10, True)
    assert other.io_read(0x3CC, 1) == 0x63
    assert other.mmio_read(BASE + 2 * (10 * 80 + 5) + 1, 1) == 0x4E


@pytest.mark.parametrize("change", [
    {"version": 2},
    {"memory": b"\x00" * 10},
    {"crtc": [0] * 24},
    {"crtc": [0] * 24 + [256]},
    {"crtc_index": -1},
    {"in_retrace": 0},
    {"extra": 1},
])
def test_restore_rejects_a_bad_snapshot_and_keeps_the_current_state(vga, change):
    put(vga, 0, 0, "keep")
    saved = vga.save()
    saved.update(change)
    with pytest.raises(ValueError):
        vga.restore(saved)
    assert vga.screen_text()[0].startswith("keep")


def test_port_and_mmio_accesses_are_counted(vga):
    ports, memory = plug(vga), plug_mmio(vga)
    memory.write(BASE, 2, 0)
    memory.read(BASE, 2)
    ports.read(0x3DA, 1)
    ports.write(CRTC_INDEX, 2, 0x000E)
    assert (vga.stats.mmio_writes, vga.stats.mmio_reads) == (1, 1)
    assert (vga.stats.reads, vga.stats.writes) == (1, 1)
