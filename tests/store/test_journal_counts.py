"""The journal's counts per state (store schema 11): kept by triggers as rows change.

The metrics read them every few seconds; counting the journal itself scanned every row, and a
site polling every second journals millions of rows a month. Each test compares the counts with
hand numbers and with a count of the journal itself.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

from gateway.store import JournalState, Store
from gateway.store import db as store_db
from tests.store.conftest import KEY, T0, abort_after, reading


def _scanned(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """The counts as a scan of the journal gives them (what the store no longer does)."""
    conn = sqlite3.connect(path)
    try:
        by_state = dict(conn.execute("SELECT state, COUNT(*) FROM readings GROUP BY state"))
        held = dict(
            conn.execute(
                "SELECT hold_reason, COUNT(*) FROM readings WHERE state = 'held'"
                " GROUP BY hold_reason"
            )
        )
        return by_state, held
    finally:
        conn.close()


def test_counts_follow_journalling_billing_holds_release_rollback_and_pruning(
    db_path: Path,
) -> None:
    with Store(db_path, ledger_key=KEY) as store:
        # Six readings of m1, received one per day (days 0-5).
        rows = []
        for day in range(6):
            with store.transaction() as tx:
                [row_id] = tx.journal_readings([reading(minute=day)], T0 + timedelta(days=day))
                assert row_id is not None
                rows.append(row_id)
        with store.transaction() as tx:
            tx.mark_billed(rows[0], "billed", 0)
            tx.mark_billed(rows[3], "billed", 0)
            tx.mark_held(rows[1], "implausible_jump")
            tx.mark_held(rows[4], "unknown_meter")
        # 6 journalled: 2 billed (days 0, 3), 2 held (one per reason), 2 unbilled (2, 5).
        by_state, held = store.journal_counts()
        assert by_state == {JournalState.UNBILLED: 2, JournalState.BILLED: 2, JournalState.HELD: 2}
        assert held == {"implausible_jump": 1, "unknown_meter": 1}

        # A rolled back transaction leaves the counts as they were.
        abort_after(store, lambda tx: tx.mark_billed(rows[2], "billed", 0))
        assert store.journal_counts() == (by_state, held)

        # The held unknown-meter reading is released and billed: held 2 -> 1, billed 2 -> 3.
        with store.transaction() as tx:
            tx.mark_billed(rows[4], "billed_after_review", 0)
        by_state, held = store.journal_counts()
        assert by_state == {JournalState.UNBILLED: 2, JournalState.BILLED: 3, JournalState.HELD: 1}
        assert held == {"implausible_jump": 1}

        # Pruning before day 4 removes the billed rows of days 0 and 3 (day 4's is newer).
        assert store.prune_journal(T0 + timedelta(days=4)) == 2
        by_state, held = store.journal_counts()
        assert by_state == {JournalState.UNBILLED: 2, JournalState.BILLED: 1, JournalState.HELD: 1}
        assert held == {"implausible_jump": 1}
    assert _scanned(db_path) == ({"unbilled": 2, "billed": 1, "held": 1}, {"implausible_jump": 1})


def test_migration_11_counts_the_journal_of_an_older_file_once(db_path: Path) -> None:
    previous = store_db.MIGRATIONS.index(store_db._V11)  # the version before the step under test
    conn = store_db.connect(db_path)
    try:
        assert store_db.migrate(conn, 0, store_db.MIGRATIONS[:previous]) == previous
        # What an older release journalled: 3 unbilled, 4 billed, 2 held for a jump, 1 held
        # for an unknown meter.
        states = ["unbilled"] * 3 + ["billed"] * 4 + ["held"] * 3
        reasons = [None] * 7 + ["implausible_jump", "implausible_jump", "unknown_meter"]
        conn.executemany(
            "INSERT INTO readings (reading_id, meter_id, read_at_us, register_milli, source,"
            " quality, received_at_us, state, hold_reason) VALUES (?, 'm1', ?, 1000, 'test',"
            " 'good', 0, ?, ?)",
            [
                (f"m1:{i}", i, state, reason)
                for i, (state, reason) in enumerate(zip(states, reasons, strict=True))
            ],
        )
    finally:
        conn.close()
    with Store(db_path, ledger_key=KEY) as store:  # opening migrates the file forward
        assert store.schema_version == store_db.SCHEMA_VERSION
        counted = store.journal_counts()
        # And from here on the triggers count: one more reading, unbilled.
        with store.transaction() as tx:
            tx.journal_readings([reading(minute=99)], T0)
        after = store.journal_counts()
    assert counted == (
        {JournalState.UNBILLED: 3, JournalState.BILLED: 4, JournalState.HELD: 3},
        {"implausible_jump": 2, "unknown_meter": 1},
    )
    assert after[0][JournalState.UNBILLED] == 4
    assert _scanned(db_path) == (
        {"unbilled": 4, "billed": 4, "held": 3},
        {"implausible_jump": 2, "unknown_meter": 1},
    )
