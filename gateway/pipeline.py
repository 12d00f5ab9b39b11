"""Ingest -> journal -> bill -> decide -> persist -> actuate -> publish.

Readings arrive through `Pipeline.put` (the drivers' `ReadingSink`) into a bounded queue: a
full queue makes the driver wait, which is the back-pressure. The pipeline takes them in
batches and, for each batch:

1. **journals** them in one transaction and commits; only then does `put` return (a reading is
   on disk before it is billed or acknowledged; a re-delivered reading is recognised by its
   identity and goes no further);
2. **bills** the new ones with the engine of each account's tariff;
3. in **one transaction**: the ledger deductions (idempotency key ``deduct:<reading id>``), the
   journal rows marked billed or held, the policy's decisions and events, the accounts' new
   billing and policy state, and the outgoing messages;
4. hands supply changes to actuation and wakes the MQTT link.

A crash between 1 and 3 leaves journalled, unbilled rows: `start` bills them again from the
state saved with the last committed batch, which gives the same result, so nothing is lost or
charged twice. If step 3 fails, the in-memory state is reloaded from the store before the next
batch (the daemon restarts the task).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

from billing_engine.engine import ReadingStatus
from drivers.ports import DriverEvent, Reading
from gateway import quality
from gateway.accounts import Account, AccountBook
from gateway.decisions import Decision, on_balance
from gateway.effects import (
    Effects,
    apply_decision,
    enqueue_account_state,
    enqueue_event,
    publish_state_if_due,
)
from gateway.northbound.topics import SiteTopics
from gateway.store import EntryKind, Store, StoreError, Transaction

logger = logging.getLogger(__name__)

_HELD = {
    ReadingStatus.REGISTER_BACKWARDS: "register_backwards",
    ReadingStatus.NO_TARIFF: "before_tariff",
    ReadingStatus.LIMIT: "beyond_limits",
    ReadingStatus.OUTSIDE_WINDOW: "outside_window",
}
_UNIT_OF = {"kWh": "Wh", "m3": "L", "L": "mL"}
_STATUS_NAME = {status: status.name.lower() for status in ReadingStatus}
_NOT_BILLED = frozenset(
    {ReadingStatus.DUPLICATE, ReadingStatus.OUT_OF_ORDER, ReadingStatus.CONFLICT}
)


class _Outcome(NamedTuple):
    # A tuple: one is made per reading, and a frozen dataclass takes three times as long.
    row_id: int
    reading: Reading
    account: Account
    status: ReadingStatus
    deduction: int
    delta: int


@dataclass
class PipelineStats:
    """Counters for status and benchmarks."""

    received: int = 0
    journalled: int = 0
    duplicates: int = 0
    billed: int = 0
    held: int = 0
    batches: int = 0  # journal commits
    billed_batches: int = 0
    deducted_minor: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class Pipeline:
    """The reading path; also the `ReadingSink` handed to every driver."""

    def __init__(
        self,
        store: Store,
        book: AccountBook,
        topics: SiteTopics,
        clock: Callable[[], datetime],
        effects: Effects,
        state_lock: asyncio.Lock,
        *,
        queue_size: int = 10_000,
        batch_max: int = 500,
        reload: Callable[[], None] | None = None,
        state_every_s: float = 10.0,
    ) -> None:
        self._store = store
        self._book = book
        self._topics = topics
        self._clock = clock
        self._effects = effects
        self._lock = state_lock
        self._queue: asyncio.Queue[tuple[Reading, asyncio.Future[None]]] = asyncio.Queue(
            maxsize=queue_size
        )
        self._journalled: asyncio.Queue[list[tuple[int, Reading]]] = asyncio.Queue()
        self._events: asyncio.Queue[DriverEvent] = asyncio.Queue(maxsize=1_000)
        self._batch_max = batch_max
        self._unknown_meters: set[str] = set()
        self._stale: set[str] = set()
        self._reload = reload
        self._state_every_s = state_every_s
        self._runs = 0
        self.stats = PipelineStats()

    def set_book(self, book: AccountBook) -> None:
        """Swap in a reloaded account book (SIGHUP); takes effect at the next batch."""
        self._book = book

    # ReadingSink

    async def put(self, reading: Reading) -> None:
        """Hand over one reading; returns once it is committed to the journal.

        Raises:
            StoreError: the journal could not be written (the driver should retry).
        """
        # `put_many` for one reading, without its gather: most drivers put one at a time, and
        # a gather per reading costs the event loop as much as the rest of the put.
        self.stats.received += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put((reading, future))
        await future

    async def put_many(self, readings: Sequence[Reading]) -> None:
        """Hand over several readings at once (one journal commit for all, when they fit)."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        for reading in readings:
            self.stats.received += 1
            future: asyncio.Future[None] = loop.create_future()
            await self._queue.put((reading, future))
            futures.append(future)
        await asyncio.gather(*futures)

    async def event(self, event: DriverEvent) -> None:
        await self._events.put(event)

    # The loops

    async def run(self) -> None:
        """Bill what was journalled but not billed, then journal and bill until cancelled.

        Journalling and billing are two stages: a reading is committed to the journal (and its
        `put` returns) without waiting for the billing of the batch before it. After a failure
        (the supervisor restarts this), the in-memory accounts may be ahead of the store, so
        they are reloaded from it first, and journalled rows waiting in memory are dropped:
        they are unbilled in the store and billed from there.
        """
        self._runs += 1
        if self._runs > 1 and self._reload is not None:
            async with self._lock:
                await asyncio.to_thread(self._reload)
            self._effects.discard()
        while not self._journalled.empty():
            self._journalled.get_nowait()
        await self._drain_unbilled()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._events_loop(), name="pipeline.events")
            group.create_task(self._journal_loop(), name="pipeline.journal")
            while True:
                rows = await self._journalled.get()
                while len(rows) < self._batch_max and not self._journalled.empty():
                    rows += self._journalled.get_nowait()
                await self._bill_batch(rows)

    async def _take_batch(self) -> list[tuple[Reading, asyncio.Future[None]]]:
        batch = [await self._queue.get()]
        while len(batch) < self._batch_max and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _journal(self, batch: list[tuple[Reading, asyncio.Future[None]]]) -> None:
        try:
            fresh = await asyncio.to_thread(self._write_journal, [r for r, _ in batch])
        except BaseException as exc:
            # Also on cancellation (the pipeline restarting): a driver must not wait forever.
            # The batch may have been committed anyway; a re-sent reading is then a duplicate.
            error = exc if isinstance(exc, Exception) else StoreError("pipeline restarted")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            raise
        for _, future in batch:
            if not future.done():
                future.set_result(None)
        if fresh:
            self._journalled.put_nowait(fresh)

    async def _journal_loop(self) -> None:
        while True:
            await self._journal(await self._take_batch())

    async def _bill_batch(self, rows: list[tuple[int, Reading]]) -> None:
        async with self._lock:
            await asyncio.to_thread(self._bill_rows, rows)
        self.stats.billed_batches += 1
        self._effects.flush()

    async def _events_loop(self) -> None:
        while True:
            await self._handle_event(await self._events.get())

    async def drain(self, timeout_s: float) -> None:
        """Journal and bill what is already queued (shutdown); gives up after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while not self._queue.empty():
                batch = [
                    self._queue.get_nowait()
                    for _ in range(min(self._batch_max, self._queue.qsize()))
                ]
                await self._journal(batch)
            while not self._journalled.empty():
                await self._bill_batch(self._journalled.get_nowait())

    async def _drain_unbilled(self) -> None:
        while True:
            rows = await asyncio.to_thread(self._store.unbilled, self._batch_max)
            if not rows:
                return
            logger.info("billing %d journalled readings left unbilled by the last run", len(rows))
            async with self._lock:
                await asyncio.to_thread(self._bill_rows, [(r.row_id, r.reading) for r in rows])
            self._effects.flush()

    async def _handle_event(self, event: DriverEvent) -> None:
        logger.warning("device %s: %s %s", event.device_id, event.kind.value, event.detail)
        account = next(
            (
                a
                for a in self._book.by_id.values()
                if event.device_id in (a.config.meter, a.config.actuator)
            ),
            None,
        )
        async with self._lock:
            await asyncio.to_thread(self._journal_event, event, account)
        self._effects.flush()

    def _journal_event(self, event: DriverEvent, account: Account | None) -> None:
        detail = {str(k): str(v) for k, v in event.detail.items()}
        with self._store.transaction() as tx:
            if account is None:
                tx.record_event(
                    None,
                    f"device_{event.kind.value}",
                    {"device": event.device_id, **detail},
                    event.at,
                )
                return
            text = f"{event.device_id}: {detail}" if detail else event.device_id
            enqueue_event(
                tx,
                self._topics,
                account,
                "alarm",
                event.at,
                alarm=f"device_{event.kind.value}",
                detail=text,
            )

    # Batch processing (runs in a worker thread, under the state lock)

    def _write_journal(self, batch: Sequence[Reading]) -> list[tuple[int, Reading]]:
        """Commit a batch to the journal; returns the new rows (duplicates go no further)."""
        with self._store.transaction() as tx:
            row_ids = tx.journal_readings(batch, self._clock())
        self.stats.batches += 1
        fresh = [(i, r) for i, r in zip(row_ids, batch, strict=True) if i is not None]
        self.stats.journalled += len(fresh)
        self.stats.duplicates += len(batch) - len(fresh)
        return fresh

    def _bill_rows(self, rows: Sequence[tuple[int, Reading]]) -> None:
        now = self._clock()
        book = self._book
        unknown: list[tuple[int, Reading]] = []
        held: list[tuple[int, Reading, Account, str]] = []
        notes: list[tuple[Account, str, str]] = []
        pending: list[tuple[int, Reading, Account, int]] = []
        outcomes: list[_Outcome] = []
        last: dict[str, tuple[int, datetime]] = {}
        for row_id, reading in rows:
            account = book.by_meter.get(reading.meter_id)
            if account is None:
                unknown.append((row_id, reading))
                continue
            billing = account.billing
            previous = last.get(account.id)
            if previous is None and billing.last_ts is not None:
                previous = (
                    billing.last_register_milli,
                    datetime.fromtimestamp(billing.last_ts, tz=UTC),
                )
            checked = quality.check(
                account.meter,
                raw_milli=reading.register_milli,
                read_at=reading.read_at,
                wraps=account.wraps,
                last_register_milli=previous[0] if previous else None,
                last_read_at=previous[1] if previous else None,
            )
            if checked.verdict is quality.Verdict.JUMP:
                held.append((row_id, reading, account, "implausible_jump"))
                continue
            if checked.verdict is quality.Verdict.REBASE:
                # Bill what came before the swap, then start the new meter from a baseline.
                outcomes += self._bill(pending)
                pending = []
                billing.last_ts = None
                billing.last_register_milli = 0
                notes.append(
                    (
                        account,
                        "meter_replaced",
                        f"{reading.meter_id}: new baseline {reading.register_milli}",
                    )
                )
            elif checked.verdict is quality.Verdict.ROLLOVER:
                notes.append(
                    (
                        account,
                        "meter_rollover",
                        f"{reading.meter_id}: register wrapped ({checked.wraps} times)",
                    )
                )
            account.wraps = checked.wraps
            last[account.id] = (checked.register_milli, reading.read_at)
            pending.append((row_id, reading, account, checked.register_milli))
        outcomes += self._bill(pending)
        outcomes.sort(key=lambda o: o.row_id)

        with self._store.transaction() as tx:
            touched: dict[str, Account] = {}
            for row_id, reading in unknown:
                tx.mark_held(row_id, "unknown_meter")
                self.stats.held += 1
                if reading.meter_id not in self._unknown_meters:
                    self._unknown_meters.add(reading.meter_id)
                    logger.warning(
                        "meter %s: readings held, no account is billed by it", reading.meter_id
                    )
            for row_id, reading, account, reason in held:
                tx.mark_held(row_id, reason)
                self.stats.held += 1
                enqueue_event(
                    tx,
                    self._topics,
                    account,
                    "alarm",
                    now,
                    alarm=reason,
                    detail=f"reading {reading.reading_id} held: {reason}",
                )
            for account, alarm, detail in notes:
                enqueue_event(tx, self._topics, account, "alarm", now, alarm=alarm, detail=detail)
                touched[account.id] = account
            for outcome in outcomes:
                self.stats.by_status[_STATUS_NAME[outcome.status]] += 1
                self._record_outcome(tx, now, outcome)
                touched[outcome.account.id] = outcome.account
            tx.save_account_states((a.id, a.to_record()) for a in touched.values())
            for account in touched.values():
                publish_state_if_due(tx, self._topics, account, now, self._state_every_s)

    def _bill(self, pending: Sequence[tuple[int, Reading, Account, int]]) -> list[_Outcome]:
        """Bill readings (with their checked registers) with each tariff's engine."""
        per_engine: dict[str, list[tuple[int, Reading, Account, int]]] = defaultdict(list)
        for item in pending:
            per_engine[item[2].config.tariff].append(item)
        outcomes: list[_Outcome] = []
        for tariff_id, items in per_engine.items():
            engine = self._book.engines[tariff_id]
            accounts: list[Account] = []
            index: dict[str, int] = {}
            for _, _, account, _ in items:
                if account.id not in index:
                    index[account.id] = len(accounts)
                    accounts.append(account)
            previous = {a.id: a.billing.last_register_milli for a in accounts}
            results = engine.bill(
                [a.billing for a in accounts],
                [(index[a.id], r.read_at, register) for _, r, a, register in items],
            )
            for (row_id, reading, account, register), result in zip(items, results, strict=True):
                delta = 0
                if result.status is ReadingStatus.BILLED:
                    delta = register - previous[account.id]
                if result.status in (ReadingStatus.BILLED, ReadingStatus.BASELINE):
                    previous[account.id] = register
                outcomes.append(
                    _Outcome(row_id, reading, account, result.status, result.deduction_minor, delta)
                )
        return outcomes

    def publish_dirty_states(self, *, force: bool = False) -> int:
        """Queue the state message of every account whose balance moved since its last one
        and whose interval has passed, or all of them with ``force`` (shutdown). Runs in a
        worker thread, under the state lock."""
        now = self._clock()
        due = [
            a
            for a in self._book.by_id.values()
            if a.state_dirty
            and a.published is not None
            and (force or (now - a.published[2]).total_seconds() >= self._state_every_s)
        ]
        if due:
            with self._store.transaction() as tx:
                for account in due:
                    enqueue_account_state(tx, self._topics, account, now)
                    account.state_dirty = False
        return len(due)

    def stale_check(self, now: datetime) -> list[tuple[Account, bool]]:
        """Meters that went stale (True) or came back (False) since the last check."""
        book = self._book
        last_seen = {
            a.config.meter: (
                datetime.fromtimestamp(a.billing.last_ts, tz=UTC)
                if a.billing.last_ts is not None
                else None
            )
            for a in book.by_id.values()
        }
        meters = {a.config.meter: a.meter for a in book.by_id.values() if a.meter is not None}
        stale = quality.stale_meters(meters, last_seen, now)
        changes = [(book.by_meter[m], True) for m in sorted(stale - self._stale)]
        changes += [
            (book.by_meter[m], False) for m in sorted(self._stale - stale) if m in book.by_meter
        ]
        self._stale = stale
        return changes

    def _record_outcome(self, tx: Transaction, now: datetime, outcome: _Outcome) -> None:
        row_id, reading, account = outcome.row_id, outcome.reading, outcome.account
        status, deduction = outcome.status, outcome.deduction
        name = _STATUS_NAME[status]
        if status in _HELD:
            tx.mark_held(row_id, _HELD[status])
            self.stats.held += 1
            enqueue_event(
                tx,
                self._topics,
                account,
                "alarm",
                now,
                alarm=_HELD[status],
                detail=f"reading {reading.reading_id} held: {name}",
            )
            return
        if deduction:
            tx.append_entry(
                account.id,
                EntryKind.DEDUCTION,
                -deduction,
                account.currency,
                f"deduct:{reading.reading_id}",
                created_at=now,
                ref=reading.reading_id,
            )
            self.stats.deducted_minor += deduction
        tx.mark_billed(row_id, name, deduction)
        if status in _NOT_BILLED:
            # A conflict is a second reading within the same whole second (the engine's time
            # unit): registers are cumulative, so the next reading bills what this one saw.
            return
        self.stats.billed += 1
        tariff = self._book.engines[account.config.tariff].tariff
        out = self._topics.reading_message_of(
            meter=reading.meter_id,
            reading_id=reading.reading_id,
            read_at=reading.read_at,
            register=reading.register_milli,
            delta=outcome.delta,
            unit=_UNIT_OF[tariff.unit.value],
            quality=reading.quality.value,
            ts=now,
        )
        tx.enqueue(out.topic, out.payload, out.qos, out.retain, out.message_class)
        decision: Decision = on_balance(
            account.policy, account.policy_state, account.billing.balance_minor, now
        )
        apply_decision(
            tx,
            self._topics,
            account,
            decision,
            now,
            self._effects,
            key_base=f"reading:{reading.reading_id}",
        )
