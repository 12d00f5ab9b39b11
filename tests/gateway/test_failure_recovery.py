"""A transaction that fails half-way leaves nothing behind: the accounts in memory are reloaded
from the store and the journalled readings are billed again, once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.ports import Reading
from gateway.config import load_site
from gateway.store import Transaction
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import write_site
from tests.support.gateways import offline_gateway, running
from tests.support.waiting import eventually

T0 = datetime(2026, 6, 1, tzinfo=UTC)


async def test_pipeline_failure_mid_transaction_bills_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway, feed = offline_gateway(
        load_site(write_site(tmp_path, mqtt_port=free_port())), lambda: T0 + timedelta(hours=1)
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
    async with running(gateway):
        await feed.put(Reading("m1", T0, 0))
        await eventually(lambda: calls["n"] >= 1, what="the baseline billed")
        # +2 m3 at 5.00 yuan = 10.00 yuan; the first attempt fails after the engine ran. The
        # put still returns: the batch is journalled on its own when its billing fails.
        await feed.put(Reading("m1", T0 + timedelta(minutes=5), 2_000))
        await eventually(
            lambda: calls["n"] >= 3 and not gateway.store.unbilled(10),
            what="the failed reading billed again",
        )
        assert gateway.supervisor.failures.get("pipeline") == 1
        assert gateway.store.balance("A1") == -1000
        assert gateway.probe.balance_minor("A1") == -1000
        entries = gateway.store.entries("A1")
        assert [e.amount_minor for e in entries if e.kind.value == "deduction"] == [-1000]
