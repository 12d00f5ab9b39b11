"""Account state messages follow the balance at most every ``state_publish_interval_s`` per
account, mode changes at once, and the last balance is always published in the end."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drivers.ports import Reading
from gateway.config import load_site
from gateway.daemon import Gateway
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import write_site

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def state_messages(gateway: Gateway) -> list[dict[str, object]]:
    return [
        json.loads(m.payload)
        for m in gateway.store.pending(10_000)
        if m.topic.endswith("/account/A1/state")
    ]


async def test_state_messages_throttled_then_flushed(tmp_path: Path) -> None:
    site = load_site(
        write_site(tmp_path, mqtt_port=free_port(), extra={"state_publish_interval_s": 3600})
    )
    gateway = Gateway(
        site, clock=lambda: T0 + timedelta(hours=1), sources=[], actuators=[], connect_mqtt=False
    )
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop.wait))
    await gateway.ready.wait()
    for i in range(20):  # +0.1 m3 each at 5.00 yuan/m3: 50 fen per reading after the first
        await gateway.pipeline.put(Reading("m1", T0 + timedelta(minutes=i), 100 * i))
    async with asyncio.timeout(10):
        while gateway.store.unbilled(1) or gateway.pipeline.stats.billed < 20:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    balance = gateway.book.by_id["A1"].balance_minor
    assert balance == -19 * 50
    stats = gateway.store.outbox_stats()
    published = stats.pending["state"] + stats.coalesced["state"]
    # At most: the first state, the change of mode when credit ran out, and one per batch
    # boundary that happened to change nothing else; never one per reading.
    assert published <= 4
    await asyncio.to_thread(gateway.pipeline.publish_dirty_states, force=True)
    assert state_messages(gateway)[-1]["balance_minor"] == balance
    stop.set()
    await task
