"""Through a real mosquitto: simulated devices publish as ChirpStack / TTS, the adapter bills,
closes a valve with a downlink, and confirms it by the network's ack and the valve's report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

import aiomqtt
import pytest

from drivers.lorawan.adapter import LnsAdapter
from drivers.lorawan.config import LnsConfig
from drivers.lorawan.valves import CommandPhase
from drivers.ports import DriverError, DriverEventKind, Reading, SupplyState
from firmware_sim.lns_uplink import LnsSimulator, SimKind
from tests.fixtures.mosquitto import Broker
from tests.lorawan.helpers import QueueSink, codecs, running
from tests.support.waiting import DEFAULT_TIMEOUT_S

pytestmark = pytest.mark.integration

APP = "8f5a2b1c-3d4e-4f60-9a7b-1c2d3e4f5a6b"
METER_EUI = "24e124136b000001"
VALVE_EUI = "24e124460c000002"


def _config(broker: Broker, kind: SimKind) -> LnsConfig:
    data: dict[str, Any] = {
        "name": f"test-{kind}",
        "kind": kind,
        "broker": {"host": broker.host, "port": broker.port},
        "application_id": APP if kind == "chirpstack" else "water",
        "qos": 1 if kind == "chirpstack" else 0,
        "reconnect_s": 0.2,
        "devices": [
            {
                "dev_eui": METER_EUI,
                "device_id": "meter-1",
                "codec": "milesight-em300-di",
                "meter_id": "M1",
                "register_multiply": 10,
            },
            {
                "dev_eui": VALVE_EUI,
                "device_id": "valve-1",
                "codec": "milesight-uc511",
                "meter_id": "M2",
                "valve_device_id": "V2",
            },
        ],
    }
    if kind == "tts":
        data["tenant_id"] = "ttn"
    return LnsConfig.model_validate(data)


def _sim(broker: Broker, kind: SimKind) -> Any:
    return LnsSimulator.connect(
        broker.host,
        broker.port,
        kind=kind,
        application_id=APP if kind == "chirpstack" else "water",
        tenant_id="ttn" if kind == "tts" else None,
    )


@pytest.mark.parametrize("kind", ["chirpstack", "tts"])
async def test_e2e_readings_then_close_confirmed_by_ack_and_report(
    mosquitto: Broker, kind: SimKind
) -> None:
    async with running(_config(mosquitto, kind)) as (adapter, sink), _sim(mosquitto, kind) as sim:
        meter = sim.add_meter(METER_EUI, "meter-1", pulse=100)
        valve = sim.add_valve(VALVE_EUI, "valve-1", valve_open=True, pulse=7)

        await sim.uplink(meter)
        reading = await sink.next_reading()
        assert (reading.meter_id, reading.register_milli, reading.seq) == ("M1", 1000, 0)
        assert reading.source == f"{kind}:{METER_EUI if kind == 'chirpstack' else 'meter-1'}"

        await sim.uplink(valve)
        reading = await sink.next_reading()
        assert (reading.meter_id, reading.register_milli) == ("M2", 7)
        assert await adapter.read_supply("V2") is SupplyState.ON
        assert adapter.handles("V2")
        assert not adapter.handles("M1")

        await adapter.set_supply("V2", on=False)
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            await sim.wait_downlink(valve)
        assert valve.queue[0].payload == bytes.fromhex("ff1d0000")
        assert valve.queue[0].confirmed

        # Class A: the next uplink opens the RX window that carries the command.
        await sim.uplink(valve)
        await sink.next_reading()
        assert valve.valve_open is False
        assert await adapter.read_supply("V2") is SupplyState.ON  # not reported yet

        # The following uplink reports "closed" and carries the ACK.
        valve.pulse += 1
        await sim.uplink(valve)
        assert (await sink.next_reading()).register_milli == 8
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            command = await adapter.wait_confirmed("V2", on=False)
        assert command.phase is CommandPhase.CONFIRMED
        assert command.acked
        assert await adapter.read_supply("V2") is SupplyState.OFF

        await adapter.set_supply("V2", on=True)
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            await sim.wait_downlink(valve)
        await sim.uplink(valve)
        await sim.uplink(valve)
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            await adapter.wait_confirmed("V2", on=True)
        assert await adapter.read_supply("V2") is SupplyState.ON
        assert adapter.errors == 0


@pytest.mark.parametrize("kind", ["chirpstack", "tts"])
async def test_e2e_repeats_dropped_losses_tolerated_reset_detected(
    mosquitto: Broker, kind: SimKind
) -> None:
    async with running(_config(mosquitto, kind)) as (adapter, sink), _sim(mosquitto, kind) as sim:
        meter = sim.add_meter(METER_EUI, "meter-1", pulse=1)
        seqs: list[int | None] = []
        await sim.uplink(meter, repeat=3)  # fCnt 0, three times
        meter.pulse = 2
        await sim.uplink(meter, lose=True)  # fCnt 1 lost on air
        meter.pulse = 3
        await sim.uplink(meter, repeat=2)  # fCnt 2, twice
        seqs += [(await sink.next_reading()).seq for _ in range(2)]
        assert seqs == [0, 2]

        sim.reset_counter(meter, join=kind == "chirpstack")
        meter.pulse = 4
        await sim.uplink(meter, repeat=2)  # fCnt 0 of a new session, twice
        event = await sink.next_event(DriverEventKind.COUNTER_RESET)
        assert event.device_id == "M1"
        assert event.detail["epoch"] == 1
        assert event.detail["previous_f_cnt"] == 2
        assert event.detail["reason"] == ("join" if kind == "chirpstack" else "counter_back")
        after = await sink.next_reading()
        assert (after.seq, after.register_milli) == (0, 40)
        meter.pulse = 5
        await sim.uplink(meter)
        assert (await sink.next_reading()).seq == 1
        assert sink.readings.empty()
        assert adapter.router.stats["repeat"] == 4
        assert adapter.router.stats["counter_reset"] == 1


async def test_e2e_nbiot_generic_mapping(mosquitto: Broker) -> None:
    config = LnsConfig.model_validate(
        {
            "name": "nb",
            "kind": "nbiot",
            "broker": {"host": mosquitto.host, "port": mosquitto.port},
            "qos": 1,
            "nbiot": {
                "topic": "platform/+/data",
                "device_id_path": "imei",
                "timestamp_path": "ts",
                "timestamp_format": "epoch_s",
                "register_path": "meter.volume_m3",
                "seq_path": "meter.seq",
            },
            "devices": [{"device_id": "861234567890123", "meter_id": "NB1"}],
        }
    )
    body = {"imei": "861234567890123", "ts": 1767261600, "meter": {"volume_m3": 3.5, "seq": 9}}
    async with (
        running(config) as (_adapter, sink),
        aiomqtt.Client(mosquitto.host, mosquitto.port) as client,
    ):
        for _ in range(2):  # the platform redelivers
            await client.publish("platform/x/data", json.dumps(body), qos=1)
        await client.publish("platform/x/data", b"{oops", qos=1)
        reading = await sink.next_reading()
        assert (reading.meter_id, reading.register_milli, reading.seq) == ("NB1", 3500, 9)
        event = await sink.next_event(DriverEventKind.FRAME_ERROR)
        assert "not JSON" in str(event.detail["message"])
        assert sink.readings.empty()


async def test_e2e_set_supply_while_disconnected_raises(mosquitto: Broker) -> None:
    adapter = LnsAdapter(_config(mosquitto, "chirpstack"), codecs())
    with pytest.raises(DriverError, match="not connected"):
        await adapter.set_supply("V2", on=False)
    with pytest.raises(DriverError, match="not a valve"):
        await adapter.read_supply("M1")


async def test_e2e_broker_restart_reports_offline_then_online_and_resumes(
    mosquitto: Broker,
) -> None:
    async with running(_config(mosquitto, "chirpstack")) as (adapter, sink):
        mosquitto.restart()
        await sink.next_event(DriverEventKind.OFFLINE)
        await sink.next_event(DriverEventKind.ONLINE)
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            await adapter.wait_connected()
        async with _sim(mosquitto, "chirpstack") as sim:
            meter = sim.add_meter(METER_EUI, "meter-1", pulse=3)
            await sim.uplink(meter)
            assert (await sink.next_reading()).register_milli == 30


async def test_e2e_simulator_program_publishes_to_the_adapter(mosquitto: Broker) -> None:
    async with running(_config(mosquitto, "chirpstack")) as (_adapter, sink):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "firmware_sim.lns_uplink",
            "--host",
            mosquitto.host,
            "--port",
            str(mosquitto.port),
            "--kind",
            "chirpstack",
            "--application-id",
            APP,
            "--meter",
            METER_EUI,
            "--valve",
            VALVE_EUI,
            "--count",
            "1",
            "--interval-s",
            "0",
            "--pulses-per-uplink",
            "5",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            assert await proc.wait() == 0
        got = {
            (r.meter_id, r.register_milli)
            for r in [await sink.next_reading(), await sink.next_reading()]
        }
        assert got == {("M1", 50), ("M2", 5)}


class _CrashingSink(QueueSink):
    """A sink whose journal never commits: `put` takes the reading and never returns, as in a
    gateway that dies before its journal commit."""

    async def put(self, reading: Reading) -> None:
        await self.readings.put(reading)
        await asyncio.Event().wait()


async def test_e2e_qos1_uplink_taken_before_a_crash_is_delivered_again(mosquitto: Broker) -> None:
    config = _config(mosquitto, "chirpstack").model_copy(
        update={
            "broker": _config(mosquitto, "chirpstack").broker.model_copy(
                update={"client_id": "gw-durable-uplinks"}
            )
        }
    )
    async with _sim(mosquitto, "chirpstack") as sim:
        meter = sim.add_meter(METER_EUI, "meter-1", pulse=100)
        crashing = _CrashingSink()
        adapter = LnsAdapter(config, codecs())
        task = asyncio.create_task(adapter.run(crashing))
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            await adapter.wait_connected()
        await sim.uplink(meter)
        taken = await crashing.next_reading()
        task.cancel()  # the process dies with the uplink taken but not journalled
        with contextlib.suppress(asyncio.CancelledError):
            await task

        # The next start, same client id: the broker delivers the unacknowledged uplink again.
        async with running(config) as (_, sink):
            again = await sink.next_reading()
            assert (again.reading_id, again.register_milli) == (taken.reading_id, 1000)
            meter.pulse += 1
            await sim.uplink(meter)
            assert (await sink.next_reading()).register_milli == 1010

        # It was acknowledged this time (after `put` returned): a third start gets nothing old.
        async with running(config) as (_, sink):
            meter.pulse += 1
            await sim.uplink(meter)
            assert (await sink.next_reading()).register_milli == 1020
