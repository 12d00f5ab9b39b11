"""``prepay bench gateway``: the whole gateway in-process against a real mosquitto.

One run builds a real site (keys, the Zhejiang peak/valley tariff, 1,000 funded accounts plus
the small-balance accounts of the shutoff test, one supply device per account), starts its own
mosquitto on a free 127.0.0.1 port and its own state in a temporary directory, runs `Gateway`
with an in-process `ReadingSource` and `Actuator`, and measures:

1. ``readings_per_s``: the sustained end-to-end rate. N readings of the 1,000 funded meters go
   through `Pipeline.put` as fast as back-pressure allows; the clock stops when every one is
   journalled, billed and its messages are acknowledged by the broker (the outbox is empty).
   In the same run, a raw aiomqtt client publishes the same number of QoS 1 messages with the
   same in-flight window: ``raw_mqtt_msgs_per_s``, the ceiling of the MQTT leg alone.
2. ``drain_msgs_per_s``: the broker is killed, readings pile up in the outbox, the broker comes
   back; outbox messages acknowledged per second from the link being up again until the outbox
   is empty (readings and MQTT PUBLISHes per second too: readings of a meter go as batches).
3. ``shutoff_p50_ms`` / ``shutoff_p99_ms``: from `Pipeline.put` of a reading that exhausts an
   account's credit to its actuator's ``set_supply(device, False)`` call, once per
   small-balance account, spread over a few seconds of paced background load.
4. ``rss_mb``: VmRSS of this process with the accounts loaded and the gateway running (after 1),
   and ``rss_imports_mb``, the part already there before the site was built. ``kernel`` says
   which build of the billing kernel ran (``--kernel``: the daemon's default ``auto`` loads the
   ahead-of-time build, made first if missing and outside the timings; ``jit`` keeps Numba and
   LLVM resident, about 140 MB more).

The site has ``--accounts`` (1,000) funded accounts plus one small-balance account per shutoff
(200); every account has a meter and a supply device. Readings of one meter are 10 simulated
seconds apart, starting two days ago. Other load on the machine skews every number: the 1-minute
load average before and after is printed with them.

The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt

from bench.mosquitto import Broker, free_port, write_config
from bench.sites import TARIFFS, account, write_site
from billing_engine import kernels
from billing_engine.kernels import KernelMode
from drivers.ports import Reading, ReadingSink, SupplyState
from gateway.config import Site, load_site
from gateway.daemon import Gateway
from gateway.messages import MessageClass
from gateway.northbound.mqtt import MqttLink
from gateway.northbound.payloads import ReadingPayload
from gateway.northbound.topics import SiteTopics
from gateway.startup import load_keys, open_store
from gateway.store import EntryKind

logger = logging.getLogger(__name__)

TARIFF = TARIFFS / "zhejiang-residential-electricity.yaml"
TARIFF_ID = "zhejiang_residential_electricity"
SITE_ID = "bench-site"
RICH_BALANCE_MINOR = 10**9  # 10 million CNY: nothing is ever cut
POOR_BALANCE_MINOR = 1_000  # 10 CNY
EXHAUST_WH = 100_000  # 100 kWh: ~57 CNY at the peak price, far past the balance
WH_PER_STEP = 5  # each ordinary reading adds 5 Wh (1.8 kW over 10 s)
STEP_S = 10  # simulated seconds between two readings of one meter
MQTT_WINDOW = 100  # the link's default max_inflight, used for the raw baseline too


# --- the broker -------------------------------------------------------------------------------


@contextlib.contextmanager
def _broker(directory: Path) -> Iterator[Broker]:
    """Our own mosquitto on 127.0.0.1 (killed and restarted by the outage test)."""
    port = free_port()
    broker = Broker("127.0.0.1", port, write_config(directory, port))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# --- the site ---------------------------------------------------------------------------------


def _write_site(directory: Path, port: int, rich: int, poor: int, kernel: str) -> Path:
    accounts = [
        account(
            f"{prefix}{i:04d}",
            f"m-{prefix}{i:04d}",
            tariff=TARIFF_ID,
            class_name="resident_tou",
            actuator=f"d-{prefix}{i:04d}",
        )
        for prefix, count in (("A", rich), ("P", poor))
        for i in range(count)
    ]
    return write_site(
        directory,
        site_id=SITE_ID,
        mqtt_port=port,
        tariffs=[TARIFF],
        accounts=accounts,
        extra={
            "billing": {"kernel": kernel},
            # The shutoff phase adds EXHAUST_WH (100 kWh) in one 10 s step on purpose: far above
            # the default plausible rate (100 kWh/h), so these meters allow it.
            "meters": [{"id": f"m-P{i:04d}", "max_rate_per_h": 100_000} for i in range(poor)],
        },
    )


def _fund(site: Site, balances: dict[str, int]) -> None:
    """Top every account up in the ledger before the gateway opens the store."""
    now = datetime.now(UTC)
    with open_store(site, load_keys(site)) as store, store.transaction() as tx:
        for account_id, amount in balances.items():
            tx.append_entry(
                account_id, EntryKind.TOPUP, amount, "CNY", f"bench:{account_id}", created_at=now
            )


# --- the in-process driver --------------------------------------------------------------------

Job = Callable[[ReadingSink], Awaitable[None]]


class SyntheticMeters:
    """A `ReadingSource` of simulated meters with cumulative registers.

    Its ``run`` (started by the gateway, under its supervisor) executes the jobs the benchmark
    submits, one at a time, each putting readings into the gateway's pipeline.
    """

    def __init__(self, name: str, meter_ids: Sequence[str], start: datetime) -> None:
        self.name = name
        self.meter_ids = list(meter_ids)
        self._start = start
        self._count = [0] * len(self.meter_ids)
        self._register = [1_000_000] * len(self.meter_ids)
        self._cursor = 0
        self._jobs: asyncio.Queue[tuple[Job, asyncio.Future[None]]] = asyncio.Queue()
        self.produced = 0

    def reading(self, index: int, extra_wh: int = 0) -> Reading:
        """The next reading of meter ``index`` (``extra_wh`` more than the usual step)."""
        step = self._count[index]
        self._count[index] = step + 1
        self._register[index] += WH_PER_STEP + extra_wh
        self.produced += 1
        return Reading(
            self.meter_ids[index],
            self._start + timedelta(seconds=STEP_S * step),
            self._register[index],
            source=self.name,
        )

    def submit(self, job: Job) -> asyncio.Future[None]:
        """Queue ``job`` for `run`; the future completes with it."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._jobs.put_nowait((job, done))
        return done

    async def run(self, sink: ReadingSink) -> None:
        while True:
            job, done = await self._jobs.get()
            try:
                await job(sink)
            except BaseException as exc:
                if not done.done():
                    if isinstance(exc, asyncio.CancelledError):
                        done.cancel()
                    else:
                        done.set_exception(exc)
                raise
            done.set_result(None)

    def burst(self, count: int) -> Job:
        """``count`` readings, round robin over the meters, as fast as the pipeline takes them.

        `ReadingSink.put` returns once the reading is journalled, so one caller gets one
        reading per journal commit. Like many independent devices, every meter has its own
        feeder here (a meter's readings stay in order); a full queue is the back-pressure.
        """

        async def job(sink: ReadingSink) -> None:
            n = len(self.meter_ids)
            quota = [0] * n
            for j in range(count):
                quota[(self._cursor + j) % n] += 1
            self._cursor = (self._cursor + count) % n

            async def feed(index: int) -> None:
                for _ in range(quota[index]):
                    await sink.put(self.reading(index))

            async with asyncio.TaskGroup() as group:
                for index in range(n):
                    if quota[index]:
                        group.create_task(feed(index))

        return job

    def paced(self, rate_per_s: float, stop: asyncio.Event) -> Job:
        """``rate_per_s`` readings a second, round robin, in 10 ms slices, until ``stop``."""

        async def job(sink: ReadingSink) -> None:
            loop = asyncio.get_running_loop()
            n = len(self.meter_ids)
            started = loop.time()
            sent = 0
            while not stop.is_set():
                due = int((loop.time() - started) * rate_per_s) + 1
                indexes = [(self._cursor + j) % n for j in range(min(due - sent, n))]
                self._cursor = (self._cursor + len(indexes)) % n
                sent += len(indexes)
                # One slice's readings are of distinct meters: put them concurrently.
                await asyncio.gather(*(sink.put(self.reading(i)) for i in indexes))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.01):
                        await stop.wait()

        return job

    def exhaust(self, at: Sequence[float], put_at: dict[str, float]) -> Job:
        """At loop time ``at[i]`` put a reading that uses up meter i's credit; note when."""

        async def job(sink: ReadingSink) -> None:
            loop = asyncio.get_running_loop()
            async with asyncio.TaskGroup() as group:
                for index, when in enumerate(at):
                    await asyncio.sleep(max(0.0, when - loop.time()))
                    reading = self.reading(index, extra_wh=EXHAUST_WH)
                    put_at[reading.meter_id] = loop.time()
                    # Not awaited here: the next exhaustion keeps its own schedule.
                    group.create_task(sink.put(reading))

        return job


@dataclass
class RecordingActuator:
    """An `Actuator` that obeys at once and notes the loop time of each switch-off."""

    devices: set[str]
    name: str = "bench.actuator"
    state: dict[str, SupplyState] = field(default_factory=dict)
    off_at: dict[str, float] = field(default_factory=dict)
    calls: int = 0
    offs: asyncio.Event = field(default_factory=asyncio.Event)
    offs_wanted: int = -1

    def handles(self, device_id: str) -> bool:
        return device_id in self.devices

    async def set_supply(self, device_id: str, on: bool) -> None:
        self.calls += 1
        if not on:
            self.off_at.setdefault(device_id, asyncio.get_running_loop().time())
            if len(self.off_at) == self.offs_wanted:
                self.offs.set()
        self.state[device_id] = SupplyState.ON if on else SupplyState.OFF

    async def read_supply(self, device_id: str) -> SupplyState:
        return self.state.get(device_id, SupplyState.UNKNOWN)


# --- measuring helpers ------------------------------------------------------------------------


def _rss_mb(field_name: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) / 1024
    return math.nan


class LoopLag:
    """Samples how late a 5 ms sleep wakes up: the time the event loop was blocked."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.005
            await asyncio.sleep(0.005)
            self.samples.append(loop.time() - due)

    def take(self) -> tuple[float, float]:
        """(p99, max) in ms since the last call."""
        samples, self.samples = self.samples, []
        return _percentile(samples, 99) * 1000, max(samples, default=math.nan) * 1000


def _loadavg() -> float:
    """The 1-minute load average: other work on the machine skews every number here."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def _say(text: str) -> None:
    print(text, flush=True)


async def _drained(gateway: Gateway, billed: int, timeout_s: float) -> float:
    """Loop time at which ``billed`` readings are billed and the outbox is empty."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout_s):
        while True:
            if gateway.probe.counters().billed >= billed:
                stats = await asyncio.to_thread(gateway.store.outbox_stats)
                if stats.total_pending == 0:
                    return loop.time()
            await asyncio.sleep(0.005)


async def _when(predicate: Callable[[], bool], timeout_s: float) -> float:
    """Loop time at which ``predicate()`` first holds, polled every 5 ms (finer than anything
    measured here): the gateway's counters have no event to await."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - counters, no event (see the docstring)
            await asyncio.sleep(0.005)
    return loop.time()


async def _billed(gateway: Gateway, billed: int, timeout_s: float) -> float:
    return await _when(lambda: gateway.probe.counters().billed >= billed, timeout_s)


async def _raw_publish(port: int, topics: list[str], payload: bytes, count: int) -> float:
    """Seconds to publish ``count`` QoS 1 messages with a window of `MQTT_WINDOW` in flight."""
    client = aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier="bench-raw",
        protocol=aiomqtt.ProtocolVersion.V5,
        max_inflight_messages=MQTT_WINDOW,
    )
    client.pending_calls_threshold = MQTT_WINDOW + 10
    async with client:

        async def worker(first: int) -> None:
            for i in range(first, count, MQTT_WINDOW):
                await client.publish(topics[i % len(topics)], payload, qos=1, timeout=math.inf)

        t0 = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for w in range(MQTT_WINDOW):
                group.create_task(worker(w))
        return time.perf_counter() - t0


def _sample_payload(start: datetime) -> bytes:
    message = SiteTopics(SITE_ID).reading_message(
        ReadingPayload(
            meter="m-A0000",
            reading_id=f"m-A0000@{int(start.timestamp() * 1e6)}",
            read_at=start,
            register=1_000_005,
            delta=5,
            unit="Wh",
            quality="good",
            ts=datetime.now(UTC),
        )
    )
    return message.payload


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


# --- the run ----------------------------------------------------------------------------------


@dataclass
class _Plan:
    accounts: int
    sustained: int
    outage: int
    shutoffs: int
    background_per_s: float
    spacing_s: float
    kernel: KernelMode


@dataclass
class _Bench:
    """What the phases share."""

    plan: _Plan
    gateway: Gateway
    link: MqttLink
    rich: SyntheticMeters
    poor: SyntheticMeters
    actuator: RecordingActuator
    broker: Broker
    lag: LoopLag
    raw_s: float


async def _run(plan: _Plan, directory: Path, broker: Broker) -> dict[str, Any]:
    results: dict[str, Any] = {"accounts": plan.accounts + plan.shutoffs}
    results["rss_imports_mb"] = round(_rss_mb(), 1)  # interpreter + numba/llvmlite + deps
    start = (datetime.now(UTC) - timedelta(days=2)).replace(minute=0, second=0, microsecond=0)

    # Raw baseline first, with nothing else running.
    topics = SiteTopics(SITE_ID)
    raw_topics = [topics.meter_reading(f"m-A{i:04d}") for i in range(plan.accounts)]
    payload = _sample_payload(start)
    raw_s = await _raw_publish(broker.port, raw_topics, payload, plan.sustained)
    results["raw_mqtt_msgs_per_s"] = round(plan.sustained / raw_s)
    _say(
        f"raw aiomqtt QoS 1: {plan.sustained} messages of {len(payload)} B in {raw_s:.2f} s"
        f" = {plan.sustained / raw_s:,.0f} msg/s (window {MQTT_WINDOW})"
    )

    # Built (when missing) before the clock starts: a first start's one-off, not a startup cost.
    kernel = kernels.select(plan.kernel)
    results["kernel"] = kernel.mode.value
    _say(f"billing kernel {kernel.reason}")

    t_setup = time.perf_counter()
    site = load_site(
        _write_site(directory, broker.port, plan.accounts, plan.shutoffs, plan.kernel.value)
    )
    rich_ids = [a.id for a in site.config.accounts if a.id.startswith("A")]
    poor_ids = [a.id for a in site.config.accounts if a.id.startswith("P")]
    balances = dict.fromkeys(rich_ids, RICH_BALANCE_MINOR)
    balances.update(dict.fromkeys(poor_ids, POOR_BALANCE_MINOR))
    _fund(site, balances)
    rich = SyntheticMeters("bench.rich", [f"m-{i}" for i in rich_ids], start)
    poor = SyntheticMeters("bench.poor", [f"m-{i}" for i in poor_ids], start)
    devices = {a.actuator for a in site.config.accounts if a.actuator is not None}
    actuator = RecordingActuator(devices)
    gateway = Gateway(site, sources=[rich, poor], actuators=[actuator])
    if gateway.link is None:
        raise RuntimeError("the gateway was built without its MQTT link")
    lag = LoopLag()
    bench = _Bench(plan, gateway, gateway.link, rich, poor, actuator, broker, lag, raw_s)
    stop = asyncio.Event()
    run = asyncio.create_task(gateway.run(stop.wait), name="bench.gateway")
    lag_task = asyncio.create_task(lag.run(), name="bench.loop-lag")
    try:
        await gateway.ready.wait()
        async with asyncio.timeout(60):
            await bench.link.connected.wait()
        # Startup: every device is driven to its wanted state; one baseline reading per meter.
        await rich.submit(rich.burst(len(rich.meter_ids)))
        await poor.submit(poor.burst(len(poor.meter_ids)))
        await _when(lambda: gateway.probe.counters().supply_confirmed >= len(devices), 60)
        await _drained(gateway, rich.produced + poor.produced, 60)
        setup_s = time.perf_counter() - t_setup
        results["startup_s"] = round(setup_s, 2)
        _say(
            f"startup: {len(site.config.accounts)} accounts loaded, {len(devices)} devices"
            f" confirmed, baselines billed and published in {setup_s:.2f} s"
        )

        results.update(await _sustained(bench))
        results["rss_mb"] = round(_rss_mb(), 1)
        _say(
            f"RSS with {len(site.config.accounts)} accounts running: {results['rss_mb']} MB"
            f" ({results['rss_imports_mb']} MB of it before the site was built: imports)"
        )
        results.update(await _shutoff(bench))
        results.update(await _outage(bench))
        results["rss_peak_mb"] = round(_rss_mb("VmHWM"), 1)
        results["held"] = gateway.probe.counters().held
        results["supervised_failures"] = sum(gateway.supervisor.failures.values())
    finally:
        lag_task.cancel()
        stop.set()
        async with asyncio.timeout(15):
            await run
    return results


async def _sustained(bench: _Bench) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    gateway, link, rich = bench.gateway, bench.link, bench.rich
    n = bench.plan.sustained
    billed0 = gateway.probe.counters().billed
    published0, publishes0 = link.counters.published, link.counters.publishes
    batches0 = gateway.probe.counters().journal_commits
    billings0 = gateway.probe.counters().billing_batches
    bench.lag.take()
    t0 = loop.time()
    feeding = rich.submit(rich.burst(n))
    t_billed = await _billed(gateway, billed0 + n, 120)
    t_done = await _drained(gateway, billed0 + n, 120)
    await feeding
    lag_p99, lag_max = bench.lag.take()
    elapsed = t_done - t0
    rate = n / elapsed
    raw_rate = n / bench.raw_s
    published = link.counters.published - published0
    publishes = link.counters.publishes - publishes0
    batches = gateway.probe.counters().journal_commits - batches0
    billings = gateway.probe.counters().billing_batches - billings0
    _say(
        f"sustained: {n} readings of {len(rich.meter_ids)} meters journalled, billed and acked"
        f" in {elapsed:.2f} s = {rate:,.0f} readings/s (all billed after {t_billed - t0:.2f} s"
        f" = {n / (t_billed - t0):,.0f}/s; {batches} journal commits, {billings} billing"
        f" transactions; {published} outbox"
        f" messages in {publishes} PUBLISHes); raw MQTT {raw_rate:,.0f} msg/s,"
        f" gateway/raw = {rate / raw_rate:.2f}; event loop blocked p99 {lag_p99:.1f} ms,"
        f" max {lag_max:.1f} ms"
    )
    return {
        "readings_per_s": round(rate),
        "sustained_readings": n,
        "sustained_billed_per_s": round(n / (t_billed - t0)),
        "sustained_outbox_messages": published,
        "sustained_publishes": publishes,
        "journal_batch_avg": round(n / max(batches, 1), 1),
        "billing_batch_avg": round(n / max(billings, 1), 1),
        "gateway_vs_raw": round(rate / raw_rate, 3),
        "sustained_loop_lag_p99_ms": round(lag_p99, 1),
        "sustained_loop_lag_max_ms": round(lag_max, 1),
    }


async def _shutoff(bench: _Bench) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    plan, gateway, rich, poor, actuator = (
        bench.plan,
        bench.gateway,
        bench.rich,
        bench.poor,
        bench.actuator,
    )
    rng = random.Random(7)
    count = len(poor.meter_ids)
    first = loop.time() + 0.2
    at = [first + i * plan.spacing_s + rng.uniform(0, plan.spacing_s) for i in range(count)]
    put_at: dict[str, float] = {}
    actuator.offs_wanted = len(actuator.off_at) + count
    stop_background = asyncio.Event()
    background0 = rich.produced
    bench.lag.take()
    t0 = loop.time()
    background = rich.submit(rich.paced(plan.background_per_s, stop_background))
    try:
        await poor.submit(poor.exhaust(at, put_at))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await actuator.offs.wait()
    finally:
        stop_background.set()
        await background
    background_rate = (rich.produced - background0) / (loop.time() - t0)
    lag_p99, lag_max = bench.lag.take()
    device_of = {a.meter: a.actuator for a in gateway.site.config.accounts}
    latencies_ms = [
        (actuator.off_at[device] - put_at[meter]) * 1000
        for meter in poor.meter_ids
        if (device := device_of[meter]) is not None and device in actuator.off_at
    ]
    p50, p99 = _percentile(latencies_ms, 50), _percentile(latencies_ms, 99)
    worst = max(latencies_ms, default=math.nan)
    mean = statistics.fmean(latencies_ms) if latencies_ms else math.nan
    _say(
        f"shutoff: {len(latencies_ms)}/{count} credit exhaustions -> set_supply(off) under"
        f" {background_rate:,.0f} readings/s background: p50 {p50:.1f} ms, p99 {p99:.1f} ms,"
        f" max {worst:.1f} ms, mean {mean:.1f} ms; event loop blocked p99 {lag_p99:.1f} ms,"
        f" max {lag_max:.1f} ms"
    )
    await _drained(gateway, gateway.probe.counters().received, 60)
    return {
        "shutoff_p50_ms": round(p50, 2),
        "shutoff_p99_ms": round(p99, 2),
        "shutoff_max_ms": round(worst, 2),
        "shutoff_count": len(latencies_ms),
        "shutoff_missing": count - len(latencies_ms),
        "shutoff_background_per_s": round(background_rate),
        "shutoff_loop_lag_p99_ms": round(lag_p99, 1),
        "shutoff_loop_lag_max_ms": round(lag_max, 1),
    }


async def _outage(bench: _Bench) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    gateway, link, rich, broker = bench.gateway, bench.link, bench.rich, bench.broker
    n = bench.plan.outage
    broker.stop()
    await _when(lambda: not link.connected.is_set(), 10)  # cleared by the link's session
    billed0 = gateway.probe.counters().billed
    t0 = loop.time()
    await rich.submit(rich.burst(n))
    await _billed(gateway, billed0 + n, 120)
    fill_s = loop.time() - t0
    backlog = await asyncio.to_thread(gateway.store.outbox_stats)
    messages = backlog.total_pending
    readings = backlog.pending[MessageClass.TELEMETRY]
    published0, publishes0 = link.counters.published, link.counters.publishes
    _say(
        f"outage: broker killed; {n} readings billed offline in {fill_s:.2f} s"
        f" ({n / fill_s:,.0f} readings/s without MQTT); the outbox holds {messages}"
        f" messages ({readings} readings)"
    )
    t_start = loop.time()
    await asyncio.to_thread(broker.start)
    async with asyncio.timeout(30):
        await link.connected.wait()
    t_up = loop.time()
    bench.lag.take()
    t_done = await _drained(gateway, billed0 + n, 120)
    lag_p99, lag_max = bench.lag.take()
    drain_s = t_done - t_up
    published = link.counters.published - published0
    publishes = link.counters.publishes - publishes0
    _say(
        f"drain: broker back, link up after {t_up - t_start:.2f} s; {published} messages"
        f" acknowledged in {drain_s:.2f} s = {published / drain_s:,.0f} msg/s,"
        f" {readings / drain_s:,.0f} readings/s, {publishes / drain_s:,.0f} PUBLISH/s"
        f" ({publishes} PUBLISHes); event loop blocked p99 {lag_p99:.1f} ms,"
        f" max {lag_max:.1f} ms"
    )
    return {
        "drain_msgs_per_s": round(published / drain_s),
        "drain_readings_per_s": round(readings / drain_s),
        "drain_publishes_per_s": round(publishes / drain_s),
        "drain_messages": published,
        "drain_reconnect_s": round(t_up - t_start, 3),
        "drain_loop_lag_max_ms": round(lag_max, 1),
        "offline_readings_per_s": round(n / fill_s),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="prepay bench gateway", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller counts, ~half the time")
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--readings", type=int, default=None, help="sustained-rate readings")
    parser.add_argument("--outage-readings", type=int, default=None)
    parser.add_argument("--shutoffs", type=int, default=None)
    parser.add_argument("--background", type=float, default=1_000.0, help="readings/s")
    parser.add_argument("--kernel", choices=[m.value for m in KernelMode], default="auto")
    parser.add_argument("--log-level", default="error")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    plan = _Plan(
        accounts=args.accounts,
        sustained=args.readings or (10_000 if args.quick else 30_000),
        outage=args.outage_readings or (10_000 if args.quick else 50_000),
        shutoffs=args.shutoffs or (100 if args.quick else 200),
        background_per_s=args.background,
        spacing_s=0.04,
        kernel=KernelMode(args.kernel),
    )
    t0 = time.perf_counter()
    load_before = _loadavg()
    with tempfile.TemporaryDirectory(prefix="prepay-bench-gateway-") as tmp:
        directory = Path(tmp)
        with _broker(directory) as broker:
            results = asyncio.run(_run(plan, directory, broker))
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    results["loadavg_1m"] = [load_before, _loadavg()]
    _say(f"load average (1 min) before/after: {load_before:.2f} / {_loadavg():.2f} on 2 cores")
    targets = {
        "readings_per_s": results["readings_per_s"] >= 5_000,
        "drain_msgs_per_s": results["drain_msgs_per_s"] >= 20_000,
        "shutoff_p99_ms": results["shutoff_p99_ms"] <= 50,
        "rss_mb": results["rss_mb"] <= 200,
    }
    results["targets_met"] = targets
    _say(
        "targets (>=5,000 readings/s, >=20,000 drain msg/s, p99 <= 50 ms, RSS <= 200 MB): "
        + ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in targets.items())
    )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
