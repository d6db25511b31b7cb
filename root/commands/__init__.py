"""The commands of ``launch.py``, one module each (as circus's ``commands/`` has them).

A command module has its ``NAME``, its one-line ``HELP`` (shown in ``launch.py --help``),
``arguments(parser)`` that declares its arguments on its sub-parser, and ``run(args) -> int``
that does it and returns the exit status; a HvstackError it raises is reported as
``launch.py NAME: message`` with status 1.  root.cli assembles them: a new command is a new
module here and one entry in ``root.cli.COMMANDS``, whose order is the order of ``--help``
(a package that builds on root adds its own through the ``hvstack.commands`` entry point).
Nothing is imported here, so that importing one command (the pytest plugin uses ``io``'s
functions) does not import them all.
"""
