"""The composition root: config -> store -> flows -> drivers -> one TaskGroup.

``prepay run -c SITE.yaml`` lands in `serve`. Before anything runs, the start checks refuse a
lost state directory (`startup.check_state_present`), a state directory of another store
(`startup.adopt_store`) and, when the broker answers within a few seconds, a ledger behind or
off the checkpoint it published (`startup.check_against_checkpoint`). Every long-running part
runs under the `Supervisor`: a task that fails is logged, counted, journalled and restarted with
backoff, never silently lost. Shutdown (SIGTERM, or the injected ``shutdown_trigger``) stops the
drivers first, bills what is queued, checkpoints the ledger head, lets the MQTT link drain the
outbox until its deadline, then cancels the rest: all within 5 s. SIGHUP reloads tariffs,
policies and accounts without dropping a reading (the swap happens between two batches, under
the state lock).

This is the only module that names concrete driver adapters.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from billing_engine.base.errors import InvalidConfigError
from drivers.ports import Actuator, Clock, ReadingSource, VendingPort, utc_now
from gateway.config import Site, load_site, site_changes
from gateway.flows.actuation import ActuationManager
from gateway.flows.command_handler import CommandHandler
from gateway.flows.context import FlowContext
from gateway.flows.device_journal import DeviceJournal
from gateway.flows.ha_announce import HomeAssistantAnnouncer
from gateway.flows.pipeline import Pipeline
from gateway.flows.probe import GatewayProbe
from gateway.flows.spool import Spool
from gateway.flows.ticket_feed import BatchImport, TicketFeed
from gateway.flows.vending import VendingFlow
from gateway.metrics import (
    GatewayMetrics,
    MetricsSources,
    SinkFigures,
    StoreFigures,
    metrics_app,
)
from gateway.northbound.checkpoint_reader import (
    CheckpointUnavailableError,
    read_retained_checkpoint,
)
from gateway.northbound.mqtt import FeedHandler, MqttLink
from gateway.notify import ServiceWatch
from gateway.site_checks import reference_errors
from gateway.startup import (
    STATE_FILE,
    adopt_store,
    check_against_checkpoint,
    check_state_present,
    claim_state_dir,
    load_keys,
    load_plant_keys,
    open_store,
    preflight,
    select_kernel,
    version,
)
from gateway.store.tickets import TicketStore
from gateway.supervisor import Supervisor
from gateway.timers import Timers

if TYPE_CHECKING:  # loaded only for a site that has a console / writes to InfluxDB
    from gateway.console.server import Console
    from gateway.influx_sink import InfluxSink

logger = logging.getLogger(__name__)

SHUTDOWN_BUDGET_S = 4.5
#: How long the start may wait for the broker to hand back the retained checkpoint.
CHECKPOINT_READ_TIMEOUT_S = 5.0


def build_drivers(site: Site) -> tuple[list[ReadingSource], list[Actuator]]:
    """The site's drivers. Each protocol library loads only for a site that has such devices
    (pymodbus and bleak are about 6 MB resident that a LoRa-only box need not carry)."""
    devices = site.config.devices
    sources: list[ReadingSource] = []
    actuators: list[Actuator] = []
    if devices.modbus_buses:
        from drivers.modbus.builder import build_modbus  # noqa: PLC0415

        s, a = build_modbus(devices.modbus_buses, site.resolve(devices.profiles_dir))
        sources += s
        actuators += a
    if devices.lns:
        from drivers.lorawan.adapter import build_lns  # noqa: PLC0415

        s, a = build_lns(devices.lns, site.resolve(devices.codecs_dir))
        sources += s
        actuators += a
    if devices.ble_dispensers:
        from drivers.ble.dispenser import build_ble  # noqa: PLC0415

        s, a = build_ble(devices.ble_dispensers)
        sources += s
        actuators += a
    return sources, actuators


def _load_for_reload(path: Path, running: Site) -> Site:
    """The site file as a reload takes it: loaded, and its accounts checked against the
    devices that are running (they change only with a restart).

    Raises:
        InvalidConfigError: every problem, at its line.
    """
    site = load_site(path)
    errors = reference_errors(site, running=running)
    if errors:
        raise InvalidConfigError(errors)
    return site


class Gateway:
    """One running site. Tests and benchmarks build it directly with injected parts.

    ``checkpoint_every``: the ledger head may move this many entries before a checkpoint is
    published (top-ups and shutdown publish one anyway); default: the site's
    ``ledger_checkpoint_every``.

    Raises:
        StateMissingError: this site has run before but its state file is gone.
        StoreMismatchError: the state directory holds another store than the site's.
    """

    def __init__(
        self,
        site: Site,
        *,
        clock: Clock = utc_now,
        sources: Sequence[ReadingSource] | None = None,
        actuators: Sequence[Actuator] | None = None,
        connect_mqtt: bool = True,
        checkpoint_every: int | None = None,
    ) -> None:
        self.keys = load_keys(site)
        self.kernel = select_kernel(site)
        check_state_present(site)  # before open_store, which would create an empty store
        self.store = open_store(site, self.keys)
        try:
            adopt_store(site, self.store)
        except BaseException:
            self.store.close()
            raise
        self.ctx = FlowContext(site, self.store, clock, kernel=self.kernel)
        built_sources, built_actuators = ([], []) if sources is not None else build_drivers(site)
        self.sources = list(sources) if sources is not None else built_sources
        self.actuators = list(actuators) if actuators is not None else built_actuators
        devices = sorted(self.ctx.book.by_actuator)
        self.actuation = ActuationManager(
            self.actuators, DeviceJournal(self.ctx), site.config.actuation, devices, clock
        )
        self.ctx.wishes.deliver_to(self.actuation.request)
        self.pipeline = Pipeline(
            self.ctx,
            queue_size=site.config.reading_queue,
            batch_max=site.config.batch_max,
            state_every_s=site.config.state_publish_interval_s,
            commit_window_s=site.config.commit_window_ms / 1000,
        )
        # Water tickets, when the site takes them: one ticket store on the same file, the
        # feed that publishes redemptions and imports the plant's others, the batch import.
        self.tickets: TicketFeed | None = None
        self.ticket_store: TicketStore | None = None
        batch_import = None
        if site.config.tickets is not None:
            self.ticket_store = ticket_store = TicketStore(
                site.state_dir / STATE_FILE, box_id=site.config.site, clock=clock
            )
            plant = site.config.tickets.plant_code
            self.tickets = TicketFeed(self.ctx, ticket_store, site.config.tickets)
            batch_import = BatchImport(plant, load_plant_keys(site), ticket_store)
        # Home Assistant discovery, when the site asks for it (its configs through the outbox).
        self.home_assistant = (
            HomeAssistantAnnouncer(self.ctx, site.config.home_assistant, version())
            if site.config.home_assistant is not None
            else None
        )
        self.commands = CommandHandler(
            self.ctx,
            backend_key=self.keys.backend,
            gateway_key=self.keys.gateway,
            ticket_batches=batch_import,
        )
        # --- vending at dispensers (docs/vending.md): the drivers that take customers' requests
        # report into the flow from their own loops; nothing else to start. Tickets presented
        # at a dispenser are redeemed through the site's ticket store (its own lock serialises
        # the flows that share it).
        self.vending = VendingFlow(
            self.ctx,
            [a for a in self.actuators if isinstance(a, VendingPort)],
            gateway_key=self.keys.gateway,
            tickets=self.ticket_store,
        )
        self.vending.attach()
        # --- end vending
        self.timers = Timers(
            self.ctx,
            self.pipeline,
            gateway_key=self.keys.gateway,
            checkpoint_every=checkpoint_every or site.config.ledger_checkpoint_every,
        )
        self.link = (
            MqttLink(
                site.config.mqtt,
                site.config.site,
                version(),
                clock=clock,
                command_limits=site.config.commands,
                ack_window_s=site.config.commit_window_ms / 1000,
            )
            if connect_mqtt
            else None
        )
        self.spool = Spool(
            site.state_dir, site.config.site, self.keys.operator, self.commands.apply, clock
        )
        self.supervisor = Supervisor(self._report_failure)
        self.probe = GatewayProbe(self.ctx, self.pipeline, self.commands, self.actuation)
        # --- sinks (docs/operator-guide.md: Metrics, InfluxDB): the InfluxDB sink reads the
        # committed store on a connection of its own; the metrics read a snapshot.
        self.influx: InfluxSink | None = None
        if site.config.influx is not None:
            from gateway.influx_sink import InfluxSink, read_token  # noqa: PLC0415
            from gateway.store.export_reads import ExportReader  # noqa: PLC0415

            influx = site.config.influx
            token_file = None if influx.token_file is None else site.resolve(influx.token_file)
            self.influx = InfluxSink(
                influx,
                site.config.site,
                ExportReader(site.state_dir / STATE_FILE, clock=clock),
                token=read_token(token_file),
                clock=clock,
            )
        self.metrics = GatewayMetrics(
            self._metrics_sources(),
            refresh_s=2.0 if site.config.metrics is None else site.config.metrics.refresh_s,
        )
        # --- end sinks
        # --- the operator console (gateway/console/), only when the site file has `console:`:
        # its web stack (Starlette, uvicorn, Jinja2) is imported here, never by
        # `import gateway.daemon`.
        self.console: Console | None = None
        if site.config.console is not None:
            from starlette.routing import Route  # noqa: PLC0415 - lazy, see above

            from gateway.console.server import Console  # noqa: PLC0415 - lazy, see above

            link = self.link
            self.console = Console(
                site,
                accounts=lambda: self.ctx.book.by_id,
                apply=self.commands.apply,
                store=self.store,
                lock=self.ctx.lock,
                clock=clock,
                activity=self.probe.counters,
                link_state=lambda: (
                    "not connected in this run"
                    if link is None
                    else ("connected" if link.connected.is_set() else "down, retrying")
                ),
                kernel=self.kernel.reason,
                operator_public_key=self.keys.operator,
                # Prometheus scrapes the console's server too, behind no login (like the
                # standalone `metrics:` server): the figures name no person or amount.
                mounts=(Route("/metrics", endpoint=metrics_app(self.metrics)),),
            )
        # --- end console
        self.ready = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()

    @property
    def site(self) -> Site:
        """The site file as last loaded (SIGHUP replaces it)."""
        return self.ctx.site

    # --- sinks
    def _metrics_sources(self) -> MetricsSources:
        """Where `gateway.metrics` finds its figures (read on the loop, the store's in a
        worker thread)."""
        store, ctx = self.store, self.ctx

        def store_figures() -> StoreFigures:
            rows, held = store.journal_counts()
            return StoreFigures(store.outbox_stats(), {str(k): v for k, v in rows.items()}, held)

        def sink_figures(sink: InfluxSink) -> SinkFigures:
            status = sink.status
            oldest = status.lag.oldest_reading_received_at
            return SinkFigures(
                written_points=status.written_points,
                written_batches=status.written_batches,
                failed_writes=status.failed_writes,
                failing=status.failing,
                lag_rows={
                    "readings": status.lag.readings,
                    "entries": status.lag.entries,
                    "events": status.lag.events,
                },
                lag_s=0.0 if oldest is None else max((ctx.clock() - oldest).total_seconds(), 0),
            )

        buses = [
            (source, [d.device_id for d in bus.devices])
            for bus in self.site.config.devices.modbus_buses
            for source in self.sources
            if source.name == f"modbus[{bus.name}]" and hasattr(source, "stats")
        ]
        influx = self.influx
        return MetricsSources(
            counters=self.probe.counters,
            billed_by_status=lambda: self.pipeline.stats.by_status,
            account_states=lambda: [a.policy_state.mode for a in ctx.book.by_id.values()],
            store_figures=store_figures,
            link=self.link,
            buses=buses,  # type: ignore[arg-type]  # ModbusBus, checked by name and stats
            sink=None if influx is None else functools.partial(sink_figures, influx),
        )

    # --- end sinks

    async def _report_failure(self, name: str, exc: BaseException) -> None:
        def write() -> None:
            with self.store.transaction() as tx:
                tx.record_event(
                    None, "task_failed", {"task": name, "error": repr(exc)}, self.ctx.clock()
                )

        await asyncio.to_thread(write)

    async def reload(self) -> None:
        """SIGHUP: re-read the site file; on success swap tariffs, policies and accounts.

        The new file gets the checks of a start that a reload can honour (`load_site`, and the
        accounts against the running devices: `site_checks.reference_errors`); a file that
        fails them is logged line by line (``FILE:LINE: field: message``) and the running
        configuration stays. What changed is logged, and so is what waits for a restart
        (`config.site_changes`: devices, broker, state directory, keys...).

        The swap happens under the state lock, between two batches: the accounts are reloaded
        from the store only once no batch is half-way, so nothing is billed twice or lost.
        """
        running = self.ctx.site
        path = running.path
        try:
            site = await asyncio.to_thread(_load_for_reload, path, running)
        except InvalidConfigError as exc:
            logger.error(  # noqa: TRY400 - the lines say it all; a traceback would bury them
                "reload of %s refused; the running configuration stays:", path
            )
            for error in exc.errors:
                logger.error("%s", error)  # noqa: TRY400 - as above
            return
        except Exception:  # a bug in the loader must not end the daemon; its traceback helps
            logger.exception("reload of %s failed; keeping the running configuration", path)
            return
        changes = site_changes(running, site)
        async with self.ctx.lock:
            await asyncio.to_thread(self.ctx.reload, site)
        logger.info(
            "reloaded %s: %s (accounts in the book: %d, tariffs: %d)",
            site.path,
            "; ".join(changes.applied) or "no change to tariffs, policies, accounts or meters",
            len(self.ctx.book.by_id),
            len(site.tariffs),
        )
        if changes.need_restart:
            logger.warning(
                "reload of %s: %s changed; ignored until restart (prepay run applies them"
                " at its next start)",
                site.path,
                ", ".join(changes.need_restart),
            )
        for account in site.config.accounts:
            if account.actuator and not self.actuation.handles(account.actuator):
                # Actuation drives the devices the accounts named at the start.
                logger.warning(
                    "account %s: device %s is switched only after a restart",
                    account.id,
                    account.actuator,
                )

    def request_reload(self) -> None:
        """Signal-handler side of `reload`: schedule it (the task is kept until done)."""
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _reconcile_supply(self) -> None:
        """After a start, drive every device to what its account's policy wants.

        What each device last confirmed (journalled) is handed to actuation first: a device
        read back live is checked before anything is sent, and one that reports only when it
        makes contact (a class A valve) is sent nothing while its stored state matches.
        """
        known = self.store.last_device_supply()
        for device_id, account in self.ctx.book.by_actuator.items():
            record = known.get(device_id)
            if record is not None and record.confirmed:
                self.actuation.seed(device_id, record.on, record.at)
            self.actuation.request(device_id, account.policy_state.supply_on, "startup")

    def _driver(self, source: ReadingSource) -> Callable[[], Awaitable[None]]:
        return lambda: source.run(self.pipeline)

    async def check_rollback(self) -> None:
        """Compare the ledger with the checkpoint retained at the broker (see
        `startup.check_against_checkpoint`); a broker that does not answer within
        `CHECKPOINT_READ_TIMEOUT_S` is logged and the gateway starts without the check.

        Raises:
            RollbackError: the ledger is behind the checkpoint or diverges from it.
        """
        site = self.site
        try:
            raw = await read_retained_checkpoint(
                site.config.mqtt, site.config.site, timeout_s=CHECKPOINT_READ_TIMEOUT_S
            )
        except CheckpointUnavailableError as exc:
            logger.warning(
                "the rollback check could not run: no checkpoint read from the broker (%s);"
                " starting without it",
                exc,
            )
            return
        if raw is None:
            logger.info("no checkpoint retained at the broker yet: nothing to compare")
            return
        public_key = self.keys.gateway.public_key()
        check = await asyncio.to_thread(check_against_checkpoint, site, self.store, raw, public_key)
        if check.compared:
            logger.info("rollback check: %s", check.message)
        else:
            logger.warning("rollback check: %s", check.message)

    async def run(self, shutdown_trigger: Callable[[], Awaitable[object]]) -> None:
        """Check the ledger against the published checkpoint, run until ``shutdown_trigger``
        returns, then shut down in order.

        Raises:
            RollbackError: the start check refused the ledger (nothing ran, nothing was sent).
        """
        sup = self.supervisor.supervise
        timers = self.timers
        try:
            if self.link is not None:  # before billing and before any command is answered
                await self.check_rollback()
            served_metrics = self.site.config.metrics is not None or self.console is not None
            if served_metrics:
                # The first snapshot before any server answers: a scrape in the first second
                # would otherwise get the process figures and none of the gateway's.
                await self.metrics.refresh()
            async with asyncio.TaskGroup() as group:
                core = [
                    group.create_task(sup(name, factory), name=name)
                    for name, factory in (
                        ("pipeline", self.pipeline.run),
                        ("actuation", self.actuation.run),
                        ("policy-clock", timers.policy_clock),
                        ("spool", self.spool.run),
                        ("stale-watch", timers.stale_watch),
                        ("state-flush", timers.state_flush),
                        ("journal-retention", timers.journal_retention),
                        ("checkpoint", timers.checkpoint_watch),
                    )
                ]
                if self.console is not None:  # the operator console
                    console = self.console.serve
                    core.append(group.create_task(sup("console", console), name="console"))
                tickets = self.tickets
                if tickets is not None:
                    core.append(
                        group.create_task(sup("ticket-feed", tickets.run), name="ticket-feed")
                    )
                feeds: dict[str, FeedHandler] = {}
                if tickets is not None:
                    feeds[tickets.topics.redeemed_filter] = tickets.on_message
                if (announcer := self.home_assistant) is not None:
                    core.append(group.create_task(sup("home-assistant", announcer.run), name="ha"))
                    feeds[announcer.status_topic] = announcer.on_status
                # --- sinks
                # The snapshot reads the store (under its lock) every refresh: only when
                # something serves /metrics (its own server, or the console's).
                if served_metrics:
                    metrics = self.metrics.run
                    core.append(group.create_task(sup("metrics", metrics), name="metrics"))
                if self.site.config.metrics is not None:
                    served = self.site.config.metrics
                    core.append(
                        group.create_task(
                            sup(
                                "metrics-http",
                                functools.partial(self.metrics.serve, served.bind, served.port),
                            ),
                            name="metrics-http",
                        )
                    )
                if self.influx is not None:
                    core.append(group.create_task(sup("influx", self.influx.run), name="influx"))
                # --- end sinks
                link_task = None
                if self.link is not None:
                    link = self.link
                    link_task = group.create_task(
                        sup(
                            "mqtt",
                            lambda: link.run(
                                self.store, self.ctx.wake, self.commands.handle, feeds
                            ),
                        ),
                        name="mqtt",
                    )
                drivers = [
                    group.create_task(sup(src.name, self._driver(src)), name=src.name)
                    for src in self.sources
                ]
                await timers.settle()
                self._reconcile_supply()
                # Everything loaded so far lives as long as the process: keep it out of the
                # collector's way (gen-2 passes over it stalled the loop for ~100 ms).
                gc.collect()
                gc.freeze()
                self.ready.set()
                await shutdown_trigger()
                logger.info("shutting down: stopping %d drivers", len(drivers))
                self.supervisor.stopping = True
                loop = asyncio.get_running_loop()
                deadline = loop.time() + SHUTDOWN_BUDGET_S
                for task in drivers:
                    task.cancel()
                with contextlib.suppress(TimeoutError):
                    await self.pipeline.drain(max(deadline - loop.time() - 2.0, 0.5))
                async with self.ctx.lock:
                    await asyncio.to_thread(
                        functools.partial(self.pipeline.publish_dirty_states, force=True)
                    )
                await asyncio.to_thread(timers.checkpoint)  # the head as it is left
                self.ctx.wake.set()
                if self.link is not None and link_task is not None:
                    self.link.request_stop()
                    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                        async with asyncio.timeout(max(deadline - loop.time(), 0.1)):
                            await asyncio.shield(link_task)
                for task in [*core, *([link_task] if link_task else [])]:
                    task.cancel()
        finally:
            self.store.close()
            if self.ticket_store is not None:
                self.ticket_store.close()
            if self.influx is not None:  # --- sinks
                self.influx.close()
            logger.info("stopped")


async def serve(path: Path) -> int:
    """``prepay run``: load, run until SIGTERM/SIGINT, reload on SIGHUP.

    Raises:
        InvalidConfigError: what ``prepay check-config`` reports (`startup.preflight`: the
            file, the devices, the keys, the state directory); nothing is created.
        AlreadyRunningError: another ``prepay run`` holds the site's state directory.
    """
    site = preflight(path)  # exactly check-config's checks, before anything is created
    with claim_state_dir(site.state_dir):  # one daemon per store, before the store is opened
        return await _serve(site)


async def _serve(site: Site) -> int:
    gateway = Gateway(site)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.request_reload)
    logger.info(
        "site %s: %d accounts, %d sources, %d actuators; state in %s",
        site.config.site,
        len(gateway.ctx.book.by_id),
        len(gateway.sources),
        len(gateway.actuators),
        site.state_dir,
    )
    # systemd (Type=notify): READY=1 once ready, WATCHDOG=1 and STATUS= while the pipeline
    # turns, STOPPING=1 on stop; nothing when not started by systemd.
    service = ServiceWatch.from_environment(gateway.ctx.lock, gateway.store, gateway.probe.counters)
    async with service.watching(gateway.ready, stop):
        await gateway.run(stop.wait)
    return 0
