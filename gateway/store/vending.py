"""Vending sessions on disk: the journal that makes a pour settle exactly once.

Table of schema version 7 (`gateway.store.db`). A session is written ``open`` in the
transaction that decides it (before the dispenser is told to pour), and closed once, in the
transaction that bills it: ``settled`` with the volume and the ledger entry, or ``voided`` when
the dispenser never started it. The UPDATE only matches an open row and a trigger refuses any
change to a closed one, so a replayed end report (the device re-sends it, or the gateway reads it
back after a crash) finds the session closed and changes nothing. The ledger entry is keyed
``vend:{dispenser}:{session}`` as a second guard.

Every function takes the caller's `Transaction`, so the session, the ledger entry, the events and
the outbox messages commit together or not at all.
"""

from __future__ import annotations

import enum
import sqlite3
from dataclasses import dataclass
from datetime import datetime

from gateway.store.errors import StoreError
from gateway.store.timestamps import from_micros, to_micros
from gateway.store.transaction import Transaction


class SessionState(enum.StrEnum):
    """Where a journalled session stands."""

    OPEN = "open"
    SETTLED = "settled"
    VOIDED = "voided"


@dataclass(frozen=True, slots=True)
class NewSession:
    """A session to journal as open.

    Attributes:
        dispenser_id: the dispenser.
        session_id: the id the dispenser will accept (its last + 1).
        request_id: the device's id of the presentation, when it came from one.
        identity_kind: ``card``, ``phone`` or ``ticket``.
        identity: what was presented.
        account_id: the account billed (None: a ticket, nothing billed).
        currency: the account's currency (None with a ticket).
        price_minor: the price per ``unit_ml`` at opening (the session is billed at it).
        unit_ml: 1 000 (per litre) or 18 900 (per bucket).
        authorised_ml: the most the dispenser may pour.
        max_charge_minor: what a full pour costs (held from the account's free credit).
        opened_at: when.
    """

    dispenser_id: str
    session_id: int
    request_id: int | None
    identity_kind: str
    identity: str
    account_id: str | None
    currency: str | None
    price_minor: int
    unit_ml: int
    authorised_ml: int
    max_charge_minor: int
    opened_at: datetime


@dataclass(frozen=True, slots=True)
class VendSession:
    """A journalled session, open or closed."""

    opened: NewSession
    state: SessionState
    poured_ml: int | None
    billed_ml: int | None
    charge_minor: int | None
    ledger_seq: int | None
    closed_at: datetime | None


_COLUMNS = (
    "dispenser_id, session_id, request_id, identity_kind, identity, account_id, currency,"
    " price_minor, unit_ml, authorised_ml, max_charge_minor, opened_at_us, state, poured_ml,"
    " billed_ml, charge_minor, ledger_seq, closed_at_us"
)


def _conn(tx: Transaction) -> sqlite3.Connection:
    # The transaction's own connection (it also refuses a transaction that has ended): the
    # session rows must commit with the ledger entry and the messages. `Transaction` keeps no
    # per-table facade for this table; this is the one place that reaches for it.
    return tx._c()


def _session(row: sqlite3.Row | tuple[object, ...]) -> VendSession:
    (
        dispenser_id,
        session_id,
        request_id,
        kind,
        identity,
        account_id,
        currency,
        price,
        unit,
        authorised,
        max_charge,
        opened_us,
        state,
        poured,
        billed,
        charge,
        ledger_seq,
        closed_us,
    ) = tuple(row)
    opened = NewSession(
        str(dispenser_id),
        int(str(session_id)),
        None if request_id is None else int(str(request_id)),
        str(kind),
        str(identity),
        None if account_id is None else str(account_id),
        None if currency is None else str(currency),
        int(str(price)),
        int(str(unit)),
        int(str(authorised)),
        int(str(max_charge)),
        from_micros(int(str(opened_us))),
    )

    def opt(value: object) -> int | None:
        return None if value is None else int(str(value))

    return VendSession(
        opened,
        SessionState(str(state)),
        opt(poured),
        opt(billed),
        opt(charge),
        opt(ledger_seq),
        None if closed_us is None else from_micros(int(str(closed_us))),
    )


def open_session(tx: Transaction, new: NewSession) -> None:
    """Journal ``new`` as open.

    Raises:
        StoreError: the dispenser already has a session with that id (a replaced board whose
            counter started again: refused rather than mixed up with the old one).
    """
    try:
        _conn(tx).execute(
            f"INSERT INTO vend_sessions ({_COLUMNS}) VALUES"  # noqa: S608 - constant columns
            " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'open', NULL, NULL, NULL, NULL, NULL)",
            (
                new.dispenser_id,
                new.session_id,
                new.request_id,
                new.identity_kind,
                new.identity,
                new.account_id,
                new.currency,
                new.price_minor,
                new.unit_ml,
                new.authorised_ml,
                new.max_charge_minor,
                to_micros(new.opened_at),
            ),
        )
    except sqlite3.IntegrityError as exc:
        raise StoreError(
            f"dispenser {new.dispenser_id}: session {new.session_id} is journalled already"
        ) from exc


def session(tx: Transaction, dispenser_id: str, session_id: int) -> VendSession | None:
    """The journalled session, or None."""
    row = (
        _conn(tx)
        .execute(
            f"SELECT {_COLUMNS} FROM vend_sessions"  # noqa: S608 - constant columns
            " WHERE dispenser_id = ? AND session_id = ?",
            (dispenser_id, session_id),
        )
        .fetchone()
    )
    return None if row is None else _session(row)


def sessions(tx: Transaction, dispenser_id: str | None = None) -> list[VendSession]:
    """Every journalled session (of one dispenser), oldest first."""
    sql = f"SELECT {_COLUMNS} FROM vend_sessions"  # noqa: S608 - constant columns
    args: tuple[str, ...] = ()
    if dispenser_id is not None:
        sql += " WHERE dispenser_id = ?"
        args = (dispenser_id,)
    return [
        _session(r) for r in _conn(tx).execute(sql + " ORDER BY opened_at_us, session_id", args)
    ]


def open_sessions(tx: Transaction, dispenser_id: str) -> list[VendSession]:
    """The dispenser's sessions still open."""
    return [s for s in sessions(tx, dispenser_id) if s.state is SessionState.OPEN]


def last_session_id(tx: Transaction, dispenser_id: str) -> int:
    """The highest session id journalled for the dispenser (0 when none)."""
    row = (
        _conn(tx)
        .execute(
            "SELECT COALESCE(MAX(session_id), 0) FROM vend_sessions WHERE dispenser_id = ?",
            (dispenser_id,),
        )
        .fetchone()
    )
    return int(row[0])


def held_minor(tx: Transaction, account_id: str) -> int:
    """What the account's open sessions may still cost (their full-pour charges)."""
    row = (
        _conn(tx)
        .execute(
            "SELECT COALESCE(SUM(max_charge_minor), 0) FROM vend_sessions"
            " WHERE account_id = ? AND state = 'open'",
            (account_id,),
        )
        .fetchone()
    )
    return int(row[0])


def close_session(
    tx: Transaction,
    dispenser_id: str,
    session_id: int,
    *,
    state: SessionState,
    poured_ml: int | None,
    billed_ml: int | None,
    charge_minor: int | None,
    ledger_seq: int | None,
    at: datetime,
) -> bool:
    """Close an open session; False when it was not open (closed before: change nothing)."""
    if state is SessionState.OPEN:
        raise ValueError("a session is closed as settled or voided")
    cursor = _conn(tx).execute(
        "UPDATE vend_sessions SET state = ?, poured_ml = ?, billed_ml = ?, charge_minor = ?,"
        " ledger_seq = ?, closed_at_us = ?"
        " WHERE dispenser_id = ? AND session_id = ? AND state = 'open'",
        (
            state.value,
            poured_ml,
            billed_ml,
            charge_minor,
            ledger_seq,
            to_micros(at),
            dispenser_id,
            session_id,
        ),
    )
    return cursor.rowcount == 1
