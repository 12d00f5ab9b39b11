"""Staged journal rows (`Transaction.stage_readings`): journalled and billed in one transaction,
each row written once, in the state its billing left it, with what `journal_readings` gives."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.ports import Quality, Reading
from gateway.store import JournalRowError, JournalState, JournalStateError, Store
from tests.store.conftest import T0, InjectedFailureError, reading


@pytest.fixture
def counted(store: Store, db_path: Path) -> Iterator[sqlite3.Connection]:
    """The store's file with a trigger that counts every UPDATE of a journal row (in `meta`)."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute(
        "CREATE TRIGGER test_journal_updates AFTER UPDATE ON readings BEGIN"
        " INSERT INTO meta (key, value) VALUES ('test_journal_updates', 1)"
        " ON CONFLICT (key) DO UPDATE SET value = value + 1; END"
    )
    try:
        yield conn
    finally:
        conn.close()


def _updates(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'test_journal_updates'").fetchone()
    return 0 if row is None else int(row[0])


def test_a_staged_batch_is_written_once_in_the_state_its_billing_left(
    store: Store, counted: sqlite3.Connection
) -> None:
    with store.transaction() as tx:
        ids = tx.stage_readings([reading("a"), reading("b"), reading("c")], T0)
        assert None not in ids
        a, b, c = (i for i in ids if i is not None)
        tx.mark_billed(a, "billed", 120, {"tier": 1})
        tx.mark_billed(b, "baseline", 0)
        tx.mark_held(c, "implausible_jump")
    assert _updates(counted) == 0  # inserted as billed / held, never updated
    rows = {r.row_id: r for r in store.billed(10) + store.held(10)}
    assert (rows[a].bill_status, rows[a].deduction_minor, rows[a].detail) == (
        "billed",
        120,
        {"tier": 1},
    )
    assert (rows[b].state, rows[b].bill_status, rows[b].deduction_minor) == (
        JournalState.BILLED,
        "baseline",
        0,
    )
    assert (rows[c].state, rows[c].hold_reason) == (JournalState.HELD, "implausible_jump")
    assert rows[a].reading == reading("a")
    assert rows[a].received_at == T0
    by_state, held = store.journal_counts()  # the counting triggers saw the final states
    assert by_state == {JournalState.UNBILLED: 0, JournalState.BILLED: 2, JournalState.HELD: 1}
    assert held == {"implausible_jump": 1}
    assert store.unbilled(10) == []


def test_a_staged_row_left_unmarked_is_journalled_unbilled(store: Store) -> None:
    with store.transaction() as tx:
        [row_id] = tx.stage_readings([reading()], T0)
    [row] = store.unbilled(10)
    assert (row.row_id, row.reading) == (row_id, reading())


def test_staged_row_ids_continue_the_journal_and_never_reuse_a_pruned_one(store: Store) -> None:
    with store.transaction() as tx:
        ids = tx.journal_readings([reading(minute=m) for m in range(3)], T0)
        assert ids == [1, 2, 3]
        for row_id in ids:
            assert row_id is not None
            tx.mark_billed(row_id, "billed", 0)
    assert store.prune_journal(T0 + timedelta(days=1)) == 3  # the journal is empty again
    with store.transaction() as tx:
        # AUTOINCREMENT: 1..3 are spent; an export or a backend that saw them must not see them
        # again for other readings
        assert tx.stage_readings([reading(minute=5), reading(minute=6)], T0) == [4, 5]
        assert tx.journal_readings([reading(minute=7)], T0) == [6]  # and after them, on
    assert [r.row_id for r in store.unbilled(10)] == [4, 5, 6]


def test_staged_duplicates_are_found_as_journal_readings_finds_them(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    with store.transaction() as tx:
        [first] = tx.journal_readings([reading(minute=0, register_milli=1000)], T0)
    with store.transaction() as tx:
        ids = tx.stage_readings(
            [
                reading(minute=0, register_milli=2000),  # journalled before, another register
                reading(minute=1),
                reading(minute=1),  # twice in the batch
            ],
            T0,
        )
    assert first is not None
    assert ids == [None, first + 1, None]
    assert "conflicting duplicate reading m1@" in caplog.text
    assert "journalled register 1000, now 2000" in caplog.text
    assert [r.reading.register_milli for r in store.unbilled(10)] == [1000, 1000]


def test_a_journal_write_after_staging_sees_the_staged_rows(store: Store) -> None:
    with store.transaction() as tx:
        [staged] = tx.stage_readings([reading(minute=0)], T0)
        assert staged is not None
        # The staged row is written first: the same reading again is a duplicate, and the new
        # one comes after it in journal order.
        again, new = tx.journal_readings([reading(minute=0), reading(minute=1)], T0)
        assert again is None
        assert new is not None
        assert new > staged
        tx.mark_billed(staged, "billed", 5)  # an inserted row: marked by the usual update
    assert [r.deduction_minor for r in store.billed(10)] == [5]
    assert len(store.unbilled(10)) == 1


def _stage_one_and(store: Store, *marks: tuple[str, object]) -> None:
    """One transaction: stage a reading, then mark its row: ("billed", deduction) or
    ("held", reason), in order."""
    with store.transaction() as tx:
        [row_id] = tx.stage_readings([reading()], T0)
        assert row_id is not None
        for kind, arg in marks:
            if kind == "billed":
                tx.mark_billed(row_id, "billed", arg)  # type: ignore[arg-type]
            else:
                tx.mark_held(row_id, str(arg))


def test_marks_on_a_staged_row_refuse_what_the_journal_refuses(store: Store) -> None:
    # a double charge, refused at the second call
    with pytest.raises(JournalStateError, match="is billed; cannot mark it billed"):
        _stage_one_and(store, ("billed", 1), ("billed", 1))
    with pytest.raises(JournalStateError, match="is billed; cannot mark it held"):
        _stage_one_and(store, ("billed", 1), ("held", "implausible_jump"))
    with pytest.raises(TypeError, match="deduction_minor must be an int"):
        _stage_one_and(store, ("billed", 1.5))
    assert store.journal_counts()[0] == dict.fromkeys(JournalState, 0)  # all rolled back


def test_a_held_staged_row_may_be_billed_as_a_released_one(store: Store) -> None:
    with store.transaction() as tx:
        [row_id] = tx.stage_readings([reading()], T0)
        assert row_id is not None
        tx.mark_held(row_id, "implausible_jump")
        tx.mark_billed(row_id, "billed", 3)  # what the update allows: held -> billed
    [row] = store.billed(10)
    assert (row.deduction_minor, row.hold_reason) == (3, "implausible_jump")


def test_a_staged_batch_rolls_back_with_its_transaction(store: Store) -> None:
    with pytest.raises(InjectedFailureError), store.transaction() as tx:  # noqa: PT012
        [row_id] = tx.stage_readings([reading()], T0)
        assert row_id is not None
        tx.mark_billed(row_id, "billed", 1)
        raise InjectedFailureError
    assert store.journal_counts()[0] == dict.fromkeys(JournalState, 0)
    with store.transaction() as tx:  # and the row id was not spent
        assert tx.stage_readings([reading()], T0) == [1]


def test_a_reading_only_sqlite_can_refuse_is_refused_as_journal_readings_refuses_it(
    store: Store,
) -> None:
    # A register of 2**63 built around Reading's own check: one more than SQLite's INTEGER.
    insane = object.__new__(Reading)
    read_at = datetime(2025, 3, 1, 12, 5, tzinfo=UTC)
    for name, value in (
        ("meter_id", "m9"),
        ("read_at", read_at),
        ("register_milli", 2**63),
        ("source", "test"),
        ("quality", Quality.GOOD),
        ("seq", None),
        ("reading_id", "m9@1740830700000000"),
    ):
        object.__setattr__(insane, name, value)
    with (
        pytest.raises(JournalRowError, match="m9@1740830700000000"),
        store.transaction() as tx,
    ):
        tx.stage_readings([reading(), insane], T0)
    assert store.journal_counts()[0] == dict.fromkeys(JournalState, 0)
