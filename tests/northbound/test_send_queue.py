"""SendQueue: units formed as slots free, a meter's waiting readings batched, order per topic."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from gateway.messages import MessageClass, OutboxMessage
from gateway.northbound.send_queue import SendQueue, Unit
from gateway.northbound.topics import SiteTopics

TOPICS = SiteTopics("s1")
T0 = datetime(2026, 6, 1, tzinfo=UTC)


def _reading(seq: int, meter: str) -> OutboxMessage:
    payload = json.dumps({"reading_id": f"{meter}:{seq}"}).encode()
    return OutboxMessage(
        TOPICS.meter_reading(meter),
        payload,
        1,
        False,
        MessageClass.TELEMETRY,
        meter,
        seq=seq,
    )


def _ledger(seq: int, account: str) -> OutboxMessage:
    return OutboxMessage(
        TOPICS.account_event(account), b'{"n":%d}' % seq, 1, False, MessageClass.LEDGER, seq=seq
    )


def _queue(*, batch: bool = True, batch_max: int = 3) -> SendQueue:
    return SendQueue(TOPICS, batch=batch, batch_max=batch_max, clock=lambda: T0)


def _drain(queue: SendQueue) -> list[Unit]:
    units = []
    while (unit := queue.next_unit()) is not None:
        units.append(unit)
    return units


def test_a_meter_s_waiting_readings_go_as_one_batch_at_the_place_of_the_oldest() -> None:
    queue = _queue()
    queue.extend([_reading(1, "m1"), _ledger(2, "a1"), _reading(3, "m2"), _reading(4, "m1")])
    assert len(queue) == 4
    first = queue.next_unit()
    assert first is not None
    # Seq 1 and 4 (meter m1) together, where seq 1 stood; then the ledger message, then m2 alone.
    assert (first.seqs, first.topic, first.batched) == ([1, 4], TOPICS.meter_readings("m1"), True)
    assert [r["reading_id"] for r in json.loads(first.payload)["readings"]] == ["m1:1", "m1:4"]
    assert len(queue) == 2
    rest = _drain(queue)
    assert [(u.seqs, u.batched) for u in rest] == [([2], False), ([3], False)]
    assert rest[1].topic == TOPICS.meter_reading("m2")  # alone: as a reading, not a batch
    assert len(queue) == 0


def test_readings_added_after_the_oldest_was_taken_join_a_later_batch() -> None:
    queue = _queue()
    queue.extend([_reading(1, "m1")])
    unit = queue.next_unit()
    assert unit is not None
    assert unit.seqs == [1]
    queue.extend([_reading(2, "m1"), _reading(3, "m1")])
    assert [u.seqs for u in _drain(queue)] == [[2, 3]]


def test_a_batch_holds_at_most_batch_max_readings_in_order() -> None:
    queue = _queue(batch_max=3)
    queue.extend([_reading(seq, "m1") for seq in range(1, 8)])
    assert [u.seqs for u in _drain(queue)] == [[1, 2, 3], [4, 5, 6], [7]]


def test_retained_and_non_telemetry_messages_always_go_alone() -> None:
    queue = _queue()
    retained = OutboxMessage(
        TOPICS.meter_reading("m1"), b"{}", 1, True, MessageClass.TELEMETRY, "m1", seq=2
    )
    queue.extend([_reading(1, "m1"), retained, _reading(3, "m1"), _ledger(4, "a1")])
    assert [u.seqs for u in _drain(queue)] == [[1, 3], [2], [4]]


def test_without_batching_every_message_is_its_own_unit_in_order() -> None:
    queue = _queue(batch=False)
    messages = [_reading(1, "m1"), _reading(2, "m1"), _ledger(3, "a1")]
    queue.extend(messages)
    units = _drain(queue)
    assert [u.seqs for u in units] == [[1], [2], [3]]
    assert [u.payload for u in units] == [m.payload for m in messages]
    assert queue.next_unit() is None
