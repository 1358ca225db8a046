"""Command groups of the `pdsno` CLI beyond the core ones in pdsno/cli.py.

Each module defines `register(group, command)`: `group(name, help)` returns a
subparsers object, and `command(subparsers, name, handler, help)` adds a
command that takes --config and --db-url; a handler receives the parsed
arguments and returns the exit code. pdsno.cli.engine_for(args) gives the
NIB engine for those arguments.
"""
