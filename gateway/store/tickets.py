"""Water tickets on disk: batches, redemptions, voids, extensions, emergency tickets.

Tables of schema version 6 (`gateway.store.db`). The rules themselves are pure and live in
`gateway.tickets`; this module keeps what happened, and makes each change one transaction:

**Redemption, exactly once.** `TicketStore.redeem` runs in one ``BEGIN IMMEDIATE`` transaction:
it reads what the box knows of the code (`CodeFacts`), asks the caller's judge, and inserts the
redemption. ``ticket_redemptions.code`` is UNIQUE, so a second redemption of a code can never be
stored, whatever the judge said; ``BEGIN IMMEDIATE`` makes two boxes' worth of threads or
processes on one file take turns, so the loser sees the winner's row and is refused with when
and where it was used. The same request again (same ``redemption_id``) changes nothing and
answers with the first redemption (`Replayed`). With ``synchronous=FULL`` a redemption that was
answered is on disk: after a crash the used list is whole.

**Across boxes.** Each redemption carries the box, the store's incarnation and the instant, so
it can be published as an event. `TicketStore.import_remote` records a redemption seen at another
box: the code is refused here afterwards; when this box had redeemed it too, both are kept and a
`Conflict` is recorded and returned.

The API is synchronous and the class owns its connection (one lock, like `Store`): the CLI opens
it next to a running daemon (WAL: readers never block the writer, writers take turns).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from drivers.ports import Clock, utc_now
from gateway.store import db, receipts
from gateway.store.errors import IdempotencyConflictError, StoreError
from gateway.store.timestamps import from_micros, to_micros

J = TypeVar("J")  # the judge's refusal type (the store does not know the rules)


class BatchConflictError(StoreError):
    """A batch was refused: its id was imported with other content, or a range overlaps another
    batch's."""


class EmergencyCapError(StoreError):
    """Today's emergency tickets are used up (``tickets.emergency_cap_per_day``).

    Attributes:
        cap: the cap per day.
        day: the local day.
    """

    def __init__(self, cap: int, day: date) -> None:
        self.cap = cap
        self.day = day
        super().__init__(
            f"the cap of {cap} emergency tickets per day is reached for {day.isoformat()}"
        )


@dataclass(frozen=True, slots=True)
class CodeKey:
    """A ticket code and the parts the store indexes by."""

    code: str
    plant: str
    serial: int


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """A batch's terms as imported (the signed document is kept with it)."""

    batch_id: str
    plant: str
    product: str
    face_minor: int
    currency: str
    valid_from: date
    valid_until: date
    scope: dict[str, str]
    code_count: int
    imported_at: datetime


@dataclass(frozen=True, slots=True)
class NewBatch:
    """A verified batch to import: its terms, ranges ``(first_serial, last_serial)``, the signed
    document and its content digest."""

    batch_id: str
    plant: str
    product: str
    face_minor: int
    currency: str
    valid_from: date
    valid_until: date
    scope: dict[str, str]
    ranges: tuple[tuple[int, int], ...]
    document: str
    content_hash: str


@dataclass(frozen=True, slots=True)
class Redemption:
    """One redemption: at this box (``seq`` > 0) or learned from another (``seq`` 0)."""

    seq: int
    code: str
    redemption_id: str
    kind: str
    product: str
    quantity: int
    box_id: str
    incarnation: str
    where: str
    redeemed_at: datetime


@dataclass(frozen=True, slots=True)
class Void:
    code: str
    reason: str
    replacement: str  # the electronic ticket string that replaced the paper one
    voided_at: datetime


@dataclass(frozen=True, slots=True)
class Extension:
    code: str
    old_until: date
    new_until: date
    extended_at: datetime


@dataclass(frozen=True, slots=True)
class EmergencyTicket:
    code: str
    seq: int
    product: str
    issued_on: date
    valid_until: date
    note: str
    issued_at: datetime
    reconciled_at: datetime | None
    receipt_seq: int | None = None  # the number of its sale's receipt (`gateway.store.receipts`)


# An emergency ticket with the number of its sale's receipt, if it has one.
_EMERGENCY_SELECT = (
    "SELECT e.code, e.seq, e.product, e.issued_on, e.valid_until, e.note, e.issued_at_us,"
    " e.reconciled_at_us, r.seq FROM ticket_emergency AS e LEFT JOIN receipts AS r"
    " ON r.kind = 'ticket_sale' AND r.subject = e.code"
)

SaleReceipt = Callable[[EmergencyTicket, int, str], tuple[bytes, bytes]]
"""Signs a ticket sale's receipt: ``(ticket, receipt_seq, incarnation)`` to the canonical JSON
that was signed and its signature (`TicketStore.issue_emergency`)."""


@dataclass(frozen=True, slots=True)
class CodeFacts:
    """What the store holds about one code, read inside the transaction that acts on it."""

    batch: StoredBatch | None
    void: Void | None
    extension: Extension | None
    emergency: EmergencyTicket | None
    here: Redemption | None
    elsewhere: tuple[Redemption, ...]


@dataclass(frozen=True, slots=True)
class Conflict:
    """The same code redeemed here and at another box (both while offline): both are kept."""

    conflict_id: int
    code: str
    here: Redemption
    elsewhere: Redemption
    detected_at: datetime


@dataclass(frozen=True, slots=True)
class RedemptionRequest:
    """What a pickup point or dispenser asks to record."""

    key: CodeKey
    redemption_id: str
    kind: str
    where: str


@dataclass(frozen=True, slots=True)
class Grant:
    """The judge's yes: what the ticket hands out (recorded with the redemption)."""

    product: str
    quantity: int


@dataclass(frozen=True, slots=True)
class RedeemOutcome(Generic[J]):
    """What `TicketStore.redeem` did: exactly one of the three is set.

    ``redeemed``: recorded now; ``replayed``: this request was recorded before (nothing
    changed); ``refused``: the judge's refusal (nothing changed).
    """

    redeemed: Redemption | None = None
    replayed: Redemption | None = None
    refused: J | None = None


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    """What `TicketStore.import_remote` did. ``new``: first time seen; ``conflict``: this box
    had redeemed the code too; ``own``: the event was this box's own (ignored)."""

    new: bool
    conflict: Conflict | None
    own: bool = False


_REDEMPTION_COLUMNS = (
    "code, redemption_id, kind, product, quantity, box_id, incarnation, where_text, redeemed_at_us"
)


def _redemption(seq: int, row: Sequence[Any]) -> Redemption:
    return Redemption(
        seq,
        row[0],
        row[1],
        row[2],
        row[3],
        int(row[4]),
        row[5],
        row[6],
        row[7],
        from_micros(int(row[8])),
    )


def _day(text: str) -> date:
    return date.fromisoformat(text)


class TicketStore:
    """The ticket tables of the gateway's store file, with their own connection.

    Args:
        path: the store file (created and migrated like `Store` does when new).
        box_id: this box's name in redemption events (the site id).
        clock: the time source for bookkeeping (import and detection times).

    Raises:
        StoreError: the file cannot be opened or migrated, or has no incarnation.
        SchemaError: the file is from a newer gateway.
    """

    def __init__(self, path: Path | str, *, box_id: str, clock: Clock = utc_now) -> None:
        self.path = Path(path)
        self.box_id = box_id
        self.clock = clock
        self._lock = threading.Lock()
        conn = db.connect(self.path)
        try:
            db.migrate(conn, to_micros(clock()))
            incarnation = db.incarnation(conn)
        except BaseException:
            conn.close()
            raise
        if incarnation is None:
            conn.close()
            raise StoreError(f"{self.path}: the store has no incarnation")
        #: The store's incarnation (see `Store.incarnation`), carried by every redemption.
        self.incarnation = incarnation
        self._conn: sqlite3.Connection | None = conn

    def close(self) -> None:
        """Close the file. Idempotent."""
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
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One consistent snapshot for several reads."""
        with self._lock:
            conn = self._live()
            try:
                conn.execute("BEGIN")
                try:
                    yield conn
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.path}: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; any exception rolls back and propagates."""
        with self._lock:
            conn = self._live()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.path}: {exc}") from exc

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"store {self.path} is closed")
        return self._conn

    # --- what the box knows of one code -----------------------------------------------------
    def facts(self, key: CodeKey) -> CodeFacts:
        """What the store holds about ``key`` (a read-only snapshot: ``prepay ticket check``)."""
        with self._read() as conn:
            return self._facts(conn, key)

    def _facts(self, conn: sqlite3.Connection, key: CodeKey) -> CodeFacts:
        here_row = conn.execute(
            f"SELECT seq, {_REDEMPTION_COLUMNS} FROM ticket_redemptions WHERE code = ?",  # noqa: S608 - fixed column list
            (key.code,),
        ).fetchone()
        elsewhere = tuple(
            _redemption(0, row)
            for row in conn.execute(
                f"SELECT {_REDEMPTION_COLUMNS} FROM ticket_remote_redemptions"  # noqa: S608 - fixed column list
                " WHERE code = ? ORDER BY redeemed_at_us, row_id",
                (key.code,),
            )
        )
        void = conn.execute(
            "SELECT code, reason, replacement, voided_at_us FROM ticket_voids WHERE code = ?",
            (key.code,),
        ).fetchone()
        extension = conn.execute(
            "SELECT code, old_until, new_until, extended_at_us FROM ticket_extensions"
            " WHERE code = ?",
            (key.code,),
        ).fetchone()
        return CodeFacts(
            batch=self._batch_holding(conn, key),
            void=None if void is None else Void(void[0], void[1], void[2], from_micros(void[3])),
            extension=None
            if extension is None
            else Extension(
                extension[0], _day(extension[1]), _day(extension[2]), from_micros(extension[3])
            ),
            emergency=self._emergency(conn, key.code),
            here=None if here_row is None else _redemption(int(here_row[0]), here_row[1:]),
            elsewhere=elsewhere,
        )

    def _batch_holding(self, conn: sqlite3.Connection, key: CodeKey) -> StoredBatch | None:
        # The range starting at or below the serial, nearest first (ranges never overlap).
        row = conn.execute(
            "SELECT r.last_serial, b.batch_id, b.plant, b.product, b.face_minor, b.currency,"
            " b.valid_from, b.valid_until, b.scope_json, b.code_count, b.imported_at_us"
            " FROM ticket_ranges r JOIN ticket_batches b USING (batch_id)"
            " WHERE r.plant = ? AND r.first_serial <= ?"
            " ORDER BY r.first_serial DESC LIMIT 1",
            (key.plant, key.serial),
        ).fetchone()
        if row is None or row[0] < key.serial:
            return None
        return _stored_batch(row[1:])

    def _emergency(self, conn: sqlite3.Connection, code: str) -> EmergencyTicket | None:
        row = conn.execute(
            f"{_EMERGENCY_SELECT} WHERE e.code = ?",
            (code,),
        ).fetchone()
        return None if row is None else _emergency_ticket(row)

    # --- redemption -------------------------------------------------------------------------
    def redeem(
        self, request: RedemptionRequest, judge: Callable[[CodeFacts], Grant | J]
    ) -> RedeemOutcome[J]:
        """Record a redemption if ``judge`` (given what the store knows) grants it, in one
        transaction; anything but a `Grant` is a refusal, returned as it is.

        Raises:
            IdempotencyConflictError: the redemption id was used for another code.
            StoreError: the database failed (nothing was recorded).
        """
        at = self.clock()
        with self._write() as conn:
            previous = conn.execute(
                f"SELECT seq, {_REDEMPTION_COLUMNS} FROM ticket_redemptions"  # noqa: S608 - fixed column list
                " WHERE redemption_id = ?",
                (request.redemption_id,),
            ).fetchone()
            if previous is not None:
                first = _redemption(int(previous[0]), previous[1:])
                if first.code != request.key.code:
                    raise IdempotencyConflictError(
                        request.redemption_id, f"code {request.key.code} != {first.code}"
                    )
                return RedeemOutcome(replayed=first)
            answer = judge(self._facts(conn, request.key))
            if not isinstance(answer, Grant):
                return RedeemOutcome(refused=answer)
            # The UNIQUE constraint on code is the exactly-once; the judge has just seen no use
            # of the code in this same transaction, so it holds here.
            cursor = conn.execute(
                f"INSERT INTO ticket_redemptions ({_REDEMPTION_COLUMNS})"  # noqa: S608 - fixed column list
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request.key.code,
                    request.redemption_id,
                    request.kind,
                    answer.product,
                    answer.quantity,
                    self.box_id,
                    self.incarnation,
                    request.where,
                    to_micros(at),
                ),
            )
            seq = int(cursor.lastrowid or 0)
        return RedeemOutcome(
            redeemed=Redemption(
                seq,
                request.key.code,
                request.redemption_id,
                request.kind,
                answer.product,
                answer.quantity,
                self.box_id,
                self.incarnation,
                request.where,
                from_micros(to_micros(at)),
            )
        )

    def redemptions(self, after_seq: int = 0, limit: int = 1000) -> list[Redemption]:
        """Redemptions at this box after ``after_seq``, oldest first (to publish as events)."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT seq, {_REDEMPTION_COLUMNS} FROM ticket_redemptions"  # noqa: S608 - fixed column list
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [_redemption(int(row[0]), row[1:]) for row in rows]

    def import_remote(self, remote: Redemption) -> ImportOutcome:
        """Record a redemption seen at another box (idempotent by box and redemption id).

        The code is refused here afterwards (`CodeFacts.elsewhere`). When this box had redeemed
        it too, both are kept and the conflict is recorded and returned.
        """
        if remote.box_id == self.box_id and remote.incarnation == self.incarnation:
            return ImportOutcome(new=False, conflict=None, own=True)
        now_us = to_micros(self.clock())
        with self._write() as conn:
            cursor = conn.execute(
                f"INSERT OR IGNORE INTO ticket_remote_redemptions ({_REDEMPTION_COLUMNS},"  # noqa: S608 - fixed column list
                " imported_at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    remote.code,
                    remote.redemption_id,
                    remote.kind,
                    remote.product,
                    remote.quantity,
                    remote.box_id,
                    remote.incarnation,
                    remote.where,
                    to_micros(remote.redeemed_at),
                    now_us,
                ),
            )
            new = cursor.rowcount == 1
            row_id = conn.execute(
                "SELECT row_id FROM ticket_remote_redemptions WHERE box_id = ?"
                " AND redemption_id = ?",
                (remote.box_id, remote.redemption_id),
            ).fetchone()[0]
            here = conn.execute(
                f"SELECT seq, {_REDEMPTION_COLUMNS} FROM ticket_redemptions WHERE code = ?",  # noqa: S608 - fixed column list
                (remote.code,),
            ).fetchone()
            if here is None:
                return ImportOutcome(new=new, conflict=None)
            conn.execute(
                "INSERT OR IGNORE INTO ticket_conflicts (code, local_seq, remote_row,"
                " detected_at_us) VALUES (?, ?, ?, ?)",
                (remote.code, int(here[0]), row_id, now_us),
            )
            found = conn.execute(
                "SELECT conflict_id, detected_at_us FROM ticket_conflicts WHERE remote_row = ?",
                (row_id,),
            ).fetchone()
            conflict = Conflict(
                int(found[0]),
                remote.code,
                _redemption(int(here[0]), here[1:]),
                remote,
                from_micros(int(found[1])),
            )
        return ImportOutcome(new=new, conflict=conflict)

    def conflicts(self) -> list[Conflict]:
        """Every code redeemed both here and at another box, oldest detection first."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT c.conflict_id, c.code, c.detected_at_us, c.local_seq, c.remote_row"
                " FROM ticket_conflicts c ORDER BY c.conflict_id"
            ).fetchall()
            found = []
            for conflict_id, code, detected_us, local_seq, remote_row in rows:
                here = conn.execute(
                    f"SELECT seq, {_REDEMPTION_COLUMNS} FROM ticket_redemptions WHERE seq = ?",  # noqa: S608 - fixed column list
                    (local_seq,),
                ).fetchone()
                there = conn.execute(
                    f"SELECT {_REDEMPTION_COLUMNS} FROM ticket_remote_redemptions"  # noqa: S608 - fixed column list
                    " WHERE row_id = ?",
                    (remote_row,),
                ).fetchone()
                found.append(
                    Conflict(
                        int(conflict_id),
                        code,
                        _redemption(int(here[0]), here[1:]),
                        _redemption(0, there),
                        from_micros(int(detected_us)),
                    )
                )
        return found

    # --- batches ----------------------------------------------------------------------------
    def import_batch(self, batch: NewBatch) -> bool:
        """Store a verified batch and its ranges. Returns False when the identical batch was
        imported before (nothing changes).

        Raises:
            BatchConflictError: the batch id holds other content, or a range overlaps a range
                of another batch of the plant (nothing is stored).
        """
        now_us = to_micros(self.clock())
        with self._write() as conn:
            row = conn.execute(
                "SELECT content_hash FROM ticket_batches WHERE batch_id = ?", (batch.batch_id,)
            ).fetchone()
            if row is not None:
                if row[0] != batch.content_hash:
                    raise BatchConflictError(
                        f"batch {batch.batch_id} was imported before with other content"
                    )
                return False
            for first, last in batch.ranges:
                overlap = conn.execute(
                    "SELECT batch_id, first_serial, last_serial FROM ticket_ranges"
                    " WHERE plant = ? AND first_serial <= ? AND last_serial >= ? LIMIT 1",
                    (batch.plant, last, first),
                ).fetchone()
                if overlap is not None:
                    raise BatchConflictError(
                        f"batch {batch.batch_id}: serials {first}-{last} overlap batch"
                        f" {overlap[0]} (serials {overlap[1]}-{overlap[2]})"
                    )
            conn.execute(
                "INSERT INTO ticket_batches (batch_id, plant, product, face_minor, currency,"
                " valid_from, valid_until, scope_json, code_count, content_hash, document,"
                " imported_at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    batch.batch_id,
                    batch.plant,
                    batch.product,
                    batch.face_minor,
                    batch.currency,
                    batch.valid_from.isoformat(),
                    batch.valid_until.isoformat(),
                    json.dumps(batch.scope, sort_keys=True),
                    sum(last - first + 1 for first, last in batch.ranges),
                    batch.content_hash,
                    batch.document,
                    now_us,
                ),
            )
            conn.executemany(
                "INSERT INTO ticket_ranges (plant, first_serial, last_serial, batch_id)"
                " VALUES (?, ?, ?, ?)",
                [(batch.plant, first, last, batch.batch_id) for first, last in batch.ranges],
            )
        return True

    def batches(self) -> list[StoredBatch]:
        """Every imported batch, in import order."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT batch_id, plant, product, face_minor, currency, valid_from, valid_until,"
                " scope_json, code_count, imported_at_us FROM ticket_batches"
                " ORDER BY imported_at_us, batch_id"
            ).fetchall()
        return [_stored_batch(row) for row in rows]

    # --- conversion and extension -----------------------------------------------------------
    def void_converted(
        self,
        key: CodeKey,
        judge: Callable[[CodeFacts], J | None],
        replacement: Callable[[CodeFacts], str],
    ) -> J | Void:
        """Void a paper code converted to an electronic ticket, if ``judge`` lets it; the
        electronic ticket (``replacement``, made from the same facts) is kept with the void.

        Returns:
            The void, or the judge's refusal (nothing changed).
        """
        at_us = to_micros(self.clock())
        with self._write() as conn:
            facts = self._facts(conn, key)
            refusal = judge(facts)
            if refusal is not None:
                return refusal
            text = replacement(facts)
            conn.execute(
                "INSERT INTO ticket_voids (code, reason, replacement, voided_at_us)"
                " VALUES (?, 'converted', ?, ?)",
                (key.code, text, at_us),
            )
        return Void(key.code, "converted", text, from_micros(at_us))

    def extend(
        self, key: CodeKey, judge: Callable[[CodeFacts], J | None], new_until: date
    ) -> J | Extension:
        """Record a paper ticket's one extension, if ``judge`` lets it.

        Returns:
            The extension, or the judge's refusal (nothing changed).
        """
        at_us = to_micros(self.clock())
        with self._write() as conn:
            facts = self._facts(conn, key)
            refusal = judge(facts)
            if refusal is not None:
                return refusal
            if facts.batch is None:  # a judge that lets an unissued code through is a bug
                raise StoreError(f"{key.code}: no batch holds this code; cannot extend it")
            conn.execute(
                "INSERT INTO ticket_extensions (code, old_until, new_until, extended_at_us)"
                " VALUES (?, ?, ?, ?)",
                (key.code, facts.batch.valid_until.isoformat(), new_until.isoformat(), at_us),
            )
        return Extension(key.code, facts.batch.valid_until, new_until, from_micros(at_us))

    def voids(self) -> list[Void]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT code, reason, replacement, voided_at_us FROM ticket_voids ORDER BY code"
            ).fetchall()
        return [Void(r[0], r[1], r[2], from_micros(r[3])) for r in rows]

    def extensions(self) -> list[Extension]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT code, old_until, new_until, extended_at_us FROM ticket_extensions"
                " ORDER BY code"
            ).fetchall()
        return [Extension(r[0], _day(r[1]), _day(r[2]), from_micros(r[3])) for r in rows]

    # --- emergency tickets ------------------------------------------------------------------
    def issue_emergency(
        self,
        *,
        product: str,
        issued_on: date,
        valid_until: date,
        cap_per_day: int,
        code_for: Callable[[int], str],
        note: str = "",
        receipt: SaleReceipt | None = None,
    ) -> EmergencyTicket:
        """Issue the box's next emergency ticket, unless ``cap_per_day`` are issued on
        ``issued_on`` already. ``code_for(seq)`` makes the code of the ``seq``-th.

        ``receipt(ticket, receipt_seq, incarnation)`` signs the sale's receipt, which is kept in
        the same transaction under the next per-site receipt number: a ticket is never sold
        without its receipt, nor a number burnt by a refused issue.

        Raises:
            EmergencyCapError: the day's cap is reached (nothing is issued).
        """
        at_us = to_micros(self.clock())
        with self._write() as conn:
            today = conn.execute(
                "SELECT COUNT(*) FROM ticket_emergency WHERE issued_on = ?",
                (issued_on.isoformat(),),
            ).fetchone()[0]
            if today >= cap_per_day:
                raise EmergencyCapError(cap_per_day, issued_on)
            seq = (
                int(
                    conn.execute("SELECT COALESCE(MAX(seq), 0) FROM ticket_emergency").fetchone()[0]
                )
                + 1
            )
            code = code_for(seq)
            conn.execute(
                "INSERT INTO ticket_emergency (code, seq, product, issued_on, valid_until, note,"
                " issued_at_us) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (code, seq, product, issued_on.isoformat(), valid_until.isoformat(), note, at_us),
            )
            ticket = EmergencyTicket(
                code, seq, product, issued_on, valid_until, note, from_micros(at_us), None
            )
            if receipt is None:
                return ticket
            receipt_seq = receipts.next_receipt_seq(conn)
            payload, signature = receipt(ticket, receipt_seq, self.incarnation)
            receipts.save_receipt(
                conn, receipts.Receipt(receipt_seq, "ticket_sale", code, None, payload, signature)
            )
        return replace(ticket, receipt_seq=receipt_seq)

    def emergency_tickets(self, *, unreconciled_only: bool = False) -> list[EmergencyTicket]:
        """Emergency tickets issued here, oldest first (those not yet reported upstream when
        ``unreconciled_only``)."""
        query = f"{_EMERGENCY_SELECT} WHERE reconciled_at_us IS NULL OR ? = 0 ORDER BY e.seq"
        with self._read() as conn:
            rows = conn.execute(query, (int(unreconciled_only),)).fetchall()
        return [_emergency_ticket(row) for row in rows]

    def mark_reconciled(self, codes: Sequence[str]) -> int:
        """Mark emergency tickets as reported to the backend (the link is back); returns how
        many were newly marked."""
        at_us = to_micros(self.clock())
        with self._write() as conn:
            cursor = conn.executemany(
                "UPDATE ticket_emergency SET reconciled_at_us = ?"
                " WHERE code = ? AND reconciled_at_us IS NULL",
                [(at_us, code) for code in codes],
            )
            return int(cursor.rowcount)

    # --- statistics -------------------------------------------------------------------------
    def all_redemptions(self) -> list[Redemption]:
        """Every redemption at this box, oldest first (the statistics read them all)."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT seq, {_REDEMPTION_COLUMNS} FROM ticket_redemptions ORDER BY seq"  # noqa: S608 - fixed column list
            ).fetchall()
        return [_redemption(int(row[0]), row[1:]) for row in rows]

    def ranges(self) -> list[tuple[str, str, int, int]]:
        """Every issued range as ``(batch_id, plant, first_serial, last_serial)``."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT batch_id, plant, first_serial, last_serial FROM ticket_ranges"
                " ORDER BY plant, first_serial"
            ).fetchall()
        return [(r[0], r[1], int(r[2]), int(r[3])) for r in rows]


def _stored_batch(row: Sequence[Any]) -> StoredBatch:
    return StoredBatch(
        batch_id=row[0],
        plant=row[1],
        product=row[2],
        face_minor=int(row[3]),
        currency=row[4],
        valid_from=_day(row[5]),
        valid_until=_day(row[6]),
        scope=json.loads(row[7]),
        code_count=int(row[8]),
        imported_at=from_micros(int(row[9])),
    )


def _emergency_ticket(row: Sequence[Any]) -> EmergencyTicket:
    return EmergencyTicket(
        code=row[0],
        seq=int(row[1]),
        product=row[2],
        issued_on=_day(row[3]),
        valid_until=_day(row[4]),
        note=row[5],
        issued_at=from_micros(int(row[6])),
        reconciled_at=None if row[7] is None else from_micros(int(row[7])),
        receipt_seq=None if row[8] is None else int(row[8]),
    )
