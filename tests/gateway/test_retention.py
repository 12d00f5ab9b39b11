"""Journal retention: old billed readings are pruned; one delivered again charges nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drivers.ports import Reading
from gateway.config import load_site
from gateway.daemon import Gateway
from gateway.store import JournalState
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import write_site
from tests.support.gateways import offline_gateway, running, settled
from tests.support.waiting import eventually

T0 = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)


async def _billed(gateway: Gateway, count: int) -> None:
    await eventually(
        lambda: settled(gateway) and gateway.probe.counters().journalled == count,
        what=f"{count} readings journalled and billed",
    )


async def test_pruned_reading_delivered_again_is_not_charged_twice(tmp_path: Path) -> None:
    site_file = write_site(tmp_path, mqtt_port=free_port(), extra={"journal_retention_days": 30})
    now = [T0]
    gateway, feed = offline_gateway(load_site(site_file), lambda: now[0])
    async with running(gateway):
        old = [Reading("m1", T0 + timedelta(hours=h), 10_000 + 1_000 * h) for h in range(3)]
        await feed.put(*old)
        await _billed(gateway, 3)
        # Beijing water tier 1, 5.00 yuan/m3: baseline, +1 m3, +1 m3 = 10.00 yuan.
        assert gateway.store.balance("A1") == -1_000

        # 31 days on: the three rows are past the 30-day retention.
        now[0] = T0 + timedelta(days=31)
        await feed.put(Reading("m1", now[0], 14_000))  # +2 m3 = 10.00 yuan more
        await _billed(gateway, 4)
        assert gateway.store.balance("A1") == -2_000
        cutoff = now[0] - timedelta(days=30)
        assert await asyncio.to_thread(gateway.timers.prune_journal, cutoff) == 3
        assert gateway.store.journal_counts()[0][JournalState.BILLED] == 1

        # The meter's network delivers the oldest reading again: journalled anew, charged nothing.
        await feed.put(old[1])
        await _billed(gateway, 5)
        balance = gateway.store.balance("A1")
        events = [e.kind for e in gateway.store.recent_events(20)]

    assert balance == -2_000
    assert gateway.probe.billed_with_status("out_of_order") == 1
    assert "journal_pruned" in events
