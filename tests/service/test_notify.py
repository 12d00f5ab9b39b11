"""systemd's notify protocol (``Type=notify``, ``WatchdogSec=``) through a real datagram socket.

The test plays systemd's manager: it binds the socket named in ``NOTIFY_SOCKET`` and reads what
the daemon sends. A real ``prepay run`` (simulated Modbus water meter, real mosquitto) reports
READY=1, STATUS= and WATCHDOG=1 while it bills; while another process holds the database's
write lock, its journal write cannot end and the pings stop, until the lock is let go; SIGTERM
brings STOPPING=1. A gateway in the test's loop, under the same `ServiceWatch` the daemon runs,
shows the same for a batch stuck under the state lock.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from drivers.modbus.profiles import load_profile
from drivers.ports import Reading
from firmware_sim.meter_model import SimMeter
from firmware_sim.modbus_meter import MeterSimulator
from gateway.config import load_site
from gateway.notify import Notifier, ServiceWatch, watchdog_period_s
from gateway.startup import STATE_FILE
from tests.fixtures.mosquitto import Broker, free_port
from tests.gateway.site import PROFILES, ROOT, load, write_site
from tests.service.notify_socket import NotifySocket, billed, pinged, stalled
from tests.support.gateways import offline_gateway, running, settled
from tests.support.waiting import eventually

PREPAY = str(ROOT / ".venv" / "bin" / "prepay")
# Slower than a second: two readings of a moving register in one second conflict (held).
POLL_S = 1.1
T0 = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)


def test_watchdog_period_is_half_of_watchdog_usec_for_this_process_only() -> None:
    # WatchdogSec=60 -> WATCHDOG_USEC=60000000 -> ping every 30 s.
    assert watchdog_period_s({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert watchdog_period_s({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}) == 30
    # Meant for another process (a parent that exec'd us keeps its own watchdog).
    assert watchdog_period_s({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_period_s({}) is None
    assert watchdog_period_s({"WATCHDOG_USEC": "soon"}) is None


def test_notifier_without_systemd_socket_logs_once_and_carries_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))  # systemd restarting: nobody listens
    notifier.notify("WATCHDOG=1")
    notifier.notify("WATCHDOG=1")
    notifier.close()
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot notify systemd at {tmp_path / 'gone.sock'}: [Errno 2] No such file or directory"
    ]


@pytest.mark.integration
async def test_notify_prepay_run_ready_watchdog_while_billing_withheld_while_store_locked(
    mosquitto: Broker, tmp_path: Path
) -> None:
    profile = load_profile(PROFILES / "water_xintai_valve.yaml")
    meter = SimMeter(1, profile, energy_milli=10_000, rate_milli_per_h=36_000)  # 10 L/s
    with NotifySocket.bound(NotifySocket.abstract_name()) as systemd:
        async with MeterSimulator.tcp([meter], port=0) as sim:
            site = write_site(tmp_path, mqtt_port=mosquitto.port, modbus_port=sim.port)
            doc = yaml.safe_load(site.read_text())
            doc["devices"]["modbus_buses"][0]["devices"][0]["poll_interval_s"] = POLL_S
            site.write_text(yaml.safe_dump(doc, sort_keys=False))
            # WatchdogSec=2: a check and a ping every second.
            env = dict(os.environ, NOTIFY_SOCKET=systemd.address, WATCHDOG_USEC="2000000")
            log = tmp_path / "daemon.log"
            with log.open("wb") as err:
                proc = await asyncio.create_subprocess_exec(
                    PREPAY, "run", "-c", str(site), "--log-format", "json",
                    stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=tmp_path,
                )  # fmt: skip
                try:
                    ready = await systemd.wait_for(lambda m: m.get("READY") == "1")
                    assert ready["STATUS"].startswith("running; readings billed: ")
                    # Pings while the pipeline bills: the count grows from one ping to a later.
                    first = await systemd.wait_for(lambda m: pinged(m) and billed(m) >= 1)
                    await systemd.wait_for(lambda m: pinged(m) and billed(m) > billed(first))

                    # Another process takes the database's write lock (as a hung writer would
                    # hold it): the next reading's journal write waits on it, and three checks
                    # in a row find the pipeline unable to take a turn.
                    other = sqlite3.connect(
                        load_site(site).state_dir / STATE_FILE,
                        isolation_level=None,
                        check_same_thread=False,
                    )
                    try:
                        await asyncio.to_thread(other.execute, "BEGIN IMMEDIATE")
                        systemd.drain()
                        start = len(systemd.messages)
                        await systemd.wait_for(stalled, count=3, after=start)
                        systemd.drain()
                        held = systemd.messages[start:]
                        await asyncio.to_thread(other.execute, "ROLLBACK")
                    finally:
                        other.close()
                    first_stall = next(i for i, m in enumerate(held) if stalled(m))
                    assert not [m for m in held[first_stall:] if pinged(m)], held
                    # Let go: the write ends, the pipeline bills again, the pings resume.
                    stuck_at = max(billed(m) for m in systemd.messages)
                    await systemd.wait_for(
                        lambda m: pinged(m) and billed(m) > stuck_at, after=start + len(held)
                    )

                    proc.send_signal(signal.SIGTERM)
                    await systemd.wait_for(lambda m: m.get("STOPPING") == "1")
                    async with asyncio.timeout(30):
                        assert await proc.wait() == 0, log.read_text()[-3000:]
                finally:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()

    # --log-format json: every line one object with a timestamp.
    lines = log.read_text().splitlines()
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["at"]), line
        assert entry["level"] in {"DEBUG", "INFO", "WARNING", "ERROR"}, line


async def test_notify_watchdog_withheld_while_state_lock_held_then_resumes(
    tmp_path: Path,
) -> None:
    site = load(tmp_path, mqtt_port=free_port())
    gateway, feed = offline_gateway(site, lambda: T0 + timedelta(hours=9))
    environ = {"NOTIFY_SOCKET": NotifySocket.path_in(tmp_path), "WATCHDOG_USEC": "1000000"}
    with NotifySocket.bound(environ["NOTIFY_SOCKET"]) as systemd:
        watch = ServiceWatch.from_environment(
            gateway.ctx.lock, gateway.store, gateway.probe.counters, environ
        )
        stop = asyncio.Event()
        async with running(gateway), watch.watching(gateway.ready, stop):
            await systemd.wait_for(lambda m: m.get("READY") == "1")
            # Beijing water: a baseline, then +1 m3 billed.
            await feed.put(
                Reading("m1", T0, 10_000), Reading("m1", T0 + timedelta(hours=1), 11_000)
            )
            await eventually(lambda: settled(gateway), what="both readings billed")
            # Both count as billed: the baseline (published at 0.00) and the +1 m3.
            await systemd.wait_for(lambda m: pinged(m) and billed(m) == 2)

            # A batch stuck under the state lock (as a SQLite call hanging on a dying disk
            # would hold it): three checks in a row find the pipeline unable to take a turn.
            async with gateway.ctx.lock:
                systemd.drain()
                start = len(systemd.messages)
                await systemd.wait_for(stalled, count=3, after=start)
                systemd.drain()
                held = systemd.messages[start:]
            first_stall = next(i for i, m in enumerate(held) if stalled(m))
            assert not [m for m in held[first_stall:] if pinged(m)], held

            # Free again: the next check pings, and the status says it is running.
            resumed = await systemd.wait_for(pinged, after=start + len(held))
            assert resumed["STATUS"].startswith("running; readings billed: 2,"), resumed
            stop.set()
            await systemd.wait_for(lambda m: m.get("STOPPING") == "1")
