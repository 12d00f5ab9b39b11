"""Northbound message values shared by the flows, the store (outbox) and the MQTT link.

Kept apart from all three so the store never imports aiomqtt and the link never imports SQLite:
the flows build an `Outgoing`, the store keeps it as an `OutboxMessage`, the link sends that.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class MessageClass(enum.StrEnum):
    """What an outgoing message carries; decides what a full outbox may drop.

    LEDGER and STATE are never dropped. TELEMETRY (raw readings) may be thinned when the outbox
    is full, and every drop is counted.
    """

    LEDGER = "ledger"
    STATE = "state"
    TELEMETRY = "telemetry"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message ready for the outbox: the store persists it, the MQTT link sends it.

    ``batch_key`` names the group a message may be batched with when a backlog is drained (the
    meter of a reading); None sends it alone. It is stored with the message, so the link never
    has to take a topic apart to find it.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    message_class: MessageClass
    batch_key: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxMessage(Outgoing):
    """An `Outgoing` as the outbox stored it. ``seq`` orders delivery (oldest first)."""

    seq: int


#: Told of the messages one transaction committed to the outbox, in seq order.
OutboxListener = Callable[[list[OutboxMessage]], None]


class OutboxReader(Protocol):
    """What the northbound link needs from the outbox."""

    def pending(self, limit: int, after_seq: int = 0) -> list[OutboxMessage]:
        """Oldest-first messages not yet acknowledged by the broker, at most ``limit``, with a
        seq above ``after_seq`` (a reader that already holds the ones up to it)."""

    def acknowledge(self, seqs: list[int]) -> None:
        """Remove messages the broker acknowledged (PUBACK for QoS 1)."""

    def follow(self, listener: OutboxListener) -> Callable[[], None]:
        """Call ``listener`` with the messages of each transaction that commits some, in seq
        order, from the committing thread, until the returned function is called. A reader
        that follows from before a `pending` read and takes the later messages from the
        listener misses none and need not read the outbox again."""
