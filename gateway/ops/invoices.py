"""``prepay invoice list|reissue``: the invoice requests of the site, and asking again.

A top-up made with invoice details (``prepay topup --invoice-title``, or a backend top-up with
``invoice``) is followed by an invoice request to the backend, sent through the outbox like
every message; the backend's ``cmd/invoice`` answer says issued (with its number) or failed.
``reissue`` asks again, through the same signed, journalled path as the backend's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from billing_engine import money
from gateway.config import Site
from gateway.northbound.payloads import CommandKind, format_rfc3339
from gateway.ops.operator_commands import submit_signed
from gateway.startup import STATE_FILE, load_keys, open_store
from gateway.store.invoices import Invoice


def collect(site: Site, account: str | None = None) -> list[Invoice]:
    """The site's invoice requests (of one account), oldest first.

    Raises:
        FileNotFoundError: there is no store yet (nothing is created).
        InvalidConfigError: a key file cannot be used.
    """
    path = site.state_dir / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no store at {path}: the gateway has not run with this site yet")
    with open_store(site, load_keys(site)) as store:
        return store.invoices(account)


def to_json(invoice: Invoice) -> dict[str, Any]:
    return {
        "invoice_id": invoice.invoice_id,
        "account": invoice.account_id,
        "topups": list(invoice.topup_ids),
        "amount_minor": invoice.amount_minor,
        "currency": invoice.currency,
        "title": invoice.details.title,
        "tax_id": invoice.details.tax_id,
        "email": invoice.details.email,
        "status": invoice.status,
        "number": invoice.number,
        "reason": invoice.reason,
        "requests": invoice.requests,
        "created_at": format_rfc3339(invoice.created_at),
        "updated_at": format_rfc3339(invoice.updated_at),
    }


def render(invoices: list[Invoice]) -> str:
    if not invoices:
        return "no invoice requests"
    lines = []
    for inv in invoices:
        amount = money.format_minor(inv.amount_minor, inv.currency)
        state = inv.status
        if inv.number:
            state += f" {inv.number}"
        if inv.reason:
            state += f" ({inv.reason})"
        lines.append(
            f"{inv.invoice_id}  {inv.account_id}  {amount:>14}  {state};"
            f" {inv.details.title}; {len(inv.topup_ids)} top-up(s), asked {inv.requests}x"
        )
    return "\n".join(lines)


def queue_reissue(site: Site, invoice_id: str, operator_key: Path) -> str:
    """Sign "send the request of ``invoice_id`` again" and spool it; returns the command id.

    Raises:
        KeyPermissionError: the operator's key file is readable by its group or others.
        OSError: the key file cannot be read, or the spool cannot be written.
    """
    fields = {"action": "reissue", "invoice_id": invoice_id}
    return str(submit_signed(site, CommandKind.INVOICE, fields, operator_key)["id"])
