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

Cheap per row, because it runs beside the billing in the daemon's process (docs/architecture.md,
"The console and the sinks beside the billing"): each kind is one query of the columns a sink
sends (no JSON details, no MACs), instants stay the store's integer microseconds (no datetime
per row), and an account's balance before a batch is summed from its entries once and then
carried from batch to batch in memory (the ledger is append-only, so the balance at the cursor
plus the batch's entries is the balance after it).
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, NamedTuple

from drivers.ports import Clock, utc_now
from gateway.store import account_records, db, jsontext
from gateway.store.errors import StoreError
from gateway.store.timestamps import from_micros, to_micros

#: The reserved account-state record that holds the InfluxDB sink's cursor.
INFLUX_CURSOR_KEY: Final = "~influx.sent"


@dataclass(frozen=True, slots=True)
class ExportCursor:
    """The last row of each kind the sink's server has acknowledged."""

    reading_row: int = 0
    ledger_seq: int = 0
    event_id: int = 0


# The rows are named tuples, not frozen dataclasses: a sink reads thousands a second beside the
# billing, and a named tuple is made from a row in half the time (a frozen dataclass sets
# each field through `object.__setattr__`). The fields are named for the store's columns, and
# the queries select those names (`_READING_COLUMNS`), so a row goes into its record by name.
class ExportedReading(NamedTuple):
    """A journalled reading; ``read_at_us``: microseconds since the epoch, as stored."""

    row_id: int
    meter_id: str
    read_at_us: int
    register_milli: int
    quality: str


class ExportedEntry(NamedTuple):
    """A ledger entry and the account's balance once it was applied."""

    seq: int
    account_id: str
    kind: str
    amount_minor: int
    balance_minor: int
    currency: str
    created_at_us: int


class ExportedEvent(NamedTuple):
    """A journalled event (without its detail, which no sink sends); ``account_id`` is None
    for a site-wide event."""

    event_id: int
    account_id: str | None
    kind: str
    at_us: int


_READING_COLUMNS: Final = ", ".join(ExportedReading._fields)
_EVENT_COLUMNS: Final = ", ".join(ExportedEvent._fields)


@dataclass(frozen=True, slots=True)
class ExportBatch:
    """Rows after a cursor, and the cursor once they are acknowledged."""

    readings: tuple[ExportedReading, ...]
    entries: tuple[ExportedEntry, ...]
    events: tuple[ExportedEvent, ...]
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
        # Balances of the accounts seen so far, as of ledger seq ``_balances_at`` (the end of
        # the last batch read): the next batch from there starts from them instead of summing
        # each account's history again. Another starting point (a batch read again after a
        # failed write) sums afresh.
        self._balances: dict[str, int] = {}
        self._balances_at = -1

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
                    evts = self._events(conn, after.event_id, limit)
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
            map(
                ExportedReading._make,
                conn.execute(
                    f"SELECT {_READING_COLUMNS} FROM readings"  # noqa: S608 - our own names
                    " WHERE row_id > ? ORDER BY row_id LIMIT ?",
                    (after_row, limit),
                ),
            )
        )

    def _entries(
        self, conn: sqlite3.Connection, after_seq: int, limit: int
    ) -> tuple[ExportedEntry, ...]:
        """Entries after ``after_seq`` with the balance after each. Call under the lock."""
        balances = self._balances if after_seq == self._balances_at else {}
        self._balances_at = -1  # until this batch is read whole (an error leaves no half sums)
        out: list[ExportedEntry] = []
        for seq, account_id, kind, amount_minor, currency, created_at_us in conn.execute(
            "SELECT seq, account_id, kind, amount_minor, currency, created_at_us"
            " FROM ledger WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ):
            balance = balances.get(account_id)
            if balance is None:  # the sum up to the batch, once per account (index range)
                balance = conn.execute(
                    "SELECT COALESCE(SUM(amount_minor), 0) FROM ledger"
                    " WHERE account_id = ? AND seq <= ?",
                    (account_id, after_seq),
                ).fetchone()[0]
            balance += amount_minor
            balances[account_id] = balance
            out.append(
                ExportedEntry(
                    seq=seq,
                    account_id=account_id,
                    kind=kind,
                    amount_minor=amount_minor,
                    balance_minor=balance,
                    currency=currency,
                    created_at_us=created_at_us,
                )
            )
        self._balances = balances
        self._balances_at = out[-1].seq if out else after_seq
        return tuple(out)

    @staticmethod
    def _events(conn: sqlite3.Connection, after_id: int, limit: int) -> tuple[ExportedEvent, ...]:
        return tuple(
            map(
                ExportedEvent._make,
                conn.execute(
                    f"SELECT {_EVENT_COLUMNS} FROM events"  # noqa: S608 - our own names
                    " WHERE event_id > ? ORDER BY event_id LIMIT ?",
                    (after_id, limit),
                ),
            )
        )

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
