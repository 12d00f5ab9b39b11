"""``prepay meter read`` and ``prepay modbus scan`` against real Modbus slaves: the simulator's
pymodbus servers (TCP, and RTU over a socat pty pair), served from the device profiles."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.config import DeviceProfile
from firmware_sim.meter_model import Fault, SimMeter
from firmware_sim.modbus_meter import MeterSimulator
from gateway.cli import main
from gateway.config import load_site
from gateway.startup import claim_state_dir
from tests.fixtures.modbus import PtyPair, rtu_endpoint
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import PROFILES, water_account, write_site

pytestmark = pytest.mark.integration


def _site(tmp_path: Path, endpoint: dict[str, Any], devices: list[dict[str, Any]]) -> Path:
    bus = {"name": "bus0", **endpoint, "timeout_s": 0.5, "retries": 0, "devices": devices}
    return write_site(
        tmp_path,
        mqtt_port=free_port(),
        accounts=[water_account("A1", "m1", actuator="v1")],
        extra={
            "devices": {
                "profiles_dir": str(PROFILES),
                "modbus_buses": [bus],
                "ble_dispensers": [
                    {"address": "AA:BB:CC:DD:EE:01", "device_id": "d1", "meter_id": "md1"}
                ],
            }
        },
    )


def _device(device_id: str, unit: int, profile: str, meter: str, **extra: Any) -> dict[str, Any]:
    return {"device_id": device_id, "unit_id": unit, "profile": profile, "meter_id": meter, **extra}


VALVE = _device("v1", 1, "water_xintai_valve", "m1", allow_unconfirmed_supply=True)


async def _prepay(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``prepay`` as the CLI does (its own event loop, in a thread: the simulator runs in
    this one)."""
    code = await asyncio.to_thread(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


@contextlib.asynccontextmanager
async def tcp_slaves(*meters: SimMeter) -> AsyncIterator[MeterSimulator]:
    async with MeterSimulator.tcp(list(meters), port=0) as sim:
        yield sim


async def test_meter_read_decodes_every_register_with_units(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    modbus_profiles: dict[str, DeviceProfile],
) -> None:
    # 1234.567 m3 served as float32 is 1234.5670166015625 m3; x1000 (the profile's scale,
    # m3 -> L) rounded half-even = 1 234 567 L, shown as 1234.567 m3.
    meter = SimMeter(
        1,
        modbus_profiles["water_xintai_valve"],
        energy_milli=1_234_567,
        extras={"pipe_state": 0xAA},
    )
    async with tcp_slaves(meter) as sim:
        site = _site(tmp_path, {"kind": "tcp", "host": "127.0.0.1", "port": sim.port}, [VALVE])
        code, out, _ = await _prepay(["meter", "read", "v1", "-c", str(site), "--json"], capsys)
        assert code == 0
        doc = json.loads(out)
        code, text, _ = await _prepay(["meter", "read", "m1", "-c", str(site)], capsys)
        assert code == 0
    assert (doc["device"], doc["meter"], doc["unit_id"], doc["bus"]) == ("v1", "m1", 1, "bus0")
    registers = {r["name"]: r for r in doc["registers"]}
    assert list(registers) == [
        "energy",
        "negative_volume",
        "flow_rate",
        "pipe_state",
        "remaining_volume",
    ]
    energy = registers["energy"]
    assert (energy["value_milli"], energy["value"], energy["unit"]) == (1_234_567, "1234.567", "m3")
    assert (energy["table"], energy["address"], energy["type"]) == ("holding", 1, "float32")
    # pipe_state 0xAA = 170, scale 1: 170 milli-units, raw 170 (the code the manual lists)
    assert (registers["pipe_state"]["value_milli"], registers["pipe_state"]["raw"]) == (170, "170")
    assert doc["supply"] == "on"  # the valve read back (it starts open)
    assert doc["supply_error"] is None
    energy_line = next(line for line in text.splitlines() if line.strip().startswith("energy"))
    assert energy_line.split()[:3] == ["energy", "1234.567", "m3"]
    assert "supply: on (read back)" in text


@pytest.mark.parametrize(
    ("fault", "code", "message"),
    [
        (Fault.NO_ANSWER, 4, "did not answer (v1: no reply in 0.5 s, 0 retries)"),
        (Fault.EXCEPTION, 2, "answered with a Modbus exception (v1: rejected with code 2)"),
        (Fault.BAD_CRC, 4, "answered with bytes that are no Modbus reply"),
    ],
)
async def test_meter_read_a_device_that_fails_gets_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    modbus_profiles: dict[str, DeviceProfile],
    fault: Fault,
    code: int,
    message: str,
) -> None:
    meter = SimMeter(1, modbus_profiles["water_xintai_valve"], energy_milli=1_000)
    meter.set_fault(fault, code=code)
    async with tcp_slaves(meter) as sim:
        site = _site(tmp_path, {"kind": "tcp", "host": "127.0.0.1", "port": sim.port}, [VALVE])
        exit_code, out, err = await _prepay(["meter", "read", "v1", "-c", str(site)], capsys)
    assert exit_code == 1
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert message in err
    assert err.startswith("v1 (unit 1 on bus bus0, tcp 127.0.0.1:")


async def test_meter_read_a_peer_that_is_not_modbus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def http_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        await reader.read()  # hold the connection until the client closes it
        writer.close()

    server = await asyncio.start_server(http_like, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        site = _site(tmp_path, {"kind": "tcp", "host": "127.0.0.1", "port": port}, [VALVE])
        code, _, err = await _prepay(["meter", "read", "v1", "-c", str(site)], capsys)
    assert code == 1
    assert "answered with bytes that are no Modbus reply" in err
    assert "or not a Modbus device" in err
    assert "Traceback" not in err


async def test_meter_read_unknown_device_not_modbus_and_nothing_listening(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _site(tmp_path, {"kind": "tcp", "host": "127.0.0.1", "port": free_port()}, [VALVE])
    code, _, err = await _prepay(["meter", "read", "nope", "-c", str(site)], capsys)
    assert code == 1
    assert err.strip() == f"no device 'nope' in {site} (Modbus devices: v1)"
    code, _, err = await _prepay(["meter", "read", "d1", "-c", str(site)], capsys)
    assert code == 1
    assert err.strip() == "d1 is a BLE dispenser (AA:BB:CC:DD:EE:01), not a Modbus device"
    code, _, err = await _prepay(["meter", "read", "v1", "-c", str(site)], capsys)
    assert code == 1
    assert err.startswith("cannot connect to bus bus0 (tcp 127.0.0.1:")


async def test_meter_read_refuses_an_rtu_bus_the_daemon_holds_unless_forced(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    modbus_pty: PtyPair,
    modbus_profiles: dict[str, DeviceProfile],
) -> None:
    meter = SimMeter(1, modbus_profiles["water_xintai_valve"], energy_milli=42_000)
    site_file = _site(tmp_path, rtu_endpoint(modbus_pty.master_side), [VALVE])
    state_dir = load_site(site_file).state_dir
    async with MeterSimulator.serial([meter], modbus_pty.device_side):
        # The lock a running daemon holds (`prepay run` takes it with this very function).
        with claim_state_dir(state_dir):
            code, _, err = await _prepay(["meter", "read", "v1", "-c", str(site_file)], capsys)
            assert code == 1
            assert err.startswith("bus bus0 is busy: the running gateway (pid ")
            assert meter.requests == 0  # nothing was sent on the line
            argv = ["meter", "read", "v1", "-c", str(site_file), "--force", "--json"]
            code, out, _ = await _prepay(argv, capsys)
            assert code == 0
            assert json.loads(out)["registers"][0]["value_milli"] == 42_000
        # The daemon gone: the line is free.
        code, out, _ = await _prepay(["meter", "read", "v1", "-c", str(site_file)], capsys)
    assert code == 0
    assert "42.000 m3" in out


async def test_modbus_scan_finds_who_answers_and_how(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    modbus_profiles: dict[str, DeviceProfile],
) -> None:
    valve, sdm = modbus_profiles["water_xintai_valve"], modbus_profiles["eastron_sdm630"]
    silent, garbled, behind_gateway = SimMeter(2, sdm), SimMeter(3, sdm), SimMeter(4, sdm)
    silent.set_fault(Fault.NO_ANSWER)
    garbled.set_fault(Fault.BAD_CRC)  # on TCP: an MBAP header promising a byte never sent
    behind_gateway.set_fault(Fault.EXCEPTION, code=0x0B)  # "gateway target failed to respond"
    devices = [VALVE, _device("e2", 2, "eastron_sdm630", "m2")]
    async with tcp_slaves(SimMeter(1, valve), silent, garbled, behind_gateway) as sim:
        site = _site(tmp_path, {"kind": "tcp", "host": "127.0.0.1", "port": sim.port}, devices)
        argv = ["modbus", "scan", "--bus", "bus0", "--units", "1-6", "-c", str(site)]
        code, out, err = await _prepay([*argv, "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert (doc["bus"], doc["units_scanned"]) == ("bus0", 6)
    answered = [(a["unit_id"], a["reply"], a["device"]) for a in doc["answered"]]
    assert answered == [
        (1, "registers", "v1"),
        (3, "garbled", None),
        # 5 and 6: the simulator answers ids it does not serve with exception 4 (pymodbus's
        # simulator has no "ignore unknown ids"); a device at an id is what answers at all.
        (5, "exception", None),
        (6, "exception", None),
    ]
    assert doc["answered"][0]["detail"] == "register value 0"  # the valve's register 0 holds 0
    assert doc["silent_configured"] == [{"unit_id": 2, "device": "e2"}]
    # progress on stderr (not a terminal here: a line every 16 units, and the last)
    assert err.strip().splitlines() == ["scanning unit 6 (6/6), 4 answered"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--units", "0-300"],
            "--units 0-300: unit ids are 1..247 (0 is broadcast, 248..255 are reserved)",
        ),
        (["--units", "1-248"], "--units 1-248: unit ids are 1..247"),
        (["--units", "20-10"], "--units 20-10: 20-10 runs backwards"),
        (["--units", "all"], "--units all: expected N, N-M or a list of them"),
        (["--register", "70000"], "--register 70000: addresses are 0..65535"),
        (["--timeout", "0"], "--timeout 0.0: give seconds in (0, 30]"),
    ],
)
async def test_modbus_scan_bad_options_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    site = _site(tmp_path, {"kind": "tcp", "host": "127.0.0.1", "port": free_port()}, [VALVE])
    argv = ["modbus", "scan", "--bus", "bus0", *options, "-c", str(site)]
    code, out, err = await _prepay(argv, capsys)
    assert code == 2
    assert message in err
    assert out == ""


async def test_modbus_scan_unknown_bus_and_nothing_listening(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _site(tmp_path, {"kind": "tcp", "host": "127.0.0.1", "port": free_port()}, [VALVE])
    code, _, err = await _prepay(["modbus", "scan", "--bus", "rs9", "-c", str(site)], capsys)
    assert code == 1
    assert err.strip() == f"no Modbus bus 'rs9' in {site} (buses: bus0)"
    code, _, err = await _prepay(["modbus", "scan", "--bus", "bus0", "-c", str(site)], capsys)
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("cannot connect to bus bus0 (tcp 127.0.0.1:")
