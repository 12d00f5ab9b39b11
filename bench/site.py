"""``prepay bench site``: poll like a site, through the real daemon, and count what arrives.

For each fleet size N: N simulated Modbus TCP meters (Eastron SDM120s, served by
``python -m firmware_sim.modbus_meter`` processes, ``--per-bus`` meters each, on the light server
of ``firmware_sim/modbus_tcp_server.py``; ``--sim-server pymodbus`` for pymodbus's) polled every
``--interval`` seconds by ``prepay run`` as its own process (``--registers energy``, the
default: frequency, import and export energy in one request a poll, as the side-by-side runs
against ThingsBoard's gateway read one; ``all``: the shipped profile, whose voltage register
takes a second request), each meter billing an account on the Zhejiang residential tariff
(opened in credit), a real mosquitto, and a subscriber that records every ``meter/+/reading``
(and backlog ``readings``) message. After a warm-up it measures for ``--seconds``:

- offered (N x the window's length / interval) and delivered polls (distinct readings read in
  the window that reached the subscriber; a meter polled just inside both ends of the window
  counts once more, so a ratio a little above 1 is the window's edge, not a reading twice), and
  readings that arrived twice (must be 0);
- CPU seconds of the daemon process (``/proc/PID/stat``, user + system) per 1,000 polls, and
  per poll in ms: the cost of the whole job (poll, journal, bill, ledger, publish), robust to
  other load on the machine; and the share of one core its event loop's thread took
  (``/proc/PID/task/PID/stat``), the rest being its worker threads;
- poll -> broker latency p50 / p99 (the reading's ``read_at``, the poll instant, to the
  subscriber's receipt: one clock, one machine). The simulators run at niceness
  ``--sim-nice`` (10): on a site the meters are other hardware, and at the daemon's own
  priority they took CPU from its threads on a 2-core machine (the broker and the subscriber
  keep theirs);
- RSS of the daemon at the end, and the simulators' CPU as a share of one core (what the
  stand-in meters took of the same machine);
- readings per journal commit, and a batch's mean time from the end of its commit window to its
  commit (``journal_commit_mean_ms``), from the daemon's ``/metrics`` (on as a monitored site
  has it);
- journal rows missing at the subscriber after the daemon stopped (every journalled reading
  of the window must have been published: 0).

Then the baseline, measured in the same run on the same simulators and broker: the same polls
and one QoS 1 message each with raw pymodbus and raw paho-mqtt only (`bench.site_floor`, its own
process), its CPU per poll and its poll -> broker latency at the same subscriber, and the
daemon's CPU per poll as a ratio to it (``--no-floor`` skips it).

The last line is one JSON object. Example: ``prepay bench site --meters 100,500 --seconds 30``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import aiomqtt
import yaml

from bench.modbus import PROFILE, PROFILES_DIR, _Simulator, energy_profile
from bench.mosquitto import Broker, free_port, write_config
from bench.sites import TARIFFS, account, write_site

SITE = "bench-site"
FLOOR_TOPICS = "floor/meter/+/reading"  # what `bench.site_floor` publishes
TARIFF = "zhejiang_residential_electricity"
READY_TIMEOUT_S = 180.0
# The simulators stand in for meters, which on a site answer from their own hardware. At the
# daemon's priority they took CPU from its threads on this 2-core machine: at 1,000 meters,
# poll -> broker p50 71 -> 46 ms, p99 129 -> 97-103 ms, and the batch transaction's wall time
# 23.5 -> 17 ms for the same 9-10 ms of CPU. The CPU per poll does not depend on it.
SIM_NICE = 10
# The simulators' server (`--sim-server`): our own light one (`firmware_sim.modbus_tcp_server`)
# by default. pymodbus's took 0.46 ms of CPU a request, 0.77 of a core at 2,000 meters: with the
# daemon at 0.84 and the subscriber at 0.18 the 2 cores were full, and the meters, not the
# daemon, decided how many polls were delivered (83.7%).
SIM_SERVER = "own"
_TICKS = os.sysconf("SC_CLK_TCK")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _loop_thread_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid``'s main thread, which runs the daemon's event loop
    (the rest of the process's CPU is its worker threads: the billing transactions, the
    outbox's acknowledgements and reads, the metrics)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _write_site(
    directory: Path,
    mqtt_port: int,
    buses: list[tuple[int, int]],
    interval: float,
    commit_window_ms: int | None = None,
    metrics_port: int | None = None,
    registers: str = "all",
) -> Path:
    """Accounts ``A{i}`` on meters ``m{i}``; ``buses``: (TCP port, meter count) per simulator.
    ``registers``: ``all`` polls the shipped SDM120 profile (two requests a poll), ``energy``
    the same profile without its voltage register (one request a poll)."""
    profiles_dir, profile = PROFILES_DIR, PROFILE
    if registers == "energy":
        profiles_dir, profile = directory / "devices", f"{PROFILE}_energy"
        profiles_dir.mkdir(exist_ok=True)
        reduced = energy_profile().model_copy(update={"name": profile})
        text = yaml.safe_dump(reduced.model_dump(mode="json", exclude_none=True), sort_keys=False)
        (profiles_dir / f"{profile}.yaml").write_text(text)
    accounts, modbus = [], []
    i = 0
    for b, (port, count) in enumerate(buses):
        devices = []
        for unit in range(1, count + 1):
            i += 1
            meter = f"m{i}"
            devices.append(
                {
                    "device_id": f"d{i}",
                    "unit_id": unit,
                    "profile": profile,
                    "meter_id": meter,
                    "poll_interval_s": interval,
                }
            )
            entry = account(f"A{i}", meter, tariff=TARIFF, class_name="resident_tou")
            entry["opening_balance_minor"] = 10_000_000  # 100,000 yuan: no cutoff in the run
            accounts.append(entry)
        modbus.append(
            {
                "name": f"bus{b}",
                "kind": "tcp",
                "host": "127.0.0.1",
                "port": port,
                "timeout_s": 2.0,
                "devices": devices,
            }
        )
    extra: dict[str, Any] = {
        "devices": {"profiles_dir": str(profiles_dir), "modbus_buses": modbus},
        # The simulators count fast: far above the SDM120's rating.
        "meters": [{"id": f"m{k}", "max_rate_per_h": 100_000} for k in range(1, i + 1)],
    }
    if commit_window_ms is not None:
        extra["commit_window_ms"] = commit_window_ms
    if metrics_port is not None:  # as a monitored site runs: the commit counters come from it
        extra["metrics"] = {"port": metrics_port}
    return write_site(
        directory,
        site_id=SITE,
        mqtt_port=mqtt_port,
        tariffs=[TARIFFS / "zhejiang-residential-electricity.yaml"],
        accounts=accounts,
        extra=extra,
    )


class _Subscriber:
    """Every reading message: reading id -> (read_at, received) and how often it came; the
    floor's messages (`bench.site_floor`) apart, for the same latency measured without us."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[float, float]] = {}
        self.floor_seen: dict[str, tuple[float, float]] = {}
        self.twice = 0
        self.online = asyncio.Event()

    def _take(self, reading: dict[str, Any], received: float) -> None:
        rid = reading["reading_id"]
        if rid in self.seen:
            self.twice += 1
            return
        read_at = datetime.fromisoformat(reading["read_at"].replace("Z", "+00:00")).timestamp()
        self.seen[rid] = (read_at, received)

    async def run(self, port: int) -> None:
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-subscriber") as client:
            await client.subscribe(f"prepay/{SITE}/meter/+/reading", qos=1)
            await client.subscribe(f"prepay/{SITE}/meter/+/readings", qos=1)
            await client.subscribe(f"prepay/{SITE}/status", qos=1)
            await client.subscribe(FLOOR_TOPICS, qos=1)
            async for message in client.messages:
                received = time.time()
                payload = message.payload
                assert isinstance(payload, bytes)  # noqa: S101 - what mosquitto delivers
                doc = json.loads(payload)
                topic = str(message.topic)
                if topic.endswith("/status"):
                    if doc.get("status") == "online":
                        self.online.set()
                elif topic.endswith("/readings"):
                    for reading in doc["readings"]:
                        self._take(reading, received)
                elif topic.startswith("floor/"):
                    read_at = datetime.fromisoformat(doc["read_at"]).timestamp()
                    self.floor_seen[doc["reading_id"]] = (read_at, received)
                else:
                    self._take(doc, received)


@contextlib.asynccontextmanager
async def _daemon(site: Path, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    env = dict(os.environ)
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "run",
            "-c",
            str(site),
            "--log-level",
            "warning",
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=env,
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(30):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _journalled(store: Path, start: float, end: float) -> tuple[set[str], int]:
    """Reading ids of the journal read in [start, end) that the gateway publishes (billed:
    billed, baseline or a same-second conflict), and how many were held instead."""
    conn = sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT reading_id, state, bill_status FROM readings"
            " WHERE read_at_us >= ? AND read_at_us < ?",
            (int(start * 1e6), int(end * 1e6)),
        ).fetchall()
    finally:
        conn.close()
    published = {"billed", "baseline", "conflict"}
    sent = {rid for rid, state, status in rows if state == "billed" and status in published}
    held = sum(1 for _, state, _ in rows if state == "held")
    return sent, held


async def _one(
    n: int,
    per_bus: int,
    interval: float,
    warmup: float,
    seconds: float,
    commit_window_ms: int | None = None,
    registers: str = "energy",
    floor: bool = True,
    sim_nice: int = SIM_NICE,
    sim_server: str = SIM_SERVER,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="prepay-bench-site-") as tmp:
        directory = Path(tmp)
        port = free_port()
        broker = Broker("127.0.0.1", port, write_config(directory, port))
        broker.start()
        try:
            counts = [per_bus] * (n // per_bus) + ([n % per_bus] if n % per_bus else [])
            async with contextlib.AsyncExitStack() as stack:
                sims = []
                for count in counts:
                    sim = _Simulator(
                        ["--tcp", "127.0.0.1:0"],
                        range(1, count + 1),
                        nice=sim_nice,
                        server=sim_server,
                    )
                    sims.append(await stack.enter_async_context(sim))
                await asyncio.gather(*(s.ready() for s in sims))
                site = _write_site(
                    directory,
                    port,
                    [(s.port, c) for s, c in zip(sims, counts, strict=True)],
                    interval,
                    commit_window_ms,
                    metrics_port := free_port(),
                    registers,
                )
                init = [sys.executable, "-m", "gateway.cli", "init", "-c", str(site), "--new-store"]
                await asyncio.to_thread(subprocess.run, init, check=True, capture_output=True)
                subscriber = _Subscriber()
                listener = asyncio.create_task(subscriber.run(port))
                await asyncio.sleep(0.5)  # the subscriber's SUBSCRIBE before the first reading
                async with _daemon(site, directory / "daemon.log") as proc:
                    async with asyncio.timeout(READY_TIMEOUT_S):
                        await subscriber.online.wait()
                    _say(f"  {n} meters: online; warming up {warmup:.0f} s")
                    await asyncio.sleep(warmup)  # the benchmark's schedule, not a settle wait
                    start, cpu0 = time.time(), _cpu_s(proc.pid)
                    loop_cpu0 = _loop_thread_cpu_s(proc.pid)
                    sims_cpu0 = sum(_cpu_s(s.pid) for s in sims)
                    commits0 = await asyncio.to_thread(_commit_counters, metrics_port)
                    await asyncio.sleep(seconds)
                    # The loop thread's interval inside the process's: its share <= the whole.
                    loop_cpu = _loop_thread_cpu_s(proc.pid) - loop_cpu0
                    end, cpu1 = time.time(), _cpu_s(proc.pid)
                    sims_cpu = sum(_cpu_s(s.pid) for s in sims) - sims_cpu0
                    commits1 = await asyncio.to_thread(_commit_counters, metrics_port)
                    rss = _rss_mb(proc.pid)
                    await asyncio.sleep(min(5.0, 2 * interval))  # the last polls' messages
                # What the daemon drained on its way out may still be on its way to us.
                for _ in range(20):
                    before = len(subscriber.seen)
                    await asyncio.sleep(0.5)
                    if len(subscriber.seen) == before:
                        break
                baseline = None
                if floor:
                    _say(f"  {n} meters: the raw-library floor, {seconds:.0f} s")
                    baseline = await _floor(
                        port,
                        [(s.port, c) for s, c in zip(sims, counts, strict=True)],
                        interval,
                        registers,
                        seconds,
                    )
                    await asyncio.sleep(min(5.0, 2 * interval))  # its last messages
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await listener
                journal, held = _journalled(directory / "state" / "prepay.sqlite", start, end)
        finally:
            broker.stop()
    window = {rid: v for rid, v in subscriber.seen.items() if start <= v[0] < end}
    latencies = [(received - read_at) * 1000 for read_at, received in window.values()]
    offered = round(n * (end - start) / interval)
    cpu = cpu1 - cpu0
    cpu_ms_per_poll = 1000 * cpu / max(len(window), 1)
    floor_figures: dict[str, Any] = {}
    if baseline is not None:
        floor_ms = 1000 * baseline["cpu_s"] / max(baseline["polls"], 1)
        floor_latencies = [
            (received - read_at) * 1000
            for read_at, received in subscriber.floor_seen.values()
            if baseline["start"] <= read_at < baseline["end"]
        ]
        floor_figures = {
            "floor_polls_per_s": round(
                baseline["polls"] / (baseline["end"] - baseline["start"]), 1
            ),
            "floor_cpu_ms_per_poll": round(floor_ms, 3),
            "ratio_to_floor": round(cpu_ms_per_poll / floor_ms, 2) if floor_ms else math.nan,
            "floor_delivered": len(floor_latencies),
            "floor_latency_p50_ms": round(_percentile(floor_latencies, 0.5), 1),
            "floor_latency_p99_ms": round(_percentile(floor_latencies, 0.99), 1),
        }
    return {
        "meters": n,
        "registers": registers,
        "interval_s": interval,
        "sim_nice": sim_nice,
        "sim_server": sim_server,
        # What the stand-in meters took of the same 2 cores while the daemon was measured.
        "sim_cpu_share_of_one_core": round(sims_cpu / seconds, 3),
        "offered": offered,
        "delivered": len(window),
        "delivered_ratio": round(len(window) / offered, 4) if offered else math.nan,
        "duplicates_at_subscriber": subscriber.twice,
        # Against everything the subscriber got: a message carries read_at to the millisecond,
        # so a reading just after `start` can fall before it there.
        "journalled_not_published": len(journal - subscriber.seen.keys()),
        "held": held,
        "cpu_s_per_1000_polls": round(cpu_ms_per_poll, 3),
        "cpu_ms_per_poll": round(cpu_ms_per_poll, 3),  # the same number
        "cpu_share_of_one_core": round(cpu / seconds, 3),
        # Of which the event loop's thread (polls, MQTT, the pipeline's hand-offs; its system
        # time includes the sockets' sends), the rest being the worker threads.
        "loop_thread_share_of_one_core": round(loop_cpu / seconds, 3),
        "latency_p50_ms": round(_percentile(latencies, 0.5), 1),
        "latency_p99_ms": round(_percentile(latencies, 0.99), 1),
        "rss_mb": round(rss, 1),
        # From the daemon's /metrics (refreshed every 2 s, so both ends are as old).
        "readings_per_journal_commit": round(
            (commits1.journalled - commits0.journalled)
            / max(commits1.commits - commits0.commits, 1),
            2,
        ),
        # The daemon's own figure: a batch's time from the end of its window to its commit.
        "journal_commit_mean_ms": round(
            1000
            * (commits1.commit_time_sum_s - commits0.commit_time_sum_s)
            / max(commits1.commit_time_count - commits0.commit_time_count, 1),
            2,
        ),
        **floor_figures,
    }


async def _floor(
    broker_port: int, buses: list[tuple[int, int]], interval: float, registers: str, seconds: float
) -> dict[str, float]:
    """`bench.site_floor` on the same simulators and broker, in its own process."""
    command = [
        sys.executable,
        "-m",
        "bench.site_floor",
        "--broker-port",
        str(broker_port),
        "--interval",
        str(interval),
        "--registers",
        registers,
        "--seconds",
        str(seconds),
        *(arg for port, count in buses for arg in ("--bus", f"{port}:{count}")),
    ]
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, check=True)
    result: dict[str, float] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


class _CommitFigures(NamedTuple):
    """What the daemon's /metrics says of its journal commits, now."""

    commits: float
    journalled: float  # readings
    commit_time_sum_s: float  # `prepay_journal_commit_seconds_sum`
    commit_time_count: float  # `prepay_journal_commit_seconds_count`


_COMMIT_FIGURES = {
    "prepay_journal_commits_total": "commits",
    "prepay_readings_journalled_total": "journalled",
    "prepay_journal_commit_seconds_sum": "commit_time_sum_s",
    "prepay_journal_commit_seconds_count": "commit_time_count",
}


def _commit_counters(port: int) -> _CommitFigures:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    figures = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in _COMMIT_FIGURES:
            figures[_COMMIT_FIGURES[name]] = float(value)
    return _CommitFigures(**figures)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="prepay bench site", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--meters", default="100,500,1000,2000", help="fleet sizes, comma-separated"
    )
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval, seconds")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per size")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    parser.add_argument("--per-bus", type=int, default=125, help="meters per simulator and bus")
    parser.add_argument("--quick", action="store_true", help="100 meters, 10 s: a smoke run")
    parser.add_argument(
        "--commit-window-ms",
        type=int,
        default=None,
        help="the site's commit_window_ms (default: the site default)",
    )
    parser.add_argument(
        "--registers",
        choices=("energy", "all"),
        default="energy",
        help="energy: frequency, import and export energy, one request a poll (as the"
        " side-by-side runs against ThingsBoard read); all: the shipped SDM120 profile, which"
        " adds the voltage in a second request",
    )
    parser.add_argument(
        "--sim-nice",
        type=int,
        default=SIM_NICE,
        help=f"niceness of the simulator processes (default {SIM_NICE}; 0: the daemon's equal)",
    )
    parser.add_argument(
        "--sim-server",
        choices=("own", "pymodbus"),
        default=SIM_SERVER,
        help=f"the simulators' Modbus TCP server (default {SIM_SERVER}:"
        " firmware_sim.modbus_tcp_server; pymodbus: its ModbusTcpServer, several times the CPU)",
    )
    parser.add_argument(
        "--no-floor",
        action="store_true",
        help="skip the baseline: the same polls and messages with raw pymodbus and paho only",
    )
    args = parser.parse_args(argv)
    sizes = [100] if args.quick else [int(x) for x in args.meters.split(",")]
    seconds, warmup = (10.0, 5.0) if args.quick else (args.seconds, args.warmup)
    load = os.getloadavg()[0]
    _say(
        f"bench site: sizes {sizes}, poll every {args.interval} s, {seconds} s each,"
        f" registers {args.registers}"
        f" (load {load:.2f})"
    )
    runs = []
    for n in sizes:
        result = asyncio.run(
            _one(
                n,
                args.per_bus,
                args.interval,
                warmup,
                seconds,
                args.commit_window_ms,
                args.registers,
                floor=not args.no_floor,
                sim_nice=args.sim_nice,
                sim_server=args.sim_server,
            )
        )
        runs.append(result)
        _say(
            f"  {n:>5} meters: delivered {result['delivered']}/{result['offered']}"
            f" ({100 * result['delivered_ratio']:.1f}%), {result['cpu_ms_per_poll']} ms CPU/poll,"
            f" {100 * result['cpu_share_of_one_core']:.0f}% of a core"
            f" ({100 * result['loop_thread_share_of_one_core']:.0f}% in the event loop's thread),"
            " latency p50"
            f" {result['latency_p50_ms']} / p99 {result['latency_p99_ms']} ms,"
            f" RSS {result['rss_mb']} MB, {result['readings_per_journal_commit']} readings/commit"
            f" in {result['journal_commit_mean_ms']} ms,"
            f" unpublished {result['journalled_not_published']},"
            f" twice {result['duplicates_at_subscriber']};"
            f" simulators ({result['sim_server']}) {100 * result['sim_cpu_share_of_one_core']:.0f}%"
            " of a core"
        )
        if "floor_cpu_ms_per_poll" in result:
            _say(
                f"  {n:>5} meters: raw pymodbus + paho floor {result['floor_cpu_ms_per_poll']} ms"
                f" CPU/poll ({result['floor_polls_per_s']} polls/s), latency p50"
                f" {result['floor_latency_p50_ms']} / p99 {result['floor_latency_p99_ms']} ms:"
                f" the gateway's full job costs {result['ratio_to_floor']}x the floor's CPU"
            )
    print(json.dumps({"bench": "site", "loadavg_start": round(load, 2), "runs": runs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
