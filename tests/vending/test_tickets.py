"""Paper water tickets at a dispenser: redeemed through the ticket store exactly once, one
18.9 L bucket each, no money moves; the same ticket at two dispensers at the same instant pours
at one of them only."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from drivers.ble.gatt import IdentityKind, RefuseReason
from firmware_sim.ble_backend import SimulatedAir
from firmware_sim.dispenser import SimulatedDispenser
from gateway.config import Site, load_site
from gateway.northbound.receipts import verify_receipt
from gateway.northbound.signing import load_public_key
from gateway.ops import tickets
from gateway.store.vending import SessionState
from tests.support.gateways import running
from tests.support.waiting import eventually
from tests.tickets.box import PRODUCT, code, import_b1, write_box
from tests.vending.conftest import (
    ADDRESSES,
    answered,
    dispenser_entry,
    gateway_for,
    present,
    refusal,
    session_messages,
    sessions,
)

TODAY = datetime.now(ZoneInfo("Asia/Shanghai")).date()  # the box's local day


def ticket_site(directory: Path, device_ids: list[str]) -> Site:
    """A box with a tickets section, batch B1 (serials 1..100) imported, and dispensers that
    take tickets for 18.9 L buckets."""
    box = write_box(directory)
    import_b1(box, TODAY)
    site_doc: dict[str, Any] = yaml.safe_load(box.site_file.read_text())
    site_doc["devices"] = {
        "ble_dispensers": [dispenser_entry(d, ticket_product=PRODUCT) for d in device_ids]
    }
    box.site_file.write_text(yaml.safe_dump(site_doc, sort_keys=False))
    return load_site(box.site_file)


def shown(device: SimulatedDispenser) -> RefuseReason | None:
    return device.display


def redemptions(site: Site) -> list[tuple[str, str]]:
    with tickets.open_ticket_store(tickets.load_ticket_site(site.path)) as store:
        return [(r.code, r.where) for r in store.redemptions()]


async def test_ticket_pours_one_bucket_once_and_moves_no_money(
    tmp_path: Path, air: SimulatedAir
) -> None:
    site = ticket_site(tmp_path, ["kiosk-1"])
    kiosk = air.add(SimulatedDispenser(ADDRESSES["kiosk-1"]))
    gateway, _ = gateway_for(site, air)
    async with running(gateway):
        await present(kiosk, IdentityKind.TICKET, code(7))
        await eventually(lambda: kiosk.max_ml > 0)
        assert kiosk.max_ml == 18_900  # one ticket = one 18.9 L bucket
        assert kiosk.pour(20_000) == 18_900
        await eventually(lambda: gateway.vending.counters.settled == 1)
        [journalled] = sessions(gateway)
        assert (journalled.state, journalled.poured_ml, journalled.charge_minor) == (
            SessionState.SETTLED,
            18_900,
            0,
        )
        assert gateway.store.entries("A1") == []  # no money moves
        # The customer's receipt names the ticket and carries no money.
        receipt = session_messages(gateway)[1]["receipt"]
        assert (receipt["kind"], receipt["ticket"], receipt["poured_ml"]) == (
            "vending",
            code(7),
            18_900,
        )
        assert {"account", "amount_minor", "currency", "balance_after_minor"}.isdisjoint(receipt)
        key = load_public_key((site.path.parent / "keys" / "gateway.pub.pem").read_bytes())
        assert verify_receipt(receipt, key).receipt_seq == 1
        # The same ticket again: used.
        await present(kiosk, IdentityKind.TICKET, code(7))
        await eventually(lambda: gateway.vending.counters.refused == 1)
        assert await refusal(kiosk) is RefuseReason.TICKET_USED
        # A mistyped code (check digit): refused, nothing redeemed.
        bad = code(8)[:-1] + str((int(code(8)[-1]) + 1) % 10)
        await present(kiosk, IdentityKind.TICKET, bad)
        await eventually(lambda: gateway.vending.counters.refused == 2)
        assert await refusal(kiosk) is RefuseReason.OTHER
        assert [m["status"] for m in session_messages(gateway)] == [
            "authorised",
            "settled",
            "refused",
            "refused",
        ]
    assert redemptions(site) == [(code(7), "dispenser kiosk-1 session 1")]


async def test_same_ticket_at_two_dispensers_at_once_pours_at_one_only(
    tmp_path: Path, air: SimulatedAir
) -> None:
    site = ticket_site(tmp_path, ["kiosk-1", "kiosk-2"])
    kiosks = [air.add(SimulatedDispenser(a)) for a in ADDRESSES.values()]
    gateway, _ = gateway_for(site, air)
    async with running(gateway):
        for kiosk in kiosks:  # back to back, before either is answered
            await present(kiosk, IdentityKind.TICKET, code(9))
        counters = gateway.vending.counters
        await eventually(lambda: counters.granted + counters.refused == 2)
        await eventually(lambda: answered(kiosks), what="both kiosks answered")
        assert (counters.granted, counters.refused) == (1, 1)
        assert sorted(k.max_ml for k in kiosks) == [0, 18_900]
        assert [shown(k) for k in kiosks if k.max_ml == 0] == [RefuseReason.TICKET_USED]
    assert [c for c, _ in redemptions(site)] == [code(9)]


async def test_an_emergency_ticket_at_a_dispenser_is_redeemed_as_emergency(
    tmp_path: Path, air: SimulatedAir
) -> None:
    site = ticket_site(tmp_path, ["kiosk-1"])
    ticket_site_ = tickets.load_ticket_site(site.path)
    with tickets.open_ticket_store(ticket_site_) as store:
        sold = tickets.issue_emergency(
            ticket_site_, store, PRODUCT, now=datetime.now(ZoneInfo("UTC"))
        )
    kiosk = air.add(SimulatedDispenser(ADDRESSES["kiosk-1"]))
    gateway, _ = gateway_for(site, air)
    async with running(gateway):
        await present(kiosk, IdentityKind.TICKET, sold.code)
        await eventually(lambda: kiosk.max_ml > 0)
        assert kiosk.pour(18_900) == 18_900
        await eventually(lambda: gateway.vending.counters.settled == 1)
    with tickets.open_ticket_store(ticket_site_) as store:
        [used] = store.redemptions()
    # Counted with the emergency tickets (prepay ticket stats), not with the paper ones.
    assert (used.code, used.kind) == (sold.code, "emergency")
