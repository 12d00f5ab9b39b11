"""The InfluxDB sink against a real VictoriaMetrics (its InfluxDB v2 write API): every journalled
reading arrives once with its exact value and instant, ledger balances follow, and nothing is
lost or doubled through a server restart and a SIGKILL of ``prepay run``."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from billing_engine.base.errors import InvalidConfigError
from drivers.ports import Reading
from gateway.config import load_site
from gateway.influx_sink import SinkTokenError, read_token
from gateway.startup import STATE_FILE
from tests.fixtures.mosquitto import Broker, free_port
from tests.fixtures.victoria_metrics import VictoriaMetrics
from tests.gateway.site import ROOT, write_site
from tests.support.gateways import offline_gateway, running, settled
from tests.support.waiting import eventually

T0 = datetime(2026, 6, 1, tzinfo=UTC)
T0_MS = 1_780_272_000_000  # 2026-06-01T00:00:00Z in ms since the epoch (20,605 days x 86,400 s)


def influx_section(server: VictoriaMetrics, **more: Any) -> dict[str, Any]:
    return {
        "influx": {
            "url": server.url,
            "batch_size": 7,  # several batches for a few readings
            "poll_interval_s": 0.05,
            "retry_interval_s": 0.2,
            "max_retries": 1,
            "max_retry_delay_s": 0.5,
            "timeout_s": 5,
            **more,
        }
    }


def samples(server: VictoriaMetrics, metric: str, **labels: str) -> list[tuple[int, float]]:
    """``(timestamp ms, value)`` of every sample of the one series matching ``labels``."""
    found = [
        s for s in server.export(metric) if all(s["metric"].get(k) == v for k, v in labels.items())
    ]
    assert len(found) <= 1, found
    if not found:
        return []
    return sorted(zip(found[0]["timestamps"], found[0]["values"], strict=True))


async def test_influx_sink_readings_and_balances_exact(
    tmp_path: Path, victoria_metrics: VictoriaMetrics
) -> None:
    site = load_site(
        write_site(tmp_path, mqtt_port=free_port(), extra=influx_section(victoria_metrics))
    )
    gateway, feed = offline_gateway(site, lambda: T0 + timedelta(hours=1))
    async with running(gateway):
        # +0.1 m3 each at 5.00 yuan/m3: 50 fen per reading after the first
        await feed.put(*(Reading("m1", T0 + timedelta(minutes=i), 100 * i) for i in range(20)))
        await eventually(lambda: settled(gateway), what="20 readings billed")
        expected = [(T0_MS + 60_000 * i, float(100 * i)) for i in range(20)]
        await eventually(
            lambda: (
                samples(victoria_metrics, "prepay_reading_register_milli", meter="m1") == expected
            ),
            what="the 20 readings at the server",
        )

        def balances() -> list[tuple[int, float]]:
            return samples(victoria_metrics, "prepay_ledger_balance_minor", account="A1")

        await eventually(lambda: len(balances()) >= 19, what="19 deductions at the server")
    # Each deduction takes 50 fen off: -50, -100, ..., -950; all made at the gateway's clock,
    # T0 + 1 h (3,600,000 ms).
    assert sorted(balances()) == [(T0_MS + 3_600_000, -50.0 * k) for k in range(19, 0, -1)]


PREPAY = str(ROOT / ".venv" / "bin" / "prepay")
BACKLOG = 600


def sent_row(state_file: Path) -> int:
    """The sink's durable cursor over the journal, read straight from the file."""
    with sqlite3.connect(state_file) as conn:
        row = conn.execute(
            "SELECT state_json FROM account_state WHERE account_id = '~influx.sent'"
        ).fetchone()
    return 0 if row is None else int(json.loads(row[0])["reading_row"])


@asynccontextmanager
async def prepay_run(site: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    with (site.parent / "daemon.log").open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            PREPAY, "run", "-c", str(site), stdout=subprocess.DEVNULL, stderr=log, cwd=site.parent
        )
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.mark.integration
@pytest.mark.crash
async def test_influx_sink_exactly_once_through_server_restart_and_kill_9(
    tmp_path: Path, mosquitto: Broker, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("vm-dedup")
    server = VictoriaMetrics(free_port(), directory / "data", directory / "vm.log", dedup=True)
    path = write_site(
        tmp_path, mqtt_port=mosquitto.port, extra=influx_section(server, batch_size=5)
    )
    state_file = load_site(path).state_dir / STATE_FILE
    # A backlog journalled while the server is not even there: nothing is sent, nothing lost.
    gateway, feed = offline_gateway(load_site(path), lambda: T0 + timedelta(days=30))
    async with running(gateway):
        await feed.put(*(Reading("m1", T0 + timedelta(minutes=i), 100 * i) for i in range(BACKLOG)))
        await eventually(lambda: settled(gateway), what="the backlog journalled and billed")
    assert sent_row(state_file) == 0
    server.start()
    try:
        async with prepay_run(path) as daemon:
            await eventually(lambda: sent_row(state_file) >= 150, what="a quarter sent")
            daemon.send_signal(signal.SIGKILL)
            await daemon.wait()
        killed_at = sent_row(state_file)
        assert killed_at < BACKLOG, "the kill came after the last batch: nothing was tested"
        async with prepay_run(path) as daemon:
            await eventually(lambda: sent_row(state_file) > killed_at, what="sending again")
            server.stop()  # the server goes away in the middle
            log = path.parent / "daemon.log"
            await eventually(lambda: "write failed" in log.read_text(), what="writes failing")
            server.start()
            await eventually(lambda: sent_row(state_file) == BACKLOG, what="all sent")
            daemon.send_signal(signal.SIGTERM)
            assert await daemon.wait() == 0
        # Exactly the journalled readings: each once, its value and instant exact
        # (reading i: register 100 x i at T0 + i minutes).
        expected = [(T0_MS + 60_000 * i, float(100 * i)) for i in range(BACKLOG)]

        def arrived() -> list[tuple[int, float]]:
            return samples(server, "prepay_reading_register_milli", meter="m1")

        # The server makes what it took searchable within about a second.
        await eventually(lambda: len(arrived()) >= BACKLOG, what="the backlog searchable")
        assert arrived() == expected
    finally:
        server.stop()


def test_influx_settings_bad_url_is_a_line_error(tmp_path: Path) -> None:
    path = write_site(
        tmp_path, mqtt_port=free_port(), extra={"influx": {"url": "nowhere", "batch_size": 0}}
    )
    with pytest.raises(InvalidConfigError) as caught:
        load_site(path)
    text = "\n".join(str(e) for e in caught.value.errors)
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "nowhere" in t)
    assert f"{path}:{line}: influx.url:" in text
    assert "influx.batch_size:" in text


def test_influx_token_file_missing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SinkTokenError, match=r"influx.token_file .*nope.token: No such file"):
        read_token(tmp_path / "nope.token")
