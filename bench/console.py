"""``prepay bench console``: what the operator console and the sinks cost the billing path.

One run builds the site of ``prepay bench gateway`` (``--accounts`` funded accounts, 1,000 by
default, each with a meter and a supply device; a real mosquitto) and runs its sustained
billing load (`bench.gateway`: N readings through `Pipeline.put`, the clock stopping when every
one is journalled, billed and acknowledged by the broker) in two configurations, alternated
``--rounds`` times on a fresh store each:

- **without**: no console, no metrics, no sink;
- **with**: the console served by the gateway (with ``/metrics`` on it, which also starts the
  metrics refresh), the InfluxDB sink writing to a real VictoriaMetrics (Debian's
  ``victoria-metrics``; left out, with a printed note, when the binary is missing or with
  ``--without-sink``), and a client
  process that keeps ``--accounts-clients`` connections asking for ``/accounts`` and
  ``--metrics-clients`` asking for ``/metrics`` (keep-alive, logged in as a viewer), each asking
  again ``--pace-s`` after an answer (0.1 s: about 30 requests a second in all, far more than
  operators and a Prometheus scraping every few seconds ask; 0: back to back, the console's
  capacity), plus one open live stream (``/stream``, as every open console page keeps).

Printed: the billing rate of each run and the ratio with/without (the target: at least 0.90,
the console and sinks costing the billing path at most 10%); the requests per second and the
p50/p99 latency of ``/accounts`` and ``/metrics`` while the billing load runs; CPU seconds of
this process (the gateway) per 1,000 readings in each configuration, of the client and of
VictoriaMetrics: the cost of the work, which other load on a shared machine skews less than
the rates. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from bench.gateway import (
    RICH_BALANCE_MINOR,
    SITE_ID,
    LoopLag,
    RecordingActuator,
    SyntheticMeters,
    _Bench,
    _broker,
    _drained,
    _fund,
    _loadavg,
    _percentile,
    _Plan,
    _raw_publish,
    _sample_payload,
    _sustained,
    _when,
    _write_site,
)
from bench.mosquitto import Broker, free_port
from bench.site import _cpu_s
from bench.sites import ROOT
from billing_engine import kernels
from billing_engine.kernels import KernelMode
from gateway.config import load_site
from gateway.console.users import Role, add_user
from gateway.daemon import Gateway
from gateway.northbound.topics import SiteTopics

USER = "bench"
PASSWORD = "bench-password-1"  # noqa: S105 - a throwaway viewer of a throwaway site
READY_TIMEOUT_S = 120.0
TARGET_RATIO = 0.90


def _say(text: str) -> None:
    print(text, flush=True)


# --- VictoriaMetrics (the sink's server) -----------------------------------------------------


@dataclass
class _Victoria:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:  # noqa: S310 - ours
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def _victoria(directory: Path, wanted: bool) -> Iterator[_Victoria | None]:
    """A VictoriaMetrics on a free loopback port, or None when not wanted or not installed."""
    binary = shutil.which("victoria-metrics")
    if binary is None or not wanted:
        yield None
        return
    port = free_port()
    with (directory / "vm.log").open("ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own arguments
            [binary, f"-httpListenAddr=127.0.0.1:{port}", f"-storageDataPath={directory / 'vm'}"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = _Victoria(proc, port)
    try:
        deadline = time.monotonic() + 30
        while not _healthy(server.url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"victoria-metrics did not start; see {directory / 'vm.log'}")
            time.sleep(0.05)  # a process starting up: nothing to wait on but its answer
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --- the client (a process of its own: its work must not share this process's GIL) -----------


def _login(host: str, port: int) -> str:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(
            "POST",
            "/login",
            body=f"user={USER}&password={PASSWORD}",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        answer = conn.getresponse()
        answer.read()
        cookie = answer.getheader("set-cookie")
        if answer.status != 303 or cookie is None:
            raise RuntimeError(f"login refused: HTTP {answer.status}")
        return cookie.split(";", 1)[0]
    finally:
        conn.close()


def _client(port: int, accounts_clients: int, metrics_clients: int, pace_s: float) -> int:
    """Ask until stdin closes; then print one JSON object of what was asked and how long it took.

    Prints ``ready`` once logged in and every connection has had its first answer.
    """
    host = "127.0.0.1"
    cookie = _login(host, port)
    stop = threading.Event()
    started = threading.Barrier(accounts_clients + metrics_clients + 2)
    latencies: dict[str, list[float]] = {"/accounts": [], "/metrics": []}
    failures: dict[str, int] = {"/accounts": 0, "/metrics": 0}
    lock = threading.Lock()
    stream_events = [0]
    marks: dict[str, float] = {}

    def ask(path: str) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        mine: list[float] = []
        failed = 0
        first = True
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                conn.request("GET", path, headers={"Cookie": cookie})
                answer = conn.getresponse()
                answer.read()
                if answer.status != 200:
                    failed += 1
                if first:
                    first = False
                    started.wait()  # the timed part starts with every connection warm
                    continue
                mine.append(time.perf_counter() - t0)
                stop.wait(pace_s)  # the client's pace (0: ask again at once)
        finally:
            conn.close()
            with lock:
                latencies[path].extend(mine)
                failures[path] += failed

    def stream() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        try:
            conn.request("GET", "/stream", headers={"Cookie": cookie})
            answer = conn.getresponse()
            started.wait()
            while not stop.is_set():
                line = answer.readline()
                if not line:
                    break
                if line.startswith(b"event:"):
                    stream_events[0] += 1
        finally:
            conn.close()

    threads = [
        threading.Thread(target=ask, args=(path,), name=f"bench.client{path}{i}")
        for path, count in (("/accounts", accounts_clients), ("/metrics", metrics_clients))
        for i in range(count)
    ]
    threads.append(threading.Thread(target=stream, name="bench.client/stream", daemon=True))
    for thread in threads:
        thread.start()
    started.wait()
    marks["start"] = time.perf_counter()
    print("ready", flush=True)
    sys.stdin.read()  # until the bench closes it
    marks["end"] = time.perf_counter()
    stop.set()
    for thread in threads[:-1]:
        thread.join(timeout=60)
    elapsed = marks["end"] - marks["start"]
    print(
        json.dumps(
            {
                "elapsed_s": elapsed,
                "latencies": latencies,
                "failures": failures,
                "stream_events": stream_events[0],
            }
        ),
        flush=True,
    )
    return 0


@contextlib.asynccontextmanager
async def _asking(
    port: int, options: _Options, result: dict[str, Any]
) -> AsyncIterator[asyncio.subprocess.Process]:
    """The client process for the block; ``result`` gets its JSON when the block ends."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.console",
        "--client-of",
        str(port),
        "--accounts-clients",
        str(options.accounts_clients),
        "--metrics-clients",
        str(options.metrics_clients),
        "--pace-s",
        str(options.pace_s),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,  # `bench` importable as in the parent
    )
    if process.stdin is None or process.stdout is None:
        raise RuntimeError("the console client has no pipes")
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            line = await process.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"the console client did not start: {line!r}")
        yield process
        process.stdin.close()
        async with asyncio.timeout(READY_TIMEOUT_S):
            result["cpu_s"] = _cpu_s(process.pid)  # it stops asking once stdin is closed
            result.update(json.loads(await process.stdout.read()))  # every latency: one line
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# --- one run ----------------------------------------------------------------------------------


@dataclass
class _Options:
    plan: _Plan
    rounds: int
    accounts_clients: int
    metrics_clients: int
    pace_s: float
    sink: bool


def _with_console(site_file: Path, victoria: _Victoria | None) -> None:
    doc = yaml.safe_load(site_file.read_text())
    doc["console"] = {"port": 0, "users_file": "console-users.json"}
    if victoria is not None:
        doc["influx"] = {"url": victoria.url, "poll_interval_s": 0.5}
    site_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    add_user(site_file.parent / "console-users.json", USER, Role.VIEWER, PASSWORD)


def _start() -> datetime:
    """The first simulated reading's instant (two days ago, on the hour)."""
    return (datetime.now(UTC) - timedelta(days=2)).replace(minute=0, second=0, microsecond=0)


async def _one(
    options: _Options,
    directory: Path,
    broker: Broker,
    console: bool,
    victoria: _Victoria | None,
    raw_s: float,
) -> dict[str, Any]:
    plan = options.plan
    start = _start()
    site_file = _write_site(directory, broker.port, plan.accounts, 0, plan.kernel.value)
    if console:
        _with_console(site_file, victoria)
    site = load_site(site_file)
    ids = [a.id for a in site.config.accounts]
    _fund(site, dict.fromkeys(ids, RICH_BALANCE_MINOR))
    rich = SyntheticMeters("bench.rich", [f"m-{i}" for i in ids], start)
    devices = {a.actuator for a in site.config.accounts if a.actuator is not None}
    actuator = RecordingActuator(devices)
    gateway = Gateway(site, sources=[rich], actuators=[actuator])
    if gateway.link is None:
        raise RuntimeError("the gateway was built without its MQTT link")
    lag = LoopLag()
    poor = SyntheticMeters("bench.poor", [], start)  # no shutoff phase here
    bench = _Bench(plan, gateway, gateway.link, rich, poor, actuator, broker, lag, raw_s)
    stop = asyncio.Event()
    run = asyncio.create_task(gateway.run(stop.wait), name="bench.gateway")
    lag_task = asyncio.create_task(lag.run(), name="bench.loop-lag")
    result: dict[str, Any] = {}
    client: dict[str, Any] = {}
    try:
        await gateway.ready.wait()
        async with asyncio.timeout(READY_TIMEOUT_S):
            await bench.link.connected.wait()
        # As in `prepay bench gateway`: every device driven to its state, one baseline each.
        await rich.submit(rich.burst(len(rich.meter_ids)))
        await _when(lambda: gateway.probe.counters().supply_confirmed >= len(devices), 60)
        await _drained(gateway, rich.produced, 60)
        async with contextlib.AsyncExitStack() as stack:
            if gateway.console is not None:
                async with asyncio.timeout(READY_TIMEOUT_S):
                    await gateway.console.started.wait()
                await stack.enter_async_context(_asking(gateway.console.port, options, client))
            cpu0 = time.process_time()
            result.update(await _sustained(bench))
            result["cpu_s"] = time.process_time() - cpu0
        if gateway.influx is not None:
            result["influx_points"] = gateway.influx.status.written_points
        result["held"] = gateway.probe.counters().held
        result["supervised_failures"] = sum(gateway.supervisor.failures.values())
    finally:
        lag_task.cancel()
        stop.set()
        async with asyncio.timeout(30):
            await run
    result["client"] = client
    return result


def _client_figures(client: dict[str, Any]) -> dict[str, Any]:
    elapsed = float(client["elapsed_s"])
    figures: dict[str, Any] = {"stream_events": client["stream_events"]}
    for path, key in (("/accounts", "accounts_page"), ("/metrics", "metrics")):
        times_ms = [t * 1000 for t in client["latencies"][path]]
        figures[f"{key}_requests"] = len(times_ms)
        figures[f"{key}_failures"] = client["failures"][path]
        figures[f"{key}_req_per_s"] = round(len(times_ms) / elapsed, 1)
        figures[f"{key}_p50_ms"] = round(_percentile(times_ms, 50), 1)
        figures[f"{key}_p99_ms"] = round(_percentile(times_ms, 99), 1)
    return figures


async def _run(options: _Options, directory: Path) -> dict[str, Any]:
    kernel = kernels.select(options.plan.kernel)  # built before any clock starts
    _say(f"billing kernel {kernel.reason}")
    # The ceiling of the MQTT leg alone, as `prepay bench gateway` measures it.
    n = options.plan.sustained
    topics = [
        SiteTopics(SITE_ID).meter_reading(f"m-A{i:04d}") for i in range(options.plan.accounts)
    ]
    (directory / "raw").mkdir()
    with _broker(directory / "raw") as broker:
        raw_s = await _raw_publish(broker.port, topics, _sample_payload(_start()), n)
    _say(f"raw aiomqtt QoS 1: {n / raw_s:,.0f} msg/s")
    without: list[dict[str, Any]] = []
    with_console: list[dict[str, Any]] = []
    with _victoria(directory, options.sink) as victoria:
        if victoria is None and options.sink:
            _say("note: victoria-metrics is not installed: the InfluxDB sink is left out")
        for round_no in range(options.rounds):
            for console, runs in ((False, without), (True, with_console)):
                label = "with console and sinks" if console else "without"
                _say(f"round {round_no + 1}, {label}:")
                run_dir = directory / f"round{round_no}-{'with' if console else 'without'}"
                run_dir.mkdir()
                # A broker of its own: no retained message of the last run's site (another
                # store, other keys) for this one's start-up checks to find.
                with _broker(run_dir) as broker:
                    runs.append(await _one(options, run_dir, broker, console, victoria, raw_s))
        victoria_cpu_s = None if victoria is None else _cpu_s(victoria.proc.pid)
    rate_without = [r["readings_per_s"] for r in without]
    rate_with = [r["readings_per_s"] for r in with_console]
    ratio = statistics.median(rate_with) / statistics.median(rate_without)
    cpu_without = 1000 * sum(r["cpu_s"] for r in without) / (n * len(without))
    cpu_with = 1000 * sum(r["cpu_s"] for r in with_console) / (n * len(with_console))
    last = _client_figures(with_console[-1]["client"])
    requests = sum(
        _client_figures(r["client"])[f"{k}_requests"]
        for r in with_console
        for k in ("accounts_page", "metrics")
    )
    extra_cpu_s = sum(r["cpu_s"] for r in with_console) - cpu_without * n * len(with_console) / 1000
    results: dict[str, Any] = {
        "accounts": options.plan.accounts,
        "readings": n,
        "rounds": options.rounds,
        "readings_per_s_without": rate_without,
        "readings_per_s_with": rate_with,
        "ratio": round(ratio, 3),
        "raw_mqtt_msgs_per_s": round(n / raw_s),
        "target_met": ratio >= TARGET_RATIO,
        "gateway_cpu_s_per_1000_readings_without": round(cpu_without, 3),
        "gateway_cpu_s_per_1000_readings_with": round(cpu_with, 3),
        # what the console (pages, metrics, stream) and the sink cost this process per request
        "console_cpu_ms_per_request": round(1000 * extra_cpu_s / max(requests, 1), 2),
        "client_cpu_s": round(sum(r["client"]["cpu_s"] for r in with_console), 2),
        "victoria_cpu_s": None if victoria_cpu_s is None else round(victoria_cpu_s, 2),
        "influx_points": [r.get("influx_points") for r in with_console],
        "held": sum(r["held"] for r in (*without, *with_console)),
        "supervised_failures": sum(r["supervised_failures"] for r in (*without, *with_console)),
        "accounts_clients": options.accounts_clients,
        "metrics_clients": options.metrics_clients,
        "pace_s": options.pace_s,
        "sink": victoria_cpu_s is not None,
        **last,
    }
    for key in ("accounts_page", "metrics"):
        _say(
            f"{key} under billing load (last round): {last[f'{key}_req_per_s']} req/s,"
            f" p50 {last[f'{key}_p50_ms']} ms, p99 {last[f'{key}_p99_ms']} ms"
            f" ({last[f'{key}_requests']} requests, {last[f'{key}_failures']} failed)"
        )
    _say(
        f"billing: {rate_without} readings/s without, {rate_with} with console and sinks:"
        f" ratio {ratio:.3f} (target >= {TARGET_RATIO}); gateway CPU per 1,000 readings"
        f" {cpu_without:.3f} s without, {cpu_with:.3f} s with;"
        f" {last['stream_events']} live-stream updates"
    )
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="prepay bench console", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10,000 readings a run")
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--readings", type=int, default=None, help="readings a run (30,000)")
    parser.add_argument("--rounds", type=int, default=2, help="alternated pairs of runs")
    parser.add_argument("--accounts-clients", type=int, default=2)
    parser.add_argument("--metrics-clients", type=int, default=1)
    parser.add_argument(
        "--pace-s", type=float, default=0.1, help="a connection's pause after an answer"
    )
    parser.add_argument("--without-sink", action="store_true", help="the console alone")
    parser.add_argument("--kernel", choices=[m.value for m in KernelMode], default="auto")
    parser.add_argument("--client-of", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client_of is not None:  # the client process (`_asking`)
        return _client(args.client_of, args.accounts_clients, args.metrics_clients, args.pace_s)
    options = _Options(
        plan=_Plan(
            accounts=args.accounts,
            sustained=args.readings or (10_000 if args.quick else 30_000),
            outage=0,
            shutoffs=0,
            background_per_s=0.0,
            spacing_s=0.0,
            kernel=KernelMode(args.kernel),
        ),
        rounds=args.rounds,
        accounts_clients=args.accounts_clients,
        metrics_clients=args.metrics_clients,
        pace_s=args.pace_s,
        sink=not args.without_sink,
    )
    t0 = time.perf_counter()
    load_before = _loadavg()
    with tempfile.TemporaryDirectory(prefix="prepay-bench-console-") as tmp:
        results = asyncio.run(_run(options, Path(tmp)))
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    results["loadavg_1m"] = [load_before, _loadavg()]
    results["cpus"] = os.cpu_count()
    _say(f"load average (1 min) before/after: {load_before:.2f} / {_loadavg():.2f}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
