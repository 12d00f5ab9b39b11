"""Modbus TCP end to end: the gateway's bus against real pymodbus servers from firmware_sim."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator

import pytest

from drivers.modbus.client import ModbusBus
from drivers.modbus.config import DeviceProfile
from drivers.ports import DeviceRejectedError, DriverError, DriverEventKind, SupplyState
from firmware_sim.meter_model import Fault, SimMeter
from firmware_sim.modbus_meter import MeterSimulator
from tests.fixtures.modbus import (
    RecordingSink,
    bus_config,
    modbus_device,
    running,
    tcp_endpoint,
)
from tests.support.waiting import DEFAULT_TIMEOUT_S

pytestmark = pytest.mark.integration


@pytest.fixture
def meters(modbus_profiles: dict[str, DeviceProfile]) -> dict[str, SimMeter]:
    sdm = SimMeter(1, modbus_profiles["eastron_sdm120"], energy_milli=1_234_500)
    sdm.extras["voltage"] = 230.0
    acrel = SimMeter(3, modbus_profiles["acrel_ddsy1352"], energy_milli=98_760)
    acrel.extras["voltage"] = 2301
    return {
        "sdm": sdm,
        "water": SimMeter(2, modbus_profiles["water_xintai_valve"], energy_milli=42_125),
        "acrel": acrel,
    }


@pytest.fixture
async def sim(meters: dict[str, SimMeter]) -> AsyncIterator[MeterSimulator]:
    async with MeterSimulator.tcp(list(meters.values())) as server:
        yield server


@pytest.fixture
async def bus(
    sim: MeterSimulator, modbus_profiles: dict[str, DeviceProfile]
) -> AsyncIterator[ModbusBus]:
    cfg = bus_config(
        "tcp0",
        tcp_endpoint(sim.port),
        [
            modbus_device("sdm", 1, "eastron_sdm120"),
            modbus_device("water", 2, "water_xintai_valve", allow_unconfirmed_supply=True),
            modbus_device("acrel", 3, "acrel_ddsy1352", allow_unconfirmed_supply=True),
        ],
    )
    async with ModbusBus(cfg, modbus_profiles) as b:
        yield b


async def test_tcp_poll_decodes_every_profile_to_milli_units(
    bus: ModbusBus, modbus_sink: RecordingSink
) -> None:
    async with running(bus, sink=modbus_sink):
        sdm = (await modbus_sink.wait_readings("meter-sdm", 2))[-1]
        water = (await modbus_sink.wait_readings("meter-water", 2))[-1]
        acrel = (await modbus_sink.wait_readings("meter-acrel", 2))[-1]
    assert sdm.register_milli == 1_234_500  # float32 1234.5 kWh, exact -> Wh
    assert water.register_milli == 42_125  # float32 DCBA 42.125 m3 -> L
    assert acrel.register_milli == 98_760  # u32 9876 x 0.01 kWh -> Wh
    assert (sdm.source, water.source) == ("modbus:tcp0/1", "modbus:tcp0/2")
    assert sdm.read_at.tzinfo is not None
    assert bus.stats("sdm").values_milli["voltage"] == 230_000
    assert bus.stats("acrel").values_milli["voltage"] == 230_100  # 2301 x 0.1 V in mV


async def test_tcp_poll_energy_advances_with_consumption(
    bus: ModbusBus, meters: dict[str, SimMeter], modbus_sink: RecordingSink
) -> None:
    now = [0]
    meter = meters["sdm"]
    meter.clock_ns = lambda: now[0]
    meter.rate_milli_per_h = 3_600  # 3.6 kW = 3600 Wh per hour: 1 Wh per second
    meter.advance()
    first = await bus.poll_device("sdm", modbus_sink)
    now[0] += 90 * 1_000_000_000  # 90 s later
    second = await bus.poll_device("sdm", modbus_sink)
    assert first is not None
    assert second is not None
    assert second.register_milli - first.register_milli == 90


async def test_tcp_coalesced_plan_uses_one_request_per_block(
    bus: ModbusBus, meters: dict[str, SimMeter], modbus_sink: RecordingSink
) -> None:
    before = meters["acrel"].requests
    await bus.poll_device("acrel", modbus_sink)
    assert meters["acrel"].requests - before == 1  # 0x0000..0x000D in one FC03 read


async def test_tcp_exception_reply_retried_counted_then_offline_and_online(
    bus: ModbusBus, meters: dict[str, SimMeter], modbus_sink: RecordingSink
) -> None:
    meters["sdm"].set_fault(Fault.EXCEPTION, code=4)
    async with running(bus, sink=modbus_sink):
        offline = await modbus_sink.wait_event("sdm", DriverEventKind.OFFLINE)
        stats = bus.stats("sdm")
        assert stats.rejections >= 2 * 2  # 2 polls x (1 try + 1 retry) before offline
        assert stats.retries >= 2
        assert offline.detail["error"] == "DeviceRejectedError"
        assert not stats.online
        # the other devices on the bus keep delivering
        n = len(modbus_sink.readings_of("meter-water"))
        await modbus_sink.wait_readings("meter-water", n + 3)
        meters["sdm"].set_fault(None)
        await modbus_sink.wait_event("sdm", DriverEventKind.ONLINE)
    assert len(modbus_sink.events_of("sdm", DriverEventKind.OFFLINE)) == 1  # reported once


async def test_tcp_single_failure_is_retried_without_losing_the_reading(
    bus: ModbusBus, meters: dict[str, SimMeter], modbus_sink: RecordingSink
) -> None:
    meters["sdm"].set_fault(Fault.NO_ANSWER, count=1)
    reading = await bus.poll_device("sdm", modbus_sink)
    assert reading is not None
    stats = bus.stats("sdm")
    assert (stats.timeouts, stats.retries, stats.failed_polls) == (1, 1, 0)


async def test_tcp_timeout_marks_offline_after_n_and_recovers(
    bus: ModbusBus, meters: dict[str, SimMeter], modbus_sink: RecordingSink
) -> None:
    meters["water"].set_fault(Fault.NO_ANSWER)
    async with running(bus, sink=modbus_sink):
        event = await modbus_sink.wait_event("water", DriverEventKind.OFFLINE)
        assert event.detail["error"] == "DeviceTimeoutError"
        assert bus.stats("water").timeouts >= 4
        meters["water"].set_fault(None)
        await modbus_sink.wait_event("water", DriverEventKind.ONLINE)


async def test_tcp_garbled_reply_is_a_frame_error(
    bus: ModbusBus, meters: dict[str, SimMeter], modbus_sink: RecordingSink
) -> None:
    meters["sdm"].set_fault(Fault.BAD_CRC, count=2)  # both tries of one poll
    assert await bus.poll_device("sdm", modbus_sink) is None
    stats = bus.stats("sdm")
    assert (stats.frame_errors, stats.failed_polls) == (2, 1)
    assert "no valid reply" in stats.last_error
    assert await bus.poll_device("sdm", modbus_sink) is not None  # stream resynchronised


async def test_tcp_valve_close_confirmed_by_read_back(
    bus: ModbusBus, meters: dict[str, SimMeter]
) -> None:
    valve = meters["water"]
    assert await bus.read_supply("water") is SupplyState.ON
    result = await bus.set_supply_confirmed("water", on=False)
    assert result.confirmed
    assert valve.supply_on is False  # the valve really closed, seen from the device side
    assert valve.supply_writes == [False]
    assert await bus.read_supply("water") is SupplyState.OFF
    assert (await bus.set_supply_confirmed("water", on=True)).confirmed
    assert valve.supply_on is True


async def test_tcp_relay_coil_write_confirmed(bus: ModbusBus, meters: dict[str, SimMeter]) -> None:
    result = await bus.set_supply_confirmed("acrel", on=False)
    assert result.confirmed
    assert meters["acrel"].supply_on is False


async def test_tcp_device_ignoring_write_is_unconfirmed(
    bus: ModbusBus, meters: dict[str, SimMeter]
) -> None:
    meters["water"].ignore_writes = True
    result = await bus.set_supply_confirmed("water", on=False)
    assert not result.confirmed
    assert (result.requested, result.observed) == (SupplyState.OFF, SupplyState.ON)
    assert meters["water"].supply_on is True
    assert meters["water"].supply_writes == [False]  # it did receive the command


async def test_tcp_closed_valve_stops_consumption(
    bus: ModbusBus, meters: dict[str, SimMeter], modbus_sink: RecordingSink
) -> None:
    now = [0]
    meter = meters["water"]
    meter.clock_ns = lambda: now[0]
    meter.rate_milli_per_h = 360_000
    meter.advance()
    await bus.set_supply("water", on=False)
    before = await bus.poll_device("water", modbus_sink)
    now[0] += 3_600 * 1_000_000_000
    after = await bus.poll_device("water", modbus_sink)
    assert before is not None
    assert after is not None
    assert after.register_milli == before.register_milli


async def test_tcp_set_supply_rejected_reply_raises(
    bus: ModbusBus, meters: dict[str, SimMeter]
) -> None:
    meters["water"].set_fault(Fault.EXCEPTION, code=3)
    with pytest.raises(DeviceRejectedError) as info:
        await bus.set_supply("water", on=False)
    assert info.value.code == 3


async def test_tcp_set_supply_on_meter_without_relay_raises(bus: ModbusBus) -> None:
    assert not bus.handles("sdm")
    with pytest.raises(DriverError, match="cannot switch"):
        await bus.set_supply("sdm", on=False)


async def test_tcp_server_down_is_a_timeout_then_reconnects(
    modbus_profiles: dict[str, DeviceProfile], modbus_sink: RecordingSink
) -> None:
    meter = SimMeter(7, modbus_profiles["eastron_sdm630"], energy_milli=5_000)
    server = MeterSimulator.tcp([meter])
    await server.start()
    port = server.port
    cfg = bus_config(
        "tcp0", tcp_endpoint(port), [modbus_device("x", 7, "eastron_sdm630")], retries=0
    )
    async with ModbusBus(cfg, modbus_profiles) as bus:
        assert await bus.poll_device("x", modbus_sink) is not None
        await server.stop()
        assert await bus.poll_device("x", modbus_sink) is None
        assert bus.stats("x").timeouts == 1
        async with MeterSimulator.tcp([meter], port=port):
            assert await bus.poll_device("x", modbus_sink) is not None


@pytest.mark.skipif(shutil.which("mbpoll") is None, reason="mbpoll (Debian package) not installed")
@pytest.mark.parametrize(
    ("unit", "args", "expected"),
    [
        # SDM120 import energy 30073 (0x0048), float32 big-endian word order (-B): 1234.5 kWh
        (1, ["-t", "3:float", "-r", "73", "-B"], "1234.5"),
        # SDM120 voltage 30001
        (1, ["-t", "3:float", "-r", "1", "-B"], "230"),
        # Acrel total energy 0x0000, two holding registers, high word first: 9876 (x0.01 kWh)
        (3, ["-t", "4:int", "-r", "1", "-B"], "9876"),
        # Xintai valve register 0x001C (40029): 0x0001 = open
        (2, ["-t", "4", "-r", "29"], "1"),
    ],
)
async def test_mbpoll_reads_simulator_over_tcp(
    sim: MeterSimulator, unit: int, args: list[str], expected: str
) -> None:
    proc = await asyncio.create_subprocess_exec(
        "mbpoll",
        "-m",
        "tcp",
        "-p",
        str(sim.port),
        "-a",
        str(unit),
        "-1",
        "-o",
        "2",
        *args,
        "127.0.0.1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(DEFAULT_TIMEOUT_S):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("[")]
    assert lines, out.decode()
    assert lines[0].split(":", 1)[1].strip() == expected
