"""Users' bad input (issue 9): each case used to pass validation and end in "worker exited
with status 1" (the cause only in a log), or gave a traceback, or ran forever.  Now each is
one line naming the file, line and key (or the argument) and exit status 2, before any
process starts — driven in-process through root.cli.main."""

from __future__ import annotations

import json

import pytest

from root.cli import main

GEN1 = "[run]\nname = 'bad'\n\n[[partition]]\nname = 'alpha'\n"


@pytest.mark.parametrize("tail, line, message", [
    # two devices on one port
    ("[[partition.device]]\ntype = 'uart16550'\nname = 'com2'\nbase = 0x2F8\n"
     "[[partition.device]]\ntype = 'uart16550'\nname = 'com3'\nbase = 0x2FC\n", 13,
     "[[partition.device]] #2 base: com3 would claim port 0x2fc, which com2 ([[partition.device]] #1) has"),
    # a device on COM1's port (the chipset's)
    ("[[partition.device]]\ntype = 'uart16550'\nname = 'com2'\nbase = 0x3F8\n", 9,
     "[[partition.device]] #1 base: com2 would claim port 0x3f8, which com1 (chipset gen1) has"),
    # a device where it sits by default: the chipset's COM1 again (no key: its header line)
    ("[[partition.device]]\ntype = 'uart16550'\nname = 'com2'\n", 6,
     "[[partition.device]] #1 com2 would claim port 0x3f8, which com1 (chipset gen1) has"),
    # on the disk's ports
    ("disk = { size_mb = 1 }\n[[partition.device]]\ntype = 'uart16550'\nname = 'com2'\nbase = 0x1F0\n", 10,
     "[[partition.device]] #1 base: com2 would claim port 0x1f0, which disk (the disk) has"),
    # on the PIC's
    ("[[partition.device]]\ntype = 'uart16550'\nname = 'com2'\nbase = 0x1C\n", 9,
     "[[partition.device]] #1 base: com2 would claim port 0x20, which pic8259 (chipset gen1) has"),
    ("[[partition.device]]\ntype = 'uart16550'\nname = 'com2'\nbase = 0x2F8\nirq = 99\n", 10,
     "[[partition.device]] #1 irq: 99 is not an ISA IRQ (0..15: the PIC pair's inputs)"),
    ("[[partition.device]]\ntype = 'uart16550'\nname = 'com2'\nbase = 0xFFFC\n", 9,
     "[[partition.device]] #1 base: port range 0xfffc+8 is outside 0..0xffff"),
    ("[[partition.device]]\ntype = 'uart16550'\nname = 'com2'\nbase = 0x10000\n", 9,
     "[[partition.device]] #1 base: 65536 is not an I/O port (0..0xffff)"),
    ("[[partition.device]]\ntype = 'uart16550'\nname = 'com2'\nbase = 'x'\n", 9,
     "[[partition.device]] #1 base: 'x' is not an I/O port (0..0xffff)"),
    ("disk = { image = 'nowhere/alpha.img', size_mb = 1 }\n", 6,
     "[[partition]] #1 disk: image 'nowhere/alpha.img': no directory {dir}/nowhere"),
    ("[[partition.device]]\ntype = 'uart16550'\nname = 5\nbase = 0x2F8\n", 8,
     "[[partition.device]] #1 name: expected str, got int 5"),
    ("[[partition.device]]\ntype = 'ata'\nname = 'ata1'\ncommand_base = 0x170\ncontrol_port = 0x376\n", 6,
     "[[partition.device]] #1 ata needs 'image_path'"),
    ("[[partition.device]]\ntype = 'ata'\nname = 'ata1'\nimage_path = 'x.img'\nmodel = '" + "m" * 41 + "'\n", 10,
     "[[partition.device]] #1 model: model 'mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm' must be at most 40 printable ASCII "
     "characters"),
    # shapes a topology must not have
    ("workloads = [1]\n", 6, "[[partition]] #1 workloads: expected a list of strings, got int 1 in it"),
    ("enlightenments = [['hypercall']]\n", 6,
     "[[partition]] #1 enlightenments: expected a list of strings, got list ['hypercall'] in it"),
    ("device = [1]\n", 6, "[[partition]] #1 device: #1: must be a table, got int 1"),
    ("device = [{ name = 'x' }]\n", 6, "[[partition]] #1 device: #1: missing key 'type'"),
    ("device = [{ type = 'uart16550', base = 0x3F8 }]\n", 6,
     "[[partition]] #1 device: #1: base: uart16550 would claim port 0x3f8, which com1 (chipset gen1) has"),
])
def test_a_bad_topology_is_one_line_naming_file_line_and_key_and_status_2(tail, line, message, runs, tmp_path,
                                                                          capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(GEN1 + tail)
    assert main(["run", str(cfg)]) == 2
    assert capsys.readouterr().err == f"launch.py: {cfg}:{line}: {message.format(dir=tmp_path)}\n"
    assert not any(runs.iterdir()), "nothing started"


@pytest.mark.parametrize("text, message", [
    ("partition = 3\n", "{cfg}:1: top level partition: must be an array of tables ([[partition]])"),
    ("partition = [1, 2]\n", "{cfg}: [[partition]] #1 must be a table, got int 1"),
    ("partition = { name = 'a' }\n", "{cfg}:1: top level partition: must be an array of tables ([[partition]])"),
    ("[[run]]\nname = 'x'\n[[partition]]\nname = 'a'\n", "{cfg}: top level run: must be a table"),
    ("[run]\nname = 'x'\n[[partition]]\nname = 'a'\ncpu = 5\n", "{cfg}:5: [[partition]] #1 cpu: expected dict, got int 5"),
])
def test_a_topology_of_the_wrong_shape_is_an_error_not_a_traceback(text, message, runs, tmp_path, capsys):
    cfg = tmp_path / "shape.toml"
    cfg.write_text(text)
    assert main(["run", str(cfg)]) == 2
    assert capsys.readouterr().err == f"launch.py: {message.format(cfg=cfg)}\n"


def test_a_topology_that_is_not_utf8_names_its_line(runs, tmp_path, capsys):
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes("[run]\nname = 'x'\n# café\n".encode("latin-1"))
    assert main(["run", str(cfg)]) == 2
    assert capsys.readouterr().err == f"launch.py: {cfg}:3: not UTF-8 text (byte 0xe9); TOML files are UTF-8\n"


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "86401"])
def test_run_duration_must_be_0_or_a_positive_number_of_seconds(value, runs, capsys):
    assert main(["run", "--duration", value]) == 2
    err = capsys.readouterr().err
    assert err == f"launch.py run: --duration {float(value)} must be 0 (until stopped) or 0 < S <= 86400 seconds\n"
    assert not any(runs.iterdir())


WEIRD = [0, -1, 1 << 70, 1.5, float("nan"), True, "x", "", [], [1], [[]], {}, {"a": 1}, [{"type": 1}]]


def _paths(node, path=()):
    """Every key path of a parsed topology, into tables and arrays of tables."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield (*path, k)
            yield from _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if isinstance(v, dict):
                yield from _paths(v, (*path, i))


def _replaced(node, path, value):
    import copy

    out = copy.deepcopy(node)
    here = out
    for k in path[:-1]:
        here = here[k]
    here[path[-1]] = value
    return out


@pytest.mark.parametrize("config", ["configs/default.toml", "configs/two-uarts.toml", "tests/configs/one.toml"])
def test_any_value_of_any_key_is_a_config_error_or_a_topology_never_a_traceback(config, tmp_path):
    """Every key of a shipped topology, given each of a set of values of the wrong type or
    range, either loads or raises ConfigError (what `run` turns into one line and exit 2)."""
    import tomllib

    from proto.errors import ConfigError
    from root import REPO
    from root.topology import load_topology

    def toml_of(node) -> str:
        return json_to_toml(node)

    data = tomllib.loads((REPO / config).read_text())
    tried = 0
    for path in _paths(data):
        for value in WEIRD:
            text = toml_of(_replaced(data, path, value))
            try:
                load_topology(text, "<t>", tmp_path)
            except ConfigError:
                pass
            tried += 1
    assert tried > 100


def json_to_toml(node) -> str:
    """A parsed topology back to TOML, inline (good enough to feed load_topology)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return "nan" if v != v else repr(v)
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"

    return "\n".join(f"{json.dumps(k)} = {value(v)}" for k, v in node.items()) + "\n"
