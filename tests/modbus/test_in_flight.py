"""The budget of readings on their way into the journal (`ModbusBus._poll_loop`), against a real
pymodbus server from firmware_sim: the journal's back-pressure is a sink whose puts wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from drivers.modbus.client import (
    PUTS_IN_FLIGHT_PER_BUS,
    PUTS_IN_FLIGHT_SITE,
    ModbusBus,
    build_buses,
)
from drivers.modbus.config import DeviceProfile, ModbusBusConfig
from drivers.ports import Reading
from firmware_sim.meter_model import SimMeter
from firmware_sim.modbus_meter import MeterSimulator
from tests.fixtures.modbus import RecordingSink, bus_config, modbus_device, running, tcp_endpoint
from tests.support.waiting import DEFAULT_TIMEOUT_S, eventually

pytestmark = pytest.mark.integration

METERS = 40  # more than a bus alone keeps in flight (16)


@dataclass
class _HeldSink(RecordingSink):
    """A `RecordingSink` whose puts wait for ``gate``, as they wait for a journal commit.
    Counts the puts waiting now, and the most that ever waited at once."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0
    most: int = 0

    async def put(self, reading: Reading) -> None:
        self.waiting += 1
        self.most = max(self.most, self.waiting)
        async with self._changed:
            self._changed.notify_all()
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        await super().put(reading)

    async def wait_waiting(self, n: int) -> None:
        async with asyncio.timeout(DEFAULT_TIMEOUT_S), self._changed:
            await self._changed.wait_for(lambda: self.waiting >= n)


@pytest.fixture
async def sim(modbus_profiles: dict[str, DeviceProfile]) -> AsyncIterator[MeterSimulator]:
    meters = [SimMeter(u, modbus_profiles["eastron_sdm120"]) for u in range(1, METERS + 1)]
    async with MeterSimulator.tcp(meters) as server:
        yield server


def _bus_config(sim: MeterSimulator, name: str, units: range) -> ModbusBusConfig:
    devices = [modbus_device(f"{name}-{u}", u, "eastron_sdm120") for u in units]
    return bus_config(name, tcp_endpoint(sim.port), devices)


async def test_the_buses_of_a_site_share_one_budget_so_one_bus_batches_more(
    sim: MeterSimulator, modbus_profiles: dict[str, DeviceProfile]
) -> None:
    # A site's buses (`build_buses`) share one budget of 128: a site with one bus may
    # hold all its 40 readings at the journal's door at once. A budget of 16 a bus held them at
    # 16, and every commit of a 100-meter bus at 16 readings.
    (bus,) = build_buses([_bus_config(sim, "a", range(1, METERS + 1))], modbus_profiles)
    sink = _HeldSink()
    async with running(bus, sink=sink):
        await sink.wait_waiting(METERS)
        sink.gate.set()
        await sink.wait_readings(f"meter-a-{METERS}", 2)  # and on, once the journal takes them
    assert sink.most >= METERS > PUTS_IN_FLIGHT_PER_BUS
    assert PUTS_IN_FLIGHT_SITE >= METERS


async def test_a_site_of_many_buses_holds_no_more_than_the_site_budget(
    sim: MeterSimulator, modbus_profiles: dict[str, DeviceProfile]
) -> None:
    # 10 buses of 20 meters (each simulated unit read by five of them): 16 a bus would be 160
    # readings waiting for the journal; the site's budget holds them at 128. Each bus then
    # reads one more reading and waits for room with it: 128 + 10 polls.
    buses = build_buses(
        [_bus_config(sim, f"b{b}", range(1, 21) if b % 2 else range(21, 41)) for b in range(10)],
        modbus_profiles,
    )
    assert PUTS_IN_FLIGHT_PER_BUS * len(buses) > PUTS_IN_FLIGHT_SITE

    def polls() -> int:
        return sum(bus.stats(d.device_id).polls for bus in buses for d in bus.config.devices)

    sink = _HeldSink()
    async with running(*buses, sink=sink):
        await sink.wait_waiting(PUTS_IN_FLIGHT_SITE)
        await eventually(
            lambda: polls() >= PUTS_IN_FLIGHT_SITE + len(buses), what="every bus waiting"
        )
        held = sink.most
        sink.gate.set()
        for bus in buses:  # and every bus goes on once the journal takes them
            await sink.wait_readings(bus.config.devices[-1].meter_id, 1)
    assert held == PUTS_IN_FLIGHT_SITE


async def test_buses_sharing_a_budget_never_hold_more_than_it(
    sim: MeterSimulator, modbus_profiles: dict[str, DeviceProfile]
) -> None:
    # Two buses of 20 meters each share a budget of 10: together they never hold more than 10
    # readings waiting, and both deliver everything once the journal takes them.
    budget = asyncio.Semaphore(10)
    buses = [
        ModbusBus(_bus_config(sim, name, units), modbus_profiles, in_flight=budget)
        for name, units in (("a", range(1, 21)), ("b", range(21, 41)))
    ]
    sink = _HeldSink()
    async with running(*buses, sink=sink):
        await sink.wait_waiting(10)
        sink.gate.set()
        for name, last in (("a", 20), ("b", 40)):
            await sink.wait_readings(f"meter-{name}-{last}", 2)
    assert sink.most == 10


async def test_a_bus_alone_keeps_its_own_budget(
    sim: MeterSimulator, modbus_profiles: dict[str, DeviceProfile]
) -> None:
    # A bus made on its own (the CLI's `meter read`, a scan) keeps 16 in flight, as it did.
    bus = ModbusBus(_bus_config(sim, "a", range(1, METERS + 1)), modbus_profiles)
    sink = _HeldSink()
    async with running(bus, sink=sink):
        await sink.wait_waiting(PUTS_IN_FLIGHT_PER_BUS)
        # The 17th reading is read, then waits for room: its poll is counted, no 18th is made.
        await eventually(
            lambda: (
                sum(bus.stats(d.device_id).polls for d in bus.config.devices)
                > PUTS_IN_FLIGHT_PER_BUS
            ),
            what="the 17th poll",
        )
        held = sink.most
        sink.gate.set()
        await sink.wait_readings(f"meter-a-{METERS}", 1)
    assert held == PUTS_IN_FLIGHT_PER_BUS


async def test_a_bus_cancelled_with_readings_in_flight_gives_their_room_back(
    sim: MeterSimulator, modbus_profiles: dict[str, DeviceProfile]
) -> None:
    # The budget outlives a bus's poll loop (the daemon restarts a failed bus with the same
    # one): cancelled with its 10 readings waiting, the bus gives all 10 slots back, and started
    # again it polls and delivers as before.
    budget = asyncio.Semaphore(10)
    bus = ModbusBus(_bus_config(sim, "a", range(1, 21)), modbus_profiles, in_flight=budget)
    held = _HeldSink()
    async with running(bus, sink=held):
        await held.wait_waiting(10)
    assert held.waiting == 0  # every put cancelled
    assert not budget.locked()
    again = _HeldSink()
    again.gate.set()
    async with running(bus, sink=again):
        await again.wait_readings("meter-a-20", 2)
    assert again.most <= 10
