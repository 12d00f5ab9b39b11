"""The outbox: northbound messages stored in the same transaction as the effect they report.

Delivery is oldest first by ``seq``; a message leaves the outbox only when the broker
acknowledged it (`acknowledge`). Seqs are never reused, so a late PUBACK cannot remove a newer
message.

Bound and drop policy (``max_messages``):

* LEDGER and STATE are never dropped. When the outbox is full they are still stored, past the
  bound, and the overflow is logged once at warning until the outbox is back under it.
* TELEMETRY is thinned when the outbox is full: the *oldest* telemetry message is dropped to
  make room, for any incoming message. Readings are cumulative registers, so a newer reading
  carries everything an older one did; keeping the newest gives upstream the freshest picture
  when the link comes back, where dropping the new one would freeze it at the moment the
  outbox filled. Telemetry also gives way to LEDGER and STATE messages. A new telemetry
  message is dropped itself only when no older telemetry is left to drop.
* Every drop is counted per class in ``outbox_counters`` (in the same transaction).

Coalescing (on by default): a retained STATE message replaces any not-yet-acknowledged
retained STATE message on the same topic (the broker keeps only the last retained message
anyway). Counted as ``coalesced``, not dropped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.messages import MessageClass, OutboxMessage, Outgoing
from gateway.store.errors import StoreError

#: What `enqueue` returns for a telemetry message dropped by the bound (seqs start at 1).
NOT_QUEUED = 0
_ACK_CHUNK = 500


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Counts per message class: waiting now, dropped and coalesced since the file was made."""

    pending: dict[MessageClass, int]
    dropped: dict[MessageClass, int]
    coalesced: dict[MessageClass, int]

    @property
    def total_pending(self) -> int:
        """All messages waiting."""
        return sum(self.pending.values())


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """What `enqueue` did.

    Attributes:
        seq: the new message's seq, or `NOT_QUEUED` when the new telemetry was dropped.
        over_bound: the outbox holds more than ``max_messages`` (only LEDGER/STATE do that).
    """

    seq: int
    over_bound: bool
    pending_total: int = 0  # messages pending after this call (for the caller's cache)


def _bump(conn: sqlite3.Connection, column: str, message_class: str, by: int) -> None:
    conn.execute(
        f"UPDATE outbox_counters SET {column} = {column} + ? WHERE message_class = ?",  # noqa: S608
        (by, message_class),
    )


def _total_pending(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT SUM(pending) FROM outbox_counters").fetchone()[0] or 0)


def enqueue(
    conn: sqlite3.Connection,
    message: Outgoing,
    *,
    max_messages: int,
    coalesce_retained_state: bool,
    now_us: int,
    pending_total: int | None = None,
    pending_deltas: dict[str, int] | None = None,
) -> EnqueueResult:
    """Store one message under the bound and drop policy above.

    Must run inside a write transaction. ``pending_total`` is the number of pending messages if
    the caller already knows it (else it is read), and ``pending_deltas`` collects the +1 of the
    pending counter for the caller to write once with `write_pending_deltas` before it commits:
    both save statements on the billing path, where every reading queues messages.
    """
    topic, payload, qos, retain = message.topic, message.payload, message.qos, message.retain
    message_class = message.message_class
    if message_class.__class__ is not MessageClass:  # a plain string: check and convert it
        message_class = MessageClass(message_class)
    if qos not in (0, 1, 2):
        raise ValueError(f"qos must be 0, 1 or 2, got {qos!r}")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    if not topic:
        raise ValueError("topic must not be empty")

    replaced: list[Any] = []
    coalescing = coalesce_retained_state and retain and message_class is MessageClass.STATE
    if coalescing:
        replaced = conn.execute(
            "DELETE FROM outbox WHERE topic = ? AND retain = 1 AND message_class = ? RETURNING seq",
            (topic, MessageClass.STATE.value),
        ).fetchall()
        if replaced:
            _bump(conn, "pending", MessageClass.STATE.value, -len(replaced))
            _bump(conn, "coalesced", MessageClass.STATE.value, len(replaced))

    total = _total_pending(conn) if pending_total is None else pending_total
    if coalescing and replaced:
        total -= len(replaced)
    if total >= max_messages:
        # Make room for one more: drop the oldest telemetry, as many as needed when the bound
        # was lowered since the messages were stored.
        excess = total - max_messages + 1
        dropped = conn.execute(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE message_class = ?"
            " ORDER BY seq LIMIT ?) RETURNING seq",
            (MessageClass.TELEMETRY.value, excess),
        ).fetchall()
        if dropped:
            _bump(conn, "pending", MessageClass.TELEMETRY.value, -len(dropped))
            _bump(conn, "dropped", MessageClass.TELEMETRY.value, len(dropped))
            total -= len(dropped)
        if total >= max_messages and message_class is MessageClass.TELEMETRY:
            _bump(conn, "dropped", MessageClass.TELEMETRY.value, 1)
            return EnqueueResult(NOT_QUEUED, over_bound=total > max_messages, pending_total=total)

    class_name = message_class.value
    cursor = conn.execute(
        "INSERT INTO outbox"
        " (topic, payload, qos, retain, message_class, enqueued_at_us, batch_key)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (topic, bytes(payload), qos, int(retain), class_name, now_us, message.batch_key),
    )
    if pending_deltas is None:
        _bump(conn, "pending", class_name, 1)
    else:
        pending_deltas[class_name] = pending_deltas.get(class_name, 0) + 1
    if cursor.lastrowid is None:  # cannot happen for an INSERT into a rowid table
        raise StoreError("outbox insert returned no seq")
    return EnqueueResult(
        cursor.lastrowid, over_bound=total + 1 > max_messages, pending_total=total + 1
    )


def write_pending_deltas(conn: sqlite3.Connection, deltas: dict[str, int]) -> None:
    """Apply the pending-counter increments `enqueue` collected (inside the transaction)."""
    for message_class, by in deltas.items():
        if by:
            _bump(conn, "pending", message_class, by)
    deltas.clear()


def pending(conn: sqlite3.Connection, limit: int, after_seq: int = 0) -> list[OutboxMessage]:
    """Oldest-first messages not yet acknowledged, at most ``limit``, with a seq above
    ``after_seq``."""
    cursor = conn.execute(
        "SELECT seq, topic, payload, qos, retain, message_class, batch_key"
        " FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
        (after_seq, limit),
    )
    return [
        OutboxMessage(
            seq=seq,
            topic=topic,
            payload=bytes(payload),
            qos=qos,
            retain=bool(retain),
            message_class=MessageClass(message_class),
            batch_key=batch_key,
        )
        for seq, topic, payload, qos, retain, message_class, batch_key in cursor
    ]


def acknowledge(conn: sqlite3.Connection, seqs: Sequence[int]) -> int:
    """Delete acknowledged messages; unknown seqs (a repeated PUBACK) are ignored.

    Must run inside a write transaction.

    Returns:
        How many messages were removed.
    """
    removed: dict[str, int] = {}
    unique = sorted(set(seqs))
    for start in range(0, len(unique), _ACK_CHUNK):
        chunk = unique[start : start + _ACK_CHUNK]
        marks = ",".join("?" * len(chunk))
        for (message_class,) in conn.execute(
            f"DELETE FROM outbox WHERE seq IN ({marks}) RETURNING message_class",  # noqa: S608
            chunk,
        ).fetchall():
            removed[message_class] = removed.get(message_class, 0) + 1
    for message_class, count in removed.items():
        _bump(conn, "pending", message_class, -count)
    return sum(removed.values())


def stats(conn: sqlite3.Connection) -> OutboxStats:
    """Pending, dropped and coalesced counts for every `MessageClass`."""
    rows = {
        str(c): (p, d, k)
        for c, p, d, k in conn.execute(
            "SELECT message_class, pending, dropped, coalesced FROM outbox_counters"
        )
    }
    zero = (0, 0, 0)
    return OutboxStats(
        pending={c: rows.get(c.value, zero)[0] for c in MessageClass},
        dropped={c: rows.get(c.value, zero)[1] for c in MessageClass},
        coalesced={c: rows.get(c.value, zero)[2] for c in MessageClass},
    )
