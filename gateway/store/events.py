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


@dataclass(frozen=True, slots=True)
class DeviceSupplyRecord:
    """The last supply event journalled for a device: where it was driven, and whether the
    device confirmed it (``supply_confirmed``) or it was still pending (``supply_sent``)."""

    device_id: str
    on: bool
    confirmed: bool
    at: datetime


#: The events `gateway.flows.device_journal` writes for a supply device; ``detail`` holds
#: ``device`` and ``supply`` (where the device is being driven, or what it confirmed).
SUPPLY_SENT = "supply_sent"
SUPPLY_CONFIRMED = "supply_confirmed"


def last_device_supply(conn: sqlite3.Connection) -> dict[str, DeviceSupplyRecord]:
    """Per device, its newest ``supply_sent`` / ``supply_confirmed`` event.

    One scan at a start (the events journal is small next to the readings); SQLite takes the
    bare columns from the row holding ``MAX(event_id)``.
    """
    rows = conn.execute(
        "SELECT json_extract(detail_json, '$.device') AS device,"
        " json_extract(detail_json, '$.supply'), kind, at_us, MAX(event_id)"
        " FROM events WHERE kind IN (?, ?) AND device IS NOT NULL GROUP BY device",
        (SUPPLY_SENT, SUPPLY_CONFIRMED),
    )
    return {
        device: DeviceSupplyRecord(
            device, supply == "on", kind == SUPPLY_CONFIRMED, from_micros(at)
        )
        for device, supply, kind, at, _ in rows
    }
