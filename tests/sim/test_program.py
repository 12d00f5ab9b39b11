"""``python -m firmware_sim -c SCENARIO`` as a real process: Modbus TCP and RTU, LoRa uplinks
through mosquitto, scheduled and commanded faults, the status file, and a clean SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from drivers.ports import SupplyState
from tests.fixtures.modbus import RecordingSink, modbus_device, rtu_endpoint, tcp_endpoint
from tests.fixtures.mosquitto import Broker, free_port
from tests.sim.helpers import ROOT, modbus_bus, sim_process, write_scenario
from tests.support.waiting import DEFAULT_TIMEOUT_S

pytestmark = pytest.mark.integration

METER_EUI = "24e124136b000001"
VALVE_EUI = "24e124460c000002"


def _meter(device_id: str, unit_id: int, profile: str, start: int) -> dict[str, Any]:
    return {"device_id": device_id, "unit_id": unit_id, "profile": profile, "start": start}


async def test_program_serves_modbus_tcp_and_rtu_and_reports_a_valve_write(
    tmp_path: Path,
) -> None:
    port = free_port()
    scenario = write_scenario(
        tmp_path,
        {
            "name": "it",
            "modbus_tcp": [
                {
                    "name": "tcp0",
                    "port": port,
                    "meters": [
                        _meter("elec-1", 1, "acrel_ddsy1352", 123_450),
                        _meter("water-1", 2, "water_xintai_valve", 45_678),
                    ],
                }
            ],
            "modbus_rtu": [
                {"name": "rs485a", "meters": [_meter("water-2", 5, "water_xintai_valve", 12_000)]}
            ],
        },
    )
    async with sim_process(scenario) as sim:
        assert sim.line("modbus_tcp tcp0:") == f"modbus_tcp tcp0: 127.0.0.1:{port} (units 1, 2)"
        gateway_port = sim.status()["modbus_rtu"]["rs485a"]["gateway_port"]
        assert gateway_port in sim.line("modbus_rtu rs485a:")
        sink = RecordingSink()

        tcp = modbus_bus(
            "tcp0",
            tcp_endpoint(port),
            [
                modbus_device("elec-1", 1, "acrel_ddsy1352"),
                modbus_device("water-1", 2, "water_xintai_valve", allow_unconfirmed_supply=True),
            ],
        )
        async with tcp:
            elec = await tcp.poll_device("elec-1", sink)
            water = await tcp.poll_device("water-1", sink)
            assert elec is not None
            assert elec.register_milli == 123_450
            assert water is not None
            assert water.register_milli == 45_678

            confirmation = await tcp.set_supply_confirmed("water-1", on=False)
            assert confirmation.observed is SupplyState.OFF
            shown = await sim.wait_status("water-1", "supply_on", False)
            assert shown["supply_writes"] == 1
            assert shown["register_milli"] == 45_678
            assert sim.status()["devices"]["elec-1"]["supply_on"] is True

        rtu = modbus_bus(
            "rs485a",
            rtu_endpoint(gateway_port),
            [modbus_device("water-2", 5, "water_xintai_valve")],
        )
        async with rtu:
            reading = await rtu.poll_device("water-2", sink)
            assert reading is not None
            assert reading.register_milli == 12_000

        code, rest = await sim.stop()
        assert code == 0
        assert "stopped" in rest
        assert sim.status()["devices"]["water-1"]["supply_on"] is False


async def test_program_publishes_chirpstack_uplinks_and_obeys_a_downlink(
    tmp_path: Path, mosquitto: Broker
) -> None:
    scenario = write_scenario(
        tmp_path,
        {
            "broker": {"host": mosquitto.host, "port": mosquitto.port},
            "lora": [
                {
                    "name": "lns0",
                    "application_id": "app",
                    "devices": [
                        {
                            "device_id": "lm1",
                            "dev_eui": METER_EUI,
                            "kind": "meter",
                            "interval_s": 0.2,
                            "start": 100,
                        },
                        {
                            "device_id": "lv1",
                            "dev_eui": VALVE_EUI,
                            "kind": "valve",
                            "interval_s": 0.2,
                        },
                    ],
                }
            ],
            # the meter's first uplink reaches the application three times
            "faults": [{"at_s": 0, "device": "lm1", "fault": "repeat_uplinks", "copies": 3}],
        },
    )
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="watcher") as client:
        await client.subscribe("application/app/device/+/event/up", qos=1)
        async with sim_process(scenario) as sim:
            seen: dict[str, list[dict[str, Any]]] = {METER_EUI: [], VALVE_EUI: []}
            async with asyncio.timeout(DEFAULT_TIMEOUT_S):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    body = json.loads(message.payload)
                    seen[body["deviceInfo"]["devEui"]].append(body)
                    if len(seen[METER_EUI]) >= 4 and seen[VALVE_EUI]:
                        break
            meter_counts = [b["fCnt"] for b in seen[METER_EUI]]
            assert meter_counts[:4] == [0, 0, 0, 1]
            first = base64.b64decode(seen[METER_EUI][0]["data"])
            assert first[-4:] == (100).to_bytes(4, "little")  # EM300-DI pulse counter

            down = {
                "devEui": VALVE_EUI,
                "confirmed": True,
                "fPort": 85,
                "data": base64.b64encode(bytes.fromhex("ff1d0000")).decode(),
            }
            await client.publish(
                f"application/app/device/{VALVE_EUI}/command/down", json.dumps(down), qos=1
            )
            shown = await sim.wait_status("lv1", "supply_on", False)
            assert shown["downlinks"] == 1
            code, _ = await sim.stop()
            assert code == 0


async def test_program_applies_scheduled_and_commanded_faults(tmp_path: Path) -> None:
    port = free_port()
    scenario = write_scenario(
        tmp_path,
        {
            "modbus_tcp": [
                {
                    "name": "tcp0",
                    "port": port,
                    "meters": [
                        _meter("a", 1, "eastron_sdm120", 1_000),
                        _meter("b", 2, "eastron_sdm120", 2_000),
                    ],
                }
            ],
            "faults": [
                {"at_s": 0, "device": "a", "fault": "timeout"},
                {"at_s": 0.5, "device": "b", "fault": "exception", "code": 4},
            ],
        },
    )
    devices = [modbus_device("a", 1, "eastron_sdm120"), modbus_device("b", 2, "eastron_sdm120")]
    async with sim_process(scenario, "--stdin") as sim:
        assert sim.status()["devices"]["a"]["fault"] == "no_answer"
        sink = RecordingSink()
        bus = modbus_bus("tcp0", tcp_endpoint(port), devices)
        async with bus:
            assert await bus.poll_device("a", sink) is None
            assert bus.stats("a").timeouts == 1

            async with asyncio.timeout(DEFAULT_TIMEOUT_S):  # the scheduled exception replies start
                while bus.stats("b").rejections == 0:
                    await bus.poll_device("b", sink)

            sim.command("a clear")  # the control file
            async with asyncio.timeout(DEFAULT_TIMEOUT_S):
                while (reading := await bus.poll_device("a", sink)) is None:
                    pass
            assert reading.register_milli == 1_000

            assert sim.proc.stdin is not None
            sim.proc.stdin.write(b"b clear\n")  # a command on stdin
            await sim.proc.stdin.drain()
            async with asyncio.timeout(DEFAULT_TIMEOUT_S):
                while (reading := await bus.poll_device("b", sink)) is None:
                    pass
            assert reading.register_milli == 2_000
        code, _ = await sim.stop()
        assert code == 0


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([sys.executable, "-m", "firmware_sim", "-c"], id="python-m-firmware_sim"),
        pytest.param([sys.executable, "-m", "gateway.cli", "sim", "--", "-c"], id="prepay-sim"),
    ],
)
async def test_program_refuses_an_invalid_scenario_with_file_and_line(
    tmp_path: Path, command: list[str]
) -> None:
    scenario = write_scenario(
        tmp_path,
        {"modbus_tcp": [{"name": "tcp0", "port": 0, "meters": [_meter("a", 1, "nope", 0)]}]},
    )
    proc = await asyncio.create_subprocess_exec(
        *command,
        str(scenario),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(DEFAULT_TIMEOUT_S):
        out, err = await proc.communicate()
    assert proc.returncode == 1
    assert f"{scenario}:8: modbus_tcp.0.meters.0.profile: no profile 'nope'" in err.decode()
    assert b"ready" not in out
