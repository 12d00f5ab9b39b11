"""A publish-only Modbus meter polled alongside a billed one, against real peers: a mosquitto
broker, a firmware_sim Modbus TCP server with both meters, the gateway with its real drivers.

Every reading of the publish-only meter reaches the subscriber exactly once, marked
``"billing": "none"``, with the consumption since the meter's previous reading; the billed
meter is billed as before (its deductions are the reference bill of its readings); the
publish-only meter has no ledger entry, no alarm and no held reading, and its journal rows say
``publish_only``.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from billing_engine.reference import RefAccount, ReferenceBiller
from drivers.modbus.profiles import load_profile
from firmware_sim.meter_model import SimMeter
from firmware_sim.modbus_meter import MeterSimulator
from gateway.config import load_site
from gateway.daemon import Gateway
from gateway.startup import STATE_FILE, read_ledger_key
from gateway.store import EntryKind, JournalState, Store, verify_ledger
from tests.fixtures.mosquitto import Broker
from tests.gateway.crash_support import Watcher, all_rows
from tests.gateway.site import PROFILES, water_account, write_site
from tests.support.gateways import running

pytestmark = pytest.mark.integration

READINGS = 20  # publish-only readings to see at the broker before stopping


def _readings_of(watcher: Watcher, meter: str) -> list[dict[str, Any]]:
    """Every reading of ``meter`` received, alone or inside a backlog batch."""
    found: list[dict[str, Any]] = []
    for topic, doc in watcher.messages:
        if topic == f"prepay/test-site/meter/{meter}/reading":
            found.append(doc)
        elif topic == f"prepay/test-site/meter/{meter}/readings":
            found.extend(doc["readings"])
    return found


async def test_publish_only_meter_polled_with_a_billed_one(
    mosquitto: Broker, tmp_path: Path
) -> None:
    water = load_profile(PROFILES / "water_xintai_valve.yaml")
    kwh = load_profile(PROFILES / "eastron_sdm120.yaml")
    billed = SimMeter(1, water, energy_milli=1_000_000, rate_milli_per_h=360_000)  # 100 L/s
    # 1,000 kWh, 36 kWh/h = 10 Wh/s: small enough that float32 keeps every Wh.
    published = SimMeter(2, kwh, energy_milli=1_000_000, rate_milli_per_h=36_000)
    async with MeterSimulator.tcp([billed, published], port=0) as sim:
        devices = [
            {
                "device_id": "v1",
                "unit_id": 1,
                "profile": "water_xintai_valve",
                "poll_interval_s": 0.1,
                "meter_id": "m1",
                "allow_unconfirmed_supply": True,
            },
            {
                "device_id": "e9",
                "unit_id": 2,
                "profile": "eastron_sdm120",
                "poll_interval_s": 0.1,
                "meter_id": "m9",
            },
        ]
        bus = {"name": "bus0", "kind": "tcp", "host": "127.0.0.1", "port": sim.port}
        account = water_account("A1", "m1", actuator="v1")
        account["opening_balance_minor"] = 10_000_000  # funded: the valve stays open
        site = load_site(
            write_site(
                tmp_path,
                mqtt_port=mosquitto.port,
                modbus_port=sim.port,
                accounts=[account],
                extra={
                    "devices": {
                        "profiles_dir": str(PROFILES),
                        "modbus_buses": [{**bus, "timeout_s": 0.5, "devices": devices}],
                    },
                    "meters": [{"id": "m1", "max_rate_per_h": 4000}],
                    "publish_only": [{"meter": "m9", "unit": "kWh"}],
                },
            )
        )
        watcher = Watcher()
        async with watcher.connected(mosquitto.host, mosquitto.port):
            async with running(Gateway(site)):
                await watcher.wait_until(lambda: len(_readings_of(watcher, "m9")) >= READINGS)
                await watcher.wait_until(lambda: len(_readings_of(watcher, "m1")) >= 2)
            # Stopped: the outbox was drained. Every journalled reading of m9 must arrive.
            key = read_ledger_key(site.resolve(site.config.keys.ledger_key_file))
            with Store(site.state_dir / STATE_FILE, ledger_key=key) as store:
                rows = all_rows(store)
                entries = store.entries(None, limit=100_000)
                events = store.events(None, limit=100_000)
                assert store.outbox_stats().total_pending == 0
            mine = sorted(
                (r for r in rows if r.reading.meter_id == "m9"), key=lambda r: r.reading.read_at
            )
            ids = {r.reading.reading_id for r in mine}
            await watcher.wait_until(
                lambda: ids <= {d["reading_id"] for d in _readings_of(watcher, "m9")}
            )
        received = _readings_of(watcher, "m9")

    # Exactly once each, and nothing that was not journalled.
    assert Counter(d["reading_id"] for d in received) == Counter(ids)
    # The mark, the unit of the publish_only entry (kWh -> Wh), and the delta: the register
    # minus the previous reading's, in read_at order (the journal's registers, not the
    # gateway's arithmetic; the simulated meter only counts up, so every delta is that).
    by_id = {d["reading_id"]: d for d in received}
    registers = [r.reading.register_milli for r in mine]
    expected = [0] + [b - a for a, b in itertools.pairwise(registers)]
    assert [by_id[r.reading.reading_id]["delta"] for r in mine] == expected
    assert sum(expected) > 0  # the meter did count during the test
    assert {(d["billing"], d["unit"]) for d in received} == {("none", "Wh")}
    # Journalled as not billed by design; nothing held, charged or raised for m9.
    assert {(r.state, r.bill_status, r.deduction_minor) for r in mine} == {
        (JournalState.BILLED, "publish_only", 0)
    }
    assert [e for e in entries if e.ref.startswith("m9@")] == []
    assert [e for e in events if "m9" in repr(e.detail)] == []
    assert [t for t, _ in watcher.messages if "/account/" in t and "m9" in t] == []
    # The billed meter, as before: its published readings carry no mark, the ledger verifies,
    # and A1's deductions are the reference bill of m1's billed readings, reading by reading.
    assert all("billing" not in d for d in _readings_of(watcher, "m1"))
    assert verify_ledger(site.state_dir / STATE_FILE, key).ok
    biller = ReferenceBiller(site.tariffs["beijing_residential_water"])
    ref = RefAccount(0, "resident")
    m1 = [r for r in rows if r.reading.meter_id == "m1" and r.state is JournalState.BILLED]
    bill = [biller.bill(ref, r.reading.read_at, r.reading.register_milli) for r in m1]
    assert [r.deduction_minor for r in m1] == [b.deduction_minor for b in bill]
    deducted = -sum(e.amount_minor for e in entries if e.kind is EntryKind.DEDUCTION)
    assert deducted == sum(b.deduction_minor for b in bill) > 0
    assert {e.account_id for e in entries} == {"A1"}
