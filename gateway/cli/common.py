"""What every ``prepay`` subcommand shares: exit codes, printing configuration errors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TypeAlias

from billing_engine.base.errors import InvalidConfigError
from gateway.config import Site, load_site

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2

# The object `add_subparsers()` returns; each command module adds its parsers to it.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def print_errors(exc: InvalidConfigError) -> int:
    for error in exc.errors:
        print(error, file=sys.stderr)
    return EXIT_INVALID


def site_of(args: argparse.Namespace) -> Site | int:
    """The site file of ``-c``, or the exit status after its errors were printed."""
    try:
        return load_site(Path(args.config))
    except InvalidConfigError as exc:
        return print_errors(exc)


def answer(text: str) -> int:
    """Print ``text`` and succeed. A reader that closed the pipe is `gateway.cli.main`'s to
    handle (BrokenPipeError)."""
    print(text)
    return EXIT_OK
