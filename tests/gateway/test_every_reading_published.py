"""Every journalled reading reaches the backend: a second reading within the same whole second
(the billing engine's time unit) is a `conflict`, billed with the next reading, and still
published, with delta 0 (issue 12: it used to be journalled and never published)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drivers.ports import Reading
from gateway.config import load_site
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import write_site
from tests.support.gateways import offline_gateway, running, settled
from tests.support.waiting import eventually

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


async def test_a_reading_in_the_same_second_is_published_and_billed_with_the_next(
    tmp_path: Path,
) -> None:
    site = load_site(write_site(tmp_path, mqtt_port=free_port()))  # no broker: all queued
    gateway, feed = offline_gateway(site, lambda: T0 + timedelta(hours=2))
    readings = [
        Reading("m1", T0, 0),  # the baseline
        Reading("m1", T0 + timedelta(milliseconds=400), 100),  # same whole second: conflict
        Reading("m1", T0 + timedelta(hours=1), 2_000),  # +2 m3 from the billed 0
    ]
    async with running(gateway):
        await feed.put(*readings)
        await eventually(lambda: settled(gateway), what="3 readings settled")
        published = [
            json.loads(m.payload)
            for m in gateway.store.pending(1000)
            if m.topic == "prepay/test-site/meter/m1/reading"
        ]
        # 2 m3 at 5.00 yuan/m3 (Beijing water, tier 1) = 10.00 yuan: the conflict's 0.1 m3 is
        # inside the next reading's 2 m3, billed once.
        assert gateway.store.balance("A1") == -1_000
    assert [(p["reading_id"], p["register"], p["delta"]) for p in published] == [
        (readings[0].reading_id, 0, 0),
        (readings[1].reading_id, 100, 0),
        (readings[2].reading_id, 2_000, 2_000),
    ]
