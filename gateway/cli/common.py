"""What every ``prepay`` subcommand shares: exit codes, printing configuration errors."""

from __future__ import annotations

import argparse
import sys
from typing import TypeAlias

from billing_engine.base.errors import InvalidConfigError

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2

# The object `add_subparsers()` returns; each command module adds its parsers to it.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def print_errors(exc: InvalidConfigError) -> int:
    for error in exc.errors:
        print(error, file=sys.stderr)
    return EXIT_INVALID
