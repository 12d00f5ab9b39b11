"""The ``prepay`` command: argument parsing only; each subcommand calls into a module.

One module here per group of subcommands, each with a ``register(commands)``; the work is
done in `gateway.ops` (and the daemon for ``prepay run``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway.cli import kernel, ledger, money_ops, programs, site, tariffs
from gateway.cli.common import EXIT_INVALID, EXIT_OK, EXIT_USAGE

__all__ = ["EXIT_INVALID", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

# The order `prepay --help` lists them in.
_GROUPS = (site, money_ops, ledger, tariffs, kernel, programs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prepay", description="Prepaid metering gateway.")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in _GROUPS:
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # `prepay sim` and `prepay bench NAME` hand their options to another program's parser.
    args, extra = parser.parse_known_args(argv)
    if args.command in programs.PASS_THROUGH:
        args.rest = [*extra, *args.rest]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
