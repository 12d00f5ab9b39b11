"""Backend command idempotency and top-up receipts.

A command id is recorded with the result of its first execution; a duplicate id replays that
result (Stripe's rule: the first outcome, failures included, is what every retry sees). Command
ids are kept for good, like ledger keys, so a retried top-up can never credit twice.

Receipts carry a per-site seq that only goes up (it lives in ``counters`` and moves in the
caller's transaction, so a rolled-back top-up does not burn a number) and are stored with their
signature so a duplicate top-up gets the very same receipt back.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from gateway.store.errors import CommandConflictError, ReceiptConflictError, StoreError


@dataclass(frozen=True, slots=True)
class StoredCommand:
    """What is kept of an applied (or refused) command: its first result, and a digest of its
    content (None for a command recorded before digests were kept)."""

    result_json: str
    content_hash: str | None


@dataclass(frozen=True, slots=True)
class Receipt:
    """A signed top-up receipt as stored."""

    seq: int
    topup_id: str
    account_id: str
    payload: bytes
    signature: bytes


def record_command(
    conn: sqlite3.Connection,
    command_id: str,
    kind: str,
    result_json: str,
    now_us: int,
    content_hash: str | None = None,
) -> str:
    """Record the first result of ``command_id``; a duplicate keeps the first.

    Must run inside a write transaction.

    Returns:
        The stored result: ``result_json`` for a new id, the first result for a duplicate.

    Raises:
        CommandConflictError: the id was recorded for a different kind of command.
    """
    if not command_id:
        raise ValueError("command_id must not be empty")
    cursor = conn.execute(
        "INSERT INTO commands (command_id, kind, result_json, recorded_at_us, content_hash)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (command_id) DO NOTHING",
        (command_id, str(kind), result_json, now_us, content_hash),
    )
    if cursor.rowcount == 1:
        return result_json
    stored_kind, stored_result = conn.execute(
        "SELECT kind, result_json FROM commands WHERE command_id = ?", (command_id,)
    ).fetchone()
    if stored_kind != str(kind):
        raise CommandConflictError(command_id, f"kind {stored_kind!r} != {str(kind)!r}")
    return str(stored_result)


def command_result(conn: sqlite3.Connection, command_id: str) -> str | None:
    """The first recorded result of ``command_id``, or None when it was never seen."""
    stored = stored_command(conn, command_id)
    return None if stored is None else stored.result_json


def stored_command(conn: sqlite3.Connection, command_id: str) -> StoredCommand | None:
    """What is kept of ``command_id``, or None when it was never seen."""
    row = conn.execute(
        "SELECT result_json, content_hash FROM commands WHERE command_id = ?", (command_id,)
    ).fetchone()
    return None if row is None else StoredCommand(str(row[0]), row[1])


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
        ReceiptConflictError: the top-up already has a different receipt, or the seq belongs
            to another top-up, or the seq was never issued by `next_receipt_seq`.
    """
    issued = conn.execute("SELECT value FROM counters WHERE name = 'receipt_seq'").fetchone()
    if issued is None or not 1 <= receipt.seq <= int(issued[0]):
        raise ReceiptConflictError(receipt.topup_id, f"receipt seq {receipt.seq} was not issued")
    existing = conn.execute(
        "SELECT seq, topup_id, account_id, payload, signature FROM receipts"
        " WHERE topup_id = ? OR seq = ?",
        (receipt.topup_id, receipt.seq),
    ).fetchall()
    if not existing:
        conn.execute(
            "INSERT INTO receipts (seq, topup_id, account_id, payload, signature)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                receipt.seq,
                receipt.topup_id,
                receipt.account_id,
                bytes(receipt.payload),
                bytes(receipt.signature),
            ),
        )
        return
    stored = [_receipt(row) for row in existing]
    if stored != [receipt]:
        raise ReceiptConflictError(
            receipt.topup_id,
            "top-up or receipt seq already has a different receipt (seq "
            + ", ".join(str(r.seq) for r in stored)
            + ")",
        )


def _receipt(row: tuple[int, str, str, bytes, bytes]) -> Receipt:
    seq, topup_id, account_id, payload, signature = row
    return Receipt(seq, topup_id, account_id, bytes(payload), bytes(signature))


def receipt_for_topup(conn: sqlite3.Connection, topup_id: str) -> Receipt | None:
    """The receipt of ``topup_id``, or None when there is none."""
    row = conn.execute(
        "SELECT seq, topup_id, account_id, payload, signature FROM receipts WHERE topup_id = ?",
        (topup_id,),
    ).fetchone()
    return None if row is None else _receipt(row)
