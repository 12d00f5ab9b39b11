"""``device/{id}/state`` says what the device confirmed, never the gateway's wish.

A relay that ignores the cut (its contact welded, say) keeps reporting "on": the gateway
publishes ``supply: on`` with ``desired: off`` and ``confirmation: pending`` and raises
``supply_unconfirmed``; no message ever claims the supply is off.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from drivers.ports import Reading, SupplyState
from gateway.daemon import Gateway
from gateway.ops import status
from tests.fixtures.mosquitto import Broker
from tests.gateway.crash_support import Watcher
from tests.gateway.site import load
from tests.support.gateways import FeedSource, running

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


class WeldedRelay:
    """An `Actuator` whose contact never opens: writes arrive, the state stays on."""

    name = "welded"

    def __init__(self) -> None:
        self.writes: list[bool] = []
        self.reads = 0

    def handles(self, device_id: str) -> bool:
        return device_id == "v1"

    async def set_supply(self, device_id: str, on: bool) -> None:
        self.writes.append(on)

    async def read_supply(self, device_id: str) -> SupplyState:
        self.reads += 1
        return SupplyState.ON


def _device_states(watcher: Watcher) -> list[dict[str, Any]]:
    return [d for t, d in watcher.messages if t.endswith("/device/v1/state")]


async def test_device_truth_welded_relay_never_published_as_off(
    mosquitto: Broker, tmp_path: Path
) -> None:
    site = load(tmp_path, mqtt_port=mosquitto.port)
    relay, feed = WeldedRelay(), FeedSource()
    watcher = Watcher()
    gateway = Gateway(site, sources=[feed], actuators=[relay])
    async with watcher.connected(mosquitto.host, mosquitto.port), running(gateway):
        # At the start the relay is driven to the policy's wish (on) and read back: confirmed.
        await watcher.wait_for(
            lambda t, d: t.endswith("/device/v1/state") and d["confirmation"] == "confirmed"
        )
        # A baseline, then 2 m3 at 5.00 yuan/m3 (tier 1): -10.00 yuan, credit exhausted.
        await feed.put(Reading("m1", T0, 0), Reading("m1", T0 + timedelta(hours=1), 2_000))
        await watcher.wait_for(lambda t, d: t.endswith("/event") and d["event"] == "cutoff")
        alarm = await watcher.wait_for(
            lambda t, d: t.endswith("/event") and d.get("alarm") == "supply_unconfirmed"
        )
        assert alarm["detail"]["device"] == "v1"
        assert alarm["detail"]["supply"] == "off"
        states = _device_states(watcher)
        pending = [d for d in states if d["confirmation"] == "pending" and d["desired"] == "off"]
        assert pending, states
        assert all(d["supply"] == "on" for d in pending)  # what the relay says, not the wish
        assert all(d.get("supply") != "off" for d in states)
        assert all("last_seen" in d for d in pending)  # it answers: it is there, just stuck
        assert False in relay.writes  # the cut was sent
        assert gateway.probe.supply_wanted("A1") is False
        # `prepay status` (read from the store, beside the running daemon) says the same.
        [account] = status.collect(site).accounts
        assert (account.supply, account.device_supply, account.device_pending) == (
            "off",
            "on",
            True,
        )
        assert "supply wanted off, v1 confirmed on (change pending), MISMATCH" in status.render(
            status.collect(site)
        )
