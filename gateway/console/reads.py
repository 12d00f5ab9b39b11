"""What the console shows, read without blocking the billing path.

Two sources, each read where it is safe: the account book the daemon runs (mode, supply
wanted, debt, which meter and device) is memory the event loop owns, copied in the loop in one
step; everything from the store (balances as the sum of ledger entries, statements, confirmed
supply, journal and outbox counts, events, vending sessions, recent ticket redemptions) comes
from one read-only snapshot (`gateway.store.statements.read_snapshot`) in a worker thread.
Neither takes the state lock. The accounts' rows (the accounts and devices pages, and every
open page's live stream) are read at most once every `ACCOUNTS_MAX_AGE_S`, whoever asks:
one read serves them all, so what the console costs the billing path does not grow with the
number of pages open or how often they are asked for (`Reads.accounts_snapshot`).

The ticket statistics are the ones ``prepay ticket stats`` prints (`gateway.flows.ticket_stats`,
which reads through a `TicketStore`): read in a worker thread through the console's own ticket
store (`gateway.console.tickets`), never the daemon's ticket store or the state lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from billing_engine.money import format_minor
from drivers.ports import utc_now
from gateway.console.tickets import CounterTickets
from gateway.flows import ticket_stats
from gateway.flows.accounts import Account
from gateway.store import journal, jsontext, ledger, outbox
from gateway.store.events import Event, events, recent_events
from gateway.store.statements import StatementLine, StoreView, read_snapshot
from gateway.store.tickets import Conflict, EmergencyTicket
from gateway.store.timestamps import from_micros, to_micros
from gateway.tickets.settings import TicketSettings
from gateway.tickets.validity import local_day

#: The event kinds the console lists as alarms, and the one that acknowledges them.
ALARM = "alarm"
ALARM_ACKNOWLEDGED = "alarm_acknowledged"
#: What the console writes to the events journal for every action it takes.
CONSOLE_ACTION = "console_action"
#: How many of the newest redemptions and vending sessions the pages list.
RECENT_ROWS = 50
#: How old the accounts' rows may be when a page or a live stream is given them (one read of
#: 1,000 accounts costs about 30 ms of CPU: asked back to back, it would starve the billing).
ACCOUNTS_MAX_AGE_S = 1.0

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
class AccountsSnapshot:
    """Every account's row, as read once for whoever asked meanwhile."""

    rows: list[AccountRow]
    activity: object  # the gateway's activity token when the read began
    taken_at: float  # the loop's time when the read began


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


def litres_text(ml: int | None) -> str:
    """Millilitres as litres to the millilitre, in integers: 18 900 -> ``18.900 L``."""
    return "-" if ml is None else f"{ml // 1000}.{ml % 1000:03d} L"


@dataclass(frozen=True, slots=True)
class RecentRedemption:
    """A ticket redeemed at this box (``here``) or, as learned from the feed, at another."""

    code: str
    kind: str
    product: str
    quantity: int
    box_id: str
    where: str
    redeemed_at: datetime
    here: bool


@dataclass(frozen=True, slots=True)
class TicketsPage:
    """What ``/tickets`` shows: ``stats`` is what ``prepay ticket stats`` prints."""

    settings: TicketSettings
    stats: dict[str, Any]
    recent: list[RecentRedemption]  # newest first
    conflicts: list[Conflict]
    emergency_today: list[EmergencyTicket]
    today: date  # the box's local day


@dataclass(frozen=True, slots=True)
class VendRow:
    """One vending session as journalled (`gateway.store.vending`)."""

    dispenser_id: str
    session_id: int
    identity_kind: str
    identity: str
    account_id: str | None  # None: a ticket, no money moves
    currency: str | None
    authorised_ml: int
    max_charge_minor: int
    opened_at: datetime
    state: str
    poured_ml: int | None
    charge_minor: int | None
    closed_at: datetime | None

    @property
    def customer(self) -> str:
        """The account billed, or the ticket poured (a card's number is not shown)."""
        if self.account_id is not None:
            return f"account {self.account_id} ({self.identity_kind})"
        return f"ticket {self.identity}"

    @property
    def charge_text(self) -> str:
        if self.currency is None:
            return "none (ticket)"
        if self.charge_minor is None:  # still open: what a full pour would cost
            return f"up to {format_minor(self.max_charge_minor, self.currency)}"
        return format_minor(self.charge_minor, self.currency)


@dataclass(frozen=True, slots=True)
class VendingPage:
    open: list[VendRow]  # every open session, oldest first
    recent: list[VendRow]  # the newest sessions opened, whatever their state, newest first


_VEND_COLUMNS = (
    "dispenser_id, session_id, identity_kind, identity, account_id, currency, authorised_ml,"
    " max_charge_minor, opened_at_us, state, poured_ml, charge_minor, closed_at_us"
)


def _vend_rows(conn: sqlite3.Connection, where: str, order: str, limit: int) -> list[VendRow]:
    def opt(value: object) -> int | None:
        return None if value is None else int(str(value))

    return [
        VendRow(
            dispenser_id=str(row[0]),
            session_id=int(row[1]),
            identity_kind=str(row[2]),
            identity=str(row[3]),
            account_id=None if row[4] is None else str(row[4]),
            currency=None if row[5] is None else str(row[5]),
            authorised_ml=int(row[6]),
            max_charge_minor=int(row[7]),
            opened_at=from_micros(int(row[8])),
            state=str(row[9]),
            poured_ml=opt(row[10]),
            charge_minor=opt(row[11]),
            closed_at=None if row[12] is None else from_micros(int(row[12])),
        )
        for row in conn.execute(
            f"SELECT {_VEND_COLUMNS} FROM vend_sessions WHERE {where}"  # noqa: S608 - fixed text
            f" ORDER BY {order} LIMIT ?",
            (limit,),
        )
    ]


def _vending(conn: sqlite3.Connection, limit: int) -> VendingPage:
    # Rows are inserted when a session opens: the newest rowids are the newest sessions.
    return VendingPage(
        open=_vend_rows(conn, "state = 'open'", "opened_at_us, session_id", 10_000),
        recent=_vend_rows(conn, "1", "rowid DESC", limit),
    )


_RECENT_REDEMPTION_COLUMNS = "code, kind, product, quantity, box_id, where_text, redeemed_at_us"


def _recent_redemptions(conn: sqlite3.Connection, limit: int) -> list[RecentRedemption]:
    """The ``limit`` newest redemptions, here and elsewhere (each table newest first by key)."""
    found = [
        RecentRedemption(
            code=str(code),
            kind=str(kind),
            product=str(product),
            quantity=int(qty),
            box_id=str(box),
            where=str(where),
            redeemed_at=from_micros(int(at_us)),
            here=here,
        )
        for table, key, here in (
            ("ticket_redemptions", "seq", True),
            ("ticket_remote_redemptions", "row_id", False),
        )
        for code, kind, product, qty, box, where, at_us in conn.execute(
            f"SELECT {_RECENT_REDEMPTION_COLUMNS} FROM {table}"  # noqa: S608 - fixed names
            f" ORDER BY {key} DESC LIMIT ?",
            (limit,),
        )
    ]
    return sorted(found, key=lambda r: r.redeemed_at, reverse=True)[:limit]


class Reads:
    """The console's reads of one running gateway (see the module docstring)."""

    def __init__(
        self,
        state_file: Path,
        accounts: Callable[[], Mapping[str, Account]],
        *,
        site_id: str = "",
        tickets: CounterTickets | None = None,
        clock: Callable[[], datetime] = utc_now,
        activity: Callable[[], object] = lambda: None,
    ) -> None:
        self._path = state_file
        self._accounts = accounts
        self._activity = activity
        self._latest: AccountsSnapshot | None = None
        self._reading: asyncio.Task[AccountsSnapshot] | None = None
        self._site_id = site_id
        self._tickets = tickets
        self._clock = clock

    def stop(self) -> None:
        """Cancel a read of the accounts under way (in the loop, when the console stops)."""
        if self._reading is not None:
            self._reading.cancel()

    async def accounts(self) -> list[AccountRow]:
        return (await self.accounts_snapshot()).rows

    async def accounts_snapshot(self) -> AccountsSnapshot:
        """Every account's row, at most `ACCOUNTS_MAX_AGE_S` old: the last read, or the read
        under way (one at a time, shared by everyone asking), or a new one."""
        loop = asyncio.get_running_loop()
        latest = self._latest
        if latest is not None and loop.time() - latest.taken_at < ACCOUNTS_MAX_AGE_S:
            return latest
        if self._reading is None:
            self._reading = loop.create_task(self._read_accounts(), name="console.accounts")
            self._reading.add_done_callback(self._read_ended)
        # Shielded: a page closed while it waits must not cancel the read the others await.
        return await asyncio.shield(self._reading)

    async def _read_accounts(self) -> AccountsSnapshot:
        taken_at = asyncio.get_running_loop().time()
        activity = self._activity()
        book = copy_book(self._accounts())
        rows = await asyncio.to_thread(self._in_snapshot, lambda conn: _rows(conn, book))
        self._latest = AccountsSnapshot(rows, activity, taken_at)
        return self._latest

    def _read_ended(self, task: asyncio.Task[AccountsSnapshot]) -> None:
        self._reading = None
        if not task.cancelled():
            task.exception()  # retrieved: whoever awaited it has it; else it was not needed

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
            # The newest entry's seq, from the primary key: seqs run 1, 2, 3 ... without a gap
            # (`prepay ledger verify` checks it), so it is the count; COUNT(*) read every row of
            # a ledger that only grows, on every page load.
            entries, _ = ledger.last_entry(conn)
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

    async def vending(self, limit: int = RECENT_ROWS) -> VendingPage:
        return await asyncio.to_thread(self._in_snapshot, lambda conn: _vending(conn, limit))

    async def tickets(self, period: str = "month", limit: int = RECENT_ROWS) -> TicketsPage | None:
        """The tickets page; None when the site takes no tickets. ``period``: ``day`` or
        ``month``, as ``prepay ticket stats --period``."""
        tickets = self._tickets
        if tickets is None:
            return None
        settings = tickets.settings
        now = self._clock()

        def read() -> TicketsPage:
            store = tickets.store()
            today = local_day(now, settings.timezone)
            stats = ticket_stats.stats(self._site_id, settings, store, now=now, period=period)
            return TicketsPage(
                settings=settings,
                stats=stats,
                recent=self._in_snapshot(lambda conn: _recent_redemptions(conn, limit)),
                conflicts=store.conflicts(),
                emergency_today=[t for t in store.emergency_tickets() if t.issued_on == today],
                today=today,
            )

        return await asyncio.to_thread(read)

    def _in_snapshot(self, read: Callable[[sqlite3.Connection], _T]) -> _T:
        with read_snapshot(self._path) as conn:
            return read(conn)
