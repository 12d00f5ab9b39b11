"""Command idempotency, receipts, the events journal and per-account runtime state."""

from __future__ import annotations

from datetime import timedelta
from enum import IntEnum, StrEnum
from pathlib import Path

import pytest

from gateway.store import CommandConflictError, ReceiptConflictError, Store
from tests.store.conftest import KEY, T0, abort_after


def test_record_command_first_result_replayed(store: Store) -> None:
    assert store.command_result("cmd-1") is None
    with store.transaction() as tx:
        assert tx.record_command("cmd-1", "topup", '{"status":"applied"}') == '{"status":"applied"}'
    with store.transaction() as tx:
        replay = tx.record_command("cmd-1", "topup", '{"status":"rejected"}')
    assert replay == '{"status":"applied"}'
    assert store.command_result("cmd-1") == '{"status":"applied"}'


def test_record_command_same_id_other_kind_raises(store: Store) -> None:
    with store.transaction() as tx:
        tx.record_command("cmd-1", "topup", "{}")
    with pytest.raises(CommandConflictError), store.transaction() as tx:
        tx.record_command("cmd-1", "refund", "{}")


def test_record_command_rolled_back_is_not_replayed(store: Store) -> None:
    abort_after(store, lambda tx: tx.record_command("cmd-1", "topup", '{"status":"applied"}'))
    assert store.command_result("cmd-1") is None


def test_receipt_seq_monotonic_across_reopen_and_rollback(db_path: Path) -> None:
    with Store(db_path, ledger_key=KEY) as store:
        with store.transaction() as tx:
            assert tx.next_receipt_seq() == 1
            assert tx.next_receipt_seq() == 2
        abort_after(store, lambda tx: tx.next_receipt_seq())
    with Store(db_path, ledger_key=KEY) as store, store.transaction() as tx:
        assert tx.next_receipt_seq() == 3


def test_save_receipt_and_lookup(store: Store) -> None:
    with store.transaction() as tx:
        seq = tx.next_receipt_seq()
        tx.save_receipt(seq, "topup-1", "acct-1", b'{"amount":500}', b"\x01sig")
    receipt = store.receipt_for_topup("topup-1")
    assert receipt is not None
    assert (receipt.seq, receipt.account_id, receipt.payload, receipt.signature) == (
        1,
        "acct-1",
        b'{"amount":500}',
        b"\x01sig",
    )
    assert store.receipt_for_topup("topup-2") is None
    with store.transaction() as tx:  # saving the identical receipt again is a no-op
        tx.save_receipt(seq, "topup-1", "acct-1", b'{"amount":500}', b"\x01sig")


def test_save_receipt_conflicts_raise(store: Store) -> None:
    with store.transaction() as tx:
        seq = tx.next_receipt_seq()
        tx.save_receipt(seq, "topup-1", "acct-1", b"p", b"s")
    with pytest.raises(ReceiptConflictError), store.transaction() as tx:
        tx.save_receipt(seq, "topup-1", "acct-1", b"other", b"s")
    with pytest.raises(ReceiptConflictError), store.transaction() as tx:
        tx.save_receipt(seq, "topup-2", "acct-1", b"p", b"s")  # seq taken
    with pytest.raises(ReceiptConflictError, match="not issued"), store.transaction() as tx:
        tx.save_receipt(7, "topup-3", "acct-1", b"p", b"s")


def test_events_append_only_in_order(store: Store) -> None:
    with store.transaction() as tx:
        first = tx.record_event("a", "state_changed", {"from": "active", "to": "low"}, T0)
        tx.record_event(None, "clock_changed", None, T0 + timedelta(seconds=1))
        tx.record_event("b", "relay_cmd_failed", {"device": "r1"}, T0 + timedelta(seconds=2))
    all_events = store.events()
    assert [(e.account_id, e.kind) for e in all_events] == [
        ("a", "state_changed"),
        (None, "clock_changed"),
        ("b", "relay_cmd_failed"),
    ]
    assert all_events[0].detail == {"from": "active", "to": "low"}
    assert all_events[1].detail == {}
    assert all_events[2].at == T0 + timedelta(seconds=2)
    assert [e.kind for e in store.events(account_id="b")] == ["relay_cmd_failed"]
    assert [e.kind for e in store.events(after_id=first)] == ["clock_changed", "relay_cmd_failed"]


def test_account_state_round_trips_exact_integers(db_path: Path) -> None:
    state: dict[str, int | str | None] = {
        "cycle_id": 202503,
        "cycle_usage_milli": 2**63 - 1,
        "cost_acc_nano": 10**30 + 7,  # beyond int64 and beyond float precision
        "last_read_at_us": -1,
        "policy_state": "grace",
        "grace_started_at_us": None,
    }
    with Store(db_path, ledger_key=KEY) as store, store.transaction() as tx:
        tx.save_account_state("a", state)
        tx.save_account_state("b", {"cycle_id": 1})
        tx.save_account_state("b", {"cycle_id": 2})
    with Store(db_path, ledger_key=KEY) as store:
        loaded = store.load_account_states()
    assert loaded == {"a": state, "b": {"cycle_id": 2}}
    assert loaded["a"]["cost_acc_nano"] == 1_000_000_000_000_000_000_000_000_000_007


@pytest.mark.parametrize("bad", [1.0, True, [1]])
def test_account_state_rejects_non_int_str_none(store: Store, bad: object) -> None:
    with pytest.raises(TypeError, match="x"), store.transaction() as tx:
        tx.save_account_state("a", {"x": bad})  # type: ignore[dict-item]
    assert store.load_account_states() == {}


def test_save_account_states_many_in_one_call_later_wins(db_path: Path) -> None:
    with Store(db_path, ledger_key=KEY) as store:
        with store.transaction() as tx:
            tx.save_account_states(
                [("a", {"n": 1, "s": "x", "none": None}), ("b", {"n": 2**70}), ("a", {"n": 3})]
            )
        with store.transaction() as tx:
            tx.save_account_states([])
        assert store.load_account_states() == {"a": {"n": 3}, "b": {"n": 2**70}}


@pytest.mark.parametrize("bad", [1.0, True, [1], {"k": 1}])
def test_save_account_states_rejects_non_int_str_none_writes_nothing(
    store: Store, bad: object
) -> None:
    with store.transaction() as tx:
        with pytest.raises(TypeError, match="account b: state field 'x' must be int, str or None"):
            tx.save_account_states([("a", {"x": 1}), ("b", {"x": bad})])  # type: ignore[list-item]
        tx.record_event("a", "still_open", None, T0)  # the transaction goes on and commits
    assert store.load_account_states() == {}
    assert [e.kind for e in store.events()] == ["still_open"]


def test_save_account_states_accepts_str_and_int_subclasses(store: Store) -> None:
    class Mode(StrEnum):
        ACTIVE = "active"

    class Level(IntEnum):
        LOW = 2

    with store.transaction() as tx:
        tx.save_account_states([("a", {"mode": Mode.ACTIVE, "level": Level.LOW})])
    assert store.load_account_states() == {"a": {"mode": "active", "level": 2}}


def test_save_account_states_rejects_non_str_key(store: Store) -> None:
    with pytest.raises(TypeError, match="keys must be str"), store.transaction() as tx:
        tx.save_account_states([("a", {1: 1})])  # type: ignore[dict-item]
