"""``prepay invoice list|reissue``: invoice requests sent to the backend, and asking again."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from billing_engine.base.errors import InvalidConfigError, PrepayError
from gateway.cli.common import EXIT_INVALID, EXIT_OK, Commands, print_errors
from gateway.config import load_site
from gateway.ops import invoices, topup


def _list(args: argparse.Namespace) -> int:
    try:
        found = invoices.collect(load_site(Path(args.config)), args.account)
    except InvalidConfigError as exc:
        return print_errors(exc)
    except (OSError, PrepayError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        print(json.dumps([invoices.to_json(i) for i in found], ensure_ascii=False))
    else:
        print(invoices.render(found))
    return EXIT_OK


def _reissue(args: argparse.Namespace) -> int:
    try:
        site = load_site(Path(args.config))
    except InvalidConfigError as exc:
        return print_errors(exc)
    try:
        command_id = invoices.queue_reissue(site, args.invoice, Path(args.operator_key))
    except (OSError, PrepayError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    result = topup.wait_for_result(site, command_id, args.wait)
    if result is None:
        print(f"{command_id} queued: the gateway has not applied it yet", file=sys.stderr)
        return EXIT_OK
    print(json.dumps(result, ensure_ascii=False))
    return EXIT_OK if result.get("status") in ("applied", "duplicate") else EXIT_INVALID


def register(commands: Commands) -> None:
    invoice = commands.add_parser(
        "invoice",
        help="invoice requests sent to the backend (list, reissue)",
        description=(
            "A top-up with invoice details is followed by an invoice request to the backend,"
            " through the outbox (never lost, sent again after an outage); the backend answers"
            " issued (with its number) or failed (with a reason)."
        ),
    )
    sub = invoice.add_subparsers(dest="invoice_command", required=True)
    listing = sub.add_parser("list", help="every invoice request and where it stands")
    listing.add_argument("-c", "--config", required=True, metavar="SITE.yaml")
    listing.add_argument("--account", help="only this account's")
    listing.add_argument("--json", action="store_true", help="one JSON array")
    listing.set_defaults(func=_list)
    again = sub.add_parser(
        "reissue",
        help="send an invoice request again (lost, or failed and fixed)",
        description=(
            "Signs a cmd/invoice reissue with the operator's key and hands it to the running"
            " daemon, which sends the request again and marks it requested."
        ),
    )
    again.add_argument("invoice", metavar="INVOICE_ID")
    again.add_argument("-c", "--config", required=True, metavar="SITE.yaml")
    again.add_argument("--operator-key", required=True, metavar="OPERATOR.pem")
    again.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the result")
    again.set_defaults(func=_reissue)
