"""The prepaid ledger: append-only, HMAC-chained entries; balances are sums of entries.

Chain: entries carry a store-wide ``seq`` (1, 2, 3, ...) and
``mac_n = HMAC-SHA256(key, mac_{n-1} || canonical_json(fields_n))`` with ``mac_0`` = 32 zero
bytes, where ``fields_n`` is every stored column but the MAC itself (seq included). The
chain head ``(seq, mac)`` is checkpointed in ``meta`` in the same transaction, with a tag
``HMAC(key, "ledger-head" || canonical_json({seq, mac}))`` so it cannot be rewound to an
earlier head without the key (a copy of an older head can still be replayed locally, which is
why the gateway publishes the head upstream: pass it back as ``expected_head`` to catch that).

What `verify` finds, and how it shows:

* an edited row: ``mac_mismatch`` at its seq (the next row still chains to the stored MAC, so
  one edit flags one row);
* a row inserted without the key: ``mac_mismatch`` at its seq, plus ``after_checkpoint`` when
  it was appended past the head;
* a row deleted in the middle: ``seq_gap`` at the missing seq and ``mac_mismatch`` at the
  next one (which chained to the deleted MAC);
* rows deleted at the tail: ``tail_deleted`` (the checkpoint names a seq past the last row);
* a wrong key: ``wrong_key`` (the key check in ``meta`` fails) and every row mismatches;
* a cached balance that is not the sum of the account's entries: ``balance_mismatch``.
* an older copy of the file, the tail cut back together with its checkpoint, or emptied ledger
  tables: nothing, on their own; ``expected_head_missing`` against a head published earlier
  (``expected_head``: the ledger ends before its seq, or holds another MAC there). The gateway
  publishes its head as a signed, retained checkpoint (`last_entry`, `mac_at`) and checks it
  at start.

The key is never logged or stored; ``meta`` holds only ``HMAC(key, "key-check")``.

Why one module of this size: the chain formula, appending, verifying and the tamper table
are one argument about the ledger's integrity; split, each part would lose the others' proof.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.store import jsontext
from gateway.store.errors import InvalidEntryError, LedgerConflictError, LedgerKeyError
from gateway.store.jsontext import JsonObject
from gateway.store.timestamps import from_micros, to_micros

logger = logging.getLogger(__name__)

MIN_KEY_BYTES = 16
MAX_IDEMPOTENCY_KEY_CHARS = 255
GENESIS_MAC = bytes(32)
_HEAD_META = "ledger_head"
_KEY_CHECK_META = "ledger_key_check"


class EntryKind(enum.StrEnum):
    """What a ledger entry records. Sign rules are in `_SIGN_RULES`."""

    TOPUP = "topup"
    DEDUCTION = "deduction"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"
    DEBT = "debt"
    DEBT_RECOVERY = "debt_recovery"
    EMERGENCY_CREDIT = "emergency_credit"


# Credit is positive, debit negative. Only the kinds whose direction is fixed are checked;
# refund, adjustment and debt may go either way (the billing engine decides). Zero is refused
# for every kind: an entry that moves nothing is noise in an audit trail.
_SIGN_RULES: dict[EntryKind, int] = {
    EntryKind.TOPUP: 1,
    EntryKind.EMERGENCY_CREDIT: 1,
    EntryKind.DEDUCTION: -1,
    EntryKind.DEBT_RECOVERY: -1,
}


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One stored ledger entry. ``amount_minor``: credit positive, debit negative."""

    seq: int
    account_id: str
    kind: EntryKind
    amount_minor: int
    currency: str
    idempotency_key: str
    ref: str
    detail: dict[str, Any]
    created_at: datetime
    mac: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The ledger's chain head, to publish upstream and to check against later.

    Attributes:
        seq: seq of the newest entry.
        mac_hex: its MAC, hex.
        tag_hex: ``HMAC(key, "ledger-head" || {seq, mac})``, hex; proves the head came from a
            holder of the key.
    """

    seq: int
    mac_hex: str
    tag_hex: str


class ProblemKind(enum.StrEnum):
    """What `verify` found wrong; see the module docstring."""

    MAC_MISMATCH = "mac_mismatch"
    SEQ_GAP = "seq_gap"
    TAIL_DELETED = "tail_deleted"
    AFTER_CHECKPOINT = "after_checkpoint"
    CHECKPOINT_MISSING = "checkpoint_missing"
    CHECKPOINT_INVALID = "checkpoint_invalid"
    EXPECTED_HEAD_MISSING = "expected_head_missing"
    WRONG_KEY = "wrong_key"
    BALANCE_MISMATCH = "balance_mismatch"
    UNREADABLE_ROW = "unreadable_row"


@dataclass(frozen=True, slots=True)
class LedgerProblem:
    """One finding of `verify`. ``seq`` is the entry concerned, when there is one."""

    kind: ProblemKind
    seq: int | None
    message: str
    account_id: str | None = None


@dataclass(frozen=True, slots=True)
class LedgerReport:
    """The result of `verify`. ``ok`` when there are no problems."""

    entries_checked: int
    head: ChainHead | None
    problems: tuple[LedgerProblem, ...]
    #: the store's incarnation, when the report was made from a store file (`verify_ledger`)
    incarnation: str | None = None

    @property
    def ok(self) -> bool:
        """True when nothing was found wrong."""
        return not self.problems

    def kinds_at(self, seq: int) -> set[ProblemKind]:
        """The kinds of problem reported at ``seq``."""
        return {p.kind for p in self.problems if p.seq == seq}


def check_key(key: bytes) -> None:
    """Refuse a key too short to be a key.

    Raises:
        LedgerKeyError: ``key`` is not bytes of at least `MIN_KEY_BYTES`.
    """
    if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
        raise LedgerKeyError(f"ledger key must be at least {MIN_KEY_BYTES} bytes")


def _key_check(key: bytes) -> str:
    return hmac.new(key, b"prepay-gateway/ledger-key-check", hashlib.sha256).hexdigest()


def _fields_bytes(
    *,
    seq: int,
    account_id: str,
    kind: str,
    amount_minor: int,
    currency: str,
    idempotency_key: str,
    ref: str,
    detail_json: str,
    created_at_us: int,
) -> bytes:
    # detail is included as its stored canonical text, so verification never re-encodes it.
    return jsontext.dumps(
        {
            "seq": seq,
            "account_id": account_id,
            "kind": kind,
            "amount_minor": amount_minor,
            "currency": currency,
            "idempotency_key": idempotency_key,
            "ref": ref,
            "detail": detail_json,
            "created_at_us": created_at_us,
        }
    ).encode()


def _mac(key: bytes, prev_mac: bytes, fields: bytes) -> bytes:
    # The one-shot form: the same HMAC, without building an hmac object per entry.
    return hmac.digest(key, prev_mac + fields, "sha256")


def _head_tag(key: bytes, seq: int, mac: bytes) -> str:
    body = jsontext.dumps({"seq": seq, "mac": mac.hex()}).encode()
    return hmac.new(key, b"prepay-gateway/ledger-head" + body, hashlib.sha256).hexdigest()


def init_key(conn: sqlite3.Connection, key: bytes) -> None:
    """Bind a new ledger to ``key``, or check that an existing one uses it.

    Must run inside a write transaction.

    Raises:
        LedgerKeyError: the ledger was created with another key.
    """
    check_key(key)
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (_KEY_CHECK_META,)).fetchone()
    if row is None:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)", (_KEY_CHECK_META, _key_check(key))
        )
    elif not hmac.compare_digest(str(row[0]), _key_check(key)):
        raise LedgerKeyError("the ledger key does not match the key this ledger was created with")


_ENTRY_COLUMNS = (
    "seq, account_id, kind, amount_minor, currency, idempotency_key, ref, detail_json,"
    " created_at_us, mac"
)


_EMPTY_DETAIL = jsontext.dumps({})


def _entry(values: tuple[Any, ...]) -> LedgerEntry:
    seq, account_id, kind, amount, currency, key, ref, detail_json, created_at_us, mac = values
    return LedgerEntry(
        seq=seq,
        account_id=account_id,
        kind=EntryKind(kind),
        amount_minor=amount,
        currency=currency,
        idempotency_key=key,
        ref=ref,
        detail=jsontext.loads_object(detail_json),
        created_at=from_micros(created_at_us),
        mac=bytes(mac),
    )


def _validate(kind: EntryKind, amount_minor: int, currency: str, idempotency_key: str) -> None:
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
        raise InvalidEntryError(f"amount_minor must be an int, got {type(amount_minor).__name__}")
    if amount_minor == 0:
        raise InvalidEntryError(f"{kind.value}: amount_minor must not be 0")
    sign = _SIGN_RULES.get(kind)
    if sign is not None and (amount_minor > 0) != (sign > 0):
        direction = "positive" if sign > 0 else "negative"
        raise InvalidEntryError(
            f"{kind.value}: amount_minor must be {direction}, got {amount_minor}"
        )
    if not currency:
        raise InvalidEntryError("currency must not be empty")
    if not idempotency_key or len(idempotency_key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise InvalidEntryError(
            f"idempotency_key must be 1..{MAX_IDEMPOTENCY_KEY_CHARS} characters"
        )


@dataclass(slots=True)
class ChainCursor:
    """What one write transaction has appended to the ledger, so that the next append need not
    read it back: the newest entry it appended (seq, mac), and the currency of every account it
    looked up or appended to. Only valid inside that transaction: it holds the write lock, so
    nobody else appends meanwhile.

    Attributes:
        head: ``(seq, mac)`` of the newest entry appended with this cursor; None until then.
        currencies: account id -> the currency of its entries.
    """

    head: tuple[int, bytes] | None = None
    currencies: dict[str, str] = field(default_factory=dict)


def append_entry(
    conn: sqlite3.Connection,
    key: bytes,
    *,
    account_id: str,
    kind: EntryKind,
    amount_minor: int,
    currency: str,
    idempotency_key: str,
    ref: str,
    detail: JsonObject | None,
    created_at: datetime,
    write_head: bool = True,
    cursor: ChainCursor | None = None,
) -> tuple[LedgerEntry, bool]:
    """Append one entry, or return the entry already stored under the same key.

    With ``write_head=False`` the caller writes the chain-head checkpoint itself
    (`write_chain_head`), once for all the entries of its transaction, before it commits.
    A ``cursor`` carries the chain head and account currencies from one append to the next
    within one transaction (pass the same one to every append of that transaction).

    Must run inside a write transaction (the store's `Transaction` does).

    Returns:
        ``(entry, created)``: ``created`` is False when ``(account_id, idempotency_key)`` was
        already in the ledger, and ``entry`` is then the original.

    Raises:
        LedgerConflictError: the key exists with a different kind, amount or currency (ref,
            detail and created_at of a retry are ignored: they may legitimately differ).
        InvalidEntryError: wrong sign for the kind, zero, non-int amount, empty currency or
            key, or a currency different from the account's.
    """
    kind = EntryKind(kind)
    _validate(kind, amount_minor, currency, idempotency_key)
    existing = conn.execute(
        f"SELECT {_ENTRY_COLUMNS} FROM ledger"  # noqa: S608
        " WHERE account_id = ? AND idempotency_key = ?",
        (account_id, idempotency_key),
    ).fetchone()
    if existing is not None:
        entry = _entry(existing)
        differences = [
            f"{name} {old!r} != {new!r}"
            for name, old, new in (
                ("kind", entry.kind.value, kind.value),
                ("amount_minor", entry.amount_minor, amount_minor),
                ("currency", entry.currency, currency),
            )
            if old != new
        ]
        if differences:
            raise LedgerConflictError(account_id, idempotency_key, ", ".join(differences))
        return entry, False

    cursor = ChainCursor() if cursor is None else cursor
    account_currency = _account_currency(conn, cursor, account_id)
    if account_currency is not None and account_currency != currency:
        raise InvalidEntryError(
            f"account {account_id} is in {account_currency}; refusing an entry in {currency}"
        )

    prev_seq, prev_mac = _chain_head_entry(conn) if cursor.head is None else cursor.head
    seq = prev_seq + 1
    detail_json = _EMPTY_DETAIL if detail is None else jsontext.dumps(detail)
    created_at_us = to_micros(created_at)
    mac = _mac(
        key,
        prev_mac,
        _fields_bytes(
            seq=seq,
            account_id=account_id,
            kind=kind.value,
            amount_minor=amount_minor,
            currency=currency,
            idempotency_key=idempotency_key,
            ref=ref,
            detail_json=detail_json,
            created_at_us=created_at_us,
        ),
    )
    conn.execute(
        f"INSERT INTO ledger ({_ENTRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
        (
            seq,
            account_id,
            kind.value,
            amount_minor,
            currency,
            idempotency_key,
            ref,
            detail_json,
            created_at_us,
            mac,
        ),
    )
    conn.execute(
        "INSERT INTO ledger_accounts (account_id, currency, balance_minor, last_seq)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET"
        " balance_minor = balance_minor + excluded.balance_minor, last_seq = excluded.last_seq",
        (account_id, currency, amount_minor, seq),
    )
    cursor.head = (seq, mac)
    cursor.currencies[account_id] = currency
    if write_head:
        write_chain_head(conn, key, seq, mac)
    entry = LedgerEntry(
        seq=seq,
        account_id=account_id,
        kind=kind,
        amount_minor=amount_minor,
        currency=currency,
        idempotency_key=idempotency_key,
        ref=ref,
        detail={} if detail is None else jsontext.loads_object(detail_json),
        created_at=from_micros(created_at_us),
        mac=mac,
    )
    return entry, True


def _account_currency(conn: sqlite3.Connection, cursor: ChainCursor, account_id: str) -> str | None:
    """The currency of the account's entries, None for an account without entries."""
    currency = cursor.currencies.get(account_id)
    if currency is None:
        row = conn.execute(
            "SELECT currency FROM ledger_accounts WHERE account_id = ?", (account_id,)
        ).fetchone()
        if row is not None:
            currency = cursor.currencies[account_id] = row[0]
    return currency


def _chain_head_entry(conn: sqlite3.Connection) -> tuple[int, bytes]:
    """``(seq, mac)`` of the newest entry; ``(0, GENESIS_MAC)`` for an empty ledger."""
    head = conn.execute("SELECT seq, mac FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
    return (0, GENESIS_MAC) if head is None else (int(head[0]), bytes(head[1]))


def last_entry(conn: sqlite3.Connection) -> tuple[int, bytes]:
    """``(seq, mac)`` of the newest stored entry (not the checkpoint in ``meta``);
    ``(0, GENESIS_MAC)`` for an empty ledger. What the gateway publishes as its checkpoint."""
    return _chain_head_entry(conn)


def mac_at(conn: sqlite3.Connection, seq: int) -> bytes | None:
    """The stored MAC of entry ``seq``; `GENESIS_MAC` for seq 0; None when there is no such
    entry. A published head ``(seq, mac)`` is still in the ledger when ``mac_at(seq) == mac``."""
    if seq == 0:
        return GENESIS_MAC
    row = conn.execute("SELECT mac FROM ledger WHERE seq = ?", (seq,)).fetchone()
    return None if row is None else bytes(row[0])


def parse_head(text: str) -> ChainHead:
    """A head written ``SEQ:MACHEX`` (as ``prepay ledger verify --expected-head`` takes it).

    The result has no tag: only its seq and MAC are compared.

    Raises:
        ValueError: not ``SEQ:MACHEX`` with a seq >= 0 and a MAC of 32 bytes in hex.
    """
    seq_text, sep, mac_hex = text.strip().partition(":")
    if not sep or not seq_text.isdigit():
        raise ValueError(f"{text!r}: expected SEQ:MACHEX, e.g. 42:{'0' * 64}")
    try:
        mac = bytes.fromhex(mac_hex)
    except ValueError:
        raise ValueError(f"{text!r}: the MAC is not hex") from None
    if len(mac) != len(GENESIS_MAC):
        raise ValueError(f"{text!r}: the MAC must be {len(GENESIS_MAC)} bytes (64 hex digits)")
    return ChainHead(seq=int(seq_text), mac_hex=mac.hex(), tag_hex="")


def write_chain_head(conn: sqlite3.Connection, key: bytes, seq: int, mac: bytes) -> None:
    """Store the chain-head checkpoint (seq, mac, tag) that `verify` checks the tail against."""
    head_value = jsontext.dumps({"seq": seq, "mac": mac.hex(), "tag": _head_tag(key, seq, mac)})
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (_HEAD_META, head_value),
    )


def balance(conn: sqlite3.Connection, account_id: str) -> int:
    """The account's balance in minor units: the sum of its entries (0 for no entries).

    SQLite's SUM of integers stays an integer and raises on overflow instead of rounding.
    """
    row = conn.execute(
        "SELECT SUM(amount_minor) FROM ledger WHERE account_id = ?", (account_id,)
    ).fetchone()
    return 0 if row[0] is None else int(row[0])


def debt(conn: sqlite3.Connection, account_id: str) -> int:
    """The debt register: negative balance moved into debt (``debt`` entries, positive) less
    what was recovered (``debt_recovery`` entries, negative)."""
    row = conn.execute(
        "SELECT SUM(amount_minor) FROM ledger WHERE account_id = ? AND kind IN (?, ?)",
        (account_id, EntryKind.DEBT.value, EntryKind.DEBT_RECOVERY.value),
    ).fetchone()
    return 0 if row[0] is None else int(row[0])


def entries(
    conn: sqlite3.Connection, account_id: str | None, after_seq: int, limit: int
) -> list[LedgerEntry]:
    """Entries with ``seq > after_seq`` (of one account, or all), oldest first."""
    if account_id is None:
        cursor = conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM ledger WHERE seq > ?"  # noqa: S608
            " ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
    else:
        cursor = conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM ledger"  # noqa: S608
            " WHERE account_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (account_id, after_seq, limit),
        )
    return [_entry(values) for values in cursor]


def entry_by_key(
    conn: sqlite3.Connection, account_id: str, idempotency_key: str
) -> LedgerEntry | None:
    """The entry stored under ``(account_id, idempotency_key)``, or None."""
    values = conn.execute(
        f"SELECT {_ENTRY_COLUMNS} FROM ledger"  # noqa: S608
        " WHERE account_id = ? AND idempotency_key = ?",
        (account_id, idempotency_key),
    ).fetchone()
    return None if values is None else _entry(values)


def chain_head(conn: sqlite3.Connection) -> ChainHead | None:
    """The checkpointed chain head, or None for an empty ledger."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (_HEAD_META,)).fetchone()
    if row is None:
        return None
    value = jsontext.loads_object(str(row[0]))
    return ChainHead(seq=int(value["seq"]), mac_hex=str(value["mac"]), tag_hex=str(value["tag"]))


class _Problems:
    """Collects problems, keeping the first ``limit`` and counting the rest."""

    def __init__(self, limit: int) -> None:
        self.items: list[LedgerProblem] = []
        self.limit = limit
        self.left_off = 0

    def add(
        self, kind: ProblemKind, seq: int | None, message: str, account_id: str | None = None
    ) -> None:
        if len(self.items) < self.limit:
            self.items.append(LedgerProblem(kind, seq, message, account_id))
        else:
            self.left_off += 1


def _rows(conn: sqlite3.Connection) -> Iterator[tuple[Any, ...]]:
    yield from conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM ledger ORDER BY seq")  # noqa: S608


def verify(
    conn: sqlite3.Connection,
    key: bytes,
    expected_head: ChainHead | None = None,
    max_problems: int = 1000,
) -> LedgerReport:
    """Check the whole ledger: MAC chain, seq continuity, checkpoint, cached balances.

    Reads only. Run it on a snapshot (a read transaction) for a consistent answer.

    Args:
        conn: an open connection to the store file.
        key: the ledger key.
        expected_head: a head published earlier (e.g. fetched back from upstream); the chain
            must still contain it, which catches a rollback to an older copy of the file.
        max_problems: report at most this many problems (a wrong key flags every row); the
            last problem then says how many were left off.

    Returns:
        The report; ``report.ok`` when nothing is wrong.
    """
    problems = _Problems(max_problems)
    key_row = conn.execute("SELECT value FROM meta WHERE key = ?", (_KEY_CHECK_META,)).fetchone()
    if key_row is not None and not hmac.compare_digest(str(key_row[0]), _key_check(key)):
        problems.add(ProblemKind.WRONG_KEY, None, "the key is not the key of this ledger")

    prev_seq, prev_mac = 0, GENESIS_MAC
    checked = 0
    macs_by_seq_wanted: dict[int, bytes] = {}
    wanted: set[int] = set()
    head = chain_head(conn)
    if head is not None:
        wanted.add(head.seq)
    if expected_head is not None:
        wanted.add(expected_head.seq)
    sums: dict[str, int] = {}
    for values in _rows(conn):
        checked += 1
        seq, account_id, kind, amount, currency, ikey, ref, detail_json, created_us, mac = values
        if not isinstance(seq, int) or not isinstance(mac, bytes):
            problems.add(ProblemKind.UNREADABLE_ROW, None, f"row with seq {seq!r} is malformed")
            continue
        if seq != prev_seq + 1:
            missing = (
                f"seq {prev_seq + 1}" if seq == prev_seq + 2 else f"seqs {prev_seq + 1}..{seq - 1}"
            )
            problems.add(ProblemKind.SEQ_GAP, prev_seq + 1, f"{missing} missing (deleted)")
        try:
            fields = _fields_bytes(
                seq=seq,
                account_id=account_id,
                kind=kind,
                amount_minor=amount,
                currency=currency,
                idempotency_key=ikey,
                ref=ref,
                detail_json=detail_json,
                created_at_us=created_us,
            )
        except TypeError:
            # a non-integer amount or timestamp written behind the store's back
            problems.add(ProblemKind.MAC_MISMATCH, seq, "row holds values of the wrong type")
        else:
            if not hmac.compare_digest(_mac(key, prev_mac, fields), mac):
                reason = (
                    "does not chain to the previous entry (a row before it was deleted)"
                    if seq != prev_seq + 1
                    else "content or MAC does not match (edited, forged, or its MAC altered)"
                )
                problems.add(ProblemKind.MAC_MISMATCH, seq, f"entry {seq} {reason}", account_id)
        if isinstance(amount, int):
            sums[account_id] = sums.get(account_id, 0) + amount
        if seq in wanted:
            macs_by_seq_wanted[seq] = mac
        if head is not None and seq > head.seq:
            problems.add(
                ProblemKind.AFTER_CHECKPOINT,
                seq,
                f"entry {seq} is past the checkpointed head {head.seq} (inserted)",
                account_id,
            )
        # Chain on from the stored MAC so one edited row flags one row, not all after it.
        prev_seq, prev_mac = seq, mac

    _check_head(key, head, prev_seq, macs_by_seq_wanted, problems)
    if expected_head is not None:
        _check_expected_head(expected_head, prev_seq, macs_by_seq_wanted, problems)
    _check_balances(conn, sums, problems)
    if problems.left_off:
        problems.items.append(
            LedgerProblem(
                problems.items[-1].kind, None, f"{problems.left_off} more problems not listed"
            )
        )
    return LedgerReport(entries_checked=checked, head=head, problems=tuple(problems.items))


def _check_head(
    key: bytes,
    head: ChainHead | None,
    last_seq: int,
    macs: dict[int, bytes],
    problems: _Problems,
) -> None:
    if head is None:
        if last_seq:
            problems.add(
                ProblemKind.CHECKPOINT_MISSING, None, "ledger has entries but no checkpoint"
            )
        return
    if not hmac.compare_digest(_head_tag(key, head.seq, bytes.fromhex(head.mac_hex)), head.tag_hex):
        problems.add(
            ProblemKind.CHECKPOINT_INVALID,
            head.seq,
            "the checkpoint's tag does not match (checkpoint rewritten)",
        )
    if last_seq < head.seq:
        first = last_seq + 1
        span = f"seq {first}" if first == head.seq else f"seqs {first}..{head.seq}"
        problems.add(
            ProblemKind.TAIL_DELETED,
            first,
            f"{span} missing at the tail: checkpoint is at {head.seq}, last entry {last_seq}",
        )
    elif head.seq in macs and macs[head.seq].hex() != head.mac_hex:
        problems.add(
            ProblemKind.CHECKPOINT_INVALID,
            head.seq,
            f"entry {head.seq} is not the checkpointed one (tail rewritten)",
        )


def _check_expected_head(
    expected: ChainHead, last_seq: int, macs: dict[int, bytes], problems: _Problems
) -> None:
    """The ledger must still hold the head published earlier: reach its seq, with its MAC."""
    want = bytes.fromhex(expected.mac_hex)
    if expected.seq == 0:
        if want != GENESIS_MAC:
            problems.add(
                ProblemKind.EXPECTED_HEAD_MISSING, 0, "the expected head at seq 0 is not genesis"
            )
        return
    have = macs.get(expected.seq)
    if have is None and last_seq < expected.seq:
        problems.add(
            ProblemKind.EXPECTED_HEAD_MISSING,
            expected.seq,
            f"the ledger ends at seq {last_seq}, before the expected head at seq {expected.seq}"
            " (rolled back to an older copy, or entries removed)",
        )
    elif have is None:
        problems.add(
            ProblemKind.EXPECTED_HEAD_MISSING,
            expected.seq,
            f"entry {expected.seq} of the expected head is missing (deleted)",
        )
    elif not hmac.compare_digest(have, want):
        problems.add(
            ProblemKind.EXPECTED_HEAD_MISSING,
            expected.seq,
            f"entry {expected.seq} is not the one of the expected head: the ledger diverged"
            " from what was published (rolled back and written anew, or rewritten)",
        )


def _check_balances(conn: sqlite3.Connection, sums: dict[str, int], problems: _Problems) -> None:
    cached = {
        str(account_id): balance_minor
        for account_id, balance_minor in conn.execute(
            "SELECT account_id, balance_minor FROM ledger_accounts"
        )
    }
    for account_id in sorted(set(cached) | set(sums)):
        want = sums.get(account_id, 0)
        have = cached.get(account_id)
        if have != want:
            problems.add(
                ProblemKind.BALANCE_MISMATCH,
                None,
                f"account {account_id}: cached balance {have} != sum of entries {want}",
                account_id,
            )
