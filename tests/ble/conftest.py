"""BLE test fixtures: a simulated air with one dispenser, a recording sink, a running client.

The client is the production `DispenserClient` over the real ``BleakClient``; only the bleak
backend is simulated (`firmware_sim.ble_backend`), passed as ``backend=``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest

from drivers.ble.config import BleDispenserConfig
from drivers.ble.dispenser import DispenserClient
from drivers.ports import Clock, DriverEvent, DriverEventKind, Reading
from firmware_sim.ble_backend import SimulatedAir
from firmware_sim.dispenser import SimulatedDispenser
from tests.support.waiting import DEFAULT_TIMEOUT_S

ADDRESS = "AA:BB:CC:00:00:01"
START_ML = 1_000


class RecordingSink:
    """A `ReadingSink` that keeps everything and lets a test wait for a condition."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.events: list[DriverEvent] = []
        self._changed = asyncio.Condition()

    async def put(self, reading: Reading) -> None:
        async with self._changed:
            self.readings.append(reading)
            self._changed.notify_all()

    async def event(self, event: DriverEvent) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    @property
    def registers(self) -> list[int]:
        return [r.register_milli for r in self.readings]

    def kinds(self) -> list[DriverEventKind]:
        return [e.kind for e in self.events]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(DEFAULT_TIMEOUT_S), self._changed:
            await self._changed.wait_for(predicate)

    async def wait_for_register(self, register_milli: int) -> None:
        await self.wait_for(lambda: register_milli in self.registers)


def ticking_clock() -> Clock:
    """A deterministic clock: one second later on every call."""
    now = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)

    def tick() -> datetime:
        nonlocal now
        now += timedelta(seconds=1)
        return now

    return tick


def make_config(**overrides: object) -> BleDispenserConfig:
    values: dict[str, object] = {
        "address": ADDRESS.lower(),
        "device_id": "disp-1",
        "meter_id": "water-1",
        "connect_timeout_s": 2.0,
        "connect_attempts": 4,
        "command_timeout_s": 2.0,
        "reconnect_delay_s": 0.0,
    }
    values.update(overrides)
    return BleDispenserConfig.model_validate(values)


@pytest.fixture
def air() -> SimulatedAir:
    return SimulatedAir()


@pytest.fixture
def dispenser(air: SimulatedAir) -> SimulatedDispenser:
    return air.add(SimulatedDispenser(ADDRESS, total_ml=START_ML))


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
async def client(
    air: SimulatedAir, dispenser: SimulatedDispenser
) -> AsyncIterator[DispenserClient]:
    async with DispenserClient(make_config(), backend=air.backend(), clock=ticking_clock()) as c:
        yield c
    assert c.unexpected_errors == 0


@pytest.fixture
async def running(client: DispenserClient, sink: RecordingSink) -> AsyncIterator[DispenserClient]:
    """The client with `run` going in a task, online, initial reading in."""
    # A plain task, not a TaskGroup: pytest-asyncio may run fixture setup and teardown in
    # different tasks, and a TaskGroup must be left in the task that entered it.
    task = asyncio.create_task(client.run(sink), name="ble[disp-1].run")
    try:
        await sink.wait_for(lambda: DriverEventKind.ONLINE in sink.kinds() and bool(sink.readings))
        yield client
    finally:
        task.cancel()
        await asyncio.wait([task])  # waits without re-raising the task's CancelledError
    assert task.cancelled()
    assert not client.is_connected
