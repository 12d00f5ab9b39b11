"""`TicketFeed`: water-ticket redemptions between the boxes of a plant, over MQTT.

Out: every redemption at this box (by ``prepay ticket redeem``, a dispenser, ...) is committed
by `gateway.store.tickets.TicketStore` first; the feed then queues it in the outbox as a
retained message on ``prepay/tickets/{plant}/{code}/redeemed/{box}``, together with the cursor
of what it has queued, in one store transaction: each redemption is published once, in order,
and waits in the outbox through an outage like any message. Retained, one topic per box: a box
that connects later learns every redemption of the plant, and two boxes that redeemed the same
ticket while offline both stay visible.

In: the link hands the feed every message under ``prepay/tickets/{plant}/+/redeemed/+``; a
redemption of another box is imported (the ticket is refused here from then on). When this box
had redeemed the same ticket too, the conflict is kept with both redemptions and published,
retained, on ``prepay/tickets/{plant}/{code}/conflict`` and as a site event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from gateway.flows import ticket_stats
from gateway.flows.context import FlowContext
from gateway.messages import MessageClass, Outgoing
from gateway.northbound.payloads import format_rfc3339
from gateway.northbound.topics import QOS, PlantTopics
from gateway.store.tickets import (
    Conflict,
    EmergencyTicket,
    ImportOutcome,
    NewBatch,
    Redemption,
    TicketStore,
)
from gateway.tickets import batches
from gateway.tickets.decisions import TicketKind
from gateway.tickets.events import RedemptionEvent
from gateway.tickets.settings import TicketSettings

logger = logging.getLogger(__name__)

#: Where the feed keeps the seq of the last redemption it queued (a reserved record of the
#: account-state table, beside the backend's overlay).
CURSOR_KEY: Final = "~tickets.published"
_BATCH: Final = 500
_POLL_S: Final = 1.0
# The statistics go out at most this often (each is a full count over the ticket tables).
_STATS_EVERY_S: Final = 60.0


def redemption_event(redemption: Redemption) -> dict[str, Any]:
    """A redemption here as the event other boxes import (`RedemptionEvent`)."""
    event = RedemptionEvent(
        code=redemption.code,
        redemption_id=redemption.redemption_id,
        kind=TicketKind(redemption.kind),
        product=redemption.product,
        qty=redemption.quantity,
        box=redemption.box_id,
        incarnation=redemption.incarnation,
        where=redemption.where,
        at=redemption.redeemed_at,
    )
    doc = event.model_dump(mode="json")
    doc["at"] = format_rfc3339(redemption.redeemed_at)
    return doc


def import_redemption(store: TicketStore, raw: bytes | str) -> ImportOutcome:
    """Record a redemption seen at another box (its event, as JSON).

    Raises:
        ValueError: not a valid redemption event (pydantic's `ValidationError` is one).
    """
    event = RedemptionEvent.model_validate_json(raw)
    return store.import_remote(
        Redemption(
            seq=0,
            code=event.code,
            redemption_id=event.redemption_id,
            kind=event.kind.value,
            product=event.product,
            quantity=event.qty,
            box_id=event.box,
            incarnation=event.incarnation,
            where=event.where,
            redeemed_at=event.at,
        )
    )


def import_batch_document(
    plant: str, keys: Mapping[str, Ed25519PublicKey], store: TicketStore, raw: bytes
) -> tuple[batches.TicketBatch, bool]:
    """Verify a signed ``ticket_batch`` document and store it. Returns the batch and whether it
    is new (False: the identical batch was imported before).

    Raises:
        BatchError: unreadable, untrusted, forged or altered, inconsistent, or of another plant.
        BatchConflictError: the id holds other content, or a range overlaps another batch's.
    """
    batch = batches.verify_batch(raw, keys)
    if batch.plant != plant:
        raise batches.BatchError(
            f"batch {batch.batch} is of plant {batch.plant}; this box takes plant {plant}"
        )
    stored = NewBatch(
        batch_id=batch.batch,
        plant=batch.plant,
        product=batch.product,
        face_minor=batch.face_minor,
        currency=batch.currency,
        valid_from=batch.valid_from,
        valid_until=batch.valid_until,
        scope=batch.scope.model_dump(exclude_none=True),
        ranges=tuple((r.first_serial, r.last_serial) for r in batch.ranges),
        document=raw.decode("utf-8"),
        content_hash=batches.content_hash(batch),
    )
    return batch, store.import_batch(stored)


@dataclass(frozen=True, slots=True)
class BatchImport:
    """What ``cmd/ticket_batch`` needs: the plant, its trusted keys, the ticket store."""

    plant: str
    keys: Mapping[str, Ed25519PublicKey]
    store: TicketStore

    def load(self, raw: bytes) -> tuple[batches.TicketBatch, bool]:
        """`import_batch_document` into this box's store."""
        return import_batch_document(self.plant, self.keys, self.store, raw)


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


class TicketFeed:
    """Publishes this box's redemptions and imports the plant's others (see the module)."""

    def __init__(
        self,
        ctx: FlowContext,
        tickets: TicketStore,
        settings: TicketSettings,
        *,
        poll_s: float = _POLL_S,
        stats_every_s: float = _STATS_EVERY_S,
    ) -> None:
        self._ctx = ctx
        self._tickets = tickets
        self._settings = settings
        self.topics = PlantTopics(settings.plant_code)
        self._poll_s = poll_s
        self._stats_every_s = stats_every_s
        self._cursor: int | None = None  # the last redemption queued (read from the store once)
        self._stats_due = True  # at the start, then after each change
        self._stats_at = -math.inf
        self.stats_published = 0
        self._nudge = asyncio.Event()
        self.published = 0
        self.imported = 0
        self.conflicts = 0
        self.refused = 0
        self.emergency_reported = 0

    def nudge(self) -> None:
        """Look for new redemptions now (a flow of this process redeemed one)."""
        self._nudge.set()

    async def run(self) -> None:
        """Queue new redemptions as they are committed, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            async with self._ctx.lock:
                queued = await asyncio.to_thread(self._queue_new)
            self._stats_due = self._stats_due or queued > 0
            if self._stats_due and loop.time() - self._stats_at >= self._stats_every_s:
                async with self._ctx.lock:
                    await asyncio.to_thread(self._queue_stats)
                self._stats_due, self._stats_at = False, loop.time()
                self._ctx.wake.set()
            if queued:
                self._ctx.wake.set()
                continue  # there may be more than one batch
            self._nudge.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):
                    await self._nudge.wait()

    def _queue_new(self) -> int:
        store = self._ctx.store
        if self._cursor is None:  # once: the stored cursor; then this process keeps it
            record = store.load_account_states().get(CURSOR_KEY) or {}
            self._cursor = int(record.get("seq") or 0)
        fresh = self._tickets.redemptions(after_seq=self._cursor, limit=_BATCH)
        emergency = self._tickets.emergency_tickets(unreconciled_only=True)
        if not fresh and not emergency:
            return 0
        if emergency:
            self._report_emergency(emergency)
        if not fresh:
            return len(emergency)
        with store.transaction() as tx:
            for redemption in fresh:
                tx.enqueue(
                    Outgoing(
                        self.topics.redeemed(redemption.code, redemption.box_id),
                        _json(redemption_event(redemption)),
                        QOS,
                        True,
                        MessageClass.LEDGER,
                    )
                )
            tx.save_account_state(CURSOR_KEY, {"seq": fresh[-1].seq})
        self._cursor = fresh[-1].seq  # after the commit: a failed one leaves it where it was
        self.published += len(fresh)
        return len(fresh)

    def _queue_stats(self) -> None:
        """The box's ticket statistics, retained (the newest replaces the last)."""
        box = self._tickets.box_id
        doc = ticket_stats.stats(box, self._settings, self._tickets, now=self._ctx.clock())
        topic = self.topics.stats(box)
        with self._ctx.store.transaction() as tx:
            tx.enqueue(Outgoing(topic, _json(doc), QOS, True, MessageClass.STATE))
        self.stats_published += 1

    def _report_emergency(self, tickets: list[EmergencyTicket]) -> None:
        """Queue the emergency tickets issued here and not reported yet, then mark them
        reported (reconciled): the outbox carries them to the backend when the link is back.
        A crash between the two queues them again at the next start: the same retained
        message, harmless."""
        box = self._tickets.box_id
        with self._ctx.store.transaction() as tx:
            for ticket in tickets:
                doc = {
                    "event": "emergency_ticket",
                    "code": ticket.code,
                    "product": ticket.product,
                    "issued_on": ticket.issued_on.isoformat(),
                    "valid_until": ticket.valid_until.isoformat(),
                    "note": ticket.note,
                    "box": box,
                    "issued_at": format_rfc3339(ticket.issued_at),
                }
                topic = self.topics.emergency(ticket.code, box)
                tx.enqueue(Outgoing(topic, _json(doc), QOS, True, MessageClass.LEDGER))
        self._tickets.mark_reconciled([t.code for t in tickets])
        self.emergency_reported += len(tickets)

    async def on_message(self, topic: str, raw: bytes, *, retained: bool) -> None:
        """A message under the plant's redemption topics (the link's feed callback)."""
        try:
            outcome = await asyncio.to_thread(import_redemption, self._tickets, raw)
        except (ValueError, ValidationError) as exc:
            self.refused += 1
            logger.warning("ignoring a ticket redemption on %s: %s", topic, str(exc)[:200])
            return
        if outcome.own or not outcome.new:
            return  # our own, or one already known (a redelivery, the retained copy again)
        self.imported += 1
        self._stats_due = True
        if outcome.conflict is not None:
            self.conflicts += 1
            async with self._ctx.lock:
                await asyncio.to_thread(self._publish_conflict, outcome.conflict)
            self._ctx.wake.set()

    def _publish_conflict(self, conflict: Conflict) -> None:
        doc: dict[str, Any] = {
            "event": "ticket_conflict",
            "code": conflict.code,
            "here": redemption_event(conflict.here),
            "elsewhere": redemption_event(conflict.elsewhere),
        }
        logger.error(
            "ticket %s redeemed twice: here (%s, %s) and at %s (%s)",
            conflict.code,
            conflict.here.redemption_id,
            format_rfc3339(conflict.here.redeemed_at),
            conflict.elsewhere.box_id,
            format_rfc3339(conflict.elsewhere.redeemed_at),
        )
        ctx = self._ctx
        with ctx.store.transaction() as tx:
            tx.record_event(None, "ticket_conflict", doc, ctx.clock())
            tx.enqueue(
                Outgoing(
                    self.topics.conflict(conflict.code), _json(doc), QOS, True, MessageClass.LEDGER
                )
            )
