"""Shared test helpers: a queue-backed sink and a running adapter."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from drivers.lorawan.adapter import LnsAdapter
from drivers.lorawan.codec import CodecSpec, load_codecs
from drivers.lorawan.config import LnsConfig
from drivers.ports import DriverEvent, DriverEventKind, Reading
from tests.support.waiting import DEFAULT_TIMEOUT_S

CODECS_DIR = Path(__file__).resolve().parents[2] / "configs" / "codecs"


def codecs() -> dict[str, CodecSpec]:
    """The shipped codecs."""
    return load_codecs(CODECS_DIR)


class QueueSink:
    """A `ReadingSink` that queues what it gets, so tests can await it."""

    def __init__(self) -> None:
        self.readings: asyncio.Queue[Reading] = asyncio.Queue()
        self.events: asyncio.Queue[DriverEvent] = asyncio.Queue()

    async def put(self, reading: Reading) -> None:
        await self.readings.put(reading)

    async def event(self, event: DriverEvent) -> None:
        await self.events.put(event)

    async def next_reading(self) -> Reading:
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            return await self.readings.get()

    async def next_event(self, kind: DriverEventKind) -> DriverEvent:
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            while True:
                event = await self.events.get()
                if event.kind is kind:
                    return event


@contextlib.asynccontextmanager
async def running(config: LnsConfig) -> AsyncIterator[tuple[LnsAdapter, QueueSink]]:
    """An adapter subscribed to the broker, fed into a `QueueSink`; stopped on exit."""
    adapter = LnsAdapter(config, codecs())
    sink = QueueSink()
    async with asyncio.TaskGroup() as group:
        task = group.create_task(adapter.run(sink), name=f"{adapter.name}.run")
        try:
            async with asyncio.timeout(DEFAULT_TIMEOUT_S):
                await adapter.wait_connected()
            yield adapter, sink
        finally:
            task.cancel()
