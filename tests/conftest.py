"""Shared test set-up: the repository on sys.path, short run directories for ipc sockets."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def pytest_addhooks(pluginmanager):
    """hvstack's pytest plugin (root/pytest_plugin.py) comes with `pip install -e .` through
    its pytest11 entry point; in a checkout that is not installed, register it here (early
    enough for its command-line options), unless it is loaded already or `-p no:hvstack`."""
    if pluginmanager.has_plugin("hvstack") or pluginmanager.is_blocked("hvstack"):
        return
    import root.pytest_plugin

    if not pluginmanager.is_registered(root.pytest_plugin):
        pluginmanager.register(root.pytest_plugin, "hvstack")
