"""A real box for ticket tests: the site file with a ``tickets`` section, its keys, the plant's
keys (two, for rotation), and a store created like the daemon creates it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from bench.sites import TARIFFS, account
from bench.sites import write_site as write_site_file
from drivers.ports import Clock, utc_now
from gateway.northbound.signing import generate_private_key, private_key_to_pem, public_key_to_pem
from gateway.ops import tickets
from gateway.startup import STATE_FILE, read_ledger_key
from gateway.store import Store
from gateway.store.tickets import TicketStore
from gateway.tickets.codes import TicketCode
from gateway.tickets.scope import Scope

PLANT = "330102"
PRODUCT = "18.9L"
DEPOT = "hz-xihu-03"
REGION = "hz"


@dataclass(frozen=True)
class Box:
    directory: Path
    site_file: Path
    plant_key: Path  # the plant's current key (trusted)
    plant_key_old: Path  # the plant's previous key (trusted too: rotation)
    stranger_key: Path  # a key no box trusts

    def site(self) -> tickets.TicketSite:
        return tickets.load_ticket_site(self.site_file)

    def store(self, clock: Clock = utc_now) -> TicketStore:
        return tickets.open_ticket_store(self.site(), clock)


def _write_key(directory: Path, name: str) -> tuple[Path, Path]:
    key = generate_private_key()
    private = directory / f"{name}.pem"
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_key_to_pem(key))
    public = directory / f"{name}.pub.pem"
    public.write_bytes(public_key_to_pem(key.public_key()))
    return private, public


def write_box(
    directory: Path,
    *,
    site_id: str = "depot3-box1",
    depot: str = DEPOT,
    region: str = REGION,
    settings: dict[str, Any] | None = None,
    plant_keys_from: Box | None = None,
    mqtt_port: int = 1883,
) -> Box:
    """Write a site with a ``tickets`` section and create its store.

    ``plant_keys_from``: share another box's plant keys (two boxes of one plant).
    """
    directory.mkdir(parents=True, exist_ok=True)
    plant_dir = directory / "plant"
    plant_dir.mkdir(exist_ok=True)
    if plant_keys_from is None:
        plant, plant_pub = _write_key(plant_dir, "plant-2027")
        old, old_pub = _write_key(plant_dir, "plant-2026")
        stranger, _ = _write_key(plant_dir, "stranger")
    else:
        plant, old, stranger = (
            plant_keys_from.plant_key,
            plant_keys_from.plant_key_old,
            plant_keys_from.stranger_key,
        )
        plant_pub = plant.with_name(plant.name.replace(".pem", ".pub.pem"))
        old_pub = old.with_name(old.name.replace(".pem", ".pub.pem"))
    section: dict[str, Any] = {
        "plant_code": PLANT,
        "depot": depot,
        "region": region,
        "products": [PRODUCT],
        # The gateway's own key signs the tickets it converts from paper.
        "issuer_public_keys": [str(plant_pub), str(old_pub), "keys/gateway.pub.pem"],
        "timezone": "Asia/Shanghai",
        "emergency_cap_per_day": 2,
        "emergency_box_number": 7,
        "paper_restock_level": 50,
    }
    section.update(settings or {})
    site_file = write_site_file(
        directory,
        site_id=site_id,
        mqtt_port=mqtt_port,
        tariffs=[TARIFFS / "beijing-residential-water.yaml"],
        accounts=[account("A1", "m1", tariff="beijing_residential_water")],
        extra={"tickets": section},
    )
    state = directory / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    with Store(state / STATE_FILE, ledger_key=read_ledger_key(directory / "keys" / "ledger.key")):
        pass
    return Box(directory, site_file, plant, old, stranger)


def code(serial: int) -> str:
    return TicketCode(PLANT, serial).text


def electronic(
    box: Box,
    serial: int,
    *,
    valid_from: date,
    valid_until: date,
    scope: Scope | None = None,
    product: str = PRODUCT,
    key: Path | None = None,
    qty: int = 1,
) -> str:
    """An electronic ticket signed by the plant (with ``key``, default its current key)."""
    return tickets.make_electronic(
        key or box.plant_key,
        code=code(serial),
        product=product,
        valid_from=valid_from,
        valid_until=valid_until,
        scope=scope or Scope(depot=DEPOT),
        qty=qty,
    )


def batch_document(
    box: Box,
    batch_id: str,
    ranges: list[tuple[int, int]],
    *,
    valid_from: date,
    valid_until: date,
    scope: Scope | None = None,
    product: str = PRODUCT,
    key: Path | None = None,
) -> dict[str, Any]:
    return tickets.make_batch(
        key or box.plant_key,
        batch_id=batch_id,
        plant=PLANT,
        product=product,
        face_minor=2000,
        currency="CNY",
        valid_from=valid_from,
        valid_until=valid_until,
        scope=scope or Scope(region=REGION),
        ranges=ranges,
    )


def import_b1(box: Box, today: date) -> None:
    """Import batch B1 (serials 1..100 of the box's plant), valid from ten days before
    ``today`` to thirty days after it."""
    doc = batch_document(
        box,
        "B1",
        [(1, 100)],
        valid_from=today - timedelta(days=10),
        valid_until=today + timedelta(days=30),
    )
    with box.store() as store:
        tickets.import_batch(box.site(), store, json.dumps(doc).encode())
