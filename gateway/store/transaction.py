"""`Store`: the one object that owns the SQLite file, and `Transaction`, its atomic unit.

The API is synchronous; the async pipeline calls it through ``asyncio.to_thread``, in batches.
One connection (``check_same_thread=False``) is guarded by one `threading.Lock`, held for the
whole of a transaction, so a transaction is never interleaved with another call.

Everything that must happen together happens in one ``with store.transaction() as tx:``
(``BEGIN IMMEDIATE`` ... ``COMMIT``; any exception rolls all of it back), e.g. billing a
reading::

    with store.transaction() as tx:
        entry, created = tx.append_entry(account, EntryKind.DEDUCTION, -cost, "EUR",
                                         reading_key, created_at=now)
        tx.save_account_state(account, engine_state)
        tx.mark_billed(row_id, "billed", cost, detail)
        if created:
            tx.enqueue(topics.reading_message(payload))

Store methods must not be called inside a transaction on the same thread (they would wait
for the lock the transaction holds); `StoreError` says so instead of deadlocking. The
`Transaction` has the reads a transaction needs.

Why one module of this size: `Store` and `Transaction` are the store's whole public face,
mostly one-line delegations to the table modules (`journal`, `ledger`, `outbox`, ...), kept
together so that what may happen inside one transaction reads in one place.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from drivers.ports import Clock, Reading, utc_now
from gateway.messages import MessageClass, OutboxListener, OutboxMessage, Outgoing
from gateway.store import (
    account_records,
    command_results,
    db,
    events,
    invoices,
    journal,
    ledger,
    outbox,
    receipts,
)
from gateway.store.account_records import AccountRecord
from gateway.store.command_results import StoredCommand
from gateway.store.errors import StoreError
from gateway.store.events import DeviceSupplyRecord, Event
from gateway.store.invoices import Invoice, InvoiceDetails
from gateway.store.journal import JournalRow, JournalState
from gateway.store.jsontext import JsonObject
from gateway.store.ledger import ChainHead, EntryKind, LedgerEntry, LedgerReport
from gateway.store.outbox import OutboxStats
from gateway.store.receipts import Receipt
from gateway.store.timestamps import to_micros

logger = logging.getLogger(__name__)

DEFAULT_MAX_OUTBOX_MESSAGES = 50_000


class Transaction:
    """The writes (and the reads they need) of one atomic transaction.

    Obtained from `Store.transaction`; unusable once its ``with`` block has ended.
    """

    def __init__(self, store: Store, conn: sqlite3.Connection) -> None:
        self._store = store
        self._conn = conn
        self._active = True
        self._outbox_total: int | None = None  # pending messages, once read in this transaction
        self._outbox_deltas: dict[str, int] = {}  # pending-counter increments, written at commit
        self._ledger = ledger.ChainCursor()  # head and currencies appended in this tx
        self._billed: list[journal.BilledMark] = []  # journal marks not yet written
        self._staged: dict[int, journal.StagedRow] = {}  # rows journalled, not yet inserted
        # Messages queued here, for the store's followers once committed (only when followed).
        self._queued: list[OutboxMessage] | None = [] if store._followers else None

    def _before_commit(self) -> None:
        self._write_journal()
        outbox.write_pending_deltas(self._conn, self._outbox_deltas)
        if self._ledger.head is not None:  # one checkpoint per transaction, not per entry
            ledger.write_chain_head(self._conn, self._store._ledger_key, *self._ledger.head)

    def _c(self) -> sqlite3.Connection:
        if not self._active:
            raise StoreError("transaction already ended")
        return self._conn

    # --- reading journal ---------------------------------------------------------------------
    def journal_readings(
        self, readings: Sequence[Reading], received_at: datetime
    ) -> list[int | None]:
        """Journal readings; see `journal.journal_readings` (None marks a duplicate)."""
        self._write_journal()
        return journal.journal_readings(self._c(), readings, received_at)

    def stage_readings(
        self, readings: Sequence[Reading], received_at: datetime
    ) -> list[int | None]:
        """`journal_readings` for readings this transaction goes on to bill or hold.

        The same duplicates and errors, and row ids in the same journal order (without the
        gap an insert that met a duplicate leaves), but each new row is inserted once, in the
        state its `mark_billed` or `mark_held` left it, when the transaction writes its journal
        (before any other journal read or write of it, at the latest at its commit), instead
        of inserted ``unbilled`` and then updated. See `journal.stage_readings`.

        Raises:
            JournalRowError: a reading's values (as from `journal_readings`).
        """
        self._write_journal()
        staged = journal.stage_readings(self._c(), readings, received_at)
        if staged is None:  # a value only SQLite can judge: written and refused as always
            return journal.journal_readings(self._c(), readings, received_at)
        row_ids, self._staged = staged
        return row_ids

    def mark_billed(
        self, row_id: int, status: str, deduction_minor: int, detail: JsonObject | None = None
    ) -> None:
        """Record a reading's billing outcome.

        The marks of a transaction are written together, before any other journal write of
        the transaction and at the latest when it commits (a billing batch marks hundreds of
        rows: one statement instead of one each).

        Raises:
            TypeError: ``deduction_minor`` is not an int or ``detail`` is not storable JSON.
            JournalStateError: the row is missing or already billed; raised by the call that
                writes the marks, at the latest by the commit, which then rolls back (for a
                row of `stage_readings`, by this call).
        """
        self._c()  # refuses once the transaction has ended
        mark = journal.billed_mark(row_id, status, deduction_minor, detail)
        staged = self._staged.get(row_id)
        if staged is not None:
            staged.bill(row_id, mark)
            return
        self._billed.append(mark)

    def mark_held(self, row_id: int, reason: str) -> None:
        """Quarantine an unbilled reading.

        Raises:
            JournalStateError: the row is missing or not unbilled (or a pending billing mark
                of this transaction could not be written; see `mark_billed`).
        """
        staged = self._staged.get(row_id)
        if staged is not None:
            self._c()  # refuses once the transaction has ended
            staged.hold(row_id, reason)
            return
        self._write_journal()
        journal.mark_held(self._c(), row_id, reason)

    def _write_journal(self) -> None:
        """Insert the staged rows and write the pending marks: before any other journal read
        or write of this transaction, and before it commits."""
        if self._staged:
            staged, self._staged = self._staged, {}
            journal.insert_staged(self._c(), staged)
        if self._billed:
            marks, self._billed = self._billed, []
            journal.mark_billed_many(self._c(), marks)

    # --- ledger --------------------------------------------------------------------------------
    def append_entry(
        self,
        account_id: str,
        kind: EntryKind,
        amount_minor: int,
        currency: str,
        idempotency_key: str,
        *,
        created_at: datetime,
        ref: str = "",
        detail: JsonObject | None = None,
    ) -> tuple[LedgerEntry, bool]:
        """Append a ledger entry idempotently; see `ledger.append_entry`.

        Raises:
            LedgerConflictError: same key, different kind, amount or currency.
            InvalidEntryError: the entry breaks a sign, type or currency rule.
        """
        return ledger.append_entry(
            self._c(),
            self._store._ledger_key,
            account_id=account_id,
            kind=kind,
            amount_minor=amount_minor,
            currency=currency,
            idempotency_key=idempotency_key,
            ref=ref,
            detail=detail,
            created_at=created_at,
            write_head=False,
            cursor=self._ledger,
        )

    def balance(self, account_id: str) -> int:
        """The account's balance (sum of entries) as seen inside this transaction."""
        return ledger.balance(self._c(), account_id)

    def ledger_head(self) -> tuple[int, bytes]:
        """``(seq, mac)`` of the newest entry as this transaction sees it (its own appends
        included); ``(0, GENESIS_MAC)`` for an empty ledger. What a checkpoint publishes."""
        conn = self._c()
        return self._ledger.head if self._ledger.head is not None else ledger.last_entry(conn)

    @property
    def incarnation(self) -> str:
        """The store's incarnation (see `Store.incarnation`)."""
        return self._store.incarnation

    def entry(self, account_id: str, idempotency_key: str) -> LedgerEntry | None:
        """The entry under ``(account_id, idempotency_key)``, or None."""
        return ledger.entry_by_key(self._c(), account_id, idempotency_key)

    # --- outbox --------------------------------------------------------------------------------
    def enqueue(self, message: Outgoing) -> int:
        """Queue a northbound message under the outbox bound (see `gateway.store.outbox`).

        Returns:
            Its seq; `outbox.NOT_QUEUED` (0) when it was telemetry dropped by the bound.
        """
        result = outbox.enqueue(
            self._c(),
            message,
            max_messages=self._store.max_outbox_messages,
            coalesce_retained_state=self._store.coalesce_retained_state,
            now_us=to_micros(self._store.clock()),
            pending_total=self._outbox_total,
            pending_deltas=self._outbox_deltas,
        )
        self._outbox_total = result.pending_total
        self._store._note_outbox_bound(result.over_bound)
        if self._queued is not None and result.seq != outbox.NOT_QUEUED:
            self._queued.append(
                OutboxMessage(
                    message.topic,
                    message.payload,
                    message.qos,
                    message.retain,
                    MessageClass(message.message_class),
                    message.batch_key,
                    seq=result.seq,
                )
            )
        return result.seq

    # --- commands and receipts -----------------------------------------------------------------
    def record_command(
        self, command_id: str, kind: str, result_json: str, content_hash: str | None = None
    ) -> str:
        """Record a command's first result (and its content digest); returns the stored
        (first) result.

        Raises:
            CommandConflictError: the id was used for another kind of command.
        """
        return command_results.record_command(
            self._c(),
            command_id,
            kind,
            result_json,
            to_micros(self._store.clock()),
            content_hash,
        )

    def command_result(self, command_id: str) -> str | None:
        """The first result of ``command_id``, or None if never recorded."""
        return command_results.command_result(self._c(), command_id)

    def stored_command(self, command_id: str) -> StoredCommand | None:
        """The first result and content digest of ``command_id``, or None if never seen."""
        return command_results.stored_command(self._c(), command_id)

    def next_receipt_seq(self) -> int:
        """Take the next per-site receipt seq (rolled back with the transaction)."""
        return receipts.next_receipt_seq(self._c())

    def save_receipt(
        self,
        seq: int,
        subject: str,
        account_id: str | None,
        payload: bytes,
        signature: bytes,
        *,
        kind: str = "topup",
    ) -> Receipt:
        """Store a signed receipt of ``subject`` (`gateway.store.receipts`; idempotent for the
        identical receipt).

        Raises:
            ReceiptConflictError: a different receipt exists for the subject or seq.
        """
        receipt = Receipt(seq, kind, subject, account_id, bytes(payload), bytes(signature))
        receipts.save_receipt(self._c(), receipt)
        return receipt

    def receipt_for_topup(self, topup_id: str) -> Receipt | None:
        """The receipt of ``topup_id``, or None."""
        return receipts.receipt_for(self._c(), "topup", topup_id)

    def receipt_by_seq(self, seq: int) -> Receipt | None:
        """Receipt number ``seq`` (of any kind), or None."""
        return receipts.receipt_by_seq(self._c(), seq)

    # --- invoice requests ----------------------------------------------------------------------
    def request_invoice(
        self,
        *,
        invoice_id: str,
        account_id: str,
        topup_ids: tuple[str, ...],
        amount_minor: int,
        currency: str,
        details: InvoiceDetails,
    ) -> Invoice:
        """Record a new invoice request (see `gateway.store.invoices`).

        Raises:
            InvoiceConflictError: the id is taken, or a top-up is invoiced already.
        """
        return invoices.request_invoice(
            self._c(),
            invoice_id=invoice_id,
            account_id=account_id,
            topup_ids=topup_ids,
            amount_minor=amount_minor,
            currency=currency,
            details=details,
            now_us=to_micros(self._store.clock()),
        )

    def invoice(self, invoice_id: str) -> Invoice | None:
        return invoices.invoice(self._c(), invoice_id)

    def set_invoice_status(
        self,
        invoice_id: str,
        status: str,
        *,
        number: str | None = None,
        reason: str | None = None,
        resend: bool = False,
    ) -> Invoice:
        """Move an invoice to ``status`` (see `invoices.set_status`)."""
        return invoices.set_status(
            self._c(),
            invoice_id,
            status,
            to_micros(self._store.clock()),
            number=number,
            reason=reason,
            resend=resend,
        )

    def uninvoiced_topups(
        self, account_id: str, start: datetime, end: datetime
    ) -> list[tuple[str, int, str]]:
        """The account's top-ups in ``[start, end)`` not invoiced yet."""
        return invoices.uninvoiced_topups(self._c(), account_id, to_micros(start), to_micros(end))

    # --- events and account state --------------------------------------------------------------
    def record_event(
        self, account_id: str | None, kind: str, detail: JsonObject | None, at: datetime
    ) -> int:
        """Append a state-change event; returns its id."""
        return events.record_event(self._c(), account_id, kind, detail, at)

    def save_account_state(self, account_id: str, state: Mapping[str, int | str | None]) -> None:
        """Replace the account's persisted runtime state.

        Raises:
            TypeError: a value is not int, str or None.
        """
        account_records.save_account_state(
            self._c(), account_id, state, to_micros(self._store.clock())
        )

    def load_account_states(self) -> dict[str, AccountRecord]:
        """Every persisted account runtime state, by account id, as this transaction sees it."""
        return account_records.load_account_states(self._c())

    def save_account_states(
        self, states: Iterable[tuple[str, Mapping[str, int | str | None]]]
    ) -> None:
        """Replace the persisted runtime state of several accounts (one statement for all).

        Raises:
            TypeError: a value is not int, str or None (nothing is written then).
        """
        account_records.save_account_states(self._c(), states, to_micros(self._store.clock()))


class Store:
    """The gateway's local store: one SQLite file in WAL mode.

    Satisfies `gateway.messages.OutboxReader` (`pending`, `acknowledge`, `follow`).

    Args:
        path: the database file (its directory must exist).
        ledger_key: the HMAC key of the ledger chain, at least 16 bytes. Never logged.
        max_outbox_messages: the outbox bound (see `gateway.store.outbox` for the policy).
        coalesce_retained_state: let a retained STATE message replace an unsent older one on
            the same topic.
        clock: the time source for bookkeeping timestamps (command and state records).

    Raises:
        StoreError: the file cannot be opened or migrated.
        SchemaError: the file is from a newer gateway.
        LedgerKeyError: the key is too short or is not this ledger's key.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        ledger_key: bytes,
        max_outbox_messages: int = DEFAULT_MAX_OUTBOX_MESSAGES,
        coalesce_retained_state: bool = True,
        clock: Clock = utc_now,
    ) -> None:
        ledger.check_key(ledger_key)
        if max_outbox_messages < 1:
            raise ValueError(f"max_outbox_messages must be >= 1, got {max_outbox_messages}")
        self.path = Path(path)
        self.max_outbox_messages = max_outbox_messages
        self.coalesce_retained_state = coalesce_retained_state
        self.clock = clock
        self._ledger_key = ledger_key
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._outbox_over_bound = False
        # Who is told of each commit's outbox messages (`follow`); the list is replaced, never
        # changed in place, so a commit reads it without a lock of its own.
        self._followers: tuple[OutboxListener, ...] = ()
        self._followers_lock = threading.Lock()
        conn = db.connect(self.path)
        try:
            self.schema_version = db.migrate(conn, to_micros(clock()))
            conn.execute("BEGIN IMMEDIATE")
            try:
                ledger.init_key(conn, ledger_key)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            incarnation = db.incarnation(conn)
        except BaseException:
            conn.close()
            raise
        if incarnation is None:  # migration 5 makes one; a file without it is damaged
            conn.close()
            raise StoreError(f"{self.path}: the store has no incarnation")
        #: 16 hex digits made when the store was created, never changed: tells this store
        #: apart from one started anew in its place (event ids, receipts and checkpoints carry
        #: it).
        self.incarnation = incarnation
        self._conn: sqlite3.Connection | None = conn
        logger.info("store %s open at schema version %d", self.path, self.schema_version)

    # --- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Close the file. Idempotent; waits for a running transaction to finish."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        if self._owner == threading.get_ident():
            raise StoreError(
                "Store method called inside a transaction on the same thread; use the"
                " Transaction's methods"
            )
        with self._lock:
            if self._conn is None:
                raise StoreError(f"store {self.path} is closed")
            self._owner = threading.get_ident()
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.path}: {exc}") from exc
            finally:
                self._owner = None

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[Transaction]:
        """One atomic write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``).

        Any exception inside the block rolls everything back and propagates (SQLite errors as
        `StoreError`). Returning from the block commits; with ``synchronous=FULL`` the commit
        is on disk when the block exits.

        ``durable=False`` commits without the fsync (``synchronous=NORMAL`` for this one
        transaction): atomic, and kept through a crash of the process, but a power cut may undo
        it, never a commit before it (WAL: the next durable commit's fsync takes it along).
        Only for a change that may be lost and redone: the acknowledgement of published
        messages (a lost one means the message is published again, which QoS 1 allows and
        every message's id lets the backend recognise).

        Raises:
            StoreError: the transaction could not begin or commit.
        """
        with self._locked() as conn:
            if durable:
                yield from self._transaction(conn)
                return
            conn.execute("PRAGMA synchronous = NORMAL")
            try:
                yield from self._transaction(conn)
            finally:
                conn.execute("PRAGMA synchronous = FULL")

    def _transaction(self, conn: sqlite3.Connection) -> Iterator[Transaction]:
        conn.execute("BEGIN IMMEDIATE")
        tx = Transaction(self, conn)
        try:
            yield tx
        except BaseException:
            tx._active = False
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        try:
            tx._before_commit()
        except BaseException:
            tx._active = False
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        tx._active = False
        try:
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if tx._queued:
            # Still under the store's lock: followers hear of commits in seq order.
            self._tell_followers(tx._queued)

    def follow(self, listener: OutboxListener) -> Callable[[], None]:
        """Call ``listener`` with the outbox messages of every transaction that commits some,
        from then on, in seq order, from the committing thread (under the store's lock: it must
        only hand them on). Returns the function that stops it; a commit already telling its
        followers may still call ``listener`` once after that.

        Every outbox message of this store is queued by a `Transaction` of this object (the
        daemon holds the state directory alone), so a follower that has read the outbox once
        and follows it from before that read misses none.
        """
        with self._followers_lock:
            self._followers = (*self._followers, listener)

        def stop() -> None:
            # Not under the store's lock: the caller is an event loop, which must not wait for a
            # billing transaction to end.
            with self._followers_lock:
                self._followers = tuple(f for f in self._followers if f is not listener)

        return stop

    def _tell_followers(self, messages: list[OutboxMessage]) -> None:
        for listener in self._followers:
            try:
                listener(messages)
            except Exception:
                # The transaction is committed: a follower's failure must not look like the
                # commit's. The messages stay in the outbox, for the follower's next read.
                logger.exception(
                    "outbox follower failed on seqs %d-%d (committed; they stay in the outbox)",
                    messages[0].seq,
                    messages[-1].seq,
                )

    # --- reading journal -----------------------------------------------------------------------
    def unbilled(self, limit: int) -> list[JournalRow]:
        """Journalled readings not yet billed nor held, in journal order, at most ``limit``."""
        with self._locked() as conn:
            return journal.rows_in_state(conn, JournalState.UNBILLED, limit)

    def billed(self, limit: int, after_row: int = 0) -> list[JournalRow]:
        """Billed readings after ``after_row``, in journal order, at most ``limit``."""
        with self._locked() as conn:
            return [
                r
                for r in journal.rows_in_state(conn, JournalState.BILLED, limit + after_row)
                if r.row_id > after_row
            ][:limit]

    def held(self, limit: int) -> list[JournalRow]:
        """Readings held for an operator, in journal order, at most ``limit``."""
        with self._locked() as conn:
            return journal.rows_in_state(conn, JournalState.HELD, limit)

    def prune_journal(self, received_before: datetime, *, batch: int = 5_000) -> int:
        """Delete the billed readings received before ``received_before``; returns how many.

        Short transactions of at most ``batch`` rows, so billing goes on in between. A reading
        delivered again after its row is gone is journalled anew and billed as out of order:
        its account has billed a later reading, so it charges nothing.
        """
        before_us = to_micros(received_before)
        total, after_row = 0, 0
        while True:
            with self.transaction() as tx:
                deleted, next_row = journal.prune_billed(tx._c(), before_us, after_row, batch)
            total += deleted
            if next_row is None:
                return total
            after_row = next_row

    def journal_counts(self) -> tuple[dict[JournalState, int], dict[str, int]]:
        """Rows per journal state, and held rows per hold reason."""
        with self._locked() as conn:
            return journal.counts(conn)

    def journal_row(self, row_id: int) -> JournalRow | None:
        """One journal row, or None when there is none."""
        with self._locked() as conn:
            return journal.journal_row(conn, row_id)

    def last_reading(self, meter_id: str) -> Reading | None:
        """The meter's journalled reading with the latest ``read_at``, or None."""
        with self._locked() as conn:
            return journal.last_reading(conn, meter_id)

    # --- ledger --------------------------------------------------------------------------------
    def balance(self, account_id: str) -> int:
        """The account's balance in minor units: always the sum of its entries."""
        with self._locked() as conn:
            return ledger.balance(conn, account_id)

    def debt(self, account_id: str) -> int:
        """The account's debt register (see `ledger.debt`)."""
        with self._locked() as conn:
            return ledger.debt(conn, account_id)

    def entries(
        self, account_id: str | None = None, after_seq: int = 0, limit: int = 1000
    ) -> list[LedgerEntry]:
        """Ledger entries after ``after_seq``, oldest first, of one account or all."""
        with self._locked() as conn:
            return ledger.entries(conn, account_id, after_seq, limit)

    def chain_head(self) -> ChainHead | None:
        """The ledger chain head to publish upstream, or None while the ledger is empty."""
        with self._locked() as conn:
            return ledger.chain_head(conn)

    def ledger_head(self) -> tuple[int, bytes]:
        """``(seq, mac)`` of the newest stored entry; ``(0, GENESIS_MAC)`` when empty."""
        with self._locked() as conn:
            return ledger.last_entry(conn)

    def mac_at(self, seq: int) -> bytes | None:
        """The MAC of entry ``seq`` (see `ledger.mac_at`); None when there is no such entry."""
        with self._locked() as conn:
            return ledger.mac_at(conn, seq)

    def verify_ledger(self, expected_head: ChainHead | None = None) -> LedgerReport:
        """Verify the ledger with this store's key; see `ledger.verify`."""
        with self._locked() as conn:
            conn.execute("BEGIN")  # one snapshot for the whole check
            try:
                return ledger.verify(conn, self._ledger_key, expected_head)
            finally:
                conn.execute("COMMIT")

    # --- outbox (OutboxReader) -----------------------------------------------------------------
    def pending(self, limit: int, after_seq: int = 0) -> list[OutboxMessage]:
        """Oldest-first messages not yet acknowledged by the broker, at most ``limit``, with a
        seq above ``after_seq``.

        Messages are committed in seq order (one writer at a time), so a reader that has read
        up to a seq finds every later message above it.
        """
        with self._locked() as conn:
            return outbox.pending(conn, limit, after_seq)

    def acknowledge(self, seqs: list[int]) -> None:
        """Remove messages the broker acknowledged; unknown seqs are ignored."""
        # Not fsync'd: an acknowledgement a power cut undoes only publishes those messages again.
        with self.transaction(durable=False) as tx:
            outbox.acknowledge(tx._c(), seqs)
            total = outbox.stats(tx._c()).total_pending
        if self._outbox_over_bound and total < self.max_outbox_messages:
            self._outbox_over_bound = False
            logger.info(
                "outbox %s back under its bound of %d messages (%d pending)",
                self.path,
                self.max_outbox_messages,
                total,
            )

    def outbox_stats(self) -> OutboxStats:
        """Pending, dropped and coalesced counts per message class."""
        with self._locked() as conn:
            return outbox.stats(conn)

    def _note_outbox_bound(self, over_bound: bool) -> None:
        if over_bound and not self._outbox_over_bound:
            self._outbox_over_bound = True
            logger.warning(
                "outbox %s is over its bound of %d messages: ledger and state messages are"
                " kept past it, telemetry is being dropped",
                self.path,
                self.max_outbox_messages,
            )

    # --- commands, receipts, events, account state -----------------------------------------------
    def command_result(self, command_id: str) -> str | None:
        """The first recorded result of ``command_id``, or None when never seen."""
        with self._locked() as conn:
            return command_results.command_result(conn, command_id)

    def receipt_for_topup(self, topup_id: str) -> Receipt | None:
        """The stored receipt of ``topup_id``, or None."""
        with self._locked() as conn:
            return receipts.receipt_for(conn, "topup", topup_id)

    def events(
        self, account_id: str | None = None, after_id: int = 0, limit: int = 1000
    ) -> list[Event]:
        """Journalled events after ``after_id``, oldest first."""
        with self._locked() as conn:
            return events.events(conn, account_id, after_id, limit)

    def recent_events(self, limit: int) -> list[Event]:
        """The ``limit`` newest journalled events, oldest of them first."""
        with self._locked() as conn:
            return events.recent_events(conn, limit)

    def last_device_supply(self) -> dict[str, DeviceSupplyRecord]:
        """Per device, the last supply change journalled and whether it was confirmed."""
        with self._locked() as conn:
            return events.last_device_supply(conn)

    def invoices(self, account_id: str | None = None) -> list[Invoice]:
        """Every invoice request (of one account), oldest first."""
        with self._locked() as conn:
            return invoices.invoices(conn, account_id)

    def load_account_states(self) -> dict[str, AccountRecord]:
        """Every persisted account runtime state, by account id."""
        with self._locked() as conn:
            return account_records.load_account_states(conn)


def verify_ledger(
    path: Path | str, key: bytes, expected_head: ChainHead | None = None
) -> LedgerReport:
    """Verify the ledger in the file at ``path`` without a `Store` (an operator's check).

    Opens the file with ``query_only`` and reads one snapshot; never migrates or writes.

    Raises:
        StoreError: the file does not exist or cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such database file")
    try:
        conn = sqlite3.connect(path, timeout=db.BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open database: {exc}") from exc
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("BEGIN")
        report = ledger.verify(conn, key, expected_head)
        return dataclasses.replace(report, incarnation=db.incarnation(conn))
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot verify ledger: {exc}") from exc
    finally:
        conn.close()
