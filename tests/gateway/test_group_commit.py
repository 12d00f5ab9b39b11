"""Group commit (the site's ``commit_window_ms``): readings that arrive one by one within a
window share one journal commit; a producer that waits for each commit is not made to wait a
window every time; every reading is still journalled before its ``put`` returns."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drivers.ports import Reading
from gateway.config import load_site
from gateway.daemon import Gateway
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import water_account, write_site
from tests.support.gateways import FeedSource, offline_gateway, running, settled
from tests.support.waiting import eventually

T0 = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)
METERS = [f"m{i}" for i in range(1, 9)]


def _offline(tmp_path: Path) -> tuple[Gateway, FeedSource]:
    """A gateway fed by the test, with the longest window (200 ms): arrivals fall inside it."""
    site = write_site(
        tmp_path,
        mqtt_port=free_port(),  # nothing listens: every message stays in the outbox
        accounts=[water_account(f"A{i}", meter) for i, meter in enumerate(METERS, 1)],
        extra={"commit_window_ms": 200},
    )
    return offline_gateway(load_site(site), lambda: T0 + timedelta(hours=1))


async def _burst(feed: FeedSource, meters: list[str]) -> None:
    """One reading of each meter, one by one (2 ms apart), as a bus polls meter after meter;
    returns when every put did (each reading journalled)."""

    async def arrive(i: int, meter: str) -> None:
        await asyncio.sleep(0.002 * i)
        await feed.put(_reading(meter, 60, 10))

    await asyncio.gather(*(arrive(i, m) for i, m in enumerate(meters)))


def _reading(meter: str, seconds: int, litres: int) -> Reading:
    # A water meter's register in m3: a litre is one milli-unit.
    return Reading(meter, T0 + timedelta(seconds=seconds), litres, source="test")


async def test_readings_arriving_one_by_one_share_one_commit(tmp_path: Path) -> None:
    gateway, feed = _offline(tmp_path)
    async with running(gateway):
        await feed.put(_reading("m1", 0, 0))  # after a quiet time: committed at once
        stats = gateway.pipeline.stats
        assert (stats.batches, stats.window_waits) == (1, 0)

        await _burst(feed, METERS)
        # Every put returned: each reading is in the journal, the eight in one more commit.
        assert (stats.journalled, stats.batches, stats.window_waits) == (9, 2, 1)
        await eventually(lambda: settled(gateway), what="all readings billed")


async def test_a_producer_waiting_for_each_commit_is_not_held_a_window_each_time(
    tmp_path: Path,
) -> None:
    gateway, feed = _offline(tmp_path)
    async with running(gateway):
        # One reading at a time, each put awaited (a network server's uplinks): the first is
        # committed at once, the second and third wait out the window and gather nothing, and
        # after two such waits the next ones are committed at once.
        for seconds in range(0, 5 * 60, 60):
            await feed.put(_reading("m1", seconds, seconds // 6))
        stats = gateway.pipeline.stats
        assert (stats.journalled, stats.batches, stats.window_waits) == (5, 5, 2)


async def test_one_wait_that_gathered_nothing_does_not_leave_the_next_burst_unwindowed(
    tmp_path: Path,
) -> None:
    gateway, feed = _offline(tmp_path)
    async with running(gateway):
        stats = gateway.pipeline.stats
        await feed.put(_reading("m1", 0, 0))  # after a quiet time: committed at once
        # The last meter of a bus's burst: it waits out the window alone.
        await feed.put(_reading("m1", 60, 10))
        assert (stats.batches, stats.window_waits) == (2, 1)

        # The next burst, within the second: seven meters one by one. The window still holds,
        # so they share one commit (paused after that one empty wait, the gateway used to
        # commit them as they came: a commit every reading or two).
        await _burst(feed, METERS[1:])
        assert (stats.journalled, stats.batches, stats.window_waits) == (9, 3, 2)
        await eventually(lambda: settled(gateway), what="all readings billed")


async def test_a_reading_waiting_for_its_window_at_shutdown_is_journalled_and_billed(
    tmp_path: Path,
) -> None:
    gateway, feed = _offline(tmp_path)
    async with running(gateway):
        await feed.put(_reading("m1", 0, 0))
        # The next reading waits out the window (200 ms) when the daemon is told to stop.
        late = asyncio.create_task(feed.put(_reading("m1", 60, 10)))
        await eventually(lambda: gateway.pipeline.stats.received == 2, what="handed over")
    # The stop ended the window: the reading was journalled (its put returned) and billed.
    await late
    stats = gateway.pipeline.stats
    assert (stats.journalled, stats.billed, stats.held) == (2, 2, 0)


async def test_a_batch_is_journalled_and_billed_in_one_transaction(tmp_path: Path) -> None:
    # One commit (one fsync, one hold of the store's lock) for the journal rows of a batch and
    # their billing: when they were two, the next journal commit waited behind the billing.
    gateway, feed = _offline(tmp_path)
    async with running(gateway):
        await feed.put(_reading("m1", 0, 0))  # m1's baseline
        seen: list[str] = []
        with gateway.store._locked() as conn:
            conn.set_trace_callback(seen.append)
        await _burst(feed, METERS)
        # Each put returned with its reading billed, not only journalled: nothing is left.
        assert not gateway.store.unbilled(10)
        with gateway.store._locked() as conn:
            conn.set_trace_callback(None)
    transactions: list[list[str]] = []  # the statements of each, from BEGIN to its end
    current: list[str] | None = None
    for statement in seen:
        if statement.startswith("BEGIN"):
            current = []
            transactions.append(current)
        elif current is not None:
            current.append(statement)
            if statement in ("COMMIT", "ROLLBACK"):
                current = None
    journalling = [t for t in transactions if any("INSERT INTO readings" in s for s in t)]
    assert len(journalling) == 1  # the burst of eight shares one window (200 ms)
    (batch,) = journalling
    # Each journal row is written once, already billed (`Transaction.stage_readings`).
    # (The trace repeats a statement of executemany; its rows differ in their values.)
    rows = {s for s in batch if s.startswith("INSERT INTO readings")}
    assert len(rows) == len(METERS)
    assert all("'billed'" in s for s in rows)
    assert not any(s.startswith("UPDATE readings") for s in batch)
    assert any("INSERT INTO outbox" in s for s in batch)  # the reading messages
    assert batch[-1] == "COMMIT"
