"""Invoice requests: what the gateway asked the backend to invoice, and what became of it.

Top-up platforms are known to lose invoices (never received, lost, not reissued, requested one
by one). Here a request is a row written in the transaction of the top-up (or of the backend's
``request_period``) that asks for it, next to its message in the outbox: it cannot be lost and
is sent again through outages like every message. Each top-up is invoiced at most once
(``invoice_topups``); the backend's answer moves the row to ``issued`` (with the invoice number)
or ``failed`` (with its reason), and a reissue sends the request again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from gateway.store.errors import StoreError
from gateway.store.timestamps import from_micros

REQUESTED: Final = "requested"
ISSUED: Final = "issued"
FAILED: Final = "failed"


def invoice_id_of(command_id: str) -> str:
    """The invoice id of the request a command made: ``inv-`` and 20 hex digits of the SHA-256
    of the command id (a command id may hold characters a topic level may not)."""
    return "inv-" + hashlib.sha256(command_id.encode()).hexdigest()[:20]


class InvoiceConflictError(StoreError):
    """The invoice cannot be recorded as asked (a top-up invoiced already, another number)."""


@dataclass(frozen=True, slots=True)
class InvoiceDetails:
    """Who the invoice is for: the title (a person or company name), the tax id, an e-mail."""

    title: str
    tax_id: str | None
    email: str | None


@dataclass(frozen=True, slots=True)
class Invoice:
    """One invoice request and where it stands.

    Attributes:
        invoice_id: our id (the backend names the invoice by it).
        account_id: the account invoiced.
        topup_ids: the top-ups it covers (one; several for an enterprise's period).
        amount_minor, currency: their sum.
        details: title, tax id, e-mail.
        status: ``requested``, ``issued`` or ``failed``.
        number: the invoice number, once issued.
        reason: why it failed.
        requests: how many times the request was sent (1, then one more per reissue).
        created_at, updated_at: when asked, when last changed.
    """

    invoice_id: str
    account_id: str
    topup_ids: tuple[str, ...]
    amount_minor: int
    currency: str
    details: InvoiceDetails
    status: str
    number: str | None
    reason: str | None
    requests: int
    created_at: datetime
    updated_at: datetime


_COLUMNS = (
    "invoice_id, account_id, topup_ids_json, amount_minor, currency, title, tax_id, email,"
    " status, number, reason, requests, created_at_us, updated_at_us"
)


def _invoice(row: tuple[object, ...]) -> Invoice:
    (iid, account, topups, amount, currency, title, tax_id, email) = row[:8]
    (status, number, reason, requests, created, updated) = row[8:]
    return Invoice(
        invoice_id=str(iid),
        account_id=str(account),
        topup_ids=tuple(json.loads(str(topups))),
        amount_minor=int(str(amount)),
        currency=str(currency),
        details=InvoiceDetails(
            str(title),
            None if tax_id is None else str(tax_id),
            None if email is None else str(email),
        ),
        status=str(status),
        number=None if number is None else str(number),
        reason=None if reason is None else str(reason),
        requests=int(str(requests)),
        created_at=from_micros(int(str(created))),
        updated_at=from_micros(int(str(updated))),
    )


def request_invoice(
    conn: sqlite3.Connection,
    *,
    invoice_id: str,
    account_id: str,
    topup_ids: tuple[str, ...],
    amount_minor: int,
    currency: str,
    details: InvoiceDetails,
    now_us: int,
) -> Invoice:
    """Record a new request. Must run inside a write transaction.

    Raises:
        InvoiceConflictError: the id is taken, or a top-up is invoiced already.
    """
    try:
        conn.execute(
            # The column list is our constant; every value is a parameter.
            f"INSERT INTO invoices ({_COLUMNS}) VALUES"  # noqa: S608
            " (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, 1, ?, ?)",
            (
                invoice_id,
                account_id,
                json.dumps(list(topup_ids)),
                amount_minor,
                currency,
                details.title,
                details.tax_id,
                details.email,
                REQUESTED,
                now_us,
                now_us,
            ),
        )
        conn.executemany(
            "INSERT INTO invoice_topups (topup_id, invoice_id) VALUES (?, ?)",
            [(t, invoice_id) for t in topup_ids],
        )
    except sqlite3.IntegrityError as exc:
        raise InvoiceConflictError(
            f"invoice {invoice_id}: the id or one of its top-ups is invoiced already ({exc})"
        ) from None
    found = invoice(conn, invoice_id)
    assert found is not None  # noqa: S101 - inserted just above, same transaction
    return found


def invoice(conn: sqlite3.Connection, invoice_id: str) -> Invoice | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM invoices WHERE invoice_id = ?",  # noqa: S608
        (invoice_id,),
    )
    found = row.fetchone()
    return None if found is None else _invoice(found)


def invoices(conn: sqlite3.Connection, account_id: str | None = None) -> list[Invoice]:
    """Every invoice (of one account), oldest first."""
    query = f"SELECT {_COLUMNS} FROM invoices"  # noqa: S608
    args: tuple[object, ...] = ()
    if account_id is not None:
        query += " WHERE account_id = ?"
        args = (account_id,)
    return [_invoice(r) for r in conn.execute(query + " ORDER BY created_at_us, invoice_id", args)]


def set_status(
    conn: sqlite3.Connection,
    invoice_id: str,
    status: str,
    now_us: int,
    *,
    number: str | None = None,
    reason: str | None = None,
    resend: bool = False,
) -> Invoice:
    """Move an invoice to ``status`` (``resend``: one more request sent). Must run inside a
    write transaction.

    Raises:
        InvoiceConflictError: no such invoice.
    """
    cursor = conn.execute(
        "UPDATE invoices SET status = ?, number = ?, reason = ?, requests = requests + ?,"
        " updated_at_us = ? WHERE invoice_id = ?",
        (status, number, reason, 1 if resend else 0, now_us, invoice_id),
    )
    if cursor.rowcount != 1:
        raise InvoiceConflictError(f"no invoice {invoice_id}")
    found = invoice(conn, invoice_id)
    assert found is not None  # noqa: S101 - updated just above, same transaction
    return found


def uninvoiced_topups(
    conn: sqlite3.Connection, account_id: str, from_us: int, to_us: int
) -> list[tuple[str, int, str]]:
    """The account's top-ups credited in ``[from_us, to_us)`` and not invoiced yet, oldest
    first: (top-up id, amount, currency)."""
    rows = conn.execute(
        "SELECT l.ref, l.amount_minor, l.currency FROM ledger AS l"
        " WHERE l.account_id = ? AND l.kind = 'topup' AND l.created_at_us >= ?"
        " AND l.created_at_us < ?"
        " AND NOT EXISTS (SELECT 1 FROM invoice_topups AS i WHERE i.topup_id = l.ref)"
        " ORDER BY l.seq",
        (account_id, from_us, to_us),
    )
    return [(str(ref), int(amount), str(currency)) for ref, amount, currency in rows]
