"""A flood of large junk on the command topics neither grows the daemon nor stops it.

A real ``prepay run`` on MQTT 3.1.1 (where the broker delivers whatever it is sent: MQTT 5's
maximum packet size would make the broker drop the junk itself), 1,500 payloads of 1 MB each
published at QoS 0 on ``cmd/topup``. The daemon refuses each unread (`too_large`), or the link
drops it when the bounded queue is full; its resident memory stays bounded, and a real top-up
sent after the flood is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.northbound.commands import new_command, sign_command
from gateway.northbound.payloads import CommandKind
from gateway.northbound.signing import load_private_key
from tests.fixtures.mosquitto import Broker
from tests.gateway.crash_support import Watcher
from tests.gateway.site import ROOT, write_site

# A loaded CI machine moves 600 MB through mosquitto slowly: more than the suite's 120 s.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

PREPAY = str(ROOT / ".venv" / "bin" / "prepay")
START_TIMEOUT_S = 60.0
# The valid command waits behind the junk the daemon must read off its socket (and answer the
# part its bounded queue takes): seconds on an idle machine, minutes on a busy one.
AFTER_FLOOD_TIMEOUT_S = 300.0
RESEND_AFTER_S = 5.0
# 600 MB of junk, three times the RSS bound: a daemon that queued what it is sent would exceed it
# (it did: 1,500 of them took it to 1.18 GB before the queue was bounded).
FLOOD = 600
JUNK = b"{" + b"x" * (1024 * 1024 - 1)  # 1 MB, not JSON, unsigned
# The daemon runs in about 70-100 MB; the bound is the issue's, generous for a loaded box.
RSS_LIMIT_KB = 200 * 1024


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


async def test_command_flood_of_large_junk_keeps_memory_bounded_and_billing_going(
    mosquitto: Broker, tmp_path: Path
) -> None:
    mqtt = {"host": "127.0.0.1", "port": mosquitto.port, "protocol": "3.1.1"}
    site = write_site(tmp_path, mqtt_port=mosquitto.port, extra={"mqtt": mqtt})
    watcher = Watcher(topics=("prepay/test-site/status", "prepay/test-site/cmd/+/result"))
    async with watcher.connected(mosquitto.host, mosquitto.port):
        with (tmp_path / "daemon.log").open("ab") as log:
            daemon = await asyncio.create_subprocess_exec(
                PREPAY, "run", "-c", str(site), stdout=subprocess.DEVNULL, stderr=log
            )
        try:
            await watcher.wait_for(
                lambda t, d: t.endswith("/status") and d["status"] == "online", START_TIMEOUT_S
            )
            async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
                for _ in range(FLOOD):
                    await client.publish("prepay/test-site/cmd/topup", JUNK, qos=0)
            peak_kb = _rss_kb(daemon.pid)

            key = load_private_key((tmp_path / "keys" / "backend.pem").read_bytes())
            fields = {"account": "A1", "amount_minor": 1_234, "currency": "CNY"}
            body = new_command(
                CommandKind.TOPUP, "test-site", fields, now=datetime.now(UTC), command_id="after"
            )
            command = json.dumps(sign_command(body, key))

            def answered(t: str, d: dict[str, Any]) -> bool:
                return t.endswith("cmd/topup/result") and d.get("id") == "after"

            # A backend resends a command that got no result (docs/mqtt-api.md): while the
            # daemon is still behind the flood, its bounded queue drops what does not fit,
            # the valid command too; the same id again is applied once.
            async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
                async with asyncio.timeout(AFTER_FLOOD_TIMEOUT_S):
                    while not any(answered(t, d) for t, d in watcher.messages):
                        await client.publish("prepay/test-site/cmd/topup", command, qos=1)
                        with contextlib.suppress(TimeoutError):
                            await watcher.wait_for(answered, RESEND_AFTER_S)
            result = await watcher.wait_for(answered)
            assert result["status"] == "applied"
            peak_kb = max(peak_kb, _rss_kb(daemon.pid))
            print(f"daemon RSS after {FLOOD} x 1 MB junk commands: {peak_kb / 1024:.1f} MB")  # noqa: T201
            assert peak_kb < RSS_LIMIT_KB
            assert daemon.returncode is None
            refused = [
                d
                for t, d in watcher.messages
                if t.endswith("cmd/topup/result") and d.get("reason") == "too_large"
            ]
            assert refused  # answered unread (the rest dropped by the bounded queue)
        finally:
            if daemon.returncode is None:
                daemon.kill()
                await daemon.wait()
