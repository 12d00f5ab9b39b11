"""Vending with a real broker: sessions settle while the gateway cannot reach it, and their
messages reach the backend, in order, once it can."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.ble.gatt import IdentityKind
from firmware_sim.ble_backend import SimulatedAir
from firmware_sim.dispenser import SimulatedDispenser
from gateway.daemon import Gateway
from tests.fixtures.mosquitto import Broker
from tests.gateway.crash_support import Watcher
from tests.gateway.test_broker_outage import GatedRelay  # the gate between gateway and broker
from tests.support.gateways import running
from tests.support.waiting import eventually
from tests.vending.conftest import (
    ADDRESSES,
    CARD,
    clients,
    dispenser_entry,
    present,
    topup,
    vending_site,
)

pytestmark = pytest.mark.integration

TOPIC = "prepay/test-site/dispenser/kiosk-1/session"


async def test_settled_while_the_broker_is_unreachable_then_published_in_order(
    tmp_path: Path, mosquitto: Broker
) -> None:
    air = SimulatedAir()
    kiosk = air.add(SimulatedDispenser(ADDRESSES["kiosk-1"]))
    watcher = Watcher()
    async with GatedRelay(mosquitto.port) as relay:
        relay.open = False  # the gateway cannot reach the broker while the customer buys
        mqtt = {
            "host": "127.0.0.1",
            "port": relay.port,
            "backoff_initial_s": 0.1,
            "backoff_max_s": 0.5,
        }
        site = vending_site(
            tmp_path, [dispenser_entry("kiosk-1")], mqtt_port=relay.port, extra={"mqtt": mqtt}
        )
        drivers = clients(site, air)
        gateway = Gateway(site, sources=drivers, actuators=drivers)
        async with running(gateway):
            await topup(gateway, 1_000)
            await present(kiosk, IdentityKind.ACCOUNT_CARD, CARD)
            await eventually(lambda: kiosk.max_ml > 0)
            kiosk.pour(2_500)
            kiosk.finish()
            await eventually(lambda: gateway.vending.counters.settled == 1)
            # 2.5 L x 35 fen = 87.5 -> 88; 1000 - 88 = 912, with no broker
            assert gateway.probe.balance_minor("A1") == 912
            assert gateway.link is not None
            assert not gateway.link.connected.is_set()
            # The backend listens before the gateway may connect; then the gate opens.
            async with watcher.connected(mosquitto.host, mosquitto.port):
                relay.open = True
                settled = await watcher.wait_for(
                    lambda topic, doc: topic == TOPIC and doc["status"] == "settled"
                )
    assert (settled["charge_minor"], settled["balance_minor"]) == (88, 912)
    statuses = [doc["status"] for topic, doc in watcher.messages if topic == TOPIC]
    assert statuses == ["authorised", "settled"]
