"""Ticket statistics of one box: issued, used, converted, expired and remaining tickets per
product, redemptions per period, paper stock against the restock level (``prepay ticket
stats``, and retained on MQTT by the running gateway: `gateway.flows.ticket_feed`)."""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

from gateway.store.tickets import TicketStore
from gateway.tickets.decisions import TicketKind
from gateway.tickets.scope import Scope
from gateway.tickets.settings import TicketSettings
from gateway.tickets.validity import local_day


def stats(
    site_id: str,
    settings: TicketSettings,
    store: TicketStore,
    *,
    now: datetime,
    period: str = "month",
) -> dict[str, Any]:
    """Issued, used, converted, expired and remaining tickets per product; redemptions per
    period (``day`` or ``month``, local); paper stock against the restock level.

    Paper tickets are counted from the batches imported here; electronic tickets, which need no
    issue list, only once used; emergency tickets from this box's issues.
    """
    today = local_day(now, settings.timezone)
    stored_batches = {b.batch_id: b for b in store.batches()}
    ranges = store.ranges()
    starts = [(plant, first) for _, plant, first, _ in ranges]

    def batch_of(code: str) -> str | None:
        plant, serial = code[:6], int(code[6:15])
        i = bisect.bisect_right(starts, (plant, serial)) - 1
        if i >= 0 and ranges[i][1] == plant and ranges[i][2] <= serial <= ranges[i][3]:
            return ranges[i][0]
        return None

    used_paper: Counter[str] = Counter()  # per batch
    used_codes: set[str] = set()
    per_product: dict[str, Counter[str]] = defaultdict(Counter)
    per_period: Counter[tuple[str, str, str]] = Counter()
    for r in store.all_redemptions():
        used_codes.add(r.code)
        per_product[r.product][f"{r.kind}_used"] += 1
        day = local_day(r.redeemed_at, settings.timezone)
        label = day.isoformat() if period == "day" else day.isoformat()[:7]
        per_period[(label, r.product, r.kind)] += 1
        if r.kind == TicketKind.PAPER.value and (batch_id := batch_of(r.code)) is not None:
            used_paper[batch_id] += 1
    converted: Counter[str] = Counter()
    for void in store.voids():
        if (batch_id := batch_of(void.code)) is not None:
            converted[batch_id] += 1
    extended_live: Counter[str] = Counter()  # extended, unused, still valid: not expired
    for ext in store.extensions():
        batch_id = batch_of(ext.code)
        if batch_id is not None and ext.code not in used_codes and ext.new_until >= today:
            extended_live[batch_id] += 1
    stock = 0
    for batch in stored_batches.values():
        counts = per_product[batch.product]
        left = batch.code_count - used_paper[batch.batch_id] - converted[batch.batch_id]
        expired = left - extended_live[batch.batch_id] if batch.valid_until < today else 0
        counts["paper_issued"] += batch.code_count
        counts["paper_converted"] += converted[batch.batch_id]
        counts["paper_expired"] += expired
        counts["paper_remaining"] += left - expired
        if Scope.model_validate(batch.scope).admits(depot=settings.depot, region=settings.region):
            stock += left - expired
    for ticket in store.emergency_tickets():
        counts = per_product[ticket.product]
        counts["emergency_issued"] += 1
        counts["emergency_unreconciled"] += ticket.reconciled_at is None
    fields = (
        "paper_issued", "paper_used", "paper_converted", "paper_expired", "paper_remaining",
        "electronic_used", "emergency_issued", "emergency_used", "emergency_unreconciled",
    )  # fmt: skip
    return {
        "site": site_id,
        "as_of": today.isoformat(),
        "products": {
            product: {name: int(counts[name]) for name in fields}
            for product, counts in sorted(per_product.items())
        },
        "periods": [
            {"period": label, "product": product, "kind": kind, "used": n}
            for (label, product, kind), n in sorted(per_period.items())
        ],
        "stock": {
            "depot": settings.depot,
            "paper_remaining": stock,
            "restock_level": settings.paper_restock_level,
            "restock": stock < settings.paper_restock_level,
        },
        "conflicts": len(store.conflicts()),
    }
