"""Modbus RTU over a pty pair (socat): real serial framing through pyserial on both ends.

How single reply frames are taken apart (whole, in pieces, junk, bad CRC) is in
`tests.modbus.test_rtu_framing`; here the simulator answers and the bus runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import serial
from pymodbus.framer import FramerRTU

from drivers.modbus.client import ModbusBus
from drivers.modbus.config import DeviceProfile, ModbusBusConfig
from drivers.modbus.registers import DataType, encode_value
from drivers.ports import DriverEventKind, SupplyState
from firmware_sim.meter_model import Fault, SimMeter
from firmware_sim.modbus_meter import MeterSimulator
from tests.fixtures.modbus import (
    PtyPair,
    RecordingSink,
    bus_config,
    modbus_device,
    rtu_endpoint,
    running,
)

pytestmark = pytest.mark.integration


def rtu_bus(
    name: str, port: str, devices: list[dict[str, object]], **extra: object
) -> ModbusBusConfig:
    """`bus_config` for the RS485 line whose gateway side is ``port``."""
    return bus_config(name, rtu_endpoint(port), devices, **extra)


@pytest.fixture
def rtu_meters(modbus_profiles: dict[str, DeviceProfile]) -> list[SimMeter]:
    return [
        SimMeter(1, modbus_profiles["eastron_sdm630"], energy_milli=7_654_321),
        SimMeter(9, modbus_profiles["water_xintai_valve"], energy_milli=1_500),
    ]


@pytest.fixture
async def rtu_sim(modbus_pty: PtyPair, rtu_meters: list[SimMeter]) -> AsyncIterator[MeterSimulator]:
    async with MeterSimulator.serial(rtu_meters, modbus_pty.device_side) as sim:
        yield sim


@pytest.fixture
async def rtu(
    rtu_sim: MeterSimulator, modbus_pty: PtyPair, modbus_profiles: dict[str, DeviceProfile]
) -> AsyncIterator[ModbusBus]:
    cfg = rtu_bus(
        "rs485a",
        modbus_pty.master_side,
        [
            modbus_device("sdm630", 1, "eastron_sdm630"),
            modbus_device("water", 9, "water_xintai_valve", allow_unconfirmed_supply=True),
        ],
    )
    async with ModbusBus(cfg, modbus_profiles) as bus:
        yield bus


async def test_rtu_pty_polls_two_units_on_one_line(
    rtu: ModbusBus, modbus_sink: RecordingSink
) -> None:
    async with running(rtu, sink=modbus_sink):
        sdm = await modbus_sink.wait_readings("meter-sdm630", 3)
        water = await modbus_sink.wait_readings("meter-water", 3)
    # 7654.321 kWh as float32 is 7654.3212890625 -> 7 654 321 Wh (below 8192 kWh: exact to 1 Wh)
    assert {r.register_milli for r in sdm} == {7_654_321}
    assert {r.register_milli for r in water} == {1_500}
    assert sdm[0].source == "modbus:rs485a/1"


async def test_rtu_frames_on_the_wire_are_crc_checked(
    rtu: ModbusBus, modbus_sink: RecordingSink
) -> None:
    await rtu.poll_device("water", modbus_sink)
    dump = rtu.frame_dump()
    # request: unit 9, FC03, start 0x0001, 9 registers, then CRC-16/Modbus low byte first
    assert "tx:090300010009" in dump


async def test_rtu_crc_error_retried_counted_offline_then_online(
    rtu: ModbusBus, rtu_meters: list[SimMeter], modbus_sink: RecordingSink
) -> None:
    sdm = rtu_meters[0]
    sdm.set_fault(Fault.BAD_CRC)
    async with running(rtu, sink=modbus_sink):
        event = await modbus_sink.wait_event("sdm630", DriverEventKind.OFFLINE)
        assert event.detail["error"] == "FrameError"
        stats = rtu.stats("sdm630")
        assert stats.frame_errors >= 4
        assert stats.timeouts == 0  # bytes came, so it is a frame error, not silence
        sdm.set_fault(None)
        await modbus_sink.wait_event("sdm630", DriverEventKind.ONLINE)
        # the line recovered for everyone: new readings of the other unit keep coming
        n = len(modbus_sink.readings_of("meter-water"))
        await modbus_sink.wait_readings("meter-water", n + 2)


async def test_rtu_exception_reply_is_rejection(
    rtu: ModbusBus, rtu_meters: list[SimMeter], modbus_sink: RecordingSink
) -> None:
    rtu_meters[1].set_fault(Fault.EXCEPTION, code=2, count=1)
    reading = await rtu.poll_device("water", modbus_sink)  # first try rejected, retry succeeds
    assert reading is not None
    assert rtu.stats("water").rejections == 1


async def test_rtu_junk_on_the_line_does_not_kill_the_bus(
    rtu: ModbusBus, modbus_pty: PtyPair, modbus_sink: RecordingSink
) -> None:
    async with running(rtu, sink=modbus_sink):
        await modbus_sink.wait_readings("meter-water", 1)
        # a third talker on the line: garbage that is no frame at all
        with serial.serial_for_url(modbus_pty.device_side, timeout=0) as noise:
            noise.write(b"\x00\xff\x13\x37" * 8)
        n = len(modbus_sink.readings_of("meter-water"))
        await modbus_sink.wait_readings("meter-water", n + 3)


async def test_rtu_valve_write_confirmed_by_read_back(
    rtu: ModbusBus, rtu_meters: list[SimMeter]
) -> None:
    valve = rtu_meters[1]
    result = await rtu.set_supply_confirmed("water", on=False)
    assert result.confirmed
    assert valve.supply_on is False
    valve.ignore_writes = True
    result = await rtu.set_supply_confirmed("water", on=True)
    assert (result.confirmed, result.observed) == (False, SupplyState.OFF)


async def test_rtu_dead_device_on_bus_a_does_not_delay_bus_b(
    modbus_pty: PtyPair,
    modbus_pty_b: PtyPair,
    modbus_profiles: dict[str, DeviceProfile],
    modbus_sink: RecordingSink,
) -> None:
    dead = SimMeter(4, modbus_profiles["eastron_sdm120"], energy_milli=1)
    dead.set_fault(Fault.NO_ANSWER)
    alive = SimMeter(5, modbus_profiles["eastron_sdm120"], energy_milli=2_000)
    # Bus A's one request waits out the longest timeout a config allows, longer than the test
    # runs: whatever bus B delivers, it delivers while bus A is still inside its first request.
    bus_a = ModbusBus(
        rtu_bus(
            "a", modbus_pty.master_side, [modbus_device("dead", 4, "eastron_sdm120")], timeout_s=30
        ),
        modbus_profiles,
    )
    bus_b = ModbusBus(
        rtu_bus("b", modbus_pty_b.master_side, [modbus_device("alive", 5, "eastron_sdm120")]),
        modbus_profiles,
    )
    async with (
        MeterSimulator.serial([dead], modbus_pty.device_side),
        MeterSimulator.serial([alive], modbus_pty_b.device_side),
        bus_a,
        bus_b,
        running(bus_a, bus_b, sink=modbus_sink),
    ):
        await modbus_sink.wait_readings("meter-alive", 10)
        # counters, not the clock: bus A has not finished its first poll, bus B polled 10 times
        assert bus_a.stats("dead").timeouts == 0
        assert bus_a.stats("dead").polls == 1
        assert bus_a.stats("dead").failed_polls == 0


async def test_rtu_poll_tasks_are_named_per_bus(rtu: ModbusBus, modbus_sink: RecordingSink) -> None:
    async with running(rtu, sink=modbus_sink):
        await modbus_sink.wait_readings("meter-water", 1)
        names = {t.get_name() for t in asyncio.all_tasks()}
    assert "modbus[rs485a].poll" in names


def test_rtu_reference_frame_matches_register_maps_example() -> None:
    # register-maps.md: response 01 04 04 43 66 00 00 0E 1F -> 0x43660000 = 230.0 V
    body = bytes.fromhex("01040443660000")
    assert FramerRTU.compute_CRC(body).to_bytes(2, "big") == bytes.fromhex("0E1F")
    assert encode_value(230.0, DataType.FLOAT32) == [0x4366, 0x0000]
