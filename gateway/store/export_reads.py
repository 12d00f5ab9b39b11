"""`ExportReader`: committed rows after a durable cursor, for a sink outside the box (InfluxDB).

The store is the truth; a sink is a copy that catches up. The reader hands out readings
(journal order), ledger entries (with the account's balance after each) and events after the
cursor, read in one snapshot, and moves the cursor only when told (after the sink's server
acknowledged them), in a reserved record of the account-state table beside the backend's
overlay: a crash before that re-sends the batch, never skips it.

It holds its own connection to the file (like `gateway.store.tickets.TicketStore`): its reads
and its cursor writes take SQLite's own locks and never the `Store`'s, so a slow sink never
holds up billing. Rows are committed in id order (SQLite has one writer at a time), so a cursor
on the ids misses nothing.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from drivers.ports import Clock, utc_now
from gateway.store import account_records, db, events, jsontext, ledger
from gateway.store.errors import StoreError
from gateway.store.events import Event
from gateway.store.timestamps import from_micros, to_micros

#: The reserved account-state record that holds the InfluxDB sink's cursor.
INFLUX_CURSOR_KEY: Final = "~influx.sent"


@dataclass(frozen=True, slots=True)
class ExportCursor:
    """The last row of each kind the sink's server has acknowledged."""

    reading_row: int = 0
    ledger_seq: int = 0
    event_id: int = 0


@dataclass(frozen=True, slots=True)
class ExportedReading:
    row_id: int
    meter_id: str
    read_at: datetime
    register_milli: int
    quality: str
    source: str


@dataclass(frozen=True, slots=True)
class ExportedEntry:
    """A ledger entry and the account's balance once it was applied."""

    seq: int
    account_id: str
    kind: str
    amount_minor: int
    balance_minor: int
    currency: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ExportBatch:
    """Rows after a cursor, and the cursor once they are acknowledged."""

    readings: tuple[ExportedReading, ...]
    entries: tuple[ExportedEntry, ...]
    events: tuple[Event, ...]
    after: ExportCursor

    def __len__(self) -> int:
        return len(self.readings) + len(self.entries) + len(self.events)


@dataclass(frozen=True, slots=True)
class ExportLag:
    """How far the sink is behind the store: rows (by id) not yet acknowledged, and when the
    oldest of the readings among them was received (None: none waiting)."""

    readings: int
    entries: int
    events: int
    oldest_reading_received_at: datetime | None

    @property
    def rows(self) -> int:
        return self.readings + self.entries + self.events


class ExportReader:
    """Committed rows after a durable cursor (see the module docstring). Thread-safe.

    Raises:
        StoreError: the file cannot be opened.
    """

    def __init__(self, path: Path | str, *, key: str = INFLUX_CURSOR_KEY, clock: Clock = utc_now):
        self.path = Path(path)
        self.key = key
        self.clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = db.connect(self.path)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"export reader of {self.path} is closed")
        return self._conn

    def cursor(self) -> ExportCursor:
        """The cursor as last acknowledged (all zero before the first batch)."""
        with self._lock:
            row = (
                self._c()
                .execute("SELECT state_json FROM account_state WHERE account_id = ?", (self.key,))
                .fetchone()
            )
        if row is None:
            return ExportCursor()
        stored = jsontext.loads_object(row[0])
        return ExportCursor(
            reading_row=int(stored.get("reading_row") or 0),
            ledger_seq=int(stored.get("ledger_seq") or 0),
            event_id=int(stored.get("event_id") or 0),
        )

    def batch(self, after: ExportCursor, limit: int) -> ExportBatch:
        """At most ``limit`` rows of each kind after ``after``, from one snapshot.

        Raises:
            StoreError: the file cannot be read.
        """
        with self._lock:
            conn = self._c()
            try:
                conn.execute("BEGIN")  # one snapshot: balances agree with the entries read
                try:
                    readings = self._readings(conn, after.reading_row, limit)
                    entries = self._entries(conn, after.ledger_seq, limit)
                    evts = tuple(events.events(conn, None, after.event_id, limit))
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.path}: {exc}") from exc
        return ExportBatch(
            readings=readings,
            entries=entries,
            events=evts,
            after=ExportCursor(
                reading_row=readings[-1].row_id if readings else after.reading_row,
                ledger_seq=entries[-1].seq if entries else after.ledger_seq,
                event_id=evts[-1].event_id if evts else after.event_id,
            ),
        )

    @staticmethod
    def _readings(
        conn: sqlite3.Connection, after_row: int, limit: int
    ) -> tuple[ExportedReading, ...]:
        return tuple(
            ExportedReading(
                row_id=row_id,
                meter_id=meter_id,
                read_at=from_micros(read_at_us),
                register_milli=register_milli,
                quality=quality,
                source=source,
            )
            for row_id, meter_id, read_at_us, register_milli, quality, source in conn.execute(
                "SELECT row_id, meter_id, read_at_us, register_milli, quality, source"
                " FROM readings WHERE row_id > ? ORDER BY row_id LIMIT ?",
                (after_row, limit),
            )
        )

    @staticmethod
    def _entries(conn: sqlite3.Connection, after_seq: int, limit: int) -> tuple[ExportedEntry, ...]:
        rows = ledger.entries(conn, None, after_seq, limit)
        balances: dict[str, int] = {}
        out: list[ExportedEntry] = []
        for entry in rows:
            if entry.account_id not in balances:  # the sum before this batch, once per account
                before = conn.execute(
                    "SELECT SUM(amount_minor) FROM ledger WHERE account_id = ? AND seq < ?",
                    (entry.account_id, entry.seq),
                ).fetchone()[0]
                balances[entry.account_id] = int(before or 0)
            balances[entry.account_id] += entry.amount_minor
            out.append(
                ExportedEntry(
                    seq=entry.seq,
                    account_id=entry.account_id,
                    kind=str(entry.kind.value),
                    amount_minor=entry.amount_minor,
                    balance_minor=balances[entry.account_id],
                    currency=entry.currency,
                    created_at=entry.created_at,
                )
            )
        return tuple(out)

    def advance(self, to: ExportCursor) -> None:
        """Record ``to`` as acknowledged (durable once this returns).

        Raises:
            StoreError: the record cannot be written.
        """
        state: dict[str, int | str | None] = {
            "reading_row": to.reading_row,
            "ledger_seq": to.ledger_seq,
            "event_id": to.event_id,
        }
        with self._lock:
            conn = self._c()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    account_records.save_account_state(
                        conn, self.key, state, to_micros(self.clock())
                    )
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.path}: {exc}") from exc

    def lag(self, after: ExportCursor) -> ExportLag:
        """How far ``after`` is behind the store (cheap: the ids' distance, one row read)."""
        with self._lock:
            conn = self._c()
            try:
                top_row, top_seq, top_event = conn.execute(
                    "SELECT (SELECT COALESCE(MAX(row_id), 0) FROM readings),"
                    " (SELECT COALESCE(MAX(seq), 0) FROM ledger),"
                    " (SELECT COALESCE(MAX(event_id), 0) FROM events)"
                ).fetchone()
                oldest = conn.execute(
                    "SELECT received_at_us FROM readings WHERE row_id > ? ORDER BY row_id LIMIT 1",
                    (after.reading_row,),
                ).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.path}: {exc}") from exc
        return ExportLag(
            readings=max(top_row - after.reading_row, 0),
            entries=max(top_seq - after.ledger_seq, 0),
            events=max(top_event - after.event_id, 0),
            oldest_reading_received_at=None if oldest is None else from_micros(oldest[0]),
        )
