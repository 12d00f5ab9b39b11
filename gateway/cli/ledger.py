"""``prepay ledger verify``: check the ledger's HMAC chain, and against a published head."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from billing_engine.base.errors import PrepayError
from gateway.cli.common import EXIT_INVALID, EXIT_OK, EXIT_USAGE, Commands
from gateway.ops import ledger_check
from gateway.startup import read_ledger_key


def _ledger_verify(args: argparse.Namespace) -> int:
    if args.gateway_key and not args.checkpoint:
        print("--gateway-key checks a --checkpoint's signature; give both", file=sys.stderr)
        return EXIT_USAGE
    try:
        key = read_ledger_key(Path(args.key))
    except PrepayError as exc:  # the key file is too open
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    try:
        checkpoint = None
        if args.checkpoint:
            gateway_key = Path(args.gateway_key) if args.gateway_key else None
            checkpoint = ledger_check.load_checkpoint(Path(args.checkpoint), gateway_key)
        verdict = ledger_check.verify(
            Path(args.state), key, expected_head=args.expected_head, checkpoint=checkpoint
        )
    except ledger_check.CheckpointFileError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    except ValueError as exc:  # --expected-head is not SEQ:MACHEX
        print(f"--expected-head: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PrepayError as exc:  # no store file, or unreadable
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    report = verdict.report
    if verdict.ok:
        reached = (
            f"; holds the expected head at seq {verdict.expected.seq}"
            if verdict.expected is not None
            else ""
        )
        print(f"ledger ok: {report.entries_checked} entries, chain intact{reached}")
        return EXIT_OK
    for problem in report.problems:
        print(f"seq {problem.seq}: {problem.kind.value}: {problem.message}", file=sys.stderr)
    for text in verdict.other_problems:
        print(f"checkpoint: {text}", file=sys.stderr)
    return EXIT_INVALID


def register(commands: Commands) -> None:
    ledger = commands.add_parser("ledger", help="ledger tools")
    ledger_commands = ledger.add_subparsers(dest="ledger_command", required=True)
    verify = ledger_commands.add_parser("verify", help="check the HMAC chain of the ledger")
    verify.add_argument("--state", required=True, metavar="DIR")
    verify.add_argument("--key", required=True, metavar="LEDGER.key")
    head = verify.add_mutually_exclusive_group()
    head.add_argument(
        "--expected-head",
        metavar="SEQ:MACHEX",
        help="a head published earlier: the ledger must reach SEQ with this MAC there",
    )
    head.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="a checkpoint saved from prepay/{site}/checkpoint: the same check, and its store",
    )
    verify.add_argument(
        "--gateway-key",
        metavar="GATEWAY.pub.pem",
        help="check the --checkpoint's signature with the gateway's public key",
    )
    verify.set_defaults(func=_ledger_verify)
