"""``migrate --key`` / ``--key-file``: the destination's CURVE key is checked for its 40 Z85
characters before any socket is made, and ``--key-file -`` reads it from standard input —
a key that begins with '-' needs no ``--key=`` spelling there."""

from __future__ import annotations

import io

import pytest
import zmq

from proto.errors import HvstackError
from root.commands.migrate import server_key


def test_a_key_given_or_none_passes_through():
    public, _ = zmq.curve_keypair()
    assert server_key(public.decode(), None) == public.decode()
    assert server_key(None, None) is None


def test_a_key_file_is_read_and_stripped(tmp_path):
    public, _ = zmq.curve_keypair()
    f = tmp_path / "dest.key"
    f.write_text(public.decode() + "\n")
    assert server_key(None, str(f)) == public.decode()


def test_a_key_from_standard_input(monkeypatch):
    key = "-" + zmq.curve_keypair()[0].decode()[1:]   # the spelling argparse cannot take as --key KEY
    monkeypatch.setattr("sys.stdin", io.StringIO(key + "\n"))
    assert server_key(None, "-") == key


@pytest.mark.parametrize("bad", ["", "short", "x" * 41, "a" * 39 + "~", "a" * 39 + " "])
def test_a_key_that_is_not_40_z85_characters_is_refused(bad):
    with pytest.raises(HvstackError, match="40 Z85 characters"):
        server_key(bad, None)


def test_a_missing_key_file_names_itself(tmp_path):
    with pytest.raises(HvstackError, match="--key-file .*nokey"):
        server_key(None, str(tmp_path / "nokey"))


def test_the_command_refuses_a_bad_key_file_before_looking_for_the_run(tmp_path, capsys):
    from root.cli import main
    assert main(["migrate", "no-such-run", "alpha", "--to", "tcp://127.0.0.1:1",
                 f"--key-file={tmp_path / 'nokey'}"]) == 1
    assert "--key-file" in capsys.readouterr().err


def test_key_and_key_file_together_are_a_usage_error(tmp_path, capsys):
    from root.cli import main
    assert main(["migrate", "r", "alpha", "--to", "tcp://127.0.0.1:1", "--key=x", f"--key-file={tmp_path}"]) == 2
    assert "not allowed with" in capsys.readouterr().err
