"""What the console shows, read without blocking the billing path.

Two sources, each read where it is safe: the account book the daemon runs (mode, supply
wanted, debt, which meter and device) is memory the event loop owns, copied in the loop in one
step; everything from the store (balances as the sum of ledger entries, statements, confirmed
supply, journal and outbox counts, events) comes from one read-only snapshot
(`gateway.store.statements.read_snapshot`) in a worker thread. Neither takes the state lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from billing_engine.money import format_minor
from gateway.flows.accounts import Account
from gateway.store import journal, jsontext, outbox
from gateway.store.events import Event, events, recent_events
from gateway.store.statements import StatementLine, StoreView, read_snapshot
from gateway.store.timestamps import from_micros, to_micros

#: The event kinds the console lists as alarms, and the one that acknowledges them.
ALARM = "alarm"
ALARM_ACKNOWLEDGED = "alarm_acknowledged"
#: What the console writes to the events journal for every action it takes.
CONSOLE_ACTION = "console_action"

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class BookEntry:
    """The daemon's view of one account, copied in the loop."""

    id: str
    meter: str
    actuator: str | None
    currency: str
    mode: str
    supply_wanted: str
    debt_minor: int
    override: str | None


def copy_book(accounts: Mapping[str, Account]) -> list[BookEntry]:
    """The book as plain values, by id (call in the loop: it reads the daemon's memory)."""
    return [
        BookEntry(
            id=a.id,
            meter=a.config.meter,
            actuator=a.config.actuator,
            currency=a.currency,
            mode=a.policy_state.mode.value,
            supply_wanted=a.policy_state.supply.value,
            debt_minor=a.debt_minor,
            override=None if a.policy_state.override is None else a.policy_state.override.value,
        )
        for a in sorted(accounts.values(), key=lambda a: a.id)
    ]


@dataclass(frozen=True, slots=True)
class AccountRow:
    book: BookEntry
    balance_minor: int  # the sum of the account's ledger entries
    supply_confirmed: str | None
    supply_confirmed_at: datetime | None
    last_reading_at: datetime | None

    @property
    def balance_text(self) -> str:
        return format_minor(self.balance_minor, self.book.currency)

    @property
    def debt_text(self) -> str:
        return format_minor(self.book.debt_minor, self.book.currency)

    @property
    def mismatch(self) -> bool:
        return self.book.actuator is not None and self.supply_confirmed != self.book.supply_wanted


@dataclass(frozen=True, slots=True)
class Alarm:
    event: Event
    acknowledged_by: str | None


@dataclass(frozen=True, slots=True)
class Health:
    journal: dict[str, int]
    held: dict[str, int]
    outbox_pending: dict[str, int]
    outbox_dropped: dict[str, int]
    ledger_entries: int
    alarms: list[Alarm]

    @property
    def outbox_total(self) -> int:
        return sum(self.outbox_pending.values())


@dataclass(frozen=True, slots=True)
class UsageBar:
    hour: datetime
    used_milli: int


@dataclass(frozen=True, slots=True)
class AccountPage:
    row: AccountRow
    statement: list[StatementLine]
    usage: list[UsageBar]  # the 24 hours up to the meter's newest reading


def _rows(conn: sqlite3.Connection, book: list[BookEntry]) -> list[AccountRow]:
    view = StoreView(conn)
    balances = view.balances()
    rows = []
    for entry in book:
        confirmed = (
            None
            if entry.actuator is None
            else view.device_supply(entry.actuator, entry.id).confirmed
        )
        rows.append(
            AccountRow(
                book=entry,
                balance_minor=balances.get(entry.id, 0),
                supply_confirmed=None if confirmed is None else confirmed.supply,
                supply_confirmed_at=None if confirmed is None else confirmed.at,
                last_reading_at=view.last_read_at(entry.meter),
            )
        )
    return rows


def _alarms(conn: sqlite3.Connection, limit: int) -> list[Alarm]:
    """The ``limit`` newest alarms, newest first, each with who acknowledged it. (The events
    table is indexed by account, not kind: this walks it from the newest event back, which
    stops after ``limit`` alarms.)"""
    found = [
        Event(int(i), acct, str(kind), jsontext.loads_object(detail), from_micros(int(at_us)))
        for i, acct, kind, detail, at_us in conn.execute(
            "SELECT event_id, account_id, kind, detail_json, at_us FROM events WHERE kind = ?"
            " ORDER BY event_id DESC LIMIT ?",
            (ALARM, limit),
        )
    ]
    if not found:
        return []
    acks = {
        int(alarm): str(operator)
        for alarm, operator in conn.execute(
            "SELECT json_extract(detail_json, '$.alarm_event'),"
            " json_extract(detail_json, '$.operator') FROM events"
            " WHERE kind = ? AND event_id > ?",
            (ALARM_ACKNOWLEDGED, found[-1].event_id),
        )
        if alarm is not None
    }
    return [Alarm(e, acks.get(e.event_id)) for e in found]


def _usage(conn: sqlite3.Connection, meter: str) -> list[UsageBar]:
    """Consumption per hour over the day up to the meter's newest journalled reading (the
    register's rise between consecutive readings, counted in the hour of the later one)."""
    newest = conn.execute(
        "SELECT MAX(read_at_us) FROM readings WHERE meter_id = ?", (meter,)
    ).fetchone()[0]
    if newest is None:
        return []
    end = from_micros(int(newest)).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(hours=24)
    bars = {start + timedelta(hours=h): 0 for h in range(24)}
    previous: int | None = None
    for at_us, register in conn.execute(
        "SELECT read_at_us, register_milli FROM readings WHERE meter_id = ? AND read_at_us >= ?"
        " ORDER BY read_at_us",
        (meter, to_micros(start - timedelta(hours=1))),
    ):
        at = from_micros(int(at_us))
        if previous is not None and at >= start and register > previous:
            bars[at.replace(minute=0, second=0, microsecond=0)] += int(register) - previous
        previous = int(register)
    return [UsageBar(hour, used) for hour, used in bars.items()]


class Reads:
    """The console's reads of one running gateway (see the module docstring)."""

    def __init__(self, state_file: Path, accounts: Callable[[], Mapping[str, Account]]) -> None:
        self._path = state_file
        self._accounts = accounts

    async def accounts(self) -> list[AccountRow]:
        book = copy_book(self._accounts())
        return await asyncio.to_thread(self._in_snapshot, lambda conn: _rows(conn, book))

    async def account(self, account_id: str) -> AccountPage | None:
        """One account's page; None when the daemon has no such account."""
        book = [b for b in copy_book(self._accounts()) if b.id == account_id]
        if not book:
            return None

        def read(conn: sqlite3.Connection) -> AccountPage:
            return AccountPage(
                _rows(conn, book)[0],
                StoreView(conn).statement(account_id),
                _usage(conn, book[0].meter),
            )

        return await asyncio.to_thread(self._in_snapshot, read)

    async def health(self) -> Health:
        def read(conn: sqlite3.Connection) -> Health:
            by_state, held = journal.counts(conn)
            stats = outbox.stats(conn)
            entries = conn.execute("SELECT COUNT(*) FROM ledger").fetchone()[0]
            return Health(
                journal={s.value: n for s, n in by_state.items()},
                held=held,
                outbox_pending={c.value: n for c, n in stats.pending.items() if n},
                outbox_dropped={c.value: n for c, n in stats.dropped.items() if n},
                ledger_entries=int(entries),
                alarms=_alarms(conn, 50),
            )

        return await asyncio.to_thread(self._in_snapshot, read)

    async def events_after(self, after_id: int, limit: int = 200) -> list[Event]:
        return await asyncio.to_thread(
            self._in_snapshot, lambda conn: events(conn, None, after_id, limit)
        )

    async def recent_events(self, limit: int) -> list[Event]:
        return await asyncio.to_thread(self._in_snapshot, lambda conn: recent_events(conn, limit))

    async def event(self, event_id: int) -> Event | None:
        found = await asyncio.to_thread(
            self._in_snapshot, lambda conn: events(conn, None, event_id - 1, 1)
        )
        return found[0] if found and found[0].event_id == event_id else None

    def _in_snapshot(self, read: Callable[[sqlite3.Connection], _T]) -> _T:
        with read_snapshot(self._path) as conn:
            return read(conn)
