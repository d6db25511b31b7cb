#!/usr/bin/env python3
"""hvstack's launcher: the door into root/, the root partition's management service
(``python launch.py --help``)."""

import sys

from root.cli import main

if __name__ == "__main__":
    sys.exit(main())
