"""Prometheus metrics of a running gateway: `GatewayMetrics` and `metrics_app`.

The figures come from what the gateway already counts (`gateway.flows.probe.GatewayProbe`, the
MQTT link's counters, actuation, the store's journal and outbox counts, the InfluxDB sink's
status, the Modbus buses' device stats). A scrape never touches the gateway itself: a task on
the event loop takes a `Snapshot` every ``refresh_s`` (memory the loop owns is read on the loop;
the store is read in a worker thread, so a long transaction never stalls the loop), and the
collector serves the latest snapshot to whichever thread scrapes. A scrape is at most
``refresh_s`` old.

Labels are bounded: message classes, journal states, hold reasons, billing statuses, account
states, command results, buses; never an account, a meter or a reading. The poll-time histogram
(``prepay_bus_poll_seconds``) is one per configured bus, summed over its devices from the
buckets each device counts in the driver (`drivers.modbus.client.DeviceStats`): 12 bounds,
+Inf, a sum and a count, 15 series per bus, however many devices the bus has. The commit-time
histogram (``prepay_journal_commit_seconds``, `gateway.flows.pipeline.PipelineStats`) is one for
the site, 15 series.

``metrics_app(metrics)`` is the ASGI app to mount on another server (the operator console);
`GatewayMetrics.serve` is the small standalone ``/metrics`` server of the ``metrics`` section
(prometheus_client's own thread server: a scrape then never runs on the event loop).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, ProcessCollector, make_asgi_app, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.flows.probe import Counters
from gateway.policy.state import PolicyMode
from gateway.store import OutboxStats

logger = logging.getLogger(__name__)


class LinkCountersView(Protocol):
    @property
    def published(self) -> int: ...
    @property
    def refused(self) -> int: ...
    @property
    def connects(self) -> int: ...
    @property
    def reconnects(self) -> int: ...
    @property
    def commands(self) -> int: ...
    @property
    def command_errors(self) -> int: ...


class LinkView(Protocol):
    """What the metrics read of the MQTT link (`gateway.northbound.mqtt.MqttLink`)."""

    @property
    def counters(self) -> LinkCountersView: ...
    @property
    def connected(self) -> asyncio.Event: ...


class DeviceStatsView(Protocol):
    @property
    def polls(self) -> int: ...
    @property
    def failed_polls(self) -> int: ...
    @property
    def timeouts(self) -> int: ...
    @property
    def poll_time_counts(self) -> Sequence[int]: ...  # per bucket of the bus's bounds, + 1
    @property
    def poll_time_sum_s(self) -> float: ...


class BusView(Protocol):
    """A polled bus (`drivers.modbus.client.ModbusBus`): its name and each device's stats."""

    @property
    def name(self) -> str: ...
    @property
    def poll_time_buckets_s(self) -> Sequence[float]: ...  # inclusive upper bounds
    def stats(self, device_id: str) -> DeviceStatsView: ...


@dataclass(frozen=True, slots=True)
class BusFigures:
    polls: int
    failed_polls: int
    timeouts: int
    #: (upper bound, polls that took at most that long), cumulative, the last bound +Inf
    poll_time_buckets: tuple[tuple[float, int], ...] = ()
    poll_time_sum_s: float = 0.0


@dataclass(frozen=True, slots=True)
class SinkFigures:
    written_points: int
    written_batches: int
    failed_writes: int
    failing: bool
    lag_rows: Mapping[str, int]  # readings, entries, events
    lag_s: float  # age of the oldest reading not yet acknowledged (0: none)


@dataclass(frozen=True, slots=True)
class StoreFigures:
    """What the store says (read in a worker thread)."""

    outbox: OutboxStats
    journal_rows: Mapping[str, int]  # by state
    held_by_reason: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every figure of one refresh."""

    counters: Counters
    billed_by_status: Mapping[str, int]
    accounts_by_state: Mapping[str, int]
    link_connected: bool | None  # None: no link (a broker-less gateway)
    link: Mapping[str, int]
    buses: Mapping[str, BusFigures]
    store: StoreFigures | None
    sink: SinkFigures | None


@dataclass
class MetricsSources:
    """Where the figures come from; the daemon fills it in (``gateway.daemon.Gateway``)."""

    counters: Callable[[], Counters]
    billed_by_status: Callable[[], Mapping[str, int]]
    account_states: Callable[[], Iterable[PolicyMode]]
    store_figures: Callable[[], StoreFigures]  # blocking: run in a worker thread
    link: LinkView | None = None
    buses: Sequence[tuple[BusView, Sequence[str]]] = ()  # a bus and its device ids
    sink: Callable[[], SinkFigures] | None = None


class _SnapshotCollector(Collector):
    def __init__(self, latest: Callable[[], Snapshot | None]) -> None:
        self._latest = latest

    def collect(self) -> Iterator[Metric]:
        snap = self._latest()
        if snap is None:
            return
        c = snap.counters
        for name, value, text in (
            ("prepay_readings_received", c.received, "Readings handed over by drivers."),
            ("prepay_readings_journalled", c.journalled, "New readings committed to the journal."),
            ("prepay_readings_duplicate", c.duplicates, "Readings already journalled."),
            ("prepay_readings_refused", c.refused, "Readings the journal refused."),
            ("prepay_readings_billed", c.billed, "Readings billed and published."),
            ("prepay_readings_held", c.held, "Readings held for an operator."),
            ("prepay_journal_commits", c.journal_commits, "Journal commits, each one fsync."),
            ("prepay_billing_batches", c.billing_batches, "Batches billed."),
            ("prepay_actuation_attempts", c.supply_sent, "Supply switch commands sent."),
            ("prepay_actuation_confirmed", c.supply_confirmed, "Supply changes confirmed."),
            ("prepay_actuation_alarms", c.supply_alarms, "Supply changes given up (alarm)."),
        ):
            yield CounterMetricFamily(name, text, value=value)
        commit_time = HistogramMetricFamily(
            "prepay_journal_commit_seconds",
            "Time from the end of a batch's commit window to its commit (journal and billing).",
        )
        commit_time.add_metric(
            [], [(_le(bound), n) for bound, n in c.commit_time_buckets], c.commit_time_sum_s
        )
        yield commit_time
        status = CounterMetricFamily(
            "prepay_readings_billing_status",
            "Readings by the billing engine's status.",
            labels=["status"],
        )
        for key, value in sorted(snap.billed_by_status.items()):
            status.add_metric([key], value)
        yield status
        commands = CounterMetricFamily(
            "prepay_commands", "Backend commands by result.", labels=["result"]
        )
        commands.add_metric(["applied"], c.commands_applied)
        commands.add_metric(["rejected"], c.commands_rejected)
        commands.add_metric(["duplicate"], c.commands_duplicate)
        yield commands
        accounts = GaugeMetricFamily("prepay_accounts", "Accounts by state.", labels=["state"])
        for mode in PolicyMode:
            accounts.add_metric([mode.value], snap.accounts_by_state.get(mode.value, 0))
        yield accounts
        if snap.link_connected is not None:
            yield GaugeMetricFamily(
                "prepay_mqtt_connected",
                "1 while the link to the broker is up.",
                value=int(snap.link_connected),
            )
            for key, text in (
                ("connects", "Connections made to the broker."),
                ("reconnects", "Connections lost after being up."),
                ("published", "Outbox messages acknowledged by the broker."),
                ("refused", "Of those, messages the broker's PUBACK refused (not sent again)."),
                ("commands", "Commands received."),
                ("command_errors", "Commands whose handling failed."),
            ):
                yield CounterMetricFamily(f"prepay_mqtt_{key}", text, value=snap.link[key])
        if snap.buses:
            polls = CounterMetricFamily("prepay_bus_polls", "Device polls.", labels=["bus"])
            failed = CounterMetricFamily(
                "prepay_bus_poll_errors", "Device polls that failed.", labels=["bus"]
            )
            timeouts = CounterMetricFamily(
                "prepay_bus_poll_timeouts", "Device polls that timed out.", labels=["bus"]
            )
            # One histogram per bus, not per device: its series stay bounded by the site's
            # buses (a bus of 200 meters is still 15 series).
            latency = HistogramMetricFamily(
                "prepay_bus_poll_seconds",
                "Time to read a device, answered or failed (retries and timeouts included).",
                labels=["bus"],
            )
            for bus, figures in sorted(snap.buses.items()):
                polls.add_metric([bus], figures.polls)
                failed.add_metric([bus], figures.failed_polls)
                timeouts.add_metric([bus], figures.timeouts)
                latency.add_metric(
                    [bus],
                    [(_le(bound), count) for bound, count in figures.poll_time_buckets],
                    figures.poll_time_sum_s,
                )
            yield from (polls, failed, timeouts, latency)
        if snap.store is not None:
            out = snap.store.outbox
            pending = GaugeMetricFamily(
                "prepay_outbox_pending", "Messages waiting in the outbox.", labels=["class"]
            )
            dropped = CounterMetricFamily(
                "prepay_outbox_dropped",
                "Telemetry dropped by the outbox bound (since the store was made).",
                labels=["class"],
            )
            for cls in sorted(out.pending, key=str):
                pending.add_metric([str(cls)], out.pending[cls])
                dropped.add_metric([str(cls)], out.dropped[cls])
            yield from (pending, dropped)
            rows = GaugeMetricFamily(
                "prepay_journal_rows", "Journalled readings by state.", labels=["state"]
            )
            for key, value in sorted(snap.store.journal_rows.items()):
                rows.add_metric([key], value)
            yield rows
            held = GaugeMetricFamily(
                "prepay_journal_held", "Held readings by reason.", labels=["reason"]
            )
            for key, value in sorted(snap.store.held_by_reason.items()):
                held.add_metric([key], value)
            yield held
        if snap.sink is not None:
            s = snap.sink
            yield CounterMetricFamily(
                "prepay_influx_points", "Points the InfluxDB server acknowledged.", s.written_points
            )
            yield CounterMetricFamily(
                "prepay_influx_write_failures",
                "Batches whose retries ran out (each is sent again).",
                s.failed_writes,
            )
            yield GaugeMetricFamily(
                "prepay_influx_failing", "1 while writes fail.", value=int(s.failing)
            )
            lag = GaugeMetricFamily(
                "prepay_influx_lag_rows", "Rows not yet acknowledged, by kind.", labels=["kind"]
            )
            for key, value in sorted(s.lag_rows.items()):
                lag.add_metric([key], value)
            yield lag
            yield GaugeMetricFamily(
                "prepay_influx_lag_seconds",
                "Age of the oldest reading not yet acknowledged (0: caught up).",
                value=s.lag_s,
            )


class GatewayMetrics:
    """The gateway's registry and the task that keeps its snapshot fresh."""

    def __init__(self, sources: MetricsSources, *, refresh_s: float = 2.0) -> None:
        self.sources = sources
        self.refresh_s = refresh_s
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_SnapshotCollector(lambda: self.snapshot))
        # Resident memory, CPU time, open files: read from /proc on scrape (no lock involved).
        ProcessCollector(registry=self.registry)
        self.snapshot: Snapshot | None = None
        self.refreshes = 0

    async def refresh(self) -> Snapshot:
        """Take a snapshot now (on the loop; the store's part in a worker thread)."""
        src = self.sources
        store = await asyncio.to_thread(src.store_figures)
        link = src.link
        snap = Snapshot(
            counters=src.counters(),
            billed_by_status=dict(src.billed_by_status()),
            accounts_by_state=dict(Tally(mode.value for mode in src.account_states())),
            link_connected=None if link is None else link.connected.is_set(),
            link={}
            if link is None
            else {
                "connects": link.counters.connects,
                "reconnects": link.counters.reconnects,
                "published": link.counters.published,
                "refused": link.counters.refused,
                "commands": link.counters.commands,
                "command_errors": link.counters.command_errors,
            },
            buses={bus.name: _bus_figures(bus, devices) for bus, devices in src.buses},
            store=store,
            sink=None if src.sink is None else src.sink(),
        )
        self.snapshot = snap  # one reference swap: a scraping thread sees the old or the new
        self.refreshes += 1
        return snap

    async def run(self) -> None:
        """Refresh forever, every ``refresh_s`` (at once if no snapshot was taken yet)."""
        if self.snapshot is None:
            await self.refresh()
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh()

    async def serve(self, bind: str, port: int) -> None:
        """The standalone ``/metrics`` server on ``bind:port`` until cancelled.

        Raises:
            OSError: the address cannot be bound (in use, not local).
        """
        server, thread = start_http_server(port, addr=bind, registry=self.registry)
        logger.info("metrics on http://%s:%d/metrics", bind, server.server_port)
        try:
            await asyncio.Event().wait()
        finally:
            server.shutdown()  # returns within its 0.5 s poll
            server.server_close()
            thread.join(timeout=2)


class _AsgiApp:
    """An ASGI app as an object. prometheus_client's app is a plain function, which Starlette's
    ``Route`` would take for a request handler (and fail on); an object it serves as is."""

    def __init__(self, app: Any) -> None:
        self._app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._app(scope, receive, send)


def metrics_app(metrics: GatewayMetrics) -> Any:  # an ASGI app; typed by what serves it
    """The ASGI app answering ``/metrics`` from ``metrics``' registry, to serve on another
    server (the operator console): ``Route("/metrics", endpoint=metrics_app(gateway.metrics))``."""
    return _AsgiApp(make_asgi_app(metrics.registry))


def _le(bound: float) -> str:
    """A bucket's bound as Prometheus writes it (``0.005``, ``1.0``, ``+Inf``)."""
    return "+Inf" if math.isinf(bound) else repr(bound)


def _bus_figures(bus: BusView, devices: Sequence[str]) -> BusFigures:
    stats = [bus.stats(d) for d in devices]
    bounds = [*bus.poll_time_buckets_s, math.inf]
    per_bucket = [sum(s.poll_time_counts[i] for s in stats) for i in range(len(bounds))]
    return BusFigures(
        polls=sum(s.polls for s in stats),
        failed_polls=sum(s.failed_polls for s in stats),
        timeouts=sum(s.timeouts for s in stats),
        poll_time_buckets=tuple(zip(bounds, itertools.accumulate(per_bucket), strict=True)),
        poll_time_sum_s=sum(s.poll_time_sum_s for s in stats),
    )
