"""Backlog drain throughput of MqttLink against a local mosquitto (not collected by pytest).

Run: ``.venv/bin/python -m tests.northbound.bench_mqtt_link [N]``. It belongs in ``bench/``; it sits
here only because this change may not touch that folder.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from gateway.messages import MessageClass
from gateway.northbound.mqtt import MqttLink, MqttSettings
from gateway.northbound.topics import ReadingPayload, SiteTopics
from tests.fixtures.mosquitto import Broker, free_port, write_config
from tests.northbound.peers import MemoryOutbox

TOPICS = SiteTopics("bench")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _fill(outbox: MemoryOutbox, n: int, *, readings: bool) -> None:
    for i in range(n):
        if readings:
            payload = ReadingPayload.model_validate(
                {
                    "meter": f"m{i % 50}",
                    "reading_id": f"m{i % 50}:{i}",
                    "read_at": T0,
                    "register": i,
                    "delta": 1,
                    "unit": "Wh",
                    "quality": "good",
                    "ts": T0,
                }
            )
            msg = TOPICS.reading_message(payload)
            outbox.add(msg.topic, msg.payload, message_class=msg.message_class)
        else:
            topic = TOPICS.account_event(f"a{i % 50}")
            outbox.add(topic, b'{"event_id":"a:%d"}' % i, message_class=MessageClass.LEDGER)


async def _drain(port: int, n: int, *, readings: bool, batch: bool, window: int) -> float:
    outbox = MemoryOutbox()
    _fill(outbox, n, readings=readings)
    settings = MqttSettings(host="127.0.0.1", port=port, max_inflight=window, batch_telemetry=batch)
    link = MqttLink(settings, "bench", "bench")

    async def ignore(kind: str, payload: bytes) -> None:
        pass

    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(link.run(outbox, asyncio.Event(), ignore))
        await link.connected.wait()
        started = time.perf_counter()
        await outbox.emptied.wait()
        elapsed = time.perf_counter() - started
        task.cancel()
    return n / elapsed


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        port = free_port()
        broker = Broker("127.0.0.1", port, write_config(Path(directory), port))
        broker.start()
        try:
            for label, readings, batch, window in [
                ("ledger events, one PUBLISH each, window 50", False, False, 50),
                ("ledger events, one PUBLISH each, window 100", False, False, 100),
                ("readings, one PUBLISH each, window 100", True, False, 100),
                ("readings, batched per meter (100), window 100", True, True, 100),
            ]:
                rate = await _drain(port, n, readings=readings, batch=batch, window=window)
                sys.stdout.write(f"{label}: {rate:,.0f} messages/s\n")
        finally:
            broker.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000))
