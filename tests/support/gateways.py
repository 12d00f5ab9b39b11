"""Running a `Gateway` in a test's event loop, and feeding it readings through its public port.

`running` starts ``gateway.run``, returns once the gateway is ready and stops it when the block
ends, also when the test fails (no task outlives the test). `FeedSource` is a `ReadingSource`
the test drives: readings go in the way a driver's do, never through the flows' insides;
`offline_gateway` builds a broker-less gateway fed by one. `settled` says everything handed over
was billed or held.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from drivers.ports import Clock, Reading, ReadingSink
from gateway.config import Site
from gateway.daemon import Gateway
from tests.support.waiting import DEFAULT_TIMEOUT_S

# The daemon stops within its own 4.5 s budget; a loaded machine may take longer.
STOP_TIMEOUT_S = 30.0


class FeedSource:
    """A `ReadingSource` the test drives: `put` hands a reading to the running gateway."""

    name = "test-feed"

    def __init__(self) -> None:
        self.attached = asyncio.Event()
        self._sink: ReadingSink | None = None

    async def run(self, sink: ReadingSink) -> None:
        self._sink = sink
        self.attached.set()
        await asyncio.Event().wait()

    async def put(self, *readings: Reading) -> None:
        """Hand ``readings`` over one by one; returns once the last one is journalled."""
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            await self.attached.wait()
        assert self._sink is not None
        for reading in readings:
            await self._sink.put(reading)


def offline_gateway(site: Site, clock: Clock) -> tuple[Gateway, FeedSource]:
    """A gateway on the test's clock with no broker (every message stays in the outbox) and no
    drivers: readings come from the `FeedSource` returned with it."""
    feed = FeedSource()
    return Gateway(site, clock=clock, sources=[feed], actuators=[], connect_mqtt=False), feed


@contextlib.asynccontextmanager
async def running(gateway: Gateway) -> AsyncIterator[Gateway]:
    """Run ``gateway`` for the block: yields once it is ready, stops it on the way out.

    Raises:
        AssertionError: the gateway was not ready within `DEFAULT_TIMEOUT_S`.
        Exception: what stopped the gateway before it was ready.
    """
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop.wait), name="gateway.run")
    try:
        ready = asyncio.create_task(gateway.ready.wait(), name="gateway.ready")
        await asyncio.wait(
            {ready, task}, timeout=DEFAULT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if not ready.done():
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ready
            if task.done():
                await task  # raises what stopped it
            raise AssertionError(f"the gateway was not ready after {DEFAULT_TIMEOUT_S} s")
        yield gateway
    finally:
        stop.set()
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await task


def settled(gateway: Gateway) -> bool:
    """Every reading handed over so far is journalled, and billed or held."""
    counters = gateway.probe.counters()
    return (
        counters.received == counters.journalled + counters.duplicates + counters.refused
        and not gateway.store.unbilled(1)
    )
