"""A read-only view of the store for the operator's account commands: one snapshot, no writes.

``prepay account list|show|statement`` and ``prepay supply`` read the store while the daemon
runs. `Store` is the daemon's object: opening one migrates the file and binds the ledger key,
each in a ``BEGIN IMMEDIATE`` (the write lock), and needs the key. This view needs neither: it
opens the file with ``mode=ro`` (SQLite never writes through such a connection, not even the
checkpoint a last connection runs when it closes) and reads every answer inside one deferred
read transaction, so the numbers of one command come from one instant. In WAL mode a reader
never blocks the writer, and the writer never blocks a reader.

A statement's ``balance_after_minor`` is the running sum of the account's entries in ledger
order (seq), the same sum `ledger.balance` is: the balance is always the sum of its entries, so
the last line of a full statement is the balance.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.store import jsontext
from gateway.store.account_records import AccountRecord, load_account_states
from gateway.store.errors import StoreError
from gateway.store.events import SUPPLY_CONFIRMED, SUPPLY_SENT
from gateway.store.ledger import EntryKind
from gateway.store.timestamps import from_micros, to_micros


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One ledger entry of an account, with the account's balance after it."""

    seq: int
    at: datetime
    kind: EntryKind
    amount_minor: int
    currency: str
    balance_after_minor: int
    ref: str
    detail: dict[str, Any]
    #: the receipt's seq when the entry is a top-up that has one
    receipt_seq: int | None

    @property
    def balance_before_minor(self) -> int:
        return self.balance_after_minor - self.amount_minor


@dataclass(frozen=True, slots=True)
class SupplyEvent:
    """A journalled supply event of one device: sent toward ``supply``, or confirmed there."""

    event_id: int
    device_id: str
    kind: str  # SUPPLY_SENT or SUPPLY_CONFIRMED
    supply: str  # "on" / "off"
    at: datetime


@dataclass(frozen=True, slots=True)
class DeviceSupply:
    """What the store knows of a supply device: its newest supply event, and its newest
    confirmation (which may be older than the newest event, when a change is on its way)."""

    latest: SupplyEvent | None
    confirmed: SupplyEvent | None


# The running balance over all of the account's entries, then the period: a balance after an
# entry depends on every entry before it, also those before the period. A top-up's receipt is
# found by its id, a pour's by its ref ``{dispenser}:{session_id}`` (`gateway.store.receipts`).
_STATEMENT = (
    "SELECT seq, created_at_us, kind, amount_minor, currency, balance, ref, detail_json,"
    " receipt_seq FROM ("
    "  SELECT l.seq, l.created_at_us, l.kind, l.amount_minor, l.currency, l.ref, l.detail_json,"
    "   SUM(l.amount_minor) OVER (ORDER BY l.seq) AS balance, r.seq AS receipt_seq"
    "  FROM ledger AS l LEFT JOIN receipts AS r"
    "   ON r.kind = CASE l.kind WHEN 'topup' THEN 'topup' ELSE 'vending' END"
    "   AND r.subject = l.ref AND r.account_id = l.account_id"
    "  WHERE l.account_id = ?"
    ") WHERE created_at_us >= ? AND created_at_us < ? ORDER BY seq"
)
_SUPPLY_COLUMNS = "SELECT event_id, kind, json_extract(detail_json, '$.supply'), at_us FROM events"
_DEVICE_IS = "json_extract(detail_json, '$.device') = ? ORDER BY event_id DESC LIMIT 1"
_LATEST_SUPPLY_EVENT = (
    f"{_SUPPLY_COLUMNS} WHERE account_id IS ? AND kind IN (?, ?) AND {_DEVICE_IS}"
)
_LATEST_CONFIRMATION = f"{_SUPPLY_COLUMNS} WHERE account_id IS ? AND kind = ? AND {_DEVICE_IS}"
_EARLIEST_US = -(2**63)
_LATEST_US = 2**63 - 1


class StoreView:
    """Reads of one snapshot of the store file; obtained from `open_view`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def account_states(self) -> dict[str, AccountRecord]:
        """Every persisted account runtime state (and the overlay record), by account id."""
        return load_account_states(self._conn)

    def balances(self) -> dict[str, int]:
        """Each account's balance: the sum of its entries (accounts without entries absent)."""
        return {
            str(account): int(total)
            for account, total in self._conn.execute(
                "SELECT account_id, SUM(amount_minor) FROM ledger GROUP BY account_id"
            )
        }

    def debts(self) -> dict[str, int]:
        """Each account's debt register: the sum of its ``debt`` and ``debt_recovery`` entries."""
        return {
            str(account): int(total)
            for account, total in self._conn.execute(
                "SELECT account_id, SUM(amount_minor) FROM ledger WHERE kind IN (?, ?)"
                " GROUP BY account_id",
                (EntryKind.DEBT.value, EntryKind.DEBT_RECOVERY.value),
            )
        }

    def statement(
        self, account_id: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[StatementLine]:
        """The account's entries made in ``[start, end)`` (ledger time), oldest first.

        Raises:
            ValueError: ``start`` or ``end`` is a naive datetime.
        """
        start_us = _EARLIEST_US if start is None else to_micros(start)
        end_us = _LATEST_US if end is None else to_micros(end)
        return [
            StatementLine(
                seq=int(seq),
                at=from_micros(int(at_us)),
                kind=EntryKind(kind),
                amount_minor=int(amount),
                currency=str(currency),
                balance_after_minor=int(balance),
                ref=str(ref),
                detail=jsontext.loads_object(detail_json),
                receipt_seq=None if receipt_seq is None else int(receipt_seq),
            )
            for seq, at_us, kind, amount, currency, balance, ref, detail_json, receipt_seq in (
                self._conn.execute(_STATEMENT, (account_id, start_us, end_us))
            )
        ]

    def entry_count(self, account_id: str) -> int:
        """How many ledger entries the account has."""
        row = self._conn.execute(
            "SELECT COUNT(*) FROM ledger WHERE account_id = ?", (account_id,)
        ).fetchone()
        return int(row[0])

    def last_read_at(self, meter_id: str) -> datetime | None:
        """The time of the meter's newest journalled reading (billed, held or not yet billed);
        None when the journal holds none (never read, or pruned after its retention)."""
        row = self._conn.execute(
            "SELECT MAX(read_at_us) FROM readings WHERE meter_id = ?", (meter_id,)
        ).fetchone()
        return None if row[0] is None else from_micros(int(row[0]))

    def device_supply(self, device_id: str, account_id: str | None) -> DeviceSupply:
        """The newest supply event of ``device_id`` and its newest confirmation.

        ``account_id``: the account the device cuts (its events are journalled under it; the
        events index is by account).
        """
        latest = self._conn.execute(
            _LATEST_SUPPLY_EVENT, (account_id, SUPPLY_SENT, SUPPLY_CONFIRMED, device_id)
        ).fetchone()
        confirmed = self._conn.execute(
            _LATEST_CONFIRMATION, (account_id, SUPPLY_CONFIRMED, device_id)
        ).fetchone()
        return DeviceSupply(
            None if latest is None else _supply_event(device_id, latest),
            None if confirmed is None else _supply_event(device_id, confirmed),
        )

    def last_event_id(self) -> int:
        """The newest event's id; 0 when there is none. Ids only grow."""
        row = self._conn.execute("SELECT MAX(event_id) FROM events").fetchone()
        return 0 if row[0] is None else int(row[0])


def _supply_event(device_id: str, row: tuple[Any, ...]) -> SupplyEvent:
    event_id, kind, supply, at_us = row
    return SupplyEvent(int(event_id), device_id, str(kind), str(supply), from_micros(int(at_us)))


@contextmanager
def read_snapshot(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the store file at ``path``, inside one read transaction (one
    consistent snapshot beside a running daemon, no keys needed), for the ``with`` block.

    Raises:
        StoreError: there is no such file, or it cannot be read as a store.
    """
    if not path.is_file():
        raise StoreError(f"no store at {path}: the gateway has not run with this site yet")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open the store: {exc}") from exc
    try:
        conn.execute("BEGIN")  # deferred: one read snapshot, from the first read on
        yield conn
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot read the store: {exc}") from exc
    finally:
        conn.close()


@contextmanager
def open_view(path: Path) -> Iterator[StoreView]:
    """A read-only snapshot of the store file at ``path`` (`read_snapshot`), as a `StoreView`.

    Raises:
        StoreError: there is no such file, or it cannot be read as a store.
    """
    with read_snapshot(path) as conn:
        yield StoreView(conn)
