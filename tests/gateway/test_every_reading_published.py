"""Every journalled reading reaches the backend (issue 12). Two polls in one second are two
readings, each billed and published with its own delta (the engine bills in milliseconds); a
second reading in the same millisecond with another register is a `conflict`, billed with the
next reading, and still published, with delta 0 (it used to be journalled and never
published)."""

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


async def test_readings_in_one_second_billed_each_same_millisecond_published_with_the_next(
    tmp_path: Path,
) -> None:
    site = load_site(write_site(tmp_path, mqtt_port=free_port()))  # no broker: all queued
    gateway, feed = offline_gateway(site, lambda: T0 + timedelta(hours=2))
    poll = T0 + timedelta(milliseconds=400)
    readings = [
        Reading("m1", T0, 0),  # the baseline
        # Same whole second, 400 ms later: billed, +10 L (within the meter's 40 m3/h, which
        # allows at least one second's worth, 11.1 L).
        Reading("m1", poll, 10),
        Reading("m1", poll + timedelta(microseconds=500), 12),  # same millisecond: conflict
        Reading("m1", T0 + timedelta(hours=1), 2_000),  # +1990 L from the billed 10 L
    ]
    async with running(gateway):
        await feed.put(*readings)
        await eventually(lambda: settled(gateway), what="4 readings settled")
        published = [
            json.loads(m.payload)
            for m in gateway.store.pending(1000)
            if m.topic == "prepay/test-site/meter/m1/reading"
        ]
        # 10 L + 1990 L = 2 m3 at 5.00 yuan/m3 (Beijing water, tier 1) = 10.00 yuan: the
        # conflict's 2 L are inside the last reading's 1990 L, billed once.
        assert gateway.store.balance("A1") == -1_000
    assert [(p["reading_id"], p["register"], p["delta"]) for p in published] == [
        (readings[0].reading_id, 0, 0),
        (readings[1].reading_id, 10, 10),
        (readings[2].reading_id, 12, 0),
        (readings[3].reading_id, 2_000, 1_990),
    ]
