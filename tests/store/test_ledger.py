"""The prepaid ledger: idempotent appends, conflicts, balances, sign and currency rules."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store import (
    EntryKind,
    InvalidEntryError,
    LedgerConflictError,
    LedgerKeyError,
    Store,
    StoreError,
)
from tests.store.conftest import KEY, T0, abort_after, reading


def test_append_entry_same_key_returns_original(store: Store) -> None:
    with store.transaction() as tx:
        first, created = tx.append_entry(
            "acct-1", EntryKind.TOPUP, 5000, "EUR", "topup-1", created_at=T0, ref="T1"
        )
    assert created
    with store.transaction() as tx:
        again, created_again = tx.append_entry(
            "acct-1", EntryKind.TOPUP, 5000, "EUR", "topup-1", created_at=T0, ref="retry"
        )
    assert not created_again
    assert again == first
    assert again.ref == "T1"
    assert store.balance("acct-1") == 5000
    assert len(store.entries("acct-1")) == 1


def test_append_entry_same_key_other_account_is_separate(store: Store) -> None:
    with store.transaction() as tx:
        _, a = tx.append_entry("a", EntryKind.TOPUP, 100, "EUR", "k", created_at=T0)
        _, b = tx.append_entry("b", EntryKind.TOPUP, 200, "EUR", "k", created_at=T0)
    assert a
    assert b
    assert (store.balance("a"), store.balance("b")) == (100, 200)


@pytest.mark.parametrize(
    ("kind", "amount", "currency", "what"),
    [
        (EntryKind.TOPUP, 5001, "EUR", "amount_minor"),
        (EntryKind.ADJUSTMENT, 5000, "EUR", "kind"),
        (EntryKind.TOPUP, 5000, "GBP", "currency"),
    ],
)
def test_append_entry_reused_key_different_params_raises(
    store: Store, kind: EntryKind, amount: int, currency: str, what: str
) -> None:
    with store.transaction() as tx:
        tx.append_entry("acct-1", EntryKind.TOPUP, 5000, "EUR", "topup-1", created_at=T0)
    with pytest.raises(LedgerConflictError) as err, store.transaction() as tx:
        tx.append_entry("acct-1", kind, amount, currency, "topup-1", created_at=T0)
    assert err.value.key == "topup-1"
    assert err.value.account_id == "acct-1"
    assert what in err.value.reason
    assert store.balance("acct-1") == 5000


def test_balance_is_sum_of_entries(store: Store) -> None:
    with store.transaction() as tx:
        tx.append_entry("a", EntryKind.TOPUP, 10_000, "EUR", "t1", created_at=T0)
        tx.append_entry("a", EntryKind.DEDUCTION, -1_234, "EUR", "r1", created_at=T0)
        tx.append_entry("a", EntryKind.DEDUCTION, -66, "EUR", "r2", created_at=T0)
        tx.append_entry("a", EntryKind.ADJUSTMENT, 300, "EUR", "adj", created_at=T0)
        tx.append_entry("other", EntryKind.TOPUP, 7, "EUR", "t1", created_at=T0)
        assert tx.balance("a") == 9_000  # 10000 - 1234 - 66 + 300, inside the transaction
    assert store.balance("a") == 9_000
    assert store.balance("other") == 7
    assert store.balance("nobody") == 0


@settings(max_examples=50)
@given(amounts=st.lists(st.integers(min_value=1, max_value=2**40), min_size=1, max_size=20))
def test_balance_exact_for_large_integers(
    tmp_path_factory: pytest.TempPathFactory, amounts: list[int]
) -> None:
    path = tmp_path_factory.mktemp("ledger") / "s.sqlite3"
    with Store(path, ledger_key=KEY) as store:
        with store.transaction() as tx:
            for i, amount in enumerate(amounts):
                tx.append_entry("a", EntryKind.TOPUP, amount, "EUR", f"t{i}", created_at=T0)
                tx.append_entry("a", EntryKind.DEDUCTION, -1, "EUR", f"d{i}", created_at=T0)
        assert store.balance("a") == sum(amounts) - len(amounts)
        assert store.verify_ledger().ok


@pytest.mark.parametrize(
    ("kind", "amount"),
    [
        (EntryKind.TOPUP, -5),
        (EntryKind.TOPUP, 0),
        (EntryKind.DEDUCTION, 5),
        (EntryKind.DEBT_RECOVERY, 5),
        (EntryKind.EMERGENCY_CREDIT, -5),
        (EntryKind.ADJUSTMENT, 0),
    ],
)
def test_append_entry_wrong_sign_or_zero_raises(store: Store, kind: EntryKind, amount: int) -> None:
    with pytest.raises(InvalidEntryError), store.transaction() as tx:
        tx.append_entry("a", kind, amount, "EUR", "k", created_at=T0)
    assert store.entries() == []


@pytest.mark.parametrize("amount", [1.5, True, "5"])
def test_append_entry_non_int_amount_raises(store: Store, amount: object) -> None:
    with pytest.raises(InvalidEntryError), store.transaction() as tx:
        tx.append_entry("a", EntryKind.ADJUSTMENT, amount, "EUR", "k", created_at=T0)  # type: ignore[arg-type]


def test_append_entry_currency_mismatch_raises(store: Store) -> None:
    with store.transaction() as tx:
        tx.append_entry("a", EntryKind.TOPUP, 100, "EUR", "t1", created_at=T0)
    with pytest.raises(InvalidEntryError, match="GBP"), store.transaction() as tx:
        tx.append_entry("a", EntryKind.TOPUP, 100, "GBP", "t2", created_at=T0)


def test_append_entry_float_in_detail_raises(store: Store) -> None:
    with pytest.raises(TypeError, match="float"), store.transaction() as tx:
        tx.append_entry("a", EntryKind.TOPUP, 1, "EUR", "t", created_at=T0, detail={"x": 0.1})  # type: ignore[dict-item]


def test_append_entry_rolled_back_leaves_no_trace(store: Store) -> None:
    abort_after(
        store, lambda tx: tx.append_entry("a", EntryKind.TOPUP, 100, "EUR", "t1", created_at=T0)
    )
    assert store.balance("a") == 0
    assert store.chain_head() is None
    with store.transaction() as tx:
        entry, created = tx.append_entry("a", EntryKind.TOPUP, 100, "EUR", "t1", created_at=T0)
    assert created
    assert entry.seq == 1
    assert store.verify_ledger().ok


def test_entries_and_head_survive_reopen(db_path: Path) -> None:
    with Store(db_path, ledger_key=KEY) as store, store.transaction() as tx:
        tx.append_entry("a", EntryKind.TOPUP, 100, "EUR", "t1", created_at=T0, detail={"n": 1})
        tx.append_entry("a", EntryKind.DEDUCTION, -40, "EUR", "r1", created_at=T0)
    with Store(db_path, ledger_key=KEY) as store:
        entries = store.entries("a")
        assert [(e.seq, e.kind, e.amount_minor) for e in entries] == [
            (1, EntryKind.TOPUP, 100),
            (2, EntryKind.DEDUCTION, -40),
        ]
        assert entries[0].detail == {"n": 1}
        assert entries[0].created_at == T0
        head = store.chain_head()
        assert head is not None
        assert head.seq == 2
        assert head.mac_hex == entries[1].mac.hex()


def test_store_open_with_other_key_raises(db_path: Path) -> None:
    with Store(db_path, ledger_key=KEY) as store, store.transaction() as tx:
        tx.append_entry("a", EntryKind.TOPUP, 100, "EUR", "t1", created_at=T0)
    with pytest.raises(LedgerKeyError):
        Store(db_path, ledger_key=b"x" * 32)


def test_store_short_key_raises(db_path: Path) -> None:
    with pytest.raises(LedgerKeyError):
        Store(db_path, ledger_key=b"short")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger SET amount_minor = 1",
        "DELETE FROM ledger",
        "DELETE FROM readings",
        "UPDATE events SET kind = 'x'",
        "DELETE FROM events",
    ],
)
def test_append_only_tables_refuse_sql_changes(store: Store, db_path: Path, statement: str) -> None:
    with store.transaction() as tx:
        tx.append_entry("a", EntryKind.TOPUP, 100, "EUR", "t1", created_at=T0)
        tx.journal_readings([reading()], T0)
        tx.record_event("a", "state_changed", None, T0)
    conn = sqlite3.connect(db_path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(statement)
    finally:
        conn.close()
    assert store.balance("a") == 100
    assert len(store.unbilled(10)) == 1
    assert [e.kind for e in store.events()] == ["state_changed"]


def test_store_method_inside_transaction_raises_not_deadlocks(store: Store) -> None:
    with pytest.raises(StoreError, match="inside a transaction"), store.transaction():
        store.balance("a")


def _documented_macs(key: bytes, store: Store) -> list[bytes]:
    """The chain as the module docstring defines it, recomputed from the stored entries."""
    macs, prev = [], bytes(32)
    for e in store.entries():
        fields = {
            "seq": e.seq,
            "account_id": e.account_id,
            "kind": e.kind.value,
            "amount_minor": e.amount_minor,
            "currency": e.currency,
            "idempotency_key": e.idempotency_key,
            "ref": e.ref,
            "detail": json.dumps(e.detail, sort_keys=True, separators=(",", ":")),
            "created_at_us": (e.created_at - datetime(1970, 1, 1, tzinfo=UTC))
            // timedelta(microseconds=1),
        }
        body = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
        prev = hmac.new(key, prev + body, hashlib.sha256).digest()
        macs.append(prev)
    return macs


def test_append_entry_many_in_one_transaction_chain_as_documented(db_path: Path) -> None:
    # The chain head is carried from append to append within a transaction; the MACs must be
    # those of one entry per transaction.
    def fill(path: Path, per_tx: int) -> list[bytes]:
        with Store(path, ledger_key=KEY) as store:
            steps = [
                ("a", EntryKind.TOPUP, 1000, "t1", None),
                ("b", EntryKind.TOPUP, 500, "t1", {"n": 1}),
                ("a", EntryKind.DEDUCTION, -7, "r1", None),
                ("a", EntryKind.DEDUCTION, -7, "r1", None),  # a retry: no new entry
                ("b", EntryKind.DEDUCTION, -9, "r1", {"z": [1, "x"]}),
                ("a", EntryKind.ADJUSTMENT, 3, "adj", None),
            ]
            for start in range(0, len(steps), per_tx):
                with store.transaction() as tx:
                    for account, kind, amount, key, detail in steps[start : start + per_tx]:
                        tx.append_entry(
                            account, kind, amount, "EUR", key, created_at=T0, detail=detail
                        )
            assert store.verify_ledger().ok
            assert _documented_macs(KEY, store) == [e.mac for e in store.entries()]
            head = store.chain_head()
            assert head is not None
            assert head.seq == 5
            return [e.mac for e in store.entries()]

    assert fill(db_path, 6) == fill(db_path.with_name("one-by-one.sqlite3"), 1)


def test_append_entry_same_transaction_retry_and_conflict(store: Store) -> None:
    with store.transaction() as tx:
        first, _ = tx.append_entry("a", EntryKind.TOPUP, 100, "EUR", "t1", created_at=T0)
        again, created = tx.append_entry("a", EntryKind.TOPUP, 100, "EUR", "t1", created_at=T0)
        assert (again, created) == (first, False)
        with pytest.raises(LedgerConflictError):
            tx.append_entry("a", EntryKind.TOPUP, 101, "EUR", "t1", created_at=T0)
        with pytest.raises(InvalidEntryError, match="GBP"):
            tx.append_entry("a", EntryKind.TOPUP, 100, "GBP", "t2", created_at=T0)
        second, created = tx.append_entry("a", EntryKind.TOPUP, 5, "EUR", "t2", created_at=T0)
    assert created
    assert second.seq == first.seq + 1
    assert store.balance("a") == 105
    assert store.verify_ledger().ok


def test_append_entry_reused_key_other_currency_is_a_conflict_not_a_currency_error(
    store: Store,
) -> None:
    with store.transaction() as tx:
        tx.append_entry("a", EntryKind.TOPUP, 100, "EUR", "t1", created_at=T0)
        with pytest.raises(LedgerConflictError, match="currency"):
            tx.append_entry("a", EntryKind.TOPUP, 100, "GBP", "t1", created_at=T0)
