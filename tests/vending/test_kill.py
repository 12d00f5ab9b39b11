"""``prepay run`` as a real process, killed with SIGKILL mid-pour: the session settles exactly
once from the dispenser's report when the daemon is back.

The dispenser is simulated in this test's process and served to the daemon over a Unix socket
(`firmware_sim.ble_remote`), as ``prepay sim`` serves it: the daemon runs the production driver
with bleak's real client over that backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from drivers.ble.gatt import REQUEST_UUID, IdentityKind
from firmware_sim.ble_remote import BleAirServer
from firmware_sim.dispenser import SimulatedDispenser
from gateway.cli import main
from gateway.startup import STATE_FILE
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import ROOT, water_account, write_site
from tests.support.waiting import eventually
from tests.vending.conftest import ADDRESSES, CARD, dispenser_entry

pytestmark = [pytest.mark.crash, pytest.mark.integration]

PREPAY = str(ROOT / ".venv" / "bin" / "prepay")
# Generous for a loaded 2-core machine: it bounds a daemon that is stuck, not a slow one.
START_TIMEOUT_S = 60.0


def _site(directory: Path) -> Path:
    path = write_site(directory, mqtt_port=free_port(), accounts=[water_account("A1", "m1")])
    doc = yaml.safe_load(path.read_text())
    entry = dispenser_entry("kiosk-1")
    entry["backend"] = "firmware_sim.ble_remote:RemoteSimBackend"
    doc["devices"]["ble_dispensers"] = [entry]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@contextlib.asynccontextmanager
async def _daemon(site: Path, socket: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    log = (site.parent / "daemon.log").open("ab")
    env = {"PATH": "/usr/bin:/bin", "PREPAY_BLE_SIM_SOCKET": str(socket)}
    proc = await asyncio.create_subprocess_exec(
        PREPAY,
        "run",
        "-c",
        str(site),
        stdout=subprocess.DEVNULL,
        stderr=log,
        cwd=site.parent,
        env=env,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()


def _query(site: Path, sql: str) -> list[tuple[object, ...]]:
    state = site.parent / "state" / STATE_FILE
    with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True)) as conn:
        return conn.execute(sql).fetchall()


def _vend_entries(site: Path) -> list[tuple[object, ...]]:
    return _query(
        site, "SELECT amount_minor FROM ledger WHERE idempotency_key LIKE 'vend:%' ORDER BY seq"
    )


def _session_states(site: Path) -> list[tuple[object, ...]]:
    return _query(site, "SELECT session_id, state, poured_ml FROM vend_sessions")


async def _topup(site: Path, amount: str) -> None:
    argv = [
        "topup",
        "--wait",
        "60",
        "-c",
        str(site),
        "--account",
        "A1",
        "--amount",
        amount,
        "--operator-key",
        str(site.parent / "keys" / "operator.pem"),
        "--reference",
        "desk-1",
    ]
    assert await asyncio.to_thread(main, argv) == 0


async def test_daemon_killed_mid_pour_settles_once_after_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _site(tmp_path)
    socket = tmp_path / "ble.sock"
    kiosk = SimulatedDispenser(ADDRESSES["kiosk-1"])
    async with BleAirServer(socket, {kiosk.address: kiosk}):
        async with _daemon(site, socket) as first:
            await eventually(
                lambda: kiosk.listening(REQUEST_UUID), START_TIMEOUT_S, what="daemon listening"
            )
            await _topup(site, "10.00")  # 1000 fen
            capsys.readouterr()
            kiosk.present(IdentityKind.ACCOUNT_CARD, CARD)
            await eventually(lambda: kiosk.max_ml > 0, what="authorised")
            kiosk.pour(1_000)
            first.send_signal(signal.SIGKILL)  # mid-pour, no shutdown
            assert await first.wait() == -signal.SIGKILL
        await eventually(lambda: kiosk.connected == 0, what="link gone with the daemon")
        kiosk.pour(1_500)  # the dispenser pours on by itself, then the customer stops
        kiosk.finish()
        assert _session_states(site) == [(1, "open", None)]
        assert _vend_entries(site) == []

        async with _daemon(site, socket) as second:
            await eventually(
                lambda: _session_states(site) == [(1, "settled", 2_500)],
                START_TIMEOUT_S,
                what="settled after the restart",
            )
            # 1 000 + 1 500 = 2 500 mL x 35 fen/L = 87.5 -> 88 fen, once
            assert _vend_entries(site) == [(-88,)]
            second.send_signal(signal.SIGTERM)
            assert await second.wait() == 0
    assert _vend_entries(site) == [(-88,)]
    balance = _query(site, "SELECT SUM(amount_minor) FROM ledger WHERE account_id = 'A1'")
    assert balance == [(912,)]  # 1000 - 88
    log = (tmp_path / "daemon.log").read_text()
    assert "session 1 settled: 2500 mL, 88 CNY" in log, log[-3000:]
