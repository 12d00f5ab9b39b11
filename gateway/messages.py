"""Northbound message values shared by the store (outbox) and the MQTT link.

Kept apart from both so the store never imports aiomqtt and the link never imports SQLite.
"""

from __future__ import annotations

import enum
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
class OutboxMessage:
    """One stored northbound message. ``seq`` orders delivery (oldest first)."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    message_class: MessageClass


class OutboxReader(Protocol):
    """What the northbound link needs from the outbox."""

    def pending(self, limit: int) -> list[OutboxMessage]:
        """Oldest-first messages not yet acknowledged by the broker, at most ``limit``."""

    def acknowledge(self, seqs: list[int]) -> None:
        """Remove messages the broker acknowledged (PUBACK for QoS 1)."""
