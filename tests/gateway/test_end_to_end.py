"""The whole gateway against real peers: mosquitto, a Modbus TCP water meter with a valve.

Top-up over MQTT (signed), consumption billed in real time, credit exhausted -> valve closed
and confirmed from the device side, top-up -> valve reopened; duplicates and forgeries change
nothing; the ledger verifies and equals the reference bill of every journalled reading.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from billing_engine.reference import RefAccount, ReferenceBiller
from drivers.modbus.profiles import load_profile
from firmware_sim.meter_model import SimMeter
from firmware_sim.modbus_meter import MeterSimulator
from gateway.daemon import Gateway
from gateway.northbound.commands import new_command, sign_command
from gateway.northbound.payloads import CommandKind
from gateway.northbound.signing import load_private_key
from gateway.startup import STATE_FILE, read_ledger_key
from gateway.store import Store, verify_ledger
from tests.fixtures.mosquitto import Broker
from tests.gateway.crash_support import Watcher
from tests.gateway.site import PROFILES, load
from tests.support.gateways import running
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def watching(broker: Broker) -> AsyncIterator[Watcher]:
    """The backend stand-in of `crash_support`, subscribed for the block."""
    watcher = Watcher()
    async with watcher.connected(broker.host, broker.port):
        yield watcher


async def send_command(
    broker: Broker, keys: Path, kind: str, fields: dict[str, Any], command_id: str
) -> dict[str, Any]:
    key = load_private_key((keys / "backend.pem").read_bytes())
    body = new_command(
        CommandKind(kind), "test-site", fields, now=datetime.now(UTC), command_id=command_id
    )
    command = sign_command(body, key)
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(f"prepay/test-site/cmd/{kind}", json.dumps(command), qos=1)
    return command


async def test_gateway_cutoff_and_restore_end_to_end(mosquitto: Broker, tmp_path: Path) -> None:
    profile = load_profile(PROFILES / "water_xintai_valve.yaml")
    # 1000 L/s while the valve is open: 1 m3/s at 5 yuan/m3 = 500 fen/s.
    meter = SimMeter(1, profile, energy_milli=1_000_000, rate_milli_per_h=3_600_000)
    async with MeterSimulator.tcp([meter], port=0) as sim:
        site = load(tmp_path, mqtt_port=mosquitto.port, modbus_port=sim.port)
        gateway = Gateway(site)
        async with watching(mosquitto) as watcher, running(gateway):
            await watcher.wait_for(lambda t, d: t.endswith("/status") and d["status"] == "online")

            # A signed top-up of 10.00 yuan is applied once and answered with a receipt.
            topup = await send_command(
                mosquitto,
                tmp_path / "keys",
                "topup",
                {"account": "A1", "amount_minor": 1000, "currency": "CNY"},
                "t-1",
            )
            result = await watcher.wait_for(
                lambda t, d: t.endswith("cmd/topup/result") and d.get("id") == "t-1"
            )
            assert result["status"] == "applied"
            assert result["receipt"]["amount_minor"] == 1000
            assert result["receipt"]["receipt_seq"] == 1

            # Consumption runs the credit out: the valve closes and the device confirms it.
            # The simulated meter is a Modbus server: its valve has no event to await.
            await eventually(lambda: not meter.supply_on, what="the valve closed")
            await watcher.wait_for(lambda t, d: t.endswith("/event") and d["event"] == "cutoff")
            await watcher.wait_for(
                lambda t, d: (
                    t.endswith("device/v1/state")
                    and d.get("supply") == "off"
                    and d["confirmation"] == "confirmed"
                )
            )
            assert meter.supply_writes[-1] is False

            # The same top-up again changes nothing and is answered duplicate.
            async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
                await client.publish("prepay/test-site/cmd/topup", json.dumps(topup), qos=1)
            dup = await watcher.wait_for(
                lambda t, d: t.endswith("cmd/topup/result") and d.get("status") == "duplicate"
            )
            assert dup["receipt"]["receipt_seq"] == 1

            # A forged command is rejected and changes nothing.
            forged = dict(topup, id="t-forged", amount_minor=99_999)
            async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
                await client.publish("prepay/test-site/cmd/topup", json.dumps(forged), qos=1)
            bad = await watcher.wait_for(
                lambda t, d: t.endswith("cmd/topup/result") and d.get("id") == "t-forged"
            )
            assert (bad["status"], bad["reason"]) == ("rejected", "bad_signature")

            # A real top-up restores supply.
            await send_command(
                mosquitto,
                tmp_path / "keys",
                "topup",
                {"account": "A1", "amount_minor": 50_000, "currency": "CNY"},
                "t-2",
            )
            await eventually(lambda: meter.supply_on, what="the valve reopened")
            await watcher.wait_for(lambda t, d: t.endswith("/event") and d["event"] == "restored")

    # Afterwards: the ledger chain verifies; balance = top-ups - deductions; deductions equal
    # the reference bill of every journalled reading.
    key = read_ledger_key(site.resolve(site.config.keys.ledger_key_file))
    state = site.state_dir / STATE_FILE
    assert verify_ledger(state, key).ok
    with Store(state, ledger_key=key) as store:
        entries = store.entries("A1", limit=100_000)
        topups = sum(e.amount_minor for e in entries if e.kind.value == "topup")
        deducted = -sum(e.amount_minor for e in entries if e.kind.value == "deduction")
        assert topups == 51_000
        # balance = top-ups - deductions + the debt register's moves and recoveries
        assert store.balance("A1") == topups - deducted + store.debt("A1")
        rows = store.billed(100_000)
    assert deducted > 1000  # credit really ran out
    tariff = site.tariffs["beijing_residential_water"]
    biller = ReferenceBiller(tariff)
    ref = RefAccount(0, "resident")
    expected = [
        biller.bill(ref, r.reading.read_at, r.reading.register_milli).deduction_minor
        for r in rows
        if r.reading.meter_id == "m1"
    ]
    assert sum(expected) == deducted
    assert [r.deduction_minor for r in rows] == expected
