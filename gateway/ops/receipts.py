"""``prepay receipt print`` and ``prepay receipt reissue``: a stored receipt (a top-up's, a
vending session's, a ticket sale's), printed or issued again.

Printing reads the store without its keys and without writing (`gateway.store.receipt_reads`),
so it works while the daemon runs. A reissue goes through the spool as a ``receipt`` command
signed with the operator's key, like ``prepay topup``: the daemon answers with the very same
signed receipt, also published as the command's result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from billing_engine.base.errors import PrepayError
from gateway.config import Site
from gateway.northbound.payloads import (
    CommandKind,
    ReceiptKind,
    TicketSaleReceiptPayload,
    VendingReceiptPayload,
)
from gateway.northbound.receipts import AnyReceiptPayload, receipt_model
from gateway.ops.operator_commands import submit_signed
from gateway.ops.receipt_pdf import find_cjk_font, render_pdf
from gateway.startup import STATE_FILE
from gateway.store.receipt_reads import open_receipts, signed_document


class ReceiptNotFoundError(PrepayError):
    """The store has no such receipt."""


@dataclass(frozen=True, slots=True)
class StoredReceipt:
    """A receipt as the gateway signed it, and its model (read from our own store, so its
    signature is not checked again here; `prepay receipt verify` does that for anyone)."""

    signed: dict[str, Any]
    receipt: AnyReceiptPayload


def load_receipt(
    site: Site,
    *,
    seq: int | None = None,
    topup_id: str | None = None,
    session: str | None = None,
    ticket: str | None = None,
) -> StoredReceipt:
    """Receipt number ``seq``; or that of top-up ``topup_id``, of vending session ``session``
    (``DISPENSER:SESSION_ID``) or of the ticket sold at the box with code ``ticket``; or (none
    given) the newest.

    Raises:
        ReceiptNotFoundError: no such receipt.
        StoreError: there is no store yet, or it cannot be read.
    """
    with open_receipts(site.state_dir / STATE_FILE) as receipts:
        if seq is not None:
            stored, which = receipts.by_seq(seq), f"no receipt number {seq}"
        elif topup_id is not None:
            stored, which = receipts.by_topup(topup_id), f"no receipt for top-up {topup_id!r}"
        elif session is not None:
            stored = receipts.by_subject(ReceiptKind.VENDING, session)
            which = f"no receipt for vending session {session!r}"
        elif ticket is not None:
            stored = receipts.by_subject(ReceiptKind.TICKET_SALE, ticket)
            which = f"no receipt for a ticket {ticket!r} sold here"
        else:
            stored, which = receipts.latest(), "no receipt issued yet"
    if stored is None:
        raise ReceiptNotFoundError(f"{which} in {site.state_dir / STATE_FILE}")
    signed = signed_document(stored)
    return StoredReceipt(signed, receipt_model(signed))


def receipt_timezone(site: Site, receipt: AnyReceiptPayload) -> ZoneInfo:
    """The zone a receipt's time is printed in: the local time of the customer. For an
    account, that of its tariff (the time it is billed in); for a ticket, the box's ticket
    zone; UTC for an account the site file no longer has."""
    tickets = site.config.tickets
    if isinstance(receipt, TicketSaleReceiptPayload) or (
        isinstance(receipt, VendingReceiptPayload) and receipt.account is None
    ):
        return ZoneInfo(tickets.timezone if tickets is not None else "UTC")
    account_id = receipt.account
    account = next((a for a in site.config.accounts if a.id == account_id), None)
    if account is None or account.tariff not in site.tariffs:
        return ZoneInfo("UTC")
    return ZoneInfo(site.tariffs[account.tariff].timezone)


def write_pdf(site: Site, stored: StoredReceipt, out: Path, font: Path | None = None) -> Path:
    """Write ``stored`` as an 80 mm PDF to ``out``, its time in the customer's zone.

    Raises:
        MissingFontError: ``font`` is None and no CJK font is installed.
        OSError: the font cannot be read or ``out`` cannot be written.
    """
    return write_pdf_in(stored, receipt_timezone(site, stored.receipt), out, font)


def write_pdf_in(stored: StoredReceipt, tz: ZoneInfo, out: Path, font: Path | None = None) -> Path:
    """Write ``stored`` as an 80 mm PDF to ``out``, its time in ``tz``.

    Raises:
        MissingFontError: ``font`` is None and no CJK font is installed.
        OSError: the font cannot be read or ``out`` cannot be written.
    """
    data = render_pdf(stored.signed, stored.receipt, tz, font or find_cjk_font())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out


def load_ticket_sale_receipt(store_file: Path, code: str) -> StoredReceipt:
    """The receipt of ticket ``code`` sold at the box, from the store file (read-only).

    Raises:
        ReceiptNotFoundError: the ticket was not sold here with a receipt.
        StoreError: the store cannot be read.
    """
    with open_receipts(store_file) as receipts:
        stored = receipts.by_subject(ReceiptKind.TICKET_SALE, code)
    if stored is None:
        raise ReceiptNotFoundError(f"no receipt for a ticket {code!r} sold here in {store_file}")
    signed = signed_document(stored)
    return StoredReceipt(signed, receipt_model(signed))


def write_demo_receipt(site: Site, directory: Path) -> Path:
    """The newest receipt of ``site`` as ``DIRECTORY/receipt-<seq>.pdf`` (for the demo).

    Raises:
        ReceiptNotFoundError: the store has issued no receipt yet.
        MissingFontError: no CJK font is installed.
        StoreError: there is no store yet, or it cannot be read.
    """
    stored = load_receipt(site)
    return write_pdf(site, stored, directory / f"receipt-{stored.receipt.receipt_seq}.pdf")


def queue_reissue(
    site: Site, operator_key: Path, *, topup_id: str | None = None, seq: int | None = None
) -> str:
    """Sign a ``receipt`` command for top-up ``topup_id`` or receipt number ``seq`` (exactly
    one) with the operator's key and spool it; returns its command id (wait with
    `gateway.ops.topup.wait_for_result`).

    Raises:
        KeyPermissionError: the operator's key file is readable by its group or others.
        OSError: the key file cannot be read, or the spool cannot be written.
        ValueError: not exactly one of ``topup_id`` and ``seq``.
    """
    if (topup_id is None) == (seq is None):
        raise ValueError("name the receipt by top-up id or by number, exactly one")
    body: dict[str, Any] = {"topup_id": topup_id} if topup_id is not None else {"receipt_seq": seq}
    command = submit_signed(site, CommandKind.RECEIPT, body, operator_key)
    return str(command["id"])
