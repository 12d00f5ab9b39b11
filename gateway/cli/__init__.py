"""The ``prepay`` command: argument parsing only; each subcommand calls into a module.

One module here per group of subcommands, each with a ``register(commands)``; the work is
done in `gateway.ops` (and the daemon for ``prepay run``)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from gateway.cli import (
    accounts,
    console,
    devices,
    invoices,
    kernel,
    ledger,
    money_ops,
    programs,
    receipts,
    site,
    tariffs,
    tickets,
)
from gateway.cli.common import EXIT_INVALID, EXIT_OK, EXIT_USAGE

__all__ = ["EXIT_INVALID", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

# The order `prepay --help` lists them in.
_GROUPS = (
    site,
    money_ops,
    receipts,
    invoices,
    ledger,
    tariffs,
    kernel,
    programs,
    accounts,
    devices,
    tickets,
    console,
)


#: The sample configuration files (tariffs, device profiles, codecs, sites): ``configs/`` of the
#: source checkout, installed next to the packages by the wheel.
SAMPLES_DIR = Path(__file__).resolve().parents[2] / "configs"
#: What a shell reports for a process that SIGPIPE ended, as `prepay status | head` would see.
EXIT_PIPE_CLOSED = 128 + signal.SIGPIPE
#: The same for Ctrl-C (SIGINT).
EXIT_INTERRUPTED = 128 + signal.SIGINT


# argparse's class is generic only in its type stubs.
if TYPE_CHECKING:
    _SubParsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    _SubParsers = argparse._SubParsersAction


class _Commands(_SubParsers):
    """Subcommands whose ``--help`` opens with their one-line help, unless they bring a
    longer ``description=`` of their own (argparse shows none by default)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        text = kwargs.get("help")
        if text and not kwargs.get("description"):
            stop = "" if text.endswith((".", "!", "?")) else "."
            kwargs["description"] = f"{text[0].upper()}{text[1:]}{stop}"
        return super().add_parser(name, **kwargs)


class _Parser(argparse.ArgumentParser):
    """The ``prepay`` parser: its subcommands, and theirs, are `_Commands`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _Commands)


def _version() -> str:
    from gateway.startup import version  # noqa: PLC0415 - only for --version

    return f"prepay-gateway {version()} (sample configs: {SAMPLES_DIR})"


class _VersionAction(argparse.Action):
    """``--version``, worked out only when asked (the installed metadata is read then)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(_version())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prepay", description="Prepaid metering gateway.")
    parser.add_argument(
        "--version", action=_VersionAction, help="the installed version and where its samples are"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for group in _GROUPS:
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _dispatch(argv)
        finally:
            # What is still buffered meets a closed pipe here, not at exit; also before the
            # SystemExit of --help, --version and usage errors.
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`prepay status | head`): its choice, not a crash. Point stdout
        # at /dev/null so the interpreter's own flush at exit cannot raise it again (the
        # recipe of the Python documentation, "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_PIPE_CLOSED
    except KeyboardInterrupt:
        # Ctrl-C where no handler of ours waits for it (`prepay run` stops cleanly on SIGINT
        # once it runs; before, and in the other commands, the operator just meant "stop").
        print("prepay: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _dispatch(argv: Sequence[str] | None) -> int:
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
