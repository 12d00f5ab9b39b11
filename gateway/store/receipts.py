"""Signed receipts as stored: one per receipted thing, numbered per site without gaps.

A receipt names what it is for by ``(kind, subject)``: a top-up (``topup``, the top-up id), a
settled vending session (``vending``, ``{dispenser}:{session_id}``) or a ticket sold at the box
(``ticket_sale``, the ticket code). Its number comes from the ``receipt_seq`` counter, which
moves in the caller's transaction, so a rolled-back top-up or pour does not burn a number. The
canonical JSON that was signed and the signature are kept as they are, so a reissue, a
duplicate top-up or a replayed pour report gets the very same receipt back.

All functions take a connection inside the caller's transaction (`Transaction`, the ticket
store's writer, or a read-only snapshot for the reads).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Final

from gateway.store.errors import ReceiptConflictError, StoreError

#: The kinds the ``receipts`` table accepts (its CHECK constraint, schema version 9).
KINDS: Final = ("topup", "vending", "ticket_sale")

_SELECT: Final = "SELECT seq, kind, subject, account_id, payload, signature FROM receipts"
_INSERT: Final = (
    "INSERT INTO receipts (seq, kind, subject, account_id, payload, signature)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_BY_SUBJECT_OR_SEQ: Final = _SELECT + " WHERE (kind = ? AND subject = ?) OR seq = ?"
_BY_SUBJECT: Final = _SELECT + " WHERE kind = ? AND subject = ?"
_BY_SEQ: Final = _SELECT + " WHERE seq = ?"
_LATEST: Final = _SELECT + " ORDER BY seq DESC LIMIT 1"


@dataclass(frozen=True, slots=True)
class Receipt:
    """A signed receipt as stored: ``payload`` is the canonical JSON that was signed."""

    seq: int
    kind: str
    subject: str
    account_id: str | None
    payload: bytes
    signature: bytes


def next_receipt_seq(conn: sqlite3.Connection) -> int:
    """Take the next receipt seq (1, 2, ...). Must run inside a write transaction."""
    row = conn.execute(
        "UPDATE counters SET value = value + 1 WHERE name = 'receipt_seq' RETURNING value"
    ).fetchone()
    if row is None:
        raise StoreError("receipt counter is missing from the database")
    return int(row[0])


def save_receipt(conn: sqlite3.Connection, receipt: Receipt) -> None:
    """Store a receipt; saving the identical receipt again is a no-op.

    Must run inside a write transaction.

    Raises:
        ReceiptConflictError: the subject already has a different receipt, or the seq belongs
            to another subject, or the seq was never issued by `next_receipt_seq`.
        ValueError: an unknown kind.
    """
    if receipt.kind not in KINDS:
        raise ValueError(f"receipt kind {receipt.kind!r} is not one of {KINDS}")
    issued = conn.execute("SELECT value FROM counters WHERE name = 'receipt_seq'").fetchone()
    if issued is None or not 1 <= receipt.seq <= int(issued[0]):
        raise ReceiptConflictError(receipt.subject, f"receipt seq {receipt.seq} was not issued")
    existing = conn.execute(
        _BY_SUBJECT_OR_SEQ,
        (receipt.kind, receipt.subject, receipt.seq),
    ).fetchall()
    if not existing:
        conn.execute(
            _INSERT,
            (
                receipt.seq,
                receipt.kind,
                receipt.subject,
                receipt.account_id,
                bytes(receipt.payload),
                bytes(receipt.signature),
            ),
        )
        return
    stored = [_receipt(row) for row in existing]
    if stored != [receipt]:
        raise ReceiptConflictError(
            receipt.subject,
            f"{receipt.kind} or receipt seq already has a different receipt (seq "
            + ", ".join(str(r.seq) for r in stored)
            + ")",
        )


def receipt_for(conn: sqlite3.Connection, kind: str, subject: str) -> Receipt | None:
    """The receipt of ``subject`` of ``kind``, or None when it has none."""
    row = conn.execute(_BY_SUBJECT, (kind, subject)).fetchone()
    return None if row is None else _receipt(row)


def receipt_by_seq(conn: sqlite3.Connection, seq: int) -> Receipt | None:
    """The receipt numbered ``seq``, or None."""
    row = conn.execute(_BY_SEQ, (seq,)).fetchone()
    return None if row is None else _receipt(row)


def latest_receipt(conn: sqlite3.Connection) -> Receipt | None:
    """The newest receipt, or None when the store has issued none."""
    row = conn.execute(_LATEST).fetchone()
    return None if row is None else _receipt(row)


def _receipt(row: tuple[int, str, str, str | None, bytes, bytes]) -> Receipt:
    seq, kind, subject, account_id, payload, signature = row
    return Receipt(seq, kind, subject, account_id, bytes(payload), bytes(signature))
