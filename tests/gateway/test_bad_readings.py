"""One reading the journal cannot hold fails alone: the rest of its batch is journalled and
billed, the pipeline is not restarted, and a failure of the disk still fails as before.

Issue 9, item 2: a register of 2**63 milli-units or more made the journal insert raise
`OverflowError`, the shared batch failed and the supervisor restarted the pipeline with backoff
up to 30 s; no meter was journalled or billed while the value lasted.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.ports import Quality, Reading, ReadingSink
from gateway.config import load_site
from gateway.daemon import Gateway
from gateway.store import StoreError, Transaction
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import water_account, write_site
from tests.support.gateways import running
from tests.support.waiting import DEFAULT_TIMEOUT_S, eventually

T0 = datetime(2026, 6, 1, tzinfo=UTC)


class BatchFeed:
    """A `ReadingSource` the test drives, handing several readings over at the same instant
    (one task each, started together) so that they reach the journal in one batch."""

    name = "test-batch-feed"

    def __init__(self) -> None:
        self.attached = asyncio.Event()
        self._sink: ReadingSink | None = None

    async def run(self, sink: ReadingSink) -> None:
        self._sink = sink
        self.attached.set()
        await asyncio.Event().wait()

    async def put_together(self, *readings: Reading) -> list[BaseException | None]:
        """Put every reading concurrently; returns, in order, what each put raised (or None)."""
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            await self.attached.wait()
        sink = self._sink
        assert sink is not None
        # All tasks are queued before any runs; a put enqueues without suspending, so all the
        # readings are in the pipeline's queue before its journal loop wakes: one batch.
        tasks = [asyncio.create_task(sink.put(r)) for r in readings]
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            results = await asyncio.gather(*tasks, return_exceptions=True)
        return [r if isinstance(r, BaseException) else None for r in results]


def unstorable_reading(meter_id: str, read_at: datetime) -> Reading:
    """A reading of 2**63 milli-units: what a driver produced before issue 9.

    `Reading` now refuses it at construction, so the pipeline's own defence (a batch with one
    row SQLite refuses) can only be reached by building one around that check, the way a
    driver built against an older `Reading` (or a future bug) would hand it over.
    """
    reading = object.__new__(Reading)
    micros = (read_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    for name, value in (
        ("meter_id", meter_id),
        ("read_at", read_at),
        ("register_milli", 2**63),  # one more than SQLite's INTEGER holds
        ("source", "test:insane"),
        ("quality", Quality.GOOD),
        ("seq", None),
        ("reading_id", f"{meter_id}@{micros}"),
    ):
        object.__setattr__(reading, name, value)
    return reading


def two_meter_gateway(tmp_path: Path, feed: BatchFeed) -> Gateway:
    site = load_site(
        write_site(
            tmp_path,
            mqtt_port=free_port(),
            accounts=[water_account("A1", "m1"), water_account("A2", "m2")],
        )
    )
    return Gateway(
        site,
        clock=lambda: T0 + timedelta(hours=1),
        sources=[feed],
        actuators=[],
        connect_mqtt=False,
    )


async def test_one_unstorable_reading_fails_alone_and_its_batch_is_billed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feed = BatchFeed()
    gateway = two_meter_gateway(tmp_path, feed)
    caplog.set_level(logging.WARNING, logger="gateway.flows.pipeline")
    async with running(gateway):
        # m1: a baseline, then +2 m3 (5.00 yuan/m3: 10.00 yuan); m2's reading is unstorable.
        results = await feed.put_together(
            Reading("m1", T0, 0),
            unstorable_reading("m2", T0 + timedelta(minutes=1)),
            Reading("m1", T0 + timedelta(minutes=5), 2_000),
        )
        assert results[0] is None
        assert results[2] is None
        refused = results[1]
        assert isinstance(refused, StoreError)
        assert "m2@" in str(refused)
        assert "OverflowError" in str(refused)
        # The batch went to the journal whole, was refused, and was written row by row.
        one_by_one = [r for r in caplog.records if "writing them one by one" in r.getMessage()]
        assert len(one_by_one) == 1
        assert "a batch of 3 readings" in one_by_one[0].getMessage()

        await eventually(
            lambda: (
                gateway.probe.billed_with_status("billed") == 1 and not gateway.store.unbilled(1)
            ),
            what="m1's two readings journalled and billed",
        )
        counters = gateway.probe.counters()
        assert (counters.received, counters.journalled, counters.duplicates) == (3, 2, 0)
        assert gateway.probe.billed_with_status("baseline") == 1
        assert gateway.probe.balance_minor("A1") == -1000
        assert "pipeline" not in gateway.supervisor.failures

        # m2 goes on as soon as it sends a sane value: no restart, no backoff.
        assert await feed.put_together(Reading("m2", T0 + timedelta(minutes=6), 7_000)) == [None]
        await eventually(
            lambda: gateway.probe.billed_with_status("baseline") == 2,
            what="m2's sane reading journalled and billed",
        )
        assert gateway.probe.balance_minor("A2") == 0
        assert "pipeline" not in gateway.supervisor.failures
    assert gateway.supervisor.failures.get("pipeline") is None


async def test_a_journal_failure_that_is_not_one_row_still_fails_the_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed = BatchFeed()
    gateway = two_meter_gateway(tmp_path, feed)
    real = Transaction.stage_readings  # what a batch is journalled with
    calls = {"n": 0}

    # The disk, not a row: injected at the store's boundary as test_failure_recovery does (a
    # real I/O error cannot be provoked on demand); the batch must not be retried row by row.
    def failing_once(self: Transaction, readings: list[Reading], received_at: datetime) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise StoreError("store: disk I/O error")
        return real(self, readings, received_at)

    monkeypatch.setattr(Transaction, "stage_readings", failing_once)
    async with running(gateway):
        results = await feed.put_together(Reading("m1", T0, 0), Reading("m2", T0, 0))
        assert all(isinstance(r, StoreError) for r in results)
        assert calls["n"] == 1  # not retried one by one
        await eventually(
            lambda: gateway.supervisor.failures.get("pipeline") == 1,
            what="the pipeline failed and was restarted",
        )
        # After the supervisor's restart the same readings are journalled (sent again).
        retried = await feed.put_together(Reading("m1", T0, 0), Reading("m2", T0, 0))
        assert retried == [None, None]
        await eventually(
            lambda: gateway.probe.billed_with_status("baseline") == 2,
            what="both readings journalled after the restart",
        )
