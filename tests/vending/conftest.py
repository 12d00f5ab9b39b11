"""Vending fixtures: a real site (water accounts, a vending dispenser), the production
`DispenserClient` over the real ``BleakClient`` against simulated dispensers, and the real
`Gateway` on that site. Only the radio is simulated (`firmware_sim.ble_backend`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.ble.config import BleDispenserConfig
from drivers.ble.dispenser import DispenserClient
from drivers.ble.gatt import REQUEST_UUID, IdentityKind, RefuseReason
from firmware_sim.ble_backend import SimulatedAir
from firmware_sim.dispenser import SimulatedDispenser
from gateway.config import Site, load_site
from gateway.daemon import Gateway
from gateway.northbound.commands import TopupCommand
from gateway.store import vending as journal
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import water_account, write_site
from tests.support.waiting import eventually

CARD = "CARD-0001"  # A1's card
PHONE = "PHONE-77"  # A1's phone id
STRANGER = "CARD-9999"  # nobody's
PRICE_PER_LITRE = 35  # fen per litre
MAX_ML = 20_000
ADDRESSES = {"kiosk-1": "AA:BB:CC:00:01:01", "kiosk-2": "AA:BB:CC:00:01:02"}


def dispenser_entry(device_id: str, **vending: Any) -> dict[str, Any]:
    return {
        "address": ADDRESSES[device_id],
        "device_id": device_id,
        "meter_id": f"m-{device_id}",
        "connect_timeout_s": 2.0,
        "command_timeout_s": 2.0,
        "reconnect_delay_s": 0.0,
        "vending": {
            "currency": "CNY",
            "price_per_litre_minor": PRICE_PER_LITRE,
            "max_ml": MAX_ML,
            "cards": {CARD: "A1", PHONE: "A1"},
            **vending,
        },
    }


def vending_site(
    directory: Path,
    dispensers: list[dict[str, Any]],
    *,
    mqtt_port: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Site:
    """A site with account A1 (on a meter nobody reads) and the given vending dispensers."""
    path = write_site(
        directory,
        mqtt_port=mqtt_port or free_port(),
        accounts=[water_account("A1", "m1")],
        extra=extra,
    )
    doc = yaml.safe_load(path.read_text())
    doc["devices"]["ble_dispensers"] = dispensers
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_site(path)


def clients(site: Site, air: SimulatedAir) -> list[DispenserClient]:
    configs: list[BleDispenserConfig] = list(site.config.devices.ble_dispensers)
    return [DispenserClient(c, backend=air.backend()) for c in configs]


def gateway_for(
    site: Site, air: SimulatedAir, *, connect_mqtt: bool = False
) -> tuple[Gateway, list[DispenserClient]]:
    """The real gateway with the site's dispensers driven through the simulated air."""
    drivers = clients(site, air)
    gateway = Gateway(site, sources=drivers, actuators=drivers, connect_mqtt=connect_mqtt)
    return gateway, drivers


async def topup(gateway: Gateway, amount_minor: int, command_id: str = "t-1") -> None:
    """Credit A1 through the command handler (the path a backend top-up takes)."""
    now = datetime.now(UTC)
    command = TopupCommand(
        kind="topup",
        id=command_id,
        site="test-site",
        issued_at=now,
        expires_at=now + timedelta(hours=1),
        signature="unused-by-apply",
        account="A1",
        amount_minor=amount_minor,
        currency="CNY",
    )
    result = await gateway.commands.apply(command, now)
    assert result.status.value == "applied", result


async def present(device: SimulatedDispenser, kind: IdentityKind, identity: str) -> int:
    """The customer presents ``identity`` once the gateway listens to the request path."""
    await eventually(lambda: device.listening(REQUEST_UUID), what="gateway subscribed")
    return device.present(kind, identity)


async def refusal(device: SimulatedDispenser) -> RefuseReason | None:
    """The refusal ``device`` shows once the gateway's answer has reached it. `present` clears
    the display, and the gateway counts its decision when it commits it, before the answer is
    on the air: a test that waited for a counter waits here for the device too."""
    await eventually(lambda: device.display is not None, what="a refusal on the display")
    return device.display


def answered(devices: list[SimulatedDispenser]) -> bool:
    """Every device shows the gateway's answer: an authorisation or a refusal."""
    return all(d.max_ml > 0 or d.display is not None for d in devices)


def session_messages(gateway: Gateway) -> list[dict[str, Any]]:
    """The ``dispenser/{id}/session`` payloads waiting in the outbox, oldest first."""
    return [
        {"topic": m.topic, **json.loads(m.payload)}
        for m in gateway.store.pending(10_000)
        if "/dispenser/" in m.topic
    ]


def sessions(gateway: Gateway) -> list[journal.VendSession]:
    with gateway.store.transaction() as tx:
        return journal.sessions(tx)


def vend_entries(gateway: Gateway) -> list[int]:
    """The amounts of A1's ledger entries made by vending."""
    return [
        e.amount_minor for e in gateway.store.entries("A1") if e.idempotency_key.startswith("vend:")
    ]


@pytest.fixture
def air() -> SimulatedAir:
    return SimulatedAir()


@pytest.fixture
def kiosk(air: SimulatedAir) -> SimulatedDispenser:
    return air.add(SimulatedDispenser(ADDRESSES["kiosk-1"], total_ml=5_000))


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return vending_site(tmp_path, [dispenser_entry("kiosk-1")])
