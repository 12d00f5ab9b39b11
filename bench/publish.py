"""``prepay bench publish``: CPU a QoS 1 message costs the MQTT link's two ways of publishing.

Against one mosquitto started here (loopback), in one process, alternated ``--rounds`` times:

- ``paho``: the baseline, what the link does with ``publish_connection: shared``: paho's
  ``publish`` on aiomqtt's client, the PUBACK taken from paho's ``on_publish``;
- ``own``: the link's publishing connection (`gateway.northbound.publish_connection`).

Each sends ``--messages`` messages of a reading's size, at most ``--window`` in flight (the
link's ``max_inflight``), refilling the window as PUBACKs come, and counts every PUBACK. It
reports the process's CPU seconds per message (``time.process_time``: this process only, not
the broker) and messages a second, and the ratio own / paho per round. The last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt

from bench.mosquitto import Broker, free_port, write_config
from gateway.northbound.publish_connection import PublishEndpoint, open_publish_connection

# A reading message as the link sends it (`ReadingPayload`), its size and shape.
PAYLOAD = (
    b'{"meter":"m-0001","reading_id":"m-0001@2026-12-02T06:00:00.123Z",'
    b'"read_at":"2026-12-02T06:00:00.123Z","register":1234567,"delta":10,"unit":"Wh",'
    b'"quality":"good","ts":"2026-12-02T06:00:00.130Z"}'
)


class _Window:
    """At most ``size`` messages in flight; `done` counts PUBACKs and wakes the sender."""

    def __init__(self, size: int, total: int) -> None:
        self.size = size
        self.total = total
        self.sent = 0
        self.acked = 0
        self.refused = 0
        self.progress = asyncio.Event()

    def done(self, reason: int) -> None:
        self.acked += 1
        self.refused += reason >= 0x80
        self.progress.set()

    async def run(self, send: Callable[[str], None]) -> None:
        while self.acked < self.total:
            while self.sent < self.total and self.sent - self.acked < self.size:
                send(f"prepay/bench/meter/m-{self.sent % 1000:04d}/reading")
                self.sent += 1
            self.progress.clear()
            await self.progress.wait()


async def _paho(port: int, window: _Window) -> None:
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="bench-paho", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        paho = client._client  # as the link's shared path drives it
        theirs = paho.on_publish
        mine: set[int] = set()

        def on_publish(*args: Any) -> None:
            if args[2] in mine:
                mine.discard(args[2])
                window.done(getattr(args[3], "value", 0))
            elif theirs is not None:
                theirs(*args)

        paho.on_publish = on_publish

        def send(topic: str) -> None:
            mine.add(paho.publish(topic, PAYLOAD, qos=1).mid)

        await window.run(send)


async def _own(port: int, window: _Window) -> None:
    endpoint = PublishEndpoint("127.0.0.1", port, "bench-own", "5", 30, 10.0)
    async with open_publish_connection(endpoint) as out:

        def send(topic: str) -> None:
            out.publish(topic, PAYLOAD, qos=1, retain=False, on_done=window.done)

        await window.run(send)


async def _measure(
    way: Callable[[int, _Window], Any], port: int, messages: int, size: int
) -> dict[str, float]:
    window = _Window(size, messages)
    cpu, wall = time.process_time(), time.perf_counter()
    await way(port, window)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if window.acked != messages or window.refused:
        raise RuntimeError(f"{window.acked} PUBACKs ({window.refused} refused) of {messages}")
    return {"cpu_us_per_msg": 1e6 * cpu / messages, "msgs_per_s": messages / wall}


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-publish-") as name:
        port = free_port()
        broker = Broker("127.0.0.1", port, write_config(Path(name), port))
        broker.start()
        try:
            rounds = []
            for index in range(args.rounds):
                paho = await _measure(_paho, port, args.messages, args.window)
                own = await _measure(_own, port, args.messages, args.window)
                ratio = own["cpu_us_per_msg"] / paho["cpu_us_per_msg"]
                print(
                    f"round {index + 1}: paho {paho['cpu_us_per_msg']:.1f} µs CPU a message"
                    f" ({paho['msgs_per_s']:,.0f}/s), own {own['cpu_us_per_msg']:.1f} µs"
                    f" ({own['msgs_per_s']:,.0f}/s): own / paho {ratio:.2f}",
                    flush=True,
                )
                rounds.append({"paho": paho, "own": own, "own_over_paho": round(ratio, 3)})
        finally:
            broker.stop()
    ratios = [r["own_over_paho"] for r in rounds]
    return {
        "bench": "publish",
        "messages": args.messages,
        "window": args.window,
        "rounds": rounds,
        "own_over_paho_median": round(statistics.median(ratios), 3),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="prepay bench publish", description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000, help="messages per way and round")
    parser.add_argument("--window", type=int, default=100, help="messages in flight at most")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
