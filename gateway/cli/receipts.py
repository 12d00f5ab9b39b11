"""``prepay receipt print|verify|reissue``: receipts a customer can keep and check."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from billing_engine.base.errors import PrepayError
from billing_engine.money import format_minor
from gateway.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_USAGE,
    Commands,
    site_of,
)
from gateway.northbound.payloads import TicketSaleReceiptPayload, VendingReceiptPayload
from gateway.northbound.receipts import AnyReceiptPayload
from gateway.northbound.signing import load_public_key
from gateway.ops import receipt_check, receipts, topup
from gateway.ops.receipt_pdf import litres


def _print(args: argparse.Namespace) -> int:
    site = site_of(args)
    if isinstance(site, int):
        return site
    try:
        stored = receipts.load_receipt(
            site, seq=args.seq, topup_id=args.topup, session=args.session, ticket=args.ticket
        )
        out = Path(args.output or f"receipt-{stored.receipt.receipt_seq}.pdf")
        receipts.write_pdf(site, stored, out, Path(args.font) if args.font else None)
    except (OSError, PrepayError) as exc:  # no store, no such receipt, no font, unwritable
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    print(f"wrote {out} (receipt {stored.receipt.receipt_seq})")
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.qr is None):
        print("prepay receipt verify: give FILE or --qr TEXT (one of them)", file=sys.stderr)
        return EXIT_USAGE
    try:
        key = load_public_key(Path(args.gateway_key).read_bytes())
    except (OSError, ValueError) as exc:
        print(f"{args.gateway_key}: not a gateway public key: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.qr is not None:
            checked = receipt_check.check_qr_text(args.qr, key)
        else:
            checked = receipt_check.check_file(Path(args.file), key)
    except receipt_check.ReceiptRefusedError as exc:
        if args.json:
            print(json.dumps({"valid": False, "reason": exc.reason, "detail": exc.detail}))
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(f"{args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_INVALID
    receipt = checked.receipt
    if args.json:
        body = receipt.model_dump(mode="json", exclude_none=True)
        print(json.dumps({"valid": True, "source": checked.source, "receipt": body}))
        return EXIT_OK
    where = f"{receipt.site} ({checked.source})"
    print(f"valid receipt {receipt.receipt_seq} of {where}: {_what(receipt)}")
    return EXIT_OK


def _what(receipt: AnyReceiptPayload) -> str:
    """One line of what a checked receipt says."""
    if isinstance(receipt, VendingReceiptPayload):
        currency = receipt.currency or ""
        paid = (
            f"ticket {receipt.ticket}"
            if receipt.ticket is not None
            else f"{receipt.account} -{format_minor(receipt.amount_minor or 0, currency)},"
            f" balance {format_minor(receipt.balance_after_minor or 0, currency)}"
        )
        return (
            f"water {litres(receipt.poured_ml)} at {receipt.dispenser} (session"
            f" {receipt.session}), {paid}, closed {receipt.closed_at.isoformat()}"
        )
    if isinstance(receipt, TicketSaleReceiptPayload):
        price = (
            f", {format_minor(receipt.amount_minor, receipt.currency)}"
            if receipt.amount_minor is not None and receipt.currency is not None
            else ""
        )
        return (
            f"{receipt.ticket_kind} ticket {receipt.code} for {receipt.product}{price}, valid"
            f" until {receipt.valid_until.isoformat()}, sold {receipt.sold_at.isoformat()}"
        )
    return (
        f"{receipt.account} +{format_minor(receipt.amount_minor, receipt.currency)},"
        f" balance {format_minor(receipt.balance_after_minor, receipt.currency)},"
        f" top-up {receipt.topup_id}, applied {receipt.applied_at.isoformat()}"
    )


def _reissue(args: argparse.Namespace) -> int:
    site = site_of(args)
    if isinstance(site, int):
        return site
    try:
        command_id = receipts.queue_reissue(
            site, Path(args.operator_key), topup_id=args.topup, seq=args.seq
        )
    except (OSError, PrepayError) as exc:  # the key file: missing, too open; the spool
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    result = topup.wait_for_result(site, command_id, args.wait)
    if result is None:
        print(
            f"{command_id} queued: the gateway has not answered yet (is it running?)",
            file=sys.stderr,
        )
        return EXIT_OK
    print(json.dumps(result, ensure_ascii=False))
    return EXIT_OK if result.get("status") in ("applied", "duplicate") else EXIT_INVALID


def register(commands: Commands) -> None:
    receipt = commands.add_parser(
        "receipt", help="print, check and reissue receipts (top-ups, water sales, tickets sold)"
    )
    receipt_commands = receipt.add_subparsers(dest="receipt_command", required=True)

    print_cmd = receipt_commands.add_parser(
        "print",
        help="write a stored receipt as an 80 mm PDF (works while the gateway runs)",
    )
    print_cmd.add_argument("-c", "--config", required=True, metavar="SITE.yaml")
    which = print_cmd.add_mutually_exclusive_group()
    which.add_argument(
        "seq", nargs="?", type=int, metavar="SEQ", help="the receipt number (default: newest)"
    )
    which.add_argument("--topup", metavar="ID", help="the receipt of this top-up")
    which.add_argument(
        "--session", metavar="DISPENSER:SESSION", help="the receipt of this vending session"
    )
    which.add_argument("--ticket", metavar="CODE", help="the receipt of this ticket sold here")
    print_cmd.add_argument(
        "-o", "--output", metavar="FILE.pdf", help="default: receipt-SEQ.pdf here"
    )
    print_cmd.add_argument(
        "--font", metavar="FONT.ttf", help="a font with Chinese glyphs (default: Debian's)"
    )
    print_cmd.set_defaults(func=_print)

    verify = receipt_commands.add_parser(
        "verify",
        help="check a receipt offline: a PDF, a JSON file or the QR code's text",
    )
    verify.add_argument("file", nargs="?", metavar="FILE.pdf|FILE.json")
    verify.add_argument("--qr", metavar="TEXT", help="the text a QR code scanner read")
    verify.add_argument(
        "--gateway-key",
        required=True,
        metavar="GATEWAY.pub.pem",
        help="the site's gateway public key (PEM, or base64 of its 32 bytes)",
    )
    verify.add_argument("--json", action="store_true", help="one JSON object instead of text")
    verify.set_defaults(func=_verify)

    reissue = receipt_commands.add_parser(
        "reissue",
        help="have the running gateway issue a signed receipt again",
    )
    reissue.add_argument("-c", "--config", required=True, metavar="SITE.yaml")
    named = reissue.add_mutually_exclusive_group(required=True)
    named.add_argument("--topup", metavar="ID", help="the receipt of this top-up")
    named.add_argument("--seq", type=int, metavar="SEQ", help="receipt number SEQ, any kind")
    reissue.add_argument("--operator-key", required=True, metavar="OPERATOR.pem")
    reissue.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the result")
    reissue.set_defaults(func=_reissue)
