"""Vending sessions end to end: the simulated dispenser (profile v2) behind the real bleak client
and the production driver, the real gateway and store. Golden values carry their arithmetic.

Prices: 35 fen per litre; the charge of a pour is ``ml * 35 / 1000`` rounded half-up.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from drivers.ble.gatt import (
    DISPENSED_UUID,
    DispensedFrame,
    DispenseFlags,
    IdentityKind,
    RefuseReason,
    encode_dispensed,
)
from firmware_sim.ble_backend import SimulatedAir
from firmware_sim.dispenser import SimulatedDispenser
from gateway.config import Site
from gateway.store import vending as journal
from gateway.store.vending import SessionState
from tests.support.gateways import running
from tests.support.waiting import eventually
from tests.vending.conftest import (
    ADDRESSES,
    CARD,
    MAX_ML,
    PHONE,
    STRANGER,
    answered,
    dispenser_entry,
    gateway_for,
    present,
    refusal,
    session_messages,
    sessions,
    topup,
    vend_entries,
    vending_site,
)


def shown(device: SimulatedDispenser) -> RefuseReason | None:
    """What the display shows now (read through a call: it changes behind mypy's back)."""
    return device.display


async def authorised(kiosk: SimulatedDispenser) -> None:
    await eventually(lambda: kiosk.max_ml > 0, what="the dispenser is authorised")


async def test_customer_with_credit_pours_and_is_billed_exactly(
    site: Site, air: SimulatedAir, kiosk: SimulatedDispenser
) -> None:
    gateway, _ = gateway_for(site, air)
    async with running(gateway):
        await topup(gateway, 1_000)
        await present(kiosk, IdentityKind.ACCOUNT_CARD, CARD)
        await authorised(kiosk)
        # free credit 1000 fen covers (1000*1000 + 499) // 35 = 28 585 mL; capped at 20 000.
        assert kiosk.max_ml == MAX_ML == 20_000
        assert kiosk.pour(2_500) == 2_500
        kiosk.finish()  # the customer stops early
        await eventually(lambda: gateway.vending.counters.settled == 1)
        # 2.5 L x 35 fen = 87.5 fen -> 88 (half-up); 1000 - 88 = 912
        assert vend_entries(gateway) == [-88]
        assert gateway.probe.balance_minor("A1") == 912
        [journalled] = sessions(gateway)
        assert journalled.state is SessionState.SETTLED
        assert (journalled.poured_ml, journalled.billed_ml, journalled.charge_minor) == (
            2_500,
            2_500,
            88,
        )
        messages = session_messages(gateway)
        assert [m["status"] for m in messages] == ["authorised", "settled"]
        settled = messages[-1]
        assert settled["topic"] == "prepay/test-site/dispenser/kiosk-1/session"
        assert (settled["poured_ml"], settled["charge_minor"], settled["balance_minor"]) == (
            2_500,
            88,
            912,
        )
        assert settled["account"] == "A1"
        assert settled["currency"] == "CNY"


async def test_full_pour_stops_at_what_the_credit_covers_and_never_exceeds_it(
    site: Site, air: SimulatedAir, kiosk: SimulatedDispenser
) -> None:
    gateway, _ = gateway_for(site, air)
    async with running(gateway):
        await topup(gateway, 100)
        await present(kiosk, IdentityKind.PHONE_ID, PHONE)
        await authorised(kiosk)
        # (100*1000 + 499) // 35 = 100 499 // 35 = 2 871 mL
        assert kiosk.max_ml == 2_871
        assert kiosk.pour(5_000) == 2_871  # the valve closes by itself at the limit
        await eventually(lambda: gateway.vending.counters.settled == 1)
        # 2 871 x 35 = 100 485 -> (100 485 + 500) // 1000 = 100 fen: the whole credit, no more
        assert vend_entries(gateway) == [-100]
        assert gateway.probe.balance_minor("A1") == 0


async def test_customer_without_credit_is_refused_on_the_device_and_nothing_moves(
    site: Site, air: SimulatedAir, kiosk: SimulatedDispenser
) -> None:
    gateway, _ = gateway_for(site, air)
    async with running(gateway):
        await present(kiosk, IdentityKind.ACCOUNT_CARD, CARD)
        await eventually(lambda: kiosk.display is not None, what="a reason on the display")
        assert shown(kiosk) is RefuseReason.NO_CREDIT
        assert kiosk.last_session_id == 0  # nothing was authorised
        assert kiosk.pour(1_000) == 0  # and nothing flows
        await present(kiosk, IdentityKind.ACCOUNT_CARD, STRANGER)
        await eventually(lambda: gateway.vending.counters.refused == 2)
        assert await refusal(kiosk) is RefuseReason.UNKNOWN_ACCOUNT
        assert vend_entries(gateway) == []
        assert gateway.probe.balance_minor("A1") == 0
        assert sessions(gateway) == []
        refused = session_messages(gateway)
        assert [(m["status"], m["reason"]) for m in refused] == [
            ("refused", "no_credit"),
            ("refused", "unknown_account"),
        ]
        assert "session_id" not in refused[0]


async def test_device_reporting_more_than_authorised_is_billed_the_authorised_volume(
    site: Site, air: SimulatedAir, kiosk: SimulatedDispenser
) -> None:
    kiosk.overreport_ml = 5_000  # a faulty flow meter
    gateway, _ = gateway_for(site, air)
    async with running(gateway):
        await topup(gateway, 100)
        await present(kiosk, IdentityKind.ACCOUNT_CARD, CARD)
        await authorised(kiosk)
        kiosk.pour(5_000)  # 2 871 mL flow, the device says 2 871 + 5 000 = 7 871
        await eventually(lambda: gateway.vending.counters.settled == 1)
        # billed: the authorised 2 871 mL = 100 fen (above), not 7 871 mL (276 fen)
        assert vend_entries(gateway) == [-100]
        assert gateway.probe.balance_minor("A1") == 0
        settled = session_messages(gateway)[-1]
        assert (settled["poured_ml"], settled["billed_ml"], settled["alarm"]) == (
            7_871,
            2_871,
            "dispenser_over_report",
        )
        alarms = [e for e in gateway.store.recent_events(50) if e.kind == "alarm"]
        assert len(alarms) == 1


async def test_link_lost_mid_pour_settles_once_from_the_report_read_back(
    site: Site, air: SimulatedAir, kiosk: SimulatedDispenser
) -> None:
    gateway, [client] = gateway_for(site, air)
    async with running(gateway):
        await topup(gateway, 1_000)
        await present(kiosk, IdentityKind.ACCOUNT_CARD, CARD)
        await authorised(kiosk)
        connects = client.connects
        kiosk.disconnect_at_session_ml = 1_000
        # The link drops at 1 000 mL; the pour goes on offline, and the customer stops at
        # 2 500 mL while no gateway hears it: the end frame is not delivered.
        assert kiosk.pour(2_500) == 2_500
        kiosk.finish()
        await eventually(lambda: client.connects > connects, what="reconnected")
        await eventually(lambda: gateway.vending.counters.settled == 1)
        # 2 500 mL -> 88 fen (as above), once
        assert vend_entries(gateway) == [-88]
        assert gateway.probe.balance_minor("A1") == 912
        # The device re-sends its end report (a replay): nothing changes.
        await eventually(lambda: kiosk.listening(DISPENSED_UUID), what="subscribed again")
        replay = DispensedFrame(
            1, kiosk.total_ml, 2_500, DispenseFlags.STOPPED | DispenseFlags.SESSION_END
        )
        kiosk.inject_notification(DISPENSED_UUID, encode_dispensed(replay))
        await eventually(lambda: gateway.vending.counters.replayed >= 1)
        assert vend_entries(gateway) == [-88]
        assert gateway.probe.balance_minor("A1") == 912


async def test_gateway_crash_mid_pour_settles_exactly_once_after_restart(
    site: Site, air: SimulatedAir, kiosk: SimulatedDispenser
) -> None:
    first, _ = gateway_for(site, air)
    crashed = asyncio.create_task(first.run(asyncio.Event().wait), name="first gateway")
    await asyncio.wait_for(first.ready.wait(), 30)
    await topup(first, 1_000)
    await present(kiosk, IdentityKind.ACCOUNT_CARD, CARD)
    await authorised(kiosk)
    kiosk.pour(1_000)
    # The gateway dies mid-pour: no shutdown, no settlement (the task is cancelled).
    crashed.cancel()
    await asyncio.wait([crashed])
    assert kiosk.connected == 0
    kiosk.pour(1_500)  # the device pours on by itself, up to what it was authorised
    kiosk.finish()

    second, _ = gateway_for(site, air)  # the same site, the same store
    async with running(second):
        await eventually(lambda: second.vending.counters.settled == 1)
        # 1 000 + 1 500 = 2 500 mL -> 88 fen, once
        assert vend_entries(second) == [-88]
        assert second.probe.balance_minor("A1") == 912
        [journalled] = sessions(second)
        assert journalled.state is SessionState.SETTLED
    third, _ = gateway_for(site, air)  # and again: the report read back once more is a replay
    async with running(third):
        await eventually(lambda: third.vending.counters.replayed == 1)
        assert vend_entries(third) == [-88]
        assert third.probe.balance_minor("A1") == 912


async def test_same_card_at_two_dispensers_at_once_spends_its_credit_once(
    tmp_path: Path, air: SimulatedAir
) -> None:
    site = vending_site(tmp_path, [dispenser_entry("kiosk-1"), dispenser_entry("kiosk-2")])
    kiosks = [air.add(SimulatedDispenser(a)) for a in ADDRESSES.values()]
    gateway, _ = gateway_for(site, air)
    async with running(gateway):
        await topup(gateway, 100)
        for kiosk in kiosks:
            await present(kiosk, IdentityKind.ACCOUNT_CARD, CARD)  # back to back
        await eventually(
            lambda: gateway.vending.counters.granted + gateway.vending.counters.refused == 2
        )
        await eventually(lambda: answered(kiosks), what="both kiosks answered")
        # 100 fen covers one pour of 2 871 mL (held while it is open); the other is refused.
        granted = [k for k in kiosks if k.max_ml > 0]
        refused = [k for k in kiosks if k.display is not None]
        assert [k.max_ml for k in granted] == [2_871]
        assert [k.display for k in refused] == [RefuseReason.NO_CREDIT]
        granted[0].pour(5_000)
        await eventually(lambda: gateway.vending.counters.settled == 1)
        assert vend_entries(gateway) == [-100]
        assert gateway.probe.balance_minor("A1") == 0


async def test_with_the_broker_down_sessions_settle_and_messages_wait_in_the_outbox(
    site: Site, air: SimulatedAir, kiosk: SimulatedDispenser
) -> None:
    gateway, _ = gateway_for(site, air, connect_mqtt=True)  # nothing listens on its port
    async with running(gateway):
        await topup(gateway, 1_000)
        await present(kiosk, IdentityKind.ACCOUNT_CARD, CARD)
        await authorised(kiosk)
        kiosk.pour(2_500)
        kiosk.finish()
        await eventually(lambda: gateway.vending.counters.settled == 1)
        assert gateway.probe.balance_minor("A1") == 912
        assert [m["status"] for m in session_messages(gateway)] == ["authorised", "settled"]


async def test_bucket_pricing_authorises_whole_buckets(tmp_path: Path, air: SimulatedAir) -> None:
    entry = dispenser_entry("kiosk-1", price_per_litre_minor=None, price_per_bucket_minor=600)
    site = vending_site(tmp_path, [entry])
    kiosk = air.add(SimulatedDispenser(ADDRESSES["kiosk-1"]))
    gateway, _ = gateway_for(site, air)
    async with running(gateway):
        await topup(gateway, 1_000)
        await present(kiosk, IdentityKind.ACCOUNT_CARD, CARD)
        await authorised(kiosk)
        # 1000 // 600 = 1 bucket = 18 900 mL (max_buckets 1)
        assert kiosk.max_ml == 18_900
        kiosk.pour(9_450)
        kiosk.finish()
        await eventually(lambda: gateway.vending.counters.settled == 1)
        # half a bucket: (9 450 * 600 + 9 450) // 18 900 = 5 679 450 // 18 900 = 300 fen
        assert vend_entries(gateway) == [-300]
        assert gateway.probe.balance_minor("A1") == 700


async def test_ticket_where_the_site_takes_none_is_refused_and_nothing_moves(
    site: Site, air: SimulatedAir, kiosk: SimulatedDispenser
) -> None:
    gateway, _ = gateway_for(site, air)
    async with running(gateway):
        await topup(gateway, 1_000)
        await present(kiosk, IdentityKind.TICKET, "3301011234567890")
        await eventually(lambda: gateway.vending.counters.refused == 1)
        assert await refusal(kiosk) is RefuseReason.WRONG_SCOPE
        assert kiosk.last_session_id == 0
        assert sessions(gateway) == []
        assert gateway.probe.balance_minor("A1") == 1_000


async def test_dispenser_refusing_the_grant_voids_the_session_and_bills_nothing(
    site: Site, air: SimulatedAir, kiosk: SimulatedDispenser
) -> None:
    kiosk.locked = True  # locked at the machine (operator): it refuses any Authorise
    gateway, _ = gateway_for(site, air)
    async with running(gateway):
        await topup(gateway, 1_000)
        await present(kiosk, IdentityKind.ACCOUNT_CARD, CARD)
        await eventually(lambda: gateway.vending.counters.voided == 1)
        assert await refusal(kiosk) is RefuseReason.OTHER
        [journalled] = sessions(gateway)
        assert journalled.state is SessionState.VOIDED
        assert vend_entries(gateway) == []
        assert gateway.probe.balance_minor("A1") == 1_000
        assert [m["status"] for m in session_messages(gateway)] == ["authorised", "voided"]


async def test_session_journalled_but_never_sent_is_voided_at_the_next_connect(
    site: Site, air: SimulatedAir, kiosk: SimulatedDispenser
) -> None:
    # The gateway journalled session 1 and died before telling the dispenser (which never
    # accepted a session: last_session_id 0). Written here as the flow writes it.
    first, _ = gateway_for(site, air)
    with first.store.transaction() as tx:
        journal.open_session(
            tx,
            journal.NewSession(
                dispenser_id="kiosk-1",
                session_id=1,
                request_id=1,
                identity_kind="card",
                identity=CARD,
                account_id="A1",
                currency="CNY",
                price_minor=35,
                unit_ml=1_000,
                authorised_ml=20_000,
                max_charge_minor=700,
                opened_at=datetime.now(UTC),
            ),
        )
    first.store.close()
    second, _ = gateway_for(site, air)
    async with running(second):
        await eventually(lambda: second.vending.counters.voided == 1)
        [journalled] = sessions(second)
        assert journalled.state is SessionState.VOIDED
        assert vend_entries(second) == []
        # The hold is released: the next customer gets the whole credit again.
        await topup(second, 1_000)
        await present(kiosk, IdentityKind.ACCOUNT_CARD, CARD)
        await authorised(kiosk)
        # session 1 is spent in the journal: the next one is 2 (the device accepts any id
        # above its last, 0)
        assert (kiosk.session_id, kiosk.max_ml) == (2, 20_000)
        kiosk.pour(1_000)
        kiosk.finish()
        await eventually(lambda: second.vending.counters.settled == 1)
        assert vend_entries(second) == [-35]  # 1 L x 35 fen
