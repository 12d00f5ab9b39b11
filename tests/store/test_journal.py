"""The reading journal: dedup, journal order, billing transitions, restart."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from drivers.ports import Quality, Reading
from gateway.store import JournalState, JournalStateError, Store
from tests.store.conftest import KEY, T0, abort_after, reading


def test_journal_readings_duplicates_return_none(store: Store) -> None:
    with store.transaction() as tx:
        first = tx.journal_readings([reading(minute=0), reading(minute=1)], T0)
    with store.transaction() as tx:
        again = tx.journal_readings([reading(minute=1), reading(minute=2), reading(minute=2)], T0)
    assert first[0] is not None
    assert first[1] is not None
    assert again[0] is None  # journalled in the earlier batch
    assert again[1] is not None
    assert again[2] is None  # duplicate inside the same batch
    assert [r.reading.read_at for r in store.unbilled(10)] == [
        T0,
        T0 + timedelta(minutes=1),
        T0 + timedelta(minutes=2),
    ]


def test_journal_readings_conflicting_duplicate_keeps_first(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    with store.transaction() as tx:
        tx.journal_readings([reading(minute=0, register_milli=1000)], T0)
    with store.transaction() as tx:
        ids = tx.journal_readings([reading(minute=0, register_milli=2000)], T0)
    assert ids == [None]
    assert [r.reading.register_milli for r in store.unbilled(10)] == [1000]
    assert "conflicting duplicate" in caplog.text


def test_unbilled_in_journal_order_not_read_order(store: Store) -> None:
    # A late reading journalled after a newer one is billed after it: journal order.
    with store.transaction() as tx:
        tx.journal_readings([reading("a", minute=5)], T0)
        tx.journal_readings([reading("b", minute=1)], T0)
        tx.journal_readings([reading("a", minute=3)], T0)
    rows = store.unbilled(10)
    assert [(r.reading.meter_id, r.reading.read_at.minute) for r in rows] == [
        ("a", 5),
        ("b", 1),
        ("a", 3),
    ]
    assert [r.row_id for r in rows] == sorted(r.row_id for r in rows)
    assert [r.reading.meter_id for r in store.unbilled(2)] == ["a", "b"]


def test_unbilled_after_reopen_returns_what_was_not_billed(db_path: Path) -> None:
    with Store(db_path, ledger_key=KEY) as store, store.transaction() as tx:
        ids = tx.journal_readings([reading(minute=m) for m in range(4)], T0)
        assert None not in ids
        tx.mark_billed(ids[0] or 0, "billed", 120, {"tier": 1})
        tx.mark_held(ids[2] or 0, "register went backwards")
    with Store(db_path, ledger_key=KEY) as store:
        rows = store.unbilled(10)
        assert [r.reading.read_at.minute for r in rows] == [1, 3]
        assert all(r.state is JournalState.UNBILLED for r in rows)
        held = store.held(10)
        assert [(r.reading.read_at.minute, r.hold_reason) for r in held] == [
            (2, "register went backwards")
        ]
        billed = store.journal_row(ids[0] or 0)
        assert billed is not None
        assert billed.state is JournalState.BILLED
        assert billed.deduction_minor == 120
        assert billed.detail == {"tier": 1}
        assert billed.bill_status == "billed"


def test_journal_round_trips_reading_fields(store: Store) -> None:
    original = Reading(
        meter_id="lora-1",
        read_at=T0 + timedelta(microseconds=123_457),
        register_milli=2**62,
        source="chirpstack:70b3",
        quality=Quality.SUSPECT,
        seq=4711,
    )
    with store.transaction() as tx:
        tx.journal_readings([original], T0 + timedelta(seconds=3))
    (row,) = store.unbilled(1)
    assert row.reading == original
    assert row.received_at == T0 + timedelta(seconds=3)


def test_mark_billed_twice_raises(store: Store) -> None:
    with store.transaction() as tx:
        (row_id,) = tx.journal_readings([reading()], T0)
        assert row_id is not None
        tx.mark_billed(row_id, "billed", 10, None)
    with pytest.raises(JournalStateError) as err, store.transaction() as tx:
        tx.mark_billed(row_id, "billed", 10, None)
    assert err.value.state == "billed"


def test_mark_billed_unknown_row_raises(store: Store) -> None:
    with pytest.raises(JournalStateError) as err, store.transaction() as tx:
        tx.mark_billed(999, "billed", 10, None)
    assert err.value.state == "missing"


def test_mark_held_then_billed_after_release(store: Store) -> None:
    with store.transaction() as tx:
        (row_id,) = tx.journal_readings([reading()], T0)
        assert row_id is not None
        tx.mark_held(row_id, "suspect")
    with pytest.raises(JournalStateError), store.transaction() as tx:
        tx.mark_held(row_id, "again")
    with store.transaction() as tx:
        tx.mark_billed(row_id, "billed_after_review", 5, None)
    assert store.held(10) == []
    row = store.journal_row(row_id)
    assert row is not None
    assert row.state is JournalState.BILLED


def test_journal_rolled_back_with_transaction(store: Store) -> None:
    abort_after(store, lambda tx: tx.journal_readings([reading()], T0))
    assert store.unbilled(10) == []


def test_last_reading_is_latest_read_at(store: Store) -> None:
    with store.transaction() as tx:
        tx.journal_readings(
            [
                reading("m1", minute=5, register_milli=500),
                reading("m1", minute=9, register_milli=900),
                reading("m1", minute=7, register_milli=700),
                reading("m2", minute=20, register_milli=1),
            ],
            T0,
        )
    last = store.last_reading("m1")
    assert last is not None
    assert last.register_milli == 900
    assert store.last_reading("nope") is None


def test_journal_naive_received_at_rejected(store: Store) -> None:
    with pytest.raises(ValueError, match="naive"), store.transaction() as tx:
        tx.journal_readings([reading()], T0.replace(tzinfo=None))


def test_mark_billed_many_in_one_transaction_written_at_commit(store: Store) -> None:
    with store.transaction() as tx:
        ids = tx.journal_readings([reading(minute=m) for m in range(3)], T0)
    with store.transaction() as tx:
        for n, row_id in enumerate(ids):
            tx.mark_billed(row_id or 0, "billed", 10 * n, {"n": n} if n else None)
    rows = [store.journal_row(row_id or 0) for row_id in ids]
    assert [(r.state, r.deduction_minor, r.detail) for r in rows if r is not None] == [
        (JournalState.BILLED, 0, None),
        (JournalState.BILLED, 10, {"n": 1}),
        (JournalState.BILLED, 20, {"n": 2}),
    ]


def test_mark_billed_same_row_twice_in_one_transaction_raises_and_rolls_back(
    store: Store,
) -> None:
    with store.transaction() as tx:
        first, second = tx.journal_readings([reading(minute=0), reading(minute=1)], T0)
    assert first is not None
    assert second is not None
    with pytest.raises(JournalStateError) as err, store.transaction() as tx:  # noqa: PT012
        tx.mark_billed(first, "billed", 10, None)
        tx.mark_billed(second, "billed", 10, None)
        tx.mark_billed(first, "billed", 10, None)
    assert (err.value.row_id, err.value.state) == (first, "billed")
    assert [r.row_id for r in store.unbilled(10)] == [first, second]


def test_mark_billed_missing_row_among_many_raises_and_rolls_back(store: Store) -> None:
    with store.transaction() as tx:
        ids = tx.journal_readings([reading(minute=0), reading(minute=1)], T0)
    with pytest.raises(JournalStateError) as err, store.transaction() as tx:  # noqa: PT012
        tx.mark_billed(ids[0] or 0, "billed", 1, None)
        tx.mark_billed(999, "billed", 1, None)
        tx.mark_billed(ids[1] or 0, "billed", 1, None)
    assert (err.value.row_id, err.value.state) == (999, "missing")
    assert len(store.unbilled(10)) == 2


def test_mark_held_sees_mark_billed_of_same_transaction(store: Store) -> None:
    with store.transaction() as tx:
        (row_id,) = tx.journal_readings([reading()], T0)
    assert row_id is not None
    with pytest.raises(JournalStateError) as err, store.transaction() as tx:  # noqa: PT012
        tx.mark_billed(row_id, "billed", 1, None)
        tx.mark_held(row_id, "suspect")
    assert err.value.state == "billed"


def test_mark_billed_non_int_deduction_raises_at_call(store: Store) -> None:
    with store.transaction() as tx:
        (row_id,) = tx.journal_readings([reading()], T0)
        with pytest.raises(TypeError, match="deduction_minor"):
            tx.mark_billed(row_id or 0, "billed", True, None)
        with pytest.raises(TypeError, match="float"):
            tx.mark_billed(row_id or 0, "billed", 1, {"x": 0.5})  # type: ignore[dict-item]
    assert len(store.unbilled(10)) == 1


def test_journal_readings_large_batch_ids_and_duplicates(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # More readings than one id lookup takes, with duplicates of earlier batches, of the same
    # batch, and one with another register.
    with store.transaction() as tx:
        early = tx.journal_readings([reading(minute=m) for m in range(0, 1500, 3)], T0)
    batch = [reading(minute=m) for m in range(1200)]
    batch += [reading(minute=7), reading(minute=8, register_milli=5)]
    with store.transaction() as tx:
        ids = tx.journal_readings(batch, T0)
    fresh = [i for i in ids if i is not None]
    assert [i is None for i in ids[:1200]] == [m % 3 == 0 for m in range(1200)]
    stored = {r.row_id: r.reading for r in store.unbilled(5000)}
    assert [stored[i] for i in fresh] == [r for r, i in zip(batch, ids, strict=True) if i]
    assert ids[1200:] == [None, None]
    assert fresh == sorted(fresh)
    assert min(fresh) > max(i or 0 for i in early)
    assert caplog.text.count("conflicting duplicate") == 1


def test_prune_deletes_only_old_billed_rows_in_short_passes(store: Store) -> None:
    # Received one per day: days 0-5. Day 1 is held, day 2 unbilled; the rest billed.
    for day in range(6):
        with store.transaction() as tx:
            [row_id] = tx.journal_readings([reading(minute=day)], T0 + timedelta(days=day))
            assert row_id is not None
            if day == 1:
                tx.mark_held(row_id, "implausible_jump")
            elif day != 2:
                tx.mark_billed(row_id, "billed", 0)

    # Cutoff at day 4: days 0 and 3 go (billed, older); 1 and 2 stay (not settled); 4, 5 stay.
    assert store.prune_journal(T0 + timedelta(days=4), batch=2) == 2
    by_state, held = store.journal_counts()
    assert by_state == {JournalState.UNBILLED: 1, JournalState.BILLED: 2, JournalState.HELD: 1}
    assert held == {"implausible_jump": 1}
    assert [r.reading.read_at for r in store.billed(10)] == [
        T0 + timedelta(minutes=4),
        T0 + timedelta(minutes=5),
    ]
    assert store.prune_journal(T0 + timedelta(days=4), batch=2) == 0  # nothing left to do


def test_a_pruned_reading_delivered_again_is_journalled_anew(store: Store) -> None:
    with store.transaction() as tx:
        [row_id] = tx.journal_readings([reading()], T0)
        assert row_id is not None
        tx.mark_billed(row_id, "billed", 7)
    assert store.prune_journal(T0 + timedelta(days=1)) == 1
    with store.transaction() as tx:
        # The identity is gone with the row: billing decides (out of order, nothing charged).
        assert tx.journal_readings([reading()], T0 + timedelta(days=1)) != [None]
