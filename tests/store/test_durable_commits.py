"""Which commits are fsync'd: every transaction is ``synchronous=FULL`` (on disk when it
returns) except the outbox's acknowledgements, which a power cut may undo (the messages are
then published again, as QoS 1 allows); the connection is back at FULL after each."""

from __future__ import annotations

import pytest

from gateway.messages import MessageClass, Outgoing
from gateway.store import Store

FULL, NORMAL = 2, 1


def _synchronous(store: Store) -> int:
    with store._locked() as conn:
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])


def _statements(store: Store) -> list[str]:
    seen: list[str] = []
    with store._locked() as conn:
        conn.set_trace_callback(seen.append)
    return seen


def _enqueue(store: Store) -> int:
    with store.transaction() as tx:
        return tx.enqueue(Outgoing("t", b"x", 1, False, MessageClass.LEDGER))


def test_acknowledge_commits_without_fsync_and_puts_full_back(store: Store) -> None:
    seq = _enqueue(store)
    seen = _statements(store)
    store.acknowledge([seq])
    pragmas = [s for s in seen if s.startswith("PRAGMA synchronous")]
    assert pragmas == ["PRAGMA synchronous = NORMAL", "PRAGMA synchronous = FULL"]
    # NORMAL before BEGIN, FULL after COMMIT: the commit itself ran under NORMAL.
    begin, commit = seen.index("BEGIN IMMEDIATE"), seen.index("COMMIT")
    assert seen.index(pragmas[0]) < begin < commit < seen.index(pragmas[1])
    assert store.pending(10) == []
    assert _synchronous(store) == FULL


def test_every_other_transaction_is_full(store: Store) -> None:
    seen = _statements(store)
    seq = _enqueue(store)
    assert seq > 0
    assert not [s for s in seen if s.startswith("PRAGMA synchronous")]
    with store.transaction() as tx:
        assert tx._c().execute("PRAGMA synchronous").fetchone()[0] == FULL


def test_a_failed_non_durable_transaction_rolls_back_and_puts_full_back(store: Store) -> None:
    inside: list[int] = []

    def fail() -> None:
        with store.transaction(durable=False) as tx:
            inside.append(tx._c().execute("PRAGMA synchronous").fetchone()[0])
            tx.enqueue(Outgoing("t", b"lost", 1, False, MessageClass.LEDGER))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail()
    assert inside == [NORMAL]
    assert store.pending(10) == []
    assert _synchronous(store) == FULL
    assert _enqueue(store) > 0  # the store goes on
