"""The floor under ``prepay bench site``: the same polls and messages with raw libraries only.

Polls the site's simulators as the daemon does (one raw pymodbus ``AsyncModbusTcpClient`` per
bus, its meters one after the other, every ``--interval`` seconds; the same requests: the
energy block 0x0046-0x004B, and the voltage at 0x0000 with ``--registers all``), decodes the
import energy, and publishes one JSON reading per poll with raw paho-mqtt at QoS 1 (its own
network thread, the in-flight window of the daemon's link: 100). No journal, no billing, no
ledger, no outbox: what any gateway pays to read these meters and tell a broker, measured in
its own process so that ``bench site`` can print the daemon's CPU per poll against it.

Run by ``bench site`` after the daemon's run, against the same simulators and broker:
``python -m bench.site_floor --broker-port P --bus PORT:COUNT ... --seconds S``. Prints one JSON
object: polls and CPU seconds (user + system, every thread of this process) in the window, and
the window's wall-clock ends (``bench site`` takes the poll -> broker latency of the messages
read in it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import sys
import time
from datetime import UTC, datetime

import paho.mqtt.client as paho
from pymodbus.client import AsyncModbusTcpClient

ENERGY_BLOCK = (0x0046, 6)  # frequency, import and export energy: float32 each
VOLTAGE = (0x0000, 2)
INFLIGHT = 100  # the daemon's default `mqtt.max_inflight`


class _Counter:
    def __init__(self) -> None:
        self.polls = 0


async def _bus(
    port: int,
    count: int,
    interval: float,
    voltage: bool,
    mqtt: paho.Client,
    counter: _Counter,
    stop: asyncio.Event,
) -> None:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2.0)
    await client.connect()
    loop = asyncio.get_running_loop()
    due = loop.time()
    try:
        while not stop.is_set():
            for unit in range(1, count + 1):
                read_at = datetime.now(UTC)
                block = await client.read_input_registers(
                    ENERGY_BLOCK[0], count=ENERGY_BLOCK[1], device_id=unit
                )
                if voltage:
                    await client.read_input_registers(VOLTAGE[0], count=VOLTAGE[1], device_id=unit)
                high, low = block.registers[2], block.registers[3]
                kwh = struct.unpack(">f", struct.pack(">HH", high, low))[0]
                payload = {
                    "reading_id": f"m{port}-{unit}:{read_at.isoformat()}",
                    "meter": f"m{port}-{unit}",
                    "read_at": read_at.isoformat(timespec="milliseconds"),
                    "register": round(kwh * 1000),
                    "unit": "Wh",
                }
                mqtt.publish(f"floor/meter/{unit}/reading", json.dumps(payload).encode(), qos=1)
                counter.polls += 1
            due += interval
            await asyncio.sleep(max(0.0, due - loop.time()))
    finally:
        client.close()


def _cpu_s() -> float:
    times = os.times()  # the process: the paho thread too
    return times.user + times.system


async def _run(args: argparse.Namespace) -> dict[str, float]:
    mqtt = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-site-floor")
    mqtt.max_inflight_messages_set(INFLIGHT)
    mqtt.connect("127.0.0.1", args.broker_port)
    mqtt.loop_start()
    counter, stop = _Counter(), asyncio.Event()
    try:
        buses = [tuple(int(x) for x in bus.split(":")) for bus in args.bus]
        tasks = [
            asyncio.create_task(
                _bus(port, count, args.interval, args.registers == "all", mqtt, counter, stop)
            )
            for port, count in buses
        ]
        await asyncio.sleep(args.warmup)  # the schedule: connections made, rounds under way
        polls0, cpu0, start = counter.polls, _cpu_s(), time.time()
        await asyncio.sleep(args.seconds)
        polls1, cpu1, end = counter.polls, _cpu_s(), time.time()
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        mqtt.loop_stop()
        mqtt.disconnect()
    # The window in wall-clock time, the clock of the messages' read_at.
    return {"polls": polls1 - polls0, "cpu_s": round(cpu1 - cpu0, 3), "start": start, "end": end}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.site_floor")
    parser.add_argument("--broker-port", type=int, required=True)
    parser.add_argument("--bus", action="append", required=True, help="PORT:COUNT of a simulator")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--registers", choices=("energy", "all"), default="energy")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_run(args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
