"""Backend command idempotency.

A command id is recorded with the result of its first execution; a duplicate id replays that
result (Stripe's rule: the first outcome, failures included, is what every retry sees). Command
ids are kept for good, like ledger keys, so a retried top-up can never credit twice.
(Receipts, which a duplicate top-up gets back, are kept by `gateway.store.receipts`.)
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from gateway.store.errors import CommandConflictError


@dataclass(frozen=True, slots=True)
class StoredCommand:
    """What is kept of an applied (or refused) command: its first result, and a digest of its
    content (None for a command recorded before digests were kept)."""

    result_json: str
    content_hash: str | None


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
