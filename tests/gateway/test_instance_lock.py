"""One daemon per store: a second ``prepay run`` on the same site is refused at once.

Real processes against a real mosquitto: the first daemon holds ``STATE_DIR/prepay.lock``; a
second start exits 1 naming the first one's pid, and the first keeps answering (an operator
top-up through the spool, ``prepay status`` next to it). The lock dies with its process, also on
SIGKILL: the next start succeeds.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import pytest

from gateway.startup import LOCK_FILE
from tests.fixtures.mosquitto import Broker
from tests.gateway.crash_support import Watcher
from tests.gateway.site import ROOT, write_site

pytestmark = pytest.mark.integration

PREPAY = str(ROOT / ".venv" / "bin" / "prepay")
# Generous: a loaded 2-core machine starts Python, imports and loads the site slowly.
START_TIMEOUT_S = 60.0


async def _start(site: Path, log_name: str) -> asyncio.subprocess.Process:
    with (site.parent / log_name).open("ab") as log:
        return await asyncio.create_subprocess_exec(
            PREPAY, "run", "-c", str(site), stdout=subprocess.DEVNULL, stderr=log, cwd=site.parent
        )


async def _prepay(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        PREPAY, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    )
    async with asyncio.timeout(START_TIMEOUT_S + 30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _log(site: Path, name: str) -> str:
    return (site.parent / name).read_text()[-4000:]


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def test_instance_lock_second_run_refused_first_keeps_working_lock_freed_by_sigkill(
    mosquitto: Broker, tmp_path: Path
) -> None:
    site = write_site(tmp_path, mqtt_port=mosquitto.port)
    lock = tmp_path / "state" / LOCK_FILE
    watcher = Watcher()

    def online() -> int:
        return watcher.statuses().count("online")

    async with watcher.connected(mosquitto.host, mosquitto.port):
        first = await _start(site, "first.log")
        try:
            await watcher.wait_until(lambda: online() == 1, START_TIMEOUT_S)
            assert lock.read_text().strip() == str(first.pid)

            # A second daemon on the same site: refused at once, before it opens anything.
            code, _, err = await _prepay("run", "-c", str(site))
            assert code == 1, err
            assert f"refusing to start: already running (pid {first.pid})" in err
            assert first.returncode is None
            assert online() == 1  # the refused one never reached the broker

            # The first still answers: an operator top-up is applied, status reads next to it.
            code, out, err = await _prepay(
                "topup",
                "-c",
                str(site),
                "--account",
                "A1",
                "--amount",
                "12.34",
                "--operator-key",
                str(tmp_path / "keys" / "operator.pem"),
                "--wait",
                str(START_TIMEOUT_S),
            )
            assert code == 0, err
            assert json.loads(out.strip().splitlines()[-1])["status"] == "applied"
            code, out, err = await _prepay("status", "-c", str(site), "--json")
            assert code == 0, err
            assert json.loads(out)["accounts"][0]["balance_minor"] == 1234

            # SIGKILL: the kernel drops the lock with the process; the next start succeeds.
            first.kill()
            assert await first.wait() == -signal.SIGKILL
        finally:
            await _stop(first)
        third = await _start(site, "third.log")
        try:
            await watcher.wait_until(lambda: online() == 2, START_TIMEOUT_S)
            assert lock.read_text().strip() == str(third.pid)
            third.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                assert await third.wait() == 0, _log(site, "third.log")
        finally:
            await _stop(third)
    assert "already running" not in _log(site, "third.log")
