"""`prepay status`: read from the store, with the daemon running; numbers match the store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.ports import Reading
from gateway.cli import main
from gateway.config import load_site
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import write_site
from tests.support.gateways import offline_gateway, running, settled
from tests.support.waiting import eventually

T0 = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)


async def test_status_reports_journal_outbox_accounts_and_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site_file = write_site(tmp_path, mqtt_port=free_port())
    # No broker: every message stays in the outbox.
    gateway, feed = offline_gateway(load_site(site_file), lambda: T0 + timedelta(hours=9))
    async with running(gateway):
        # Beijing water, tier 1 at 5.00 yuan/m3: a baseline, then +3 m3 = 15.00 yuan.
        await feed.put(
            Reading("m1", T0, 10_000),
            Reading("m1", T0 + timedelta(hours=1), 13_000),
            Reading("m-unknown", T0, 1),  # no account: held
        )
        await eventually(lambda: settled(gateway), what="3 readings billed or held")

        # With the daemon still running: a second connection reads a consistent snapshot.
        assert main(["status", "-c", str(site_file), "--json", "--events", "50"]) == 0
        doc = json.loads(capsys.readouterr().out)
        head = gateway.store.chain_head()
        balance = gateway.store.balance("A1")

    assert doc["site"] == "test-site"
    assert doc["journal"] == {"unbilled": 0, "billed": 2, "held": 1}
    assert doc["held"] == {"unknown_meter": 1}
    # Readings published (baseline + billed) and the account's state wait for a broker.
    assert doc["outbox"]["pending"]["telemetry"] == 2
    assert doc["outbox"]["dropped"] == {}
    assert head is not None
    assert doc["ledger_entries"] == head.seq
    [account] = doc["accounts"]
    assert account == {
        "account": "A1",
        "meter": "m1",
        "balance_minor": -1_500,
        "debt_minor": 0,
        "currency": "CNY",
        "state": account["state"],
        "supply": "off",
        # The gateway runs with no driver for v1: nothing ever confirmed, and status says so.
        "actuator": "v1",
        "device_supply": None,
        "device_pending": False,
        "supply_mismatch": True,
        "last_reading_at": "2026-06-01T01:00:00.000Z",
    }
    assert account["balance_minor"] == balance
    assert account["state"] in ("cutoff", "grace")
    assert "cutoff" in [e["event"] for e in doc["recent_events"] if e["account"] == "A1"]

    assert main(["status", "-c", str(site_file)]) == 0
    text = capsys.readouterr().out
    assert "journal: 3 readings: 0 unbilled, 2 billed, 1 held" in text
    assert "held: unknown_meter 1" in text
    assert "A1  -15.00 CNY" in text
    assert "supply wanted off, v1 confirmed unknown, MISMATCH" in text


def test_status_names_a_bad_site_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site_file = write_site(tmp_path, mqtt_port=70_000)
    assert main(["status", "-c", str(site_file)]) == 1
    assert "mqtt.port" in capsys.readouterr().err


def test_status_without_a_store_says_so_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site_file = write_site(tmp_path, mqtt_port=free_port())
    assert main(["status", "-c", str(site_file)]) == 1
    assert "the gateway has not run with this site yet" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()
