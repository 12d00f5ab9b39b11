"""Per-account runtime state of the billing engine (cycle, accumulators, policy state).

Stored as canonical JSON text, one row per account, replaced whole in the caller's
transaction. Python's JSON keeps integers of any size exact; floats and bools are refused so
that what is loaded is exactly what was saved (``True`` would come back as ``True``, but a
bool where an int belongs is a bug worth catching at the write).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping

from gateway.store import jsontext

AccountRecord = dict[str, int | str | None]


_UPSERT = (
    "INSERT INTO account_state (account_id, state_json, updated_at_us) VALUES (?, ?, ?)"
    " ON CONFLICT (account_id) DO UPDATE SET state_json = excluded.state_json,"
    " updated_at_us = excluded.updated_at_us"
)


def save_account_state(
    conn: sqlite3.Connection,
    account_id: str,
    state: Mapping[str, int | str | None],
    now_us: int,
) -> None:
    """Replace the stored state of ``account_id``. Must run inside a write transaction.

    Raises:
        TypeError: a value is not an int, a str or None.
    """
    save_account_states(conn, [(account_id, state)], now_us)


def save_account_states(
    conn: sqlite3.Connection,
    states: Iterable[tuple[str, Mapping[str, int | str | None]]],
    now_us: int,
) -> None:
    """Replace the stored states of several accounts in one statement (the billing path saves
    every account a batch touched). Later items win over earlier ones for the same account.
    Must run inside a write transaction.

    Raises:
        TypeError: a value is not an int, a str or None (nothing is written then).
    """
    rows = [
        (account_id, jsontext.dumps_flat(state, f"account {account_id}: state"), now_us)
        for account_id, state in states
    ]
    conn.executemany(_UPSERT, rows)


def load_account_states(conn: sqlite3.Connection) -> dict[str, AccountRecord]:
    """Every stored account state, by account id."""
    return {
        str(account_id): jsontext.loads_object(state_json)
        for account_id, state_json in conn.execute(
            "SELECT account_id, state_json FROM account_state ORDER BY account_id"
        )
    }
