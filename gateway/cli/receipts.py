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
from gateway.northbound.signing import load_public_key
from gateway.ops import receipt_check, receipts, topup


def _print(args: argparse.Namespace) -> int:
    site = site_of(args)
    if isinstance(site, int):
        return site
    try:
        stored = receipts.load_receipt(site, seq=args.seq, topup_id=args.topup)
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
    print(
        f"valid receipt {receipt.receipt_seq} of {receipt.site} ({checked.source}):"
        f" {receipt.account} +{format_minor(receipt.amount_minor, receipt.currency)},"
        f" balance {format_minor(receipt.balance_after_minor, receipt.currency)},"
        f" top-up {receipt.topup_id}, applied {receipt.applied_at.isoformat()}"
    )
    return EXIT_OK


def _reissue(args: argparse.Namespace) -> int:
    site = site_of(args)
    if isinstance(site, int):
        return site
    try:
        command_id = receipts.queue_reissue(site, args.topup, Path(args.operator_key))
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
    receipt = commands.add_parser("receipt", help="print, check and reissue top-up receipts")
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
        help="have the running gateway issue a top-up's signed receipt again",
    )
    reissue.add_argument("-c", "--config", required=True, metavar="SITE.yaml")
    reissue.add_argument("--topup", required=True, metavar="ID")
    reissue.add_argument("--operator-key", required=True, metavar="OPERATOR.pem")
    reissue.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the result")
    reissue.set_defaults(func=_reissue)
