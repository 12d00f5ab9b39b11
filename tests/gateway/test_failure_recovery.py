"""A transaction that fails half-way leaves nothing behind: the accounts in memory are reloaded
from the store and the journalled readings are billed again, once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.ports import Reading
from gateway.config import load_site
from gateway.daemon import Gateway
from gateway.store import Transaction
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import write_site

T0 = datetime(2026, 6, 1, tzinfo=UTC)


async def test_pipeline_failure_mid_transaction_bills_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = Gateway(
        load_site(write_site(tmp_path, mqtt_port=free_port())),
        clock=lambda: T0 + timedelta(hours=1),
        sources=[],
        actuators=[],
        connect_mqtt=False,
    )
    real = Transaction.mark_billed
    calls = {"n": 0}

    def flaky(
        self: Transaction, row_id: int, status: str, deduction_minor: int, detail: object = None
    ) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second reading's billing transaction dies half-way
            raise OSError("disk went away")
        real(self, row_id, status, deduction_minor, detail)  # type: ignore[arg-type]

    monkeypatch.setattr(Transaction, "mark_billed", flaky)
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop.wait))
    await gateway.ready.wait()
    await gateway.pipeline.put(Reading("m1", T0, 0))
    async with asyncio.timeout(5):
        while calls["n"] < 1:  # noqa: ASYNC110 - counting calls
            await asyncio.sleep(0.01)
    # +2 m3 at 5.00 yuan = 10.00 yuan; the first attempt fails after the engine ran.
    await gateway.pipeline.put(Reading("m1", T0 + timedelta(minutes=5), 2_000))
    async with asyncio.timeout(10):
        while gateway.store.unbilled(10) or calls["n"] < 3:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert gateway.supervisor.failures.get("pipeline") == 1
    assert gateway.store.balance("A1") == -1000
    assert gateway.book.by_id["A1"].balance_minor == -1000
    entries = gateway.store.entries("A1")
    assert [e.amount_minor for e in entries if e.kind.value == "deduction"] == [-1000]
    stop.set()
    await task
