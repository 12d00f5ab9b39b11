"""Account state messages follow the balance at most every ``state_publish_interval_s`` per
account, mode changes at once, and the last balance is always published in the end."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drivers.ports import Reading
from gateway.config import Site, load_site
from gateway.startup import STATE_FILE, read_ledger_key
from gateway.store import Store
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import write_site
from tests.support.gateways import offline_gateway, running, settled
from tests.support.waiting import eventually

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def state_messages(store: Store) -> list[dict[str, object]]:
    return [
        json.loads(m.payload)
        for m in store.pending(10_000)
        if m.topic.endswith("/account/A1/state")
    ]


def _open_store(site: Site) -> Store:
    key = read_ledger_key(site.resolve(site.config.keys.ledger_key_file))
    return Store(site.state_dir / STATE_FILE, ledger_key=key)


async def test_state_messages_throttled_then_flushed(tmp_path: Path) -> None:
    site = load_site(
        write_site(tmp_path, mqtt_port=free_port(), extra={"state_publish_interval_s": 3600})
    )
    gateway, feed = offline_gateway(site, lambda: T0 + timedelta(hours=1))
    async with running(gateway):
        # +0.1 m3 each at 5.00 yuan/m3: 50 fen per reading after the first
        readings = [Reading("m1", T0 + timedelta(minutes=i), 100 * i) for i in range(20)]
        await feed.put(*readings[:19])
        await eventually(lambda: settled(gateway), what="19 readings billed")
        await feed.put(readings[19])  # billed alone: the mode stays, the balance moves
        await eventually(
            lambda: settled(gateway) and gateway.probe.counters().billed == 20,
            what="20 readings billed",
        )
        balance = gateway.probe.balance_minor("A1")
        assert balance == -19 * 50
        stats = gateway.store.outbox_stats()
        published = stats.pending["state"] + stats.coalesced["state"]
        # At most: the first state, the change of mode when credit ran out, and one per batch
        # boundary that happened to change nothing else; never one per reading.
        assert published <= 4
        assert state_messages(gateway.store)[-1]["balance_minor"] != balance  # not yet due
    # Stopping publishes the balance that moved since (nothing reached a broker: it waits).
    with _open_store(site) as store:
        assert state_messages(store)[-1]["balance_minor"] == balance
