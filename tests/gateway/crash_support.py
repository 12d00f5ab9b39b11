"""Shared by the crash, signal and broker-outage tests: journal reads and the books' audit.

`audit_books` is the money check run on a closed store: the ledger chain verifies, nothing is
left unbilled, each account's balance is the sum of its entries, no idempotency key appears
twice, and every account's deductions equal the reference bill (`ReferenceBiller`, the
Fraction oracle) of that account's journalled readings taken in journal order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

from billing_engine import layout
from billing_engine.reference import RefAccount, ReferenceBiller
from gateway.config import Site
from gateway.startup import STATE_FILE, read_ledger_key
from gateway.store import EntryKind, JournalRow, JournalState, Store, verify_ledger
from tests.support.waiting import DEFAULT_TIMEOUT_S

_HELD_STATUSES = {
    layout.STATUS_REGISTER_BACKWARDS,
    layout.STATUS_CONFLICT,
    layout.STATUS_NO_TARIFF,
    layout.STATUS_LIMIT,
    layout.STATUS_OUTSIDE_WINDOW,
}
_ALL = 10_000_000


def journal_ids(state_file: Path) -> set[str]:
    """Every reading id in the journal, read straight from the file (read-only)."""
    conn = sqlite3.connect(f"file:{state_file}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT reading_id FROM readings")}
    finally:
        conn.close()


def unbilled_count(state_file: Path) -> int:
    """How many journalled readings wait for billing, read straight from the file."""
    conn = sqlite3.connect(f"file:{state_file}?mode=ro", uri=True)
    try:
        return int(
            conn.execute("SELECT COUNT(*) FROM readings WHERE state = 'unbilled'").fetchone()[0]
        )
    finally:
        conn.close()


def all_rows(store: Store) -> list[JournalRow]:
    """Every journal row (billed, held, unbilled), in journal order."""
    rows = store.billed(_ALL) + store.held(_ALL) + store.unbilled(_ALL)
    return sorted(rows, key=lambda r: r.row_id)


@dataclass
class Audit:
    rows: int
    billed: int
    held: int
    deducted_minor: dict[str, int]


def audit_books(site: Site, *, expect_outbox_empty: bool = False) -> Audit:
    """Check the money invariants of a site's closed store; returns what it counted.

    Raises:
        AssertionError: an invariant does not hold.
    """
    key = read_ledger_key(site.resolve(site.config.keys.ledger_key_file))
    state = site.state_dir / STATE_FILE
    report = verify_ledger(state, key)
    assert report.ok, report.problems
    deducted: dict[str, int] = {}
    with Store(state, ledger_key=key) as store:
        rows = all_rows(store)
        assert store.unbilled(10) == [], "journalled readings left unbilled"
        if expect_outbox_empty:
            assert store.outbox_stats().total_pending == 0, "the outbox was not drained"
        entries = store.entries(None, limit=_ALL)
        keys = Counter((e.account_id, e.idempotency_key) for e in entries)
        assert [k for k, n in keys.items() if n > 1] == []
        by_id = {r.reading.reading_id: r for r in rows}
        assert len(by_id) == len(rows), "a reading id journalled twice"
        for account in site.config.accounts:
            mine = [e for e in entries if e.account_id == account.id]
            assert store.balance(account.id) == sum(e.amount_minor for e in mine)
            deductions = {e.idempotency_key: e for e in mine if e.kind is EntryKind.DEDUCTION}
            biller = ReferenceBiller(site.tariffs[account.tariff])
            ref = RefAccount(0, account.class_name, usage_milli=account.opening_usage)
            expected_total = 0
            mine_rows = [
                r
                for r in rows
                if r.reading.meter_id == account.meter and r.hold_reason != "unknown_meter"
            ]  # held as unknown: journalled before a reload added the account
            for row in mine_rows:
                result = biller.bill(ref, row.reading.read_at, row.reading.register_milli)
                where = f"{account.id} row {row.row_id} ({row.reading.reading_id})"
                if result.status in _HELD_STATUSES:
                    assert row.state is JournalState.HELD, where
                    continue
                assert row.state is JournalState.BILLED, where
                assert row.deduction_minor == result.deduction_minor, where
                entry = deductions.pop(f"deduct:{row.reading.reading_id}", None)
                if result.deduction_minor:
                    assert entry is not None, f"{where}: no ledger deduction"
                    assert entry.amount_minor == -result.deduction_minor, where
                else:
                    assert entry is None, f"{where}: a deduction for a zero charge"
                expected_total += result.deduction_minor
            assert deductions == {}, f"{account.id}: deductions with no journalled reading"
            deducted[account.id] = -sum(
                e.amount_minor for e in mine if e.kind is EntryKind.DEDUCTION
            )
            assert deducted[account.id] == expected_total, account.id
        billed = sum(r.state is JournalState.BILLED for r in rows)
        held = sum(r.state is JournalState.HELD for r in rows)
    return Audit(len(rows), billed, held, deducted)


def _document(payload: bytes) -> dict[str, Any]:
    """A message as JSON; an empty payload (a cleared retained message: a removed device) as
    {}, and one that is not JSON (Home Assistant's ``online``) as ``{"raw": text}``."""
    if not payload:
        return {}
    try:
        doc = json.loads(payload)
    except ValueError:
        return {"raw": payload.decode(errors="replace")}
    return doc if isinstance(doc, dict) else {"raw": doc}


class Watcher:
    """A backend stand-in: keeps every message of the site, across reconnections."""

    def __init__(self, topics: tuple[str, ...] = ("prepay/test-site/#",)) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._changed = asyncio.Event()
        self._topics = topics

    @contextlib.asynccontextmanager
    async def connected(self, host: str, port: int) -> AsyncIterator[None]:
        """Subscribe to the watched topics (all of the site's) until the block ends."""
        async with aiomqtt.Client(host, port, identifier="watcher") as client:
            for topic in self._topics:
                await client.subscribe(topic, qos=1)
            task = asyncio.create_task(self._collect(client))
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await task

    async def _collect(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            assert isinstance(payload, bytes)
            self.messages.append((str(message.topic), _document(payload)))
            self._changed.set()

    async def wait_for(
        self, match: Callable[[str, dict[str, Any]], bool], timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> dict[str, Any]:
        """The first message (already received or coming) that ``match`` accepts."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    for topic, doc in self.messages:
                        if match(topic, doc):
                            return doc
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"no such message after {timeout_s} s: {self._tail()}") from None

    async def wait_until(
        self, predicate: Callable[[], bool], timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        """Return once ``predicate()`` holds, checked after each message."""
        try:
            async with asyncio.timeout(timeout_s):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"still false after {timeout_s} s: {self._tail()}") from None

    def _tail(self) -> str:
        return f"{len(self.messages)} messages, the last: {[t for t, _ in self.messages[-5:]]}"

    def readings(self, meter: str) -> list[dict[str, Any]]:
        """Readings of ``meter`` in arrival order, from single messages and batches alike."""
        out: list[dict[str, Any]] = []
        for topic, doc in self.messages:
            if topic.endswith(f"/meter/{meter}/reading"):
                out.append(doc)
            elif topic.endswith(f"/meter/{meter}/readings"):
                out.extend(doc["readings"])
        return out

    def reading_ids(self, meter: str) -> set[str]:
        return {d["reading_id"] for d in self.readings(meter)}

    def statuses(self) -> list[str]:
        return [d["status"] for t, d in self.messages if t.endswith("/status")]
