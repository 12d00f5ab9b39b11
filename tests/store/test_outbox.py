"""The outbox: order, acknowledgement, the bound and its drop policy, coalescing, reopen."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gateway.messages import MessageClass, OutboxMessage, OutboxReader, Outgoing
from gateway.store import NOT_QUEUED, Store
from tests.store.conftest import KEY, abort_after

LEDGER, STATE, TELEMETRY = MessageClass.LEDGER, MessageClass.STATE, MessageClass.TELEMETRY


def put(
    store: Store, payload: bytes, cls: MessageClass, topic: str = "t", retain: bool = False
) -> int:
    with store.transaction() as tx:
        return tx.enqueue(Outgoing(topic, payload, 1, retain, cls))


def payloads(store: Store) -> list[bytes]:
    return [m.payload for m in store.pending(100)]


def test_store_is_an_outbox_reader(store: Store) -> None:
    reader: OutboxReader = store
    assert reader.pending(10) == []


def test_pending_oldest_first_with_fields(store: Store) -> None:
    with store.transaction() as tx:
        s1 = tx.enqueue(Outgoing("site/a/ledger", b"one", 1, False, LEDGER))
        s2 = tx.enqueue(Outgoing("site/a/state", b"two", 0, True, STATE))
    s3 = put(store, b"three", TELEMETRY)
    assert s1 < s2 < s3
    messages = store.pending(10)
    assert [m.seq for m in messages] == [s1, s2, s3]
    assert (messages[1].topic, messages[1].qos, messages[1].retain, messages[1].message_class) == (
        "site/a/state",
        0,
        True,
        STATE,
    )
    assert [m.seq for m in store.pending(2)] == [s1, s2]


def test_acknowledge_removes_only_those(store: Store) -> None:
    seqs = [put(store, bytes([i]), LEDGER) for i in range(4)]
    store.acknowledge([seqs[0], seqs[2], 9999])  # 9999: a repeated or unknown PUBACK
    assert [m.seq for m in store.pending(10)] == [seqs[1], seqs[3]]
    store.acknowledge([seqs[0]])
    assert store.outbox_stats().pending[LEDGER] == 2


def test_seq_not_reused_after_acknowledge(store: Store) -> None:
    first = put(store, b"a", LEDGER)
    store.acknowledge([first])
    second = put(store, b"b", LEDGER)
    assert second > first
    store.acknowledge([first])  # a late duplicate PUBACK must not remove the new message
    assert payloads(store) == [b"b"]


def test_enqueue_rolled_back_with_transaction(store: Store) -> None:
    abort_after(store, lambda tx: tx.enqueue(Outgoing("t", b"x", 1, False, LEDGER)))
    assert store.pending(10) == []
    assert store.outbox_stats().pending[LEDGER] == 0


def test_full_outbox_drops_oldest_telemetry(store: Store) -> None:
    # bound is 5 (conftest)
    for i in range(5):
        put(store, b"tel%d" % i, TELEMETRY)
    put(store, b"tel5", TELEMETRY)
    put(store, b"tel6", TELEMETRY)
    assert payloads(store) == [b"tel2", b"tel3", b"tel4", b"tel5", b"tel6"]
    stats = store.outbox_stats()
    assert stats.dropped == {LEDGER: 0, STATE: 0, TELEMETRY: 2}
    assert stats.pending == {LEDGER: 0, STATE: 0, TELEMETRY: 5}


def test_full_outbox_ledger_displaces_telemetry(store: Store) -> None:
    for i in range(5):
        put(store, b"tel%d" % i, TELEMETRY)
    put(store, b"led", LEDGER)
    put(store, b"st", STATE)
    assert payloads(store) == [b"tel2", b"tel3", b"tel4", b"led", b"st"]
    assert store.outbox_stats().dropped[TELEMETRY] == 2


def test_full_outbox_never_drops_ledger_or_state(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING")
    for i in range(4):
        put(store, b"led%d" % i, LEDGER)
    put(store, b"st0", STATE)
    put(store, b"led4", LEDGER)
    put(store, b"st1", STATE, topic="other")
    seq = put(store, b"tel", TELEMETRY)
    assert seq == NOT_QUEUED
    assert payloads(store) == [b"led0", b"led1", b"led2", b"led3", b"st0", b"led4", b"st1"]
    stats = store.outbox_stats()
    assert stats.dropped == {LEDGER: 0, STATE: 0, TELEMETRY: 1}
    assert stats.total_pending == 7
    over_bound = [r for r in caplog.records if "over its bound" in r.getMessage()]
    assert len(over_bound) == 1  # logged once, not per message


def test_over_bound_warning_again_after_recovery(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    seqs = [put(store, b"x", LEDGER) for _ in range(6)]
    store.acknowledge(seqs)
    assert "back under its bound" in caplog.text
    for _ in range(6):
        put(store, b"y", LEDGER)
    assert sum("over its bound" in r.getMessage() for r in caplog.records) == 2


def test_retained_state_coalesced_on_same_topic(store: Store) -> None:
    put(store, b"s1", STATE, topic="acct/a/state", retain=True)
    put(store, b"other", STATE, topic="acct/b/state", retain=True)
    put(store, b"not-retained", STATE, topic="acct/a/state")
    put(store, b"s2", STATE, topic="acct/a/state", retain=True)
    assert payloads(store) == [b"other", b"not-retained", b"s2"]
    stats = store.outbox_stats()
    assert stats.coalesced[STATE] == 1
    assert stats.dropped[STATE] == 0
    assert stats.pending[STATE] == 3


def test_coalescing_can_be_turned_off(db_path: Path) -> None:
    with Store(db_path, ledger_key=KEY, coalesce_retained_state=False) as store:
        put(store, b"s1", STATE, topic="a", retain=True)
        put(store, b"s2", STATE, topic="a", retain=True)
        assert payloads(store) == [b"s1", b"s2"]


def test_outbox_and_counters_survive_reopen(db_path: Path) -> None:
    with Store(db_path, ledger_key=KEY, max_outbox_messages=2) as store:
        put(store, b"t0", TELEMETRY)
        put(store, b"l0", LEDGER)
        put(store, b"t1", TELEMETRY)
    with Store(db_path, ledger_key=KEY, max_outbox_messages=2) as store:
        assert payloads(store) == [b"l0", b"t1"]
        stats = store.outbox_stats()
        assert stats.dropped[TELEMETRY] == 1
        assert stats.pending == {LEDGER: 1, STATE: 0, TELEMETRY: 1}


def test_lowered_bound_on_reopen_drops_down_to_it(db_path: Path) -> None:
    with Store(db_path, ledger_key=KEY, max_outbox_messages=10) as store:
        for i in range(6):
            put(store, b"t%d" % i, TELEMETRY)
    with Store(db_path, ledger_key=KEY, max_outbox_messages=3) as store:
        put(store, b"t6", TELEMETRY)
        assert payloads(store) == [b"t4", b"t5", b"t6"]
        assert store.outbox_stats().dropped[TELEMETRY] == 4


@pytest.mark.parametrize("qos", [-1, 3])
def test_enqueue_bad_qos_raises(store: Store, qos: int) -> None:
    with pytest.raises(ValueError, match="qos"), store.transaction() as tx:
        tx.enqueue(Outgoing("t", b"x", qos, False, LEDGER))


def test_followers_are_told_each_commit_in_seq_order_as_the_outbox_reads_it(
    store: Store,
) -> None:
    told: list[list[OutboxMessage]] = []
    stop = store.follow(told.append)
    with store.transaction() as tx:
        tx.enqueue(Outgoing("site/a/ledger", b"one", 1, False, LEDGER))
        tx.enqueue(Outgoing("site/a/state", b"two", 0, True, STATE, "k"))
    put(store, b"three", TELEMETRY)
    abort_after(store, lambda tx: tx.enqueue(Outgoing("t", b"rolled back", 1, False, LEDGER)))
    with store.transaction() as tx:
        tx.record_event(None, "nothing_queued", {}, store.clock())
    # Exactly what a read finds, one list per committing transaction (none for the rollback
    # and the transaction that queued nothing).
    assert told == [store.pending(2), store.pending(10)[2:]]
    assert [m.payload for batch in told for m in batch] == [b"one", b"two", b"three"]
    assert told[0][1].batch_key == "k"
    stop()
    put(store, b"four", LEDGER)
    assert len(told) == 2  # not told after stop


def test_a_telemetry_message_the_bound_dropped_is_not_told(store: Store) -> None:
    # bound is 5 (conftest): five ledger messages fill it; new telemetry is dropped itself.
    for i in range(5):
        put(store, b"led%d" % i, LEDGER)
    told: list[list[OutboxMessage]] = []
    store.follow(told.append)
    assert put(store, b"dropped", TELEMETRY) == NOT_QUEUED
    assert told == []


def test_a_failing_follower_does_not_undo_the_commit(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(messages: list[OutboxMessage]) -> None:
        raise RuntimeError("follower bug")

    told: list[list[OutboxMessage]] = []
    store.follow(broken)
    store.follow(told.append)
    seq = put(store, b"kept", LEDGER)
    assert [m.seq for m in store.pending(10)] == [seq]
    assert [[m.seq for m in batch] for batch in told] == [[seq]]  # the next follower still told
    assert f"outbox follower failed on seqs {seq}-{seq}" in caplog.text


def test_followers_hear_concurrent_commits_in_seq_order(store: Store) -> None:
    # Commits from four threads: a follower must hear every message once, in seq order (it is
    # told under the store's lock), or a link taking them from it would publish out of order.
    store.max_outbox_messages = 10_000
    told: list[int] = []
    store.follow(lambda messages: told.extend(m.seq for m in messages))

    def writer(n: int) -> None:
        for i in range(50):
            with store.transaction() as tx:
                tx.enqueue(Outgoing(f"t/{n}", b"%d" % i, 1, False, LEDGER))
                tx.enqueue(Outgoing(f"t/{n}", b"%d+" % i, 1, False, LEDGER))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert told == [m.seq for m in store.pending(1_000)]
    assert len(told) == 400
