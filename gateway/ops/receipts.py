"""``prepay receipt print`` and ``prepay receipt reissue``: a stored receipt, printed or
issued again.

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
from gateway.northbound.payloads import CommandKind, ReceiptPayload
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
    receipt: ReceiptPayload


def load_receipt(
    site: Site, *, seq: int | None = None, topup_id: str | None = None
) -> StoredReceipt:
    """Receipt number ``seq``, or that of top-up ``topup_id``, or (neither given) the newest.

    Raises:
        ReceiptNotFoundError: no such receipt.
        StoreError: there is no store yet, or it cannot be read.
    """
    with open_receipts(site.state_dir / STATE_FILE) as receipts:
        if seq is not None:
            stored, which = receipts.by_seq(seq), f"no receipt number {seq}"
        elif topup_id is not None:
            stored, which = receipts.by_topup(topup_id), f"no receipt for top-up {topup_id!r}"
        else:
            stored, which = receipts.latest(), "no receipt issued yet"
    if stored is None:
        raise ReceiptNotFoundError(f"{which} in {site.state_dir / STATE_FILE}")
    signed = signed_document(stored)
    return StoredReceipt(signed, ReceiptPayload.model_validate(signed))


def receipt_timezone(site: Site, account_id: str) -> ZoneInfo:
    """The zone a receipt's time is printed in: that of the account's tariff (the local time
    the customer is billed in); UTC for an account the site file no longer has."""
    account = next((a for a in site.config.accounts if a.id == account_id), None)
    if account is None or account.tariff not in site.tariffs:
        return ZoneInfo("UTC")
    return ZoneInfo(site.tariffs[account.tariff].timezone)


def write_pdf(site: Site, stored: StoredReceipt, out: Path, font: Path | None = None) -> Path:
    """Write ``stored`` as an 80 mm PDF to ``out``.

    Raises:
        MissingFontError: ``font`` is None and no CJK font is installed.
        OSError: the font cannot be read or ``out`` cannot be written.
    """
    tz = receipt_timezone(site, stored.receipt.account)
    data = render_pdf(stored.signed, stored.receipt, tz, font or find_cjk_font())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out


def write_demo_receipt(site: Site, directory: Path) -> Path:
    """The newest receipt of ``site`` as ``DIRECTORY/receipt-<seq>.pdf`` (for the demo).

    Raises:
        ReceiptNotFoundError: the store has issued no receipt yet.
        MissingFontError: no CJK font is installed.
        StoreError: there is no store yet, or it cannot be read.
    """
    stored = load_receipt(site)
    return write_pdf(site, stored, directory / f"receipt-{stored.receipt.receipt_seq}.pdf")


def queue_reissue(site: Site, topup_id: str, operator_key: Path) -> str:
    """Sign a ``receipt`` command for ``topup_id`` with the operator's key and spool it;
    returns its command id (wait with `gateway.ops.topup.wait_for_result`).

    Raises:
        KeyPermissionError: the operator's key file is readable by its group or others.
        OSError: the key file cannot be read, or the spool cannot be written.
    """
    command = submit_signed(site, CommandKind.RECEIPT, {"topup_id": topup_id}, operator_key)
    return str(command["id"])
