"""``prepay ticket ...``: water tickets at a pickup point (redeem, check, stats, emergency
tickets, conversion, extension, batches), and the plant's ``make`` tool for demos and tests.

Exit codes: 0 done (or, for ``check``, the ticket would be taken), 1 refused or invalid input
(the reason is printed, nothing changed), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from billing_engine.base.errors import InvalidConfigError, PrepayError
from gateway.cli.common import EXIT_INVALID, EXIT_OK, EXIT_USAGE, Commands, print_errors
from gateway.northbound.payloads import format_rfc3339
from gateway.ops import receipts, tickets
from gateway.store.tickets import Redemption, TicketStore
from gateway.tickets.batches import BatchError
from gateway.tickets.codes import CodeError, TicketCode
from gateway.tickets.electronic import Origin
from gateway.tickets.reasons import Refusal
from gateway.tickets.scope import Scope


def _emit(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    print(json.dumps(doc, ensure_ascii=False) if args.json else text)


def _refused(args: argparse.Namespace, code: str | None, refusal: Refusal) -> int:
    doc = {"status": "refused", "code": code, **tickets.describe_refusal(refusal)}
    if args.json:
        print(json.dumps(doc, ensure_ascii=False))
    else:
        print(f"refused: {refusal}", file=sys.stderr)
    return EXIT_INVALID


def _redemption_json(r: Redemption) -> dict[str, Any]:
    return {
        "code": r.code,
        "redemption_id": r.redemption_id,
        "kind": r.kind,
        "product": r.product,
        "qty": r.quantity,
        "box": r.box_id,
        "incarnation": r.incarnation,
        "where": r.where,
        "at": format_rfc3339(r.redeemed_at),
    }


def _with_store(
    args: argparse.Namespace,
    work: Callable[[tickets.TicketSite, TicketStore], int],
) -> int:
    """Load the site's ticket settings, open the store, run ``work``; bad input is one line."""
    try:
        site = tickets.load_ticket_site(Path(args.config))
    except InvalidConfigError as exc:
        return print_errors(exc)
    try:
        with tickets.open_ticket_store(site) as store:
            return work(site, store)
    except (PrepayError, BatchError) as exc:  # no store, a key too open, a cap, a conflict
        print(exc, file=sys.stderr)
        return EXIT_INVALID


def _now() -> datetime:
    return datetime.now(UTC)


# --- the box's commands -----------------------------------------------------------------------
def _redeem(args: argparse.Namespace) -> int:
    def work(site: tickets.TicketSite, store: TicketStore) -> int:
        result = tickets.redeem(
            site,
            store,
            args.ticket,
            now=_now(),
            where=args.where,
            redemption_id=args.id,
            product=args.product,
        )
        if result.refusal is not None:
            return _refused(args, result.code, result.refusal)
        if result.replayed is not None:
            r = result.replayed
            doc = {"status": "replayed", **_redemption_json(r)}
            text = (
                f"already redeemed here, at {format_rfc3339(r.redeemed_at)}, by this same"
                f" request {r.redemption_id} ({r.where or 'no place given'}): nothing changed"
            )
            _emit(args, doc, text)
            return EXIT_OK
        assert result.redeemed is not None  # noqa: S101 - RedeemResult holds exactly one
        r = result.redeemed
        text = f"redeemed {r.code}: {r.quantity} x {r.product} ({r.kind}) as {r.redemption_id}"
        _emit(args, {"status": "redeemed", **_redemption_json(r)}, text)
        return EXIT_OK

    return _with_store(args, work)


def _check(args: argparse.Namespace) -> int:
    def work(site: tickets.TicketSite, store: TicketStore) -> int:
        verdict = tickets.check(site, store, args.ticket, now=_now(), product=args.product)
        if verdict.refusal is not None:
            return _refused(args, verdict.code, verdict.refusal)
        terms = verdict.terms
        assert terms is not None  # noqa: S101 - an accepted verdict has terms
        doc = {
            "status": "valid",
            "code": terms.code.text,
            "kind": terms.kind.value,
            "product": terms.product,
            "qty": terms.quantity,
            "from": terms.valid_from.isoformat(),
            "until": terms.valid_until.isoformat(),
            "scope": None if terms.scope is None else str(terms.scope),
        }
        text = (
            f"valid: {terms.code.grouped()} ({terms.kind.value}), {terms.quantity} x"
            f" {terms.product}, {terms.valid_from.isoformat()} to {terms.valid_until.isoformat()}"
        )
        _emit(args, doc, text)
        return EXIT_OK

    return _with_store(args, work)


def _stats(args: argparse.Namespace) -> int:
    def work(site: tickets.TicketSite, store: TicketStore) -> int:
        doc = tickets.stats(site, store, now=_now(), period=args.period)
        lines = [f"tickets at {doc['site']} as of {doc['as_of']}"]
        for product, counts in doc["products"].items():
            lines.append(
                f"  {product}: paper {counts['paper_issued']} issued, {counts['paper_used']} used,"
                f" {counts['paper_converted']} converted, {counts['paper_expired']} expired,"
                f" {counts['paper_remaining']} remaining; electronic {counts['electronic_used']}"
                f" used; emergency {counts['emergency_issued']} issued,"
                f" {counts['emergency_used']} used, {counts['emergency_unreconciled']} to reconcile"
            )
        lines += [
            f"  {row['period']}  {row['product']}  {row['kind']}: {row['used']} used"
            for row in doc["periods"]
        ]
        stock = doc["stock"]
        alert = "  RESTOCK" if stock["restock"] else ""
        lines.append(
            f"  paper stock at depot {stock['depot']}: {stock['paper_remaining']}"
            f" (restock below {stock['restock_level']}){alert}"
        )
        if doc["conflicts"]:
            lines.append(f"  {doc['conflicts']} tickets redeemed here and at another box")
        _emit(args, doc, "\n".join(lines))
        return EXIT_OK

    return _with_store(args, work)


def _issue_emergency(args: argparse.Namespace) -> int:
    def work(site: tickets.TicketSite, store: TicketStore) -> int:
        ticket = tickets.issue_emergency(site, store, args.product, now=_now(), note=args.note)
        doc: dict[str, Any] = {
            "status": "issued",
            "code": ticket.code,
            "emergency": True,
            "product": ticket.product,
            "issued_on": ticket.issued_on.isoformat(),
            "until": ticket.valid_until.isoformat(),
            "seq": ticket.seq,
            "receipt_seq": ticket.receipt_seq,
        }
        grouped = " ".join(ticket.code[i : i + 4] for i in range(0, 16, 4))
        text = (
            f"EMERGENCY ticket {grouped}: 1 x {ticket.product}, valid until"
            f" {ticket.valid_until.isoformat()}; exchange for a formal ticket when the network"
            f" is back (receipt {ticket.receipt_seq})"
        )
        if args.receipt is not None:
            # Issued whatever happens to the printer: a failure here is told, not undone.
            try:
                stored = receipts.load_ticket_sale_receipt(site.store_path, ticket.code)
                out = receipts.write_pdf_in(
                    stored, ZoneInfo(site.settings.timezone), Path(args.receipt)
                )
            except (OSError, PrepayError) as exc:
                _emit(args, doc, text)
                print(f"the receipt was not printed: {exc}", file=sys.stderr)
                return EXIT_INVALID
            doc["receipt_pdf"] = str(out)
            text += f"; wrote {out}"
        _emit(args, doc, text)
        return EXIT_OK

    return _with_store(args, work)


def _convert(args: argparse.Namespace) -> int:
    def work(site: tickets.TicketSite, store: TicketStore) -> int:
        outcome = tickets.convert(site, store, args.code, now=_now())
        if isinstance(outcome, Refusal):
            return _refused(args, None, outcome)
        doc = {
            "status": "converted",
            "code": outcome.code,
            "ticket": outcome.ticket,
            "voided_at": format_rfc3339(outcome.voided_at),
        }
        _emit(args, doc, outcome.ticket)
        return EXIT_OK

    return _with_store(args, work)


def _extend(args: argparse.Namespace) -> int:
    def work(site: tickets.TicketSite, store: TicketStore) -> int:
        outcome = tickets.extend(site, store, args.code, now=_now())
        if isinstance(outcome, Refusal):
            return _refused(args, None, outcome)
        doc = {
            "status": "extended",
            "code": outcome.code,
            "old_until": outcome.old_until.isoformat(),
            "until": outcome.new_until.isoformat(),
        }
        text = f"extended {outcome.code}: valid until {outcome.new_until.isoformat()}"
        _emit(args, doc, text)
        return EXIT_OK

    return _with_store(args, work)


def _import_batch(args: argparse.Namespace) -> int:
    try:
        raw = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"{args.file}: cannot read: {exc.strerror}", file=sys.stderr)
        return EXIT_INVALID

    def work(site: tickets.TicketSite, store: TicketStore) -> int:
        try:
            batch, new = tickets.import_batch(site, store, raw)
        except BatchError as exc:
            print(f"{args.file}: {exc}", file=sys.stderr)
            return EXIT_INVALID
        doc = {
            "status": "imported" if new else "unchanged",
            "batch": batch.batch,
            "product": batch.product,
            "codes": batch.count,
            "ranges": len(batch.ranges),
            "until": batch.valid_until.isoformat(),
        }
        verb = "imported" if new else "already imported (unchanged)"
        text = f"batch {batch.batch} {verb}: {batch.count} codes of {batch.product}"
        _emit(args, doc, text)
        return EXIT_OK

    return _with_store(args, work)


# --- the plant's tool -------------------------------------------------------------------------
def _scope_of(args: argparse.Namespace) -> Scope:
    return Scope(depot=args.depot) if args.depot else Scope(region=args.region)


def _make_code(args: argparse.Namespace) -> int:
    try:
        code = TicketCode(args.plant, args.serial)
    except CodeError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    _emit(args, {"code": code.text}, code.text)
    return EXIT_OK


def _make_electronic(args: argparse.Namespace) -> int:
    try:
        text = tickets.make_electronic(
            Path(args.key),
            code=args.code,
            product=args.product,
            valid_from=args.valid_from,
            valid_until=args.valid_until,
            scope=_scope_of(args),
            qty=args.qty,
            origin=Origin(args.origin),
        )
    except ValidationError as exc:
        return _invalid_fields(exc)
    except (PrepayError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    _emit(args, {"ticket": text}, text)
    return EXIT_OK


def _make_batch(args: argparse.Namespace) -> int:
    try:
        doc = tickets.make_batch(
            Path(args.key),
            batch_id=args.batch,
            plant=args.plant,
            product=args.product,
            face_minor=args.face_minor,
            currency=args.currency,
            valid_from=args.valid_from,
            valid_until=args.valid_until,
            scope=_scope_of(args),
            ranges=args.range,
        )
    except ValidationError as exc:
        return _invalid_fields(exc)
    except (PrepayError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    text = json.dumps(doc, ensure_ascii=False, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(text)
    return EXIT_OK


def _invalid_fields(exc: ValidationError) -> int:
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "ticket"
        print(f"{where}: {err['msg'].removeprefix('Value error, ')}", file=sys.stderr)
    return EXIT_INVALID


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _range(text: str) -> tuple[int, int]:
    first, _, count = text.partition(":")
    if not (first.isdigit() and count.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not FIRST_SERIAL:COUNT")
    return int(first), int(count)


def _site_command(
    group: Commands, name: str, help_text: str, func: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    parser = group.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("-c", "--config", required=True, metavar="SITE.yaml")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.set_defaults(func=func)
    return parser


def _scope_options(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument("--depot", help="valid at this depot only")
    scope.add_argument("--region", help="valid in this region")


def register(commands: Commands) -> None:
    ticket = commands.add_parser(
        "ticket", help="water tickets: redeem, check, stats, emergency, convert, extend, batches"
    )
    group = ticket.add_subparsers(dest="ticket_command", required=True)

    redeem = _site_command(group, "redeem", "redeem a ticket (code or QR string) once", _redeem)
    redeem.add_argument("ticket", metavar="CODE", help="16-digit code or PT1.… ticket string")
    redeem.add_argument("--where", default="", help="the pickup point, courier or counter")
    redeem.add_argument("--id", help="request id: the same id again changes nothing")
    redeem.add_argument("--product", help="the product the point hands out, when it asks")

    check = _site_command(
        group, "check", "would this ticket be taken here now? (no change)", _check
    )
    check.add_argument("ticket", metavar="CODE", help="16-digit code or PT1.… ticket string")
    check.add_argument("--product", help="the product the point hands out, when it asks")

    stats = _site_command(group, "stats", "issued, used, expired, remaining; paper stock", _stats)
    stats.add_argument("--period", choices=["day", "month"], default="month")

    emergency = _site_command(
        group, "issue-emergency", "issue a temporary ticket while the network is down",
        _issue_emergency,
    )  # fmt: skip
    emergency.add_argument("--product", required=True)
    emergency.add_argument("--note", default="", help="why (outage, typhoon), for the record")
    emergency.add_argument(
        "--receipt", metavar="FILE.pdf", help="also print the sale's receipt as an 80 mm PDF"
    )

    convert = _site_command(
        group, "convert", "exchange a paper ticket 1:1 for an electronic one", _convert
    )
    convert.add_argument("code", metavar="PAPER_CODE")

    extend = _site_command(
        group, "extend", "extend an expired paper ticket once, by one month", _extend
    )
    extend.add_argument("code", metavar="CODE")

    batch = _site_command(
        group, "import-batch", "import a signed ticket_batch (paper code ranges)", _import_batch
    )
    batch.add_argument("file", metavar="FILE")

    make = group.add_parser(
        "make", help="the plant's tool (demos, tests): sign tickets and batches"
    )
    make_group = make.add_subparsers(dest="make_command", required=True)

    code = make_group.add_parser("code", help="a code with its check digit")
    code.add_argument("--plant", required=True, help="6-digit plant code")
    code.add_argument("--serial", required=True, type=int, help="0-899999999")
    code.add_argument("--json", action="store_true")
    code.set_defaults(func=_make_code)

    elec = make_group.add_parser("electronic", help="sign an electronic ticket (QR string)")
    elec.add_argument("--key", required=True, metavar="PLANT.pem", help="the plant's private key")
    elec.add_argument("--code", required=True)
    elec.add_argument("--product", required=True)
    elec.add_argument("--qty", type=int, default=1)
    elec.add_argument("--from", dest="valid_from", type=_day, required=True, metavar="DATE")
    elec.add_argument("--until", dest="valid_until", type=_day, required=True, metavar="DATE")
    elec.add_argument("--origin", choices=[o.value for o in Origin], default=Origin.SOLD.value)
    _scope_options(elec)
    elec.add_argument("--json", action="store_true")
    elec.set_defaults(func=_make_electronic)

    mbatch = make_group.add_parser("batch", help="sign a ticket_batch of paper code ranges")
    mbatch.add_argument("--key", required=True, metavar="PLANT.pem")
    mbatch.add_argument("--batch", required=True, help="the batch id")
    mbatch.add_argument("--plant", required=True)
    mbatch.add_argument("--product", required=True)
    mbatch.add_argument("--face-minor", type=int, required=True, help="face value, minor units")
    mbatch.add_argument("--currency", required=True)
    mbatch.add_argument("--from", dest="valid_from", type=_day, required=True, metavar="DATE")
    mbatch.add_argument("--until", dest="valid_until", type=_day, required=True, metavar="DATE")
    mbatch.add_argument(
        "--range", type=_range, action="append", required=True, metavar="FIRST_SERIAL:COUNT"
    )
    _scope_options(mbatch)
    mbatch.add_argument("--out", metavar="FILE", help="write the document here")
    mbatch.set_defaults(func=_make_batch)
