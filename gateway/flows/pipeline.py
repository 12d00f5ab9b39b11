"""Ingest -> journal -> bill -> decide -> persist -> actuate -> publish.

Readings arrive through `Pipeline.put` (the drivers' `ReadingSink`) into a bounded queue: a
full queue makes the driver wait, which is the back-pressure. The pipeline takes them in
batches (at most one per ``commit_window``, so that under load one fsync carries many readings)
and, for each batch, in **one transaction** under the state lock:

1. **journals** them (a re-delivered reading is recognised by its identity and goes no further);
2. **bills** the new ones with the engine of each account's tariff, after the data-quality
   check (`gateway.policy.quality`: rollover, replaced meter, implausible jump); a reading of a
   meter no account bills is held as ``unknown_meter``, unless the site lists the meter as
   publish-only (`gateway.flows.publish_only`: published, never billed);
3. writes the ledger deductions (idempotency key ``deduct:<reading id>``), the journal rows
   marked billed or held, the policy's decisions and events, the accounts' new billing and
   policy state, and the outgoing messages. A held reading raises its alarm only when its
   condition starts for the meter, and the meter's next billed reading clears it
   (`quality.on_hold`, `quality.on_billed`; the state is saved with the account);

commits, and only then answers the batch's `put` calls (a reading is on disk before its
billing is, since both are in the commit, and before it is acknowledged), hands supply changes
to actuation and wakes the MQTT link. One transaction, not a journal commit followed by a
billing one: the next batch's journal commit waited for the billing transaction's hold of the
store, on every reading's way to the broker.

A batch the journal refuses because of one reading's values (`JournalRowError`) is journalled
again reading by reading, the others billed after: only the bad reading's `put` raises, and the
pipeline goes on. A billing that raises rolls the transaction back; the batch is then
journalled on its own (a failing disk fails that too, and the puts get its error), its puts
answered, and the task fails: the daemon restarts it, which reloads the in-memory accounts from
the store and bills the journalled rows from there, from the state saved with the last
committed batch: the same result, nothing lost or charged twice. A crash never leaves half a
batch: a restart finds it whole or not at all (a reading not committed was never acknowledged,
and its driver sends it again).

Why one module of this size: journalling and billing share the queue, the statistics and the
one transaction per batch; the policy, quality check and message writing they call live in
their own modules.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from billing_engine.engine import ReadingStatus
from billing_engine.instants import from_ms
from billing_engine.tariff import REGISTER_UNIT
from drivers.ports import DriverEvent, Reading
from gateway.flows.accounts import Account
from gateway.flows.context import FlowContext
from gateway.flows.effects import (
    apply_decision,
    enqueue_account_state,
    enqueue_alarm,
    publish_state_if_due,
    state_due,
)
from gateway.flows.publish_only import PublishOnly
from gateway.northbound.payloads import EventDetail
from gateway.policy import quality
from gateway.policy.machine import on_balance
from gateway.store import EntryKind, JournalRowError, StoreError, Transaction

logger = logging.getLogger(__name__)

_HELD = {
    ReadingStatus.REGISTER_BACKWARDS: "register_backwards",
    ReadingStatus.NO_TARIFF: "before_tariff",
    ReadingStatus.LIMIT: "beyond_limits",
    ReadingStatus.OUTSIDE_WINDOW: "outside_window",
}
_STATUS_NAME = {status: status.name.lower() for status in ReadingStatus}
#: Upper bounds (seconds, inclusive) of the commit-time buckets (`PipelineStats`): a batch
#: commits in milliseconds on an SSD; an SD card's fsync, a batch of hundreds of readings or a
#: wait for the state lock behind an operator's transaction take tens or hundreds of them.
COMMIT_TIME_BUCKETS_S: tuple[float, ...] = (
    0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# After this many group-commit waits in a row that gathered no other reading, commits go at
# once for `_WINDOW_PROBE_S`. One is not enough: the last reading of a bus's burst of polls
# may wait alone, and pausing on it left the bus's next burst, a second later, without the
# window: a commit for every reading or two, where the window makes three or four.
_EMPTY_WAITS_BEFORE_PAUSE = 2
_WINDOW_PROBE_S = 1.0
_NOT_BILLED = frozenset(
    {ReadingStatus.DUPLICATE, ReadingStatus.OUT_OF_ORDER, ReadingStatus.CONFLICT}
)


def _advances(previous: tuple[int, datetime], register_milli: int, read_at: datetime) -> bool:
    """Whether the engine bills a reading after ``previous`` (register, time): a later
    millisecond and a register not below (else it is out of order, a conflict or backwards)."""
    return register_milli >= previous[0] and quality.later_ms(read_at, previous[1])


def _row_id(step: _Hold | _Outcome) -> int:
    return step.row_id


class _BillingFailedError(Exception):
    """The billing part of a journal-and-bill transaction raised (its error is the cause)."""


class _Journalled(NamedTuple):
    """A reading committed to the journal, with its row."""

    row_id: int
    reading: Reading


class _Checked(NamedTuple):
    """A reading that passed the data-quality check, with its unwrapped register."""

    row_id: int
    reading: Reading
    account: Account
    register_milli: int


class _Hold(NamedTuple):
    """A held reading (``register_milli`` unwrapped); ``account`` None for a meter no account
    is billed by."""

    row_id: int
    reading: Reading
    account: Account | None
    reason: str
    register_milli: int


class _Note(NamedTuple):
    """An alarm the quality check raised for an account (rollover, meter replaced)."""

    account: Account
    alarm: str
    detail: EventDetail


class _Outcome(NamedTuple):
    # A tuple: one is made per reading, and a frozen dataclass takes three times as long.
    row_id: int
    reading: Reading
    account: Account
    status: ReadingStatus
    deduction: int
    delta: int
    register_milli: int  # the register billed (unwrapped)


@dataclass
class PipelineStats:
    """Counters for status and benchmarks."""

    received: int = 0
    journalled: int = 0
    duplicates: int = 0
    billed: int = 0
    held: int = 0
    refused: int = 0  # readings the journal refused for their values (their put raised)
    publish_only: int = 0  # readings of publish-only meters published, never billed
    batches: int = 0  # journal commits
    window_waits: int = 0  # journal commits that waited for the rest of their commit window
    billed_batches: int = 0
    deducted_minor: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # How long each batch took from the end of its window to its commit (the state lock, the
    # worker thread and the one transaction): a count per `COMMIT_TIME_BUCKETS_S` bound, +Inf
    # last, and their sum.
    commit_time_counts: list[int] = field(
        default_factory=lambda: [0] * (len(COMMIT_TIME_BUCKETS_S) + 1)
    )
    commit_time_sum_s: float = 0.0

    def observe_commit_time(self, seconds: float) -> None:
        """Count one batch that took ``seconds`` (a bound is inclusive, as Prometheus' ``le``)."""
        self.commit_time_counts[bisect.bisect_left(COMMIT_TIME_BUCKETS_S, seconds)] += 1
        self.commit_time_sum_s += seconds


class Pipeline:
    """The reading path; also the `ReadingSink` handed to every driver."""

    def __init__(
        self,
        ctx: FlowContext,
        *,
        queue_size: int = 10_000,
        batch_max: int = 500,
        state_every_s: float = 10.0,
        commit_window_s: float = 0.0,
    ) -> None:
        self._ctx = ctx
        self._queue: asyncio.Queue[tuple[Reading, asyncio.Future[None]]] = asyncio.Queue(
            maxsize=queue_size
        )
        self._events: asyncio.Queue[DriverEvent] = asyncio.Queue(maxsize=1_000)
        self._batch_max = batch_max
        self._window_s = commit_window_s
        self._last_commit = -math.inf  # event-loop time the last journal commit started
        self._empty_waits = 0  # group-commit waits in a row that gathered no other reading
        self._window_probe_at = -math.inf  # when to try the window again after a useless wait
        self._closing = asyncio.Event()  # set by `drain`: no more waiting for the window
        # Clear while the journal loop holds a batch it has not committed yet.
        self._held_batch_done = asyncio.Event()
        self._held_batch_done.set()
        self._unknown_meters: set[str] = set()
        self._publish_only = PublishOnly(ctx.topics)
        self._stale: set[str] = set()
        self._state_every_s = state_every_s
        self._runs = 0
        self.stats = PipelineStats()

    # ReadingSink

    async def put(self, reading: Reading) -> None:
        """Hand over one reading; returns once it is committed to the journal, with its
        billing (unless the billing failed: then the journal alone, see the module).

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

        Each batch is journalled and billed in one transaction, under the state lock: its
        readings' `put` return once both are on disk. After a failure (the supervisor restarts
        this), the in-memory accounts may be ahead of the store, so they are reloaded from it
        first; readings a failed billing left journalled are billed from the store.
        """
        ctx = self._ctx
        self._runs += 1
        if self._runs > 1:
            ctx.wishes.discard()
            async with ctx.lock:
                await asyncio.to_thread(ctx.reload)
        await self._drain_unbilled()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._events_loop(), name="pipeline.events")
            group.create_task(self._journal_loop(), name="pipeline.journal")

    async def _gather_batch(
        self, first: tuple[Reading, asyncio.Future[None]]
    ) -> list[tuple[Reading, asyncio.Future[None]]]:
        batch = [first]
        # Group commit: at most one journal commit per window. Readings that arrive one by one
        # (a bus polled meter after meter) would otherwise each be a commit, an fsync and a
        # billing transaction of their own; waiting out the rest of the window lets one commit
        # carry them all. After a quiet window the reading is committed at once. After two
        # waits in a row that gathered nothing (one producer that waits for each commit, such
        # as a network server's uplinks), there is no wait for a second, then one wait to
        # probe, so such a producer is not slowed to one reading per window (PostgreSQL's
        # commit_delay with commit_siblings, adaptively). One empty wait is no such sign: it is
        # the end of a burst (a bus's last meter), and the next burst needs the window again.
        loop = asyncio.get_running_loop()
        now = loop.time()
        wait = self._last_commit + self._window_s - now
        waited = False
        if (
            wait > 0
            and self._queue.qsize() + 1 < self._batch_max
            and (self._empty_waits < _EMPTY_WAITS_BEFORE_PAUSE or now >= self._window_probe_at)
        ):
            try:
                # The group-commit window (not a settle wait); `drain` ends it at once.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._closing.wait()
            except BaseException:
                # Cancelled (the pipeline restarting): the reading taken must not wait forever.
                _, future = batch[0]
                if not future.done():
                    future.set_exception(StoreError("pipeline restarted"))
                raise
            waited = True
            self.stats.window_waits += 1
        self._last_commit = loop.time()
        while len(batch) < self._batch_max and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        if waited:
            self._empty_waits = 0 if len(batch) > 1 else self._empty_waits + 1
            if self._empty_waits >= _EMPTY_WAITS_BEFORE_PAUSE:
                self._window_probe_at = self._last_commit + _WINDOW_PROBE_S
        return batch

    async def _journal_loop(self) -> None:
        while True:
            first = await self._queue.get()
            # Held from the moment it is taken: `drain` waits for it to be committed.
            self._held_batch_done.clear()
            try:
                await self._journal(await self._gather_batch(first))
            finally:
                self._held_batch_done.set()

    async def _journal(self, batch: list[tuple[Reading, asyncio.Future[None]]]) -> None:
        """Journal and bill ``batch`` in one transaction (one fsync), then resolve its puts.

        A batch the journal refuses for one reading's values is journalled reading by reading
        and what was new is billed after. A billing that fails leaves the batch journalled on
        its own (a disk that fails fails that too, and the puts get its error), its puts
        answered, and then fails the task: the restart reloads the accounts and bills the rows
        from the store, as a billing that failed after its journal commit always did.
        """
        readings = [r for r, _ in batch]
        refused: dict[int, JournalRowError] = {}
        billing_failed: BaseException | None = None
        billed = 0  # new readings billed in the batch's transaction
        loop = asyncio.get_running_loop()
        taken = loop.time()
        try:
            async with self._ctx.lock:
                try:
                    billed = await asyncio.to_thread(self._journal_and_bill, readings)
                except JournalRowError as exc:
                    # One reading's values, not the database: nothing of the batch was
                    # committed. Write it again reading by reading, so the others are
                    # journalled and only the bad one's put fails; no restart, no backoff for
                    # every meter.
                    logger.warning(
                        "journal refused a batch of %d readings (%s); writing them one by one",
                        len(readings),
                        exc,
                    )
                    fresh, refused = await asyncio.to_thread(self._write_journal_each, readings)
                    if fresh:
                        billing_failed = await self._bill_after_journal(fresh)
                        billed = len(fresh)
                except _BillingFailedError as exc:
                    billing_failed = exc.__cause__
                    logger.exception("billing failed; journalling the batch without it")
                    await asyncio.to_thread(self._write_journal, readings)
        except BaseException as exc:
            # Also on cancellation (the pipeline restarting): a driver must not wait forever.
            # The batch may have been committed anyway; a re-sent reading is then a duplicate.
            error = exc if isinstance(exc, Exception) else StoreError("pipeline restarted")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            raise
        self.stats.observe_commit_time(loop.time() - taken)
        for i, (_, future) in enumerate(batch):
            if future.done():
                continue
            if i in refused:
                future.set_exception(refused[i])
            else:
                future.set_result(None)
        if billing_failed is not None:
            raise billing_failed
        if billed:
            self.stats.billed_batches += 1
        self._ctx.wishes.flush()

    async def _bill_after_journal(self, rows: list[_Journalled]) -> BaseException | None:
        """Bill rows already journalled (under the state lock); the error if billing failed."""
        try:
            await asyncio.to_thread(self._bill_rows, rows)
        except Exception as exc:  # noqa: BLE001 - raised by the caller once the puts are answered
            return exc
        return None

    async def _events_loop(self) -> None:
        while True:
            await self._handle_event(await self._events.get())

    async def drain(self, timeout_s: float) -> None:
        """Journal and bill what is already queued (shutdown); gives up after ``timeout_s``."""
        self._closing.set()  # a batch waiting for its commit window is committed now
        async with asyncio.timeout(timeout_s):
            # The batch the journal loop took before the drain began goes first.
            await self._held_batch_done.wait()
            while not self._queue.empty():
                batch = [
                    self._queue.get_nowait()
                    for _ in range(min(self._batch_max, self._queue.qsize()))
                ]
                await self._journal(batch)

    async def _drain_unbilled(self) -> None:
        ctx = self._ctx
        while True:
            rows = await asyncio.to_thread(ctx.store.unbilled, self._batch_max)
            if not rows:
                return
            logger.info("billing %d journalled readings left unbilled by the last run", len(rows))
            async with ctx.lock:
                await asyncio.to_thread(
                    self._bill_rows, [_Journalled(r.row_id, r.reading) for r in rows]
                )
            ctx.wishes.flush()

    async def _handle_event(self, event: DriverEvent) -> None:
        logger.warning("device %s: %s %s", event.device_id, event.kind.value, event.detail)
        async with self._ctx.lock:
            try:
                await asyncio.to_thread(self._journal_event, event)
            except (ValueError, TypeError, OverflowError):
                # An event the store cannot hold (a bad timestamp, an unstorable detail) is that
                # driver's bug: drop it and keep the pipeline. A StoreError (the disk) is raised.
                logger.exception(
                    "device %s: %s event not journalled", event.device_id, event.kind.value
                )
        self._ctx.wishes.flush()

    def _journal_event(self, event: DriverEvent) -> None:
        ctx = self._ctx
        account = ctx.book.of_device(event.device_id)
        detail = {str(k): str(v) for k, v in event.detail.items()}
        with ctx.store.transaction() as tx:
            if account is None:
                tx.record_event(
                    None,
                    f"device_{event.kind.value}",
                    {"device": event.device_id, **detail},
                    event.at,
                )
                return
            enqueue_alarm(
                tx,
                ctx.topics,
                account,
                f"device_{event.kind.value}",
                {"device": event.device_id, **detail},
                event.at,
            )

    # Batch processing (runs in a worker thread, under the state lock)

    def _journal_and_bill(self, batch: Sequence[Reading]) -> int:
        """Journal a batch and bill its new readings in one transaction (one commit, one
        fsync, one hold of the store's lock: two transactions made the next journal commit
        wait for the billing one). Duplicates go no further. Returns how many readings were new.

        Raises:
            JournalRowError: a reading's values (nothing committed).
            _BillingFailedError: the billing raised (nothing committed); its error is the cause.
        """
        with self._ctx.store.transaction() as tx:
            # Staged: each row is written once, as its billing leaves it, at the commit.
            row_ids = tx.stage_readings(batch, self._ctx.clock())
            fresh = [
                _Journalled(i, r) for i, r in zip(row_ids, batch, strict=True) if i is not None
            ]
            try:
                self._bill_in(tx, fresh)
            except Exception as exc:
                # Even a StoreError: the journal-only write after it tells a failing disk (it
                # fails too) from a billing fault (the readings are kept).
                raise _BillingFailedError("billing failed") from exc
        self._count_journalled(len(batch), len(fresh))
        self.stats.publish_only += self._publish_only.committed()
        return len(fresh)

    def _write_journal(self, batch: Sequence[Reading]) -> list[_Journalled]:
        """Commit a batch to the journal alone; returns the new rows."""
        with self._ctx.store.transaction() as tx:
            row_ids = tx.journal_readings(batch, self._ctx.clock())
        fresh = [_Journalled(i, r) for i, r in zip(row_ids, batch, strict=True) if i is not None]
        self._count_journalled(len(batch), len(fresh))
        return fresh

    def _count_journalled(self, batch: int, fresh: int) -> None:
        self.stats.batches += 1
        self.stats.journalled += fresh
        self.stats.duplicates += batch - fresh

    def _write_journal_each(
        self, batch: Sequence[Reading]
    ) -> tuple[list[_Journalled], dict[int, JournalRowError]]:
        """`_write_journal` one reading per transaction, after the batch was refused for one
        reading's values: returns the new rows and, by position, the readings refused. A
        failure that is not about one reading (the disk) is raised as from `_write_journal`."""
        fresh: list[_Journalled] = []
        refused: dict[int, JournalRowError] = {}
        for i, reading in enumerate(batch):
            try:
                fresh += self._write_journal([reading])
            except JournalRowError as exc:
                refused[i] = exc
        self.stats.refused += len(refused)
        for i, error in refused.items():
            logger.error("meter %s: reading not journalled: %s", batch[i].meter_id, error)
        return fresh, refused

    def _bill_rows(self, rows: Sequence[_Journalled]) -> None:
        """Bill journalled rows in a transaction of their own."""
        with self._ctx.store.transaction() as tx:
            self._bill_in(tx, rows)
        self.stats.publish_only += self._publish_only.committed()

    def _bill_in(self, tx: Transaction, rows: Sequence[_Journalled]) -> None:
        """Bill journalled rows inside ``tx``; `PublishOnly.committed` once it commits."""
        ctx = self._ctx
        now = ctx.clock()
        book = ctx.book
        holds: list[_Hold] = []
        notes: list[_Note] = []
        pending: list[_Checked] = []
        outcomes: list[_Outcome] = []
        last: dict[str, tuple[int, datetime]] = {}  # account -> (register, read_at) so far
        publish_units = ctx.site.publish_only_units
        publish_only = self._publish_only
        publish_only.begin()
        for row_id, reading in rows:
            account = book.by_meter.get(reading.meter_id)
            if account is None:
                # An account added by the backend on a publish-only meter bills it: the
                # account is looked up first.
                unit = publish_units.get(reading.meter_id)
                if unit is not None:
                    publish_only.add(tx, row_id, reading, unit)
                    continue
                holds.append(_Hold(row_id, reading, None, "unknown_meter", reading.register_milli))
                continue
            billing = account.billing
            previous = last.get(account.id)
            if previous is None and billing.last_ms is not None:
                previous = (billing.last_register_milli, from_ms(billing.last_ms))
            checked = quality.check(
                account.meter,
                raw_milli=reading.register_milli,
                read_at=reading.read_at,
                wraps=account.wraps,
                last_register_milli=previous[0] if previous else None,
                last_read_at=previous[1] if previous else None,
            )
            if checked.verdict is quality.Verdict.JUMP:
                holds.append(_Hold(row_id, reading, account, quality.JUMP, checked.register_milli))
                continue
            if checked.verdict is quality.Verdict.REBASE:
                # Bill what came before the swap, then start the new meter from a baseline.
                outcomes += self._bill(pending)
                pending = []
                billing.last_ms = None
                billing.last_register_milli = 0
                notes.append(
                    _Note(
                        account,
                        "meter_replaced",
                        {
                            "meter": reading.meter_id,
                            "reading_id": reading.reading_id,
                            "baseline_milli": reading.register_milli,
                        },
                    )
                )
            elif checked.verdict is quality.Verdict.ROLLOVER:
                notes.append(
                    _Note(
                        account,
                        "meter_rollover",
                        {
                            "meter": reading.meter_id,
                            "reading_id": reading.reading_id,
                            "wraps": checked.wraps,
                        },
                    )
                )
            account.wraps = checked.wraps
            if (
                previous is None
                or checked.verdict is quality.Verdict.REBASE
                or _advances(previous, checked.register_milli, reading.read_at)
            ):
                # What the engine will bill from next; a reading it refuses (backwards, out of
                # order, same millisecond) must not become the base of the next plausibility
                # check.
                last[account.id] = (checked.register_milli, reading.read_at)
            pending.append(_Checked(row_id, reading, account, checked.register_milli))
        outcomes += self._bill(pending)
        outcomes.sort(key=lambda o: o.row_id)

        touched: dict[str, Account] = {}
        watched: dict[str, Account] = {}  # a held reading moved only the account's watch
        for note in notes:
            enqueue_alarm(tx, ctx.topics, note.account, note.alarm, note.detail, now)
            touched[note.account.id] = note.account
        # In journal order: a meter's hold alarms are raised and cleared reading by reading.
        steps: Sequence[_Hold | _Outcome] = outcomes
        if holds:
            steps = sorted([*holds, *outcomes], key=_row_id)
        for step in steps:
            if isinstance(step, _Hold):
                self._hold(tx, now, step)
                if step.account is not None:
                    watched[step.account.id] = step.account
                continue
            self.stats.by_status[_STATUS_NAME[step.status]] += 1
            self._record_outcome(tx, now, step)
            touched[step.account.id] = step.account
        saved = watched | touched
        tx.save_account_states((a.id, a.to_record()) for a in saved.values())
        for account in touched.values():
            publish_state_if_due(tx, ctx.topics, account, now, self._state_every_s)
        publish_only.record(tx, now)

    def _hold(self, tx: Transaction, now: datetime, hold: _Hold) -> None:
        """Mark a reading held; raise its condition's alarm if the condition is new for the
        meter, and `quality.RESET_OR_SWAP` when the held readings continue from a new level
        (`quality.on_hold`). A meter without an account is logged once: there is no account to
        raise an alarm on."""
        tx.mark_held(hold.row_id, hold.reason)
        self.stats.held += 1
        account = hold.account
        if account is None:
            if hold.reading.meter_id not in self._unknown_meters:
                self._unknown_meters.add(hold.reading.meter_id)
                logger.warning(
                    "meter %s: readings held, no account is billed by it", hold.reading.meter_id
                )
            return
        account.watch, alarms = quality.on_hold(
            account.meter,
            account.watch,
            reason=hold.reason,
            reading_id=hold.reading.reading_id,
            register_milli=hold.register_milli,
            read_at=hold.reading.read_at,
            billed_milli=account.billing.last_register_milli,
        )
        self._raise(tx, now, account, alarms)

    def _raise(
        self, tx: Transaction, now: datetime, account: Account, alarms: Sequence[quality.Alarm]
    ) -> None:
        for alarm in alarms:
            logger.warning(
                "account %s: %s %s: %s", account.id, alarm.code, alarm.state, alarm.message
            )
            enqueue_alarm(tx, self._ctx.topics, account, alarm.code, alarm.detail, now)

    def _bill(self, pending: Sequence[_Checked]) -> list[_Outcome]:
        """Bill readings (with their checked registers) with each tariff's engine."""
        per_tariff: dict[str, list[_Checked]] = defaultdict(list)
        for item in pending:
            per_tariff[item.account.config.tariff].append(item)
        outcomes: list[_Outcome] = []
        for tariff_id, items in per_tariff.items():
            engine = self._ctx.book.engines[tariff_id]
            accounts: list[Account] = []
            index: dict[str, int] = {}
            for item in items:
                if item.account.id not in index:
                    index[item.account.id] = len(accounts)
                    accounts.append(item.account)
            previous = {a.id: a.billing.last_register_milli for a in accounts}
            results = engine.bill(
                [a.billing for a in accounts],
                [(index[i.account.id], i.reading.read_at, i.register_milli) for i in items],
            )
            for item, result in zip(items, results, strict=True):
                account, register = item.account, item.register_milli
                delta = 0
                if result.status is ReadingStatus.BILLED:
                    delta = register - previous[account.id]
                if result.status in (ReadingStatus.BILLED, ReadingStatus.BASELINE):
                    previous[account.id] = register
                outcomes.append(
                    _Outcome(
                        item.row_id,
                        item.reading,
                        account,
                        result.status,
                        result.deduction_minor,
                        delta,
                        register,
                    )
                )
        return outcomes

    def publish_dirty_states(self, *, force: bool = False) -> int:
        """Queue the state message of every account whose balance moved since its last one
        and whose interval has passed, or all of them with ``force`` (shutdown). Runs in a
        worker thread, under the state lock."""
        ctx = self._ctx
        now = ctx.clock()
        due = [
            a
            for a in ctx.book.by_id.values()
            if (force and a.state_dirty and a.published is not None)
            or state_due(a, now, self._state_every_s)
        ]
        if due:
            with ctx.store.transaction() as tx:
                for account in due:
                    enqueue_account_state(tx, ctx.topics, account, now)
        return len(due)

    def stale_check(self, now: datetime) -> list[tuple[Account, bool]]:
        """Meters that went stale (True) or came back (False) since the last check."""
        book = self._ctx.book
        last_seen = {
            a.config.meter: (from_ms(a.billing.last_ms) if a.billing.last_ms is not None else None)
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

    def _publish_reading(
        self, tx: Transaction, now: datetime, account: Account, reading: Reading, delta: int
    ) -> None:
        tariff = self._ctx.book.engine_for(account).tariff
        tx.enqueue(
            self._ctx.topics.reading_message_of(
                meter=reading.meter_id,
                reading_id=reading.reading_id,
                read_at=reading.read_at,
                register=reading.register_milli,
                delta=delta,
                unit=REGISTER_UNIT[tariff.unit],
                quality=reading.quality,
                ts=now,
            )
        )

    def _record_outcome(self, tx: Transaction, now: datetime, outcome: _Outcome) -> None:
        ctx = self._ctx
        row_id, reading, account = outcome.row_id, outcome.reading, outcome.account
        status, deduction = outcome.status, outcome.deduction
        name = _STATUS_NAME[status]
        if status in _HELD:
            hold = _Hold(row_id, reading, account, _HELD[status], outcome.register_milli)
            self._hold(tx, now, hold)
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
        if status is ReadingStatus.CONFLICT:
            # A second reading within the same millisecond as the last one billed (the
            # engine's time unit) with another register: registers are cumulative, so the next
            # reading bills what this one saw. It is still a reading of its own: published
            # with delta 0.
            self._publish_reading(tx, now, account, reading, 0)
            return
        if status in _NOT_BILLED:
            return
        if account.watch.active:
            # Billed (or a new baseline) after held readings: their conditions clear.
            account.watch, alarms = quality.on_billed(account.watch, reading.reading_id)
            self._raise(tx, now, account, alarms)
        self.stats.billed += 1
        self._publish_reading(tx, now, account, reading, outcome.delta)
        decision = on_balance(
            account.policy, account.policy_state, account.billing.balance_minor, now
        )
        apply_decision(tx, ctx, account, decision, now, key_base=f"reading:{reading.reading_id}")
