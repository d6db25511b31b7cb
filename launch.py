#!/usr/bin/env python3
"""hvstack's launcher: the door into root/, the root partition's management service
(``python launch.py --help``)."""

import sys

from root import prestart

if __name__ == "__main__":
    # A run's hypervisor and zygotes start importing now, while the launcher imports itself.
    prestart.start(sys.argv[1:])

from root.cli import main  # noqa: E402 (after the start above, which it would otherwise delay)

if __name__ == "__main__":
    sys.exit(main())
