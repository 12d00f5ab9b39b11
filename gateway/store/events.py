"""The events journal: an append-only log of account and gateway state changes.

State changes, relay commands and their results, exemptions, tariff and clock changes: the
audit trail next to the ledger (which holds only money).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.store import jsontext
from gateway.store.jsontext import JsonObject
from gateway.store.timestamps import from_micros, to_micros


@dataclass(frozen=True, slots=True)
class Event:
    """One journalled state change. ``account_id`` is None for site-wide events."""

    event_id: int
    account_id: str | None
    kind: str
    detail: dict[str, Any]
    at: datetime


def record_event(
    conn: sqlite3.Connection,
    account_id: str | None,
    kind: str,
    detail: JsonObject | None,
    at: datetime,
) -> int:
    """Append an event. Must run inside a write transaction.

    Returns:
        The event id (increasing, never reused).
    """
    cursor = conn.execute(
        "INSERT INTO events (account_id, kind, detail_json, at_us) VALUES (?, ?, ?, ?)",
        (
            account_id,
            str(kind),
            jsontext.dumps(detail if detail is not None else {}),
            to_micros(at),
        ),
    )
    return int(cursor.lastrowid or 0)


def events(
    conn: sqlite3.Connection, account_id: str | None, after_id: int, limit: int
) -> list[Event]:
    """Events after ``after_id``, oldest first; of one account, or of all when None."""
    query = "SELECT event_id, account_id, kind, detail_json, at_us FROM events WHERE event_id > ?"
    args: tuple[object, ...] = (after_id,)
    if account_id is not None:
        query += " AND account_id = ?"
        args += (account_id,)
    query += " ORDER BY event_id LIMIT ?"
    return [
        Event(event_id, acct, kind, jsontext.loads_object(detail_json), from_micros(at_us))
        for event_id, acct, kind, detail_json, at_us in conn.execute(query, (*args, limit))
    ]


def recent_events(conn: sqlite3.Connection, limit: int) -> list[Event]:
    """The ``limit`` newest events, oldest of them first."""
    rows = conn.execute(
        "SELECT event_id, account_id, kind, detail_json, at_us FROM events"
        " ORDER BY event_id DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [
        Event(event_id, acct, kind, jsontext.loads_object(detail_json), from_micros(at_us))
        for event_id, acct, kind, detail_json, at_us in reversed(rows)
    ]
