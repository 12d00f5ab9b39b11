"""What the MQTT link has taken from the outbox and not sent yet, made into PUBLISH units as
slots in the in-flight window free up.

A unit is one message or, with ``batch_telemetry``, up to ``batch_max`` readings of one meter
sent as one ``meter/{meter}/readings`` message. Units are formed when a slot frees, not when the
messages are taken: the readings a meter gathered while the link was behind go out together,
however many reads or commits brought them. A link that keeps up sends each reading as itself
(the lowest latency); one that falls behind sends fewer, larger messages until it has caught up
(one PUBLISH with its PUBACK costs far more CPU than its bytes; ``prepay bench publish``).

Order: a unit is formed when its oldest message reaches the head, so units go out in the order
of their oldest message, and per topic in outbox order. A batch takes a meter's later readings
ahead of other topics' older messages; nothing consumes readings across meters in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from gateway.messages import MessageClass, OutboxMessage
from gateway.northbound.payloads import encode_reading_batch
from gateway.northbound.topics import QOS, SiteTopics


@dataclass(slots=True)
class Unit:
    """One PUBLISH: a single outbox message, or a batch of readings (``seqs`` in order)."""

    seqs: list[int]
    topic: str
    payload: bytes
    qos: int
    retain: bool
    batched: bool = False
    done: bool = False
    sent_at: float = 0.0  # loop time it was handed to the client (its PUBACK deadline's base)


def single(message: OutboxMessage) -> Unit:
    """``message`` as a unit of its own."""
    return Unit([message.seq], message.topic, message.payload, message.qos, message.retain)


def batch_key(message: OutboxMessage) -> str | None:
    """The meter a message may be batched under; None: it goes alone (retained or not
    telemetry). The key is stored with the message, so no topic is taken apart."""
    if message.message_class is not MessageClass.TELEMETRY or message.retain:
        return None
    return message.batch_key


class SendQueue:
    """Messages waiting for a slot, oldest first; `next_unit` forms the next PUBLISH."""

    def __init__(
        self,
        topics: SiteTopics,
        *,
        batch: bool,
        batch_max: int,
        clock: Callable[[], datetime],
    ) -> None:
        self._topics = topics
        self._batch = batch
        self._batch_max = batch_max
        self._clock = clock
        self._messages: deque[OutboxMessage] = deque()
        # Batchable messages per meter, oldest first: the ones a batch takes ahead of the head.
        self._by_key: dict[str, deque[OutboxMessage]] = {}
        self._taken: set[int] = set()  # seqs sent in a batch before they reached the head

    def __len__(self) -> int:
        """Messages waiting (not yet in a unit)."""
        return len(self._messages) - len(self._taken)  # the taken ones wait for the head only

    def extend(self, messages: Iterable[OutboxMessage]) -> None:
        """Add messages in outbox order (after every message added before)."""
        for message in messages:
            self._messages.append(message)
            if self._batch and (key := batch_key(message)) is not None:
                group = self._by_key.get(key)
                if group is None:
                    self._by_key[key] = group = deque()
                group.append(message)

    def next_unit(self) -> Unit | None:
        """The unit of the oldest waiting message (with its meter's later readings when
        batching); None when nothing waits."""
        while self._messages:
            message = self._messages.popleft()
            if message.seq in self._taken:
                self._taken.discard(message.seq)
                continue
            key = batch_key(message) if self._batch else None
            if key is None:
                return single(message)
            group = self._by_key[key]
            group.popleft()  # `message` itself, the oldest of its meter
            if not group:
                del self._by_key[key]
                return single(message)
            chunk = [message]
            while group and len(chunk) < self._batch_max:
                later = group.popleft()
                chunk.append(later)
                self._taken.add(later.seq)
            if not group:
                del self._by_key[key]
            return Unit(
                seqs=[m.seq for m in chunk],
                topic=self._topics.meter_readings(key),
                payload=encode_reading_batch(key, [m.payload for m in chunk], self._clock()),
                qos=QOS,
                retain=False,
                batched=True,
            )
        return None
