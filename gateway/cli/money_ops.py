"""``prepay keys init`` and ``prepay topup``: key files, and a local operator-signed top-up."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from billing_engine import money
from billing_engine.base.errors import InvalidConfigError, PrepayError
from gateway.cli.common import EXIT_INVALID, EXIT_OK, EXIT_USAGE, Commands, print_errors
from gateway.config import load_site
from gateway.ops import keys, topup


def _keys_init(args: argparse.Namespace) -> int:
    for path in keys.init_keys(Path(args.directory), with_backend=args.with_backend):
        print(f"wrote {path}")
    return EXIT_OK


def _topup(args: argparse.Namespace) -> int:
    try:
        site = load_site(Path(args.config))
    except InvalidConfigError as exc:
        return print_errors(exc)
    try:
        invoice = {
            k: v
            for k, v in (
                ("title", args.invoice_title),
                ("tax_id", args.tax_id),
                ("email", args.email),
            )
            if v
        }
        if invoice and "title" not in invoice:
            print("--tax-id and --email go with --invoice-title", file=sys.stderr)
            return EXIT_USAGE
        queued = topup.queue_topup(
            site,
            args.account,
            args.amount,
            Path(args.operator_key),
            args.reference,
            invoice=invoice or None,
        )
    except topup.TopupError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE if str(exc).startswith("--amount") else EXIT_INVALID
    except PrepayError as exc:  # the operator's key file is too open
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    amount = money.format_minor(queued.amount_minor, queued.currency)
    print(f"top-up {queued.command_id} queued for {queued.account}: {amount}")
    result = topup.wait_for_result(site, queued.command_id, args.wait)
    if result is None:
        print(
            "the gateway has not applied it yet (is it running?); it stays queued",
            file=sys.stderr,
        )
        return EXIT_OK
    print(json.dumps(result, ensure_ascii=False))
    return EXIT_OK if result.get("status") in ("applied", "duplicate") else EXIT_INVALID


def register(commands: Commands) -> None:
    keys_cmd = commands.add_parser("keys", help="key files")
    keys_commands = keys_cmd.add_subparsers(dest="keys_command", required=True)
    init = keys_commands.add_parser("init", help="generate a site's key set")
    init.add_argument("directory", metavar="DIR")
    init.add_argument(
        "--with-backend",
        action="store_true",
        help="also a stand-in backend key pair (demos, tests)",
    )
    init.set_defaults(func=_keys_init)

    topup_cmd = commands.add_parser("topup", help="apply a local, operator-signed top-up")
    topup_cmd.add_argument("-c", "--config", required=True, metavar="SITE.yaml")
    topup_cmd.add_argument("--account", required=True)
    topup_cmd.add_argument("--amount", required=True, help="in major units, e.g. 50.00")
    topup_cmd.add_argument("--operator-key", required=True, metavar="OPERATOR.pem")
    topup_cmd.add_argument("--reference", default="counter", help="receipt / payment reference")
    topup_cmd.add_argument(
        "--wait", type=float, default=10.0, help="seconds to wait for the result"
    )
    topup_cmd.add_argument(
        "--invoice-title",
        metavar="TITLE",
        help="ask the backend for an invoice of this top-up, made out to TITLE",
    )
    topup_cmd.add_argument("--tax-id", help="the invoice's tax id (with --invoice-title)")
    topup_cmd.add_argument("--email", help="where the invoice is sent (with --invoice-title)")
    topup_cmd.set_defaults(func=_topup)
