"""The first start of a site: opening balances, no on/off flap, events that follow what
happened (a credit event for an account with no actuator, ``topup_applied`` before the
``restored`` it caused)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drivers.ports import Reading, SupplyState
from gateway.daemon import Gateway
from gateway.store import EntryKind
from tests.fixtures.mosquitto import Broker
from tests.gateway.crash_support import Watcher
from tests.gateway.site import load, water_account
from tests.gateway.test_end_to_end import send_command
from tests.support.gateways import FeedSource, running
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


class Relays:
    """Two relays that obey at once and remember every write, by device."""

    name = "relays"

    def __init__(self) -> None:
        self.on = {"v1": True, "v2": True}  # both on, as a new installation leaves them
        self.writes: list[tuple[str, bool]] = []

    def handles(self, device_id: str) -> bool:
        return device_id in self.on

    async def set_supply(self, device_id: str, on: bool) -> None:
        self.on[device_id] = on
        self.writes.append((device_id, on))

    async def read_supply(self, device_id: str) -> SupplyState:
        return SupplyState.ON if self.on[device_id] else SupplyState.OFF


def _accounts() -> list[dict[str, Any]]:
    return [
        {**water_account("A1", "m1", actuator="v1"), "opening_balance_minor": 5_000},
        {**water_account("A2", "m2", actuator="v2"), "opening_balance_minor": -500},
        water_account("A3", "m3"),  # no actuator, no opening balance
    ]


def _events(watcher: Watcher, account: str) -> list[str]:
    return [d["event"] for t, d in watcher.messages if t.endswith(f"/account/{account}/event")]


async def test_first_start_opening_balances_no_flap_and_events_that_follow_what_happened(
    mosquitto: Broker, tmp_path: Path
) -> None:
    site = load(tmp_path, mqtt_port=mosquitto.port, accounts=_accounts())
    relays, feed, watcher = Relays(), FeedSource(), Watcher()
    async with watcher.connected(mosquitto.host, mosquitto.port):
        gateway = Gateway(site, sources=[feed], actuators=[relays])
        async with running(gateway):
            await watcher.wait_for(
                lambda t, d: t.endswith("/device/v2/state") and d.get("supply") == "off"
            )
            await watcher.wait_for(
                lambda t, d: (
                    t.endswith("/device/v1/state")
                    and d.get("supply") == "on"
                    and d["confirmation"] == "confirmed"
                )
            )
            # A1 opened in credit: its relay, already on, was read back and left alone.
            # A2 opened owing 5.00: cut at once, its relay only ever told "off".
            assert relays.writes == [("v2", False)]
            assert gateway.store.balance("A1") == 5_000
            assert gateway.store.balance("A2") == -500
            assert gateway.store.balance("A3") == 0
            opening = gateway.store.entries("A1")
            assert [(e.kind, e.amount_minor, e.idempotency_key) for e in opening] == [
                (EntryKind.ADJUSTMENT, 5_000, "opening:A1")
            ]
            await watcher.wait_for(
                lambda t, d: t.endswith("/account/A2/event") and d["event"] == "cutoff"
            )

            # A3 has no actuator: 2 m3 at 5.00 yuan/m3 = 10.00 yuan from 0 exhausts it; that
            # is a credit event, not a "cutoff" no device made.
            await feed.put(Reading("m3", T0, 0), Reading("m3", T0 + timedelta(hours=1), 2_000))
            await watcher.wait_for(
                lambda t, d: t.endswith("/account/A3/event") and d["event"] == "credit_exhausted"
            )
            assert "cutoff" not in _events(watcher, "A3")

            # A top-up of 10.00 to A2 (owing 5.00) restores it: the top-up's own event first.
            await send_command(
                mosquitto,
                tmp_path / "keys",
                "topup",
                {"account": "A2", "amount_minor": 1_000, "currency": "CNY"},
                "t-a2",
            )
            await watcher.wait_for(
                lambda t, d: t.endswith("/account/A2/event") and d["event"] == "restored"
            )
            events = _events(watcher, "A2")
            assert events.index("topup_applied") < events.index("restored")
            await eventually(lambda: relays.on["v2"], what="v2 switched back on")

        # A second start: the opening balances are not credited again.
        gateway = Gateway(site, sources=[feed], actuators=[relays])
        async with running(gateway):
            assert gateway.store.balance("A1") == 5_000
            assert len(gateway.store.entries("A1")) == 1
            assert gateway.store.balance("A2") == 500  # -5.00 + 10.00
