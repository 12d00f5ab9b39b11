"""The composition root: config -> store -> accounts -> drivers -> one TaskGroup.

``prepay run -c SITE.yaml`` lands in `serve`. Every long-running part runs under `supervise`:
a task that fails is logged, counted, published as an alarm and restarted with backoff, never
silently lost. Shutdown (SIGTERM, or the injected ``shutdown_trigger``) stops the drivers
first, bills what is queued, lets the MQTT link drain the outbox until its deadline, then
cancels the rest: all within 5 s. SIGHUP reloads tariffs, policies and accounts without
dropping a reading (the swap happens between two batches).

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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from billing_engine import kernels
from drivers.ports import Actuator, ReadingSource
from gateway.accounts import Account, AccountBook
from gateway.actuation import ActuationManager
from gateway.command_handler import CommandHandler
from gateway.config import Site, load_site
from gateway.decisions import next_wakeup, on_tick
from gateway.effects import Effects, apply_decision, enqueue_account_state, enqueue_event
from gateway.northbound.commands import load_private_key, load_public_key
from gateway.northbound.mqtt import MqttLink
from gateway.northbound.topics import DeviceStatePayload, SiteTopics
from gateway.overlay import OVERLAY_KEY, Overlay, apply_overlay
from gateway.pipeline import Pipeline
from gateway.spool import Spool
from gateway.store import Store

logger = logging.getLogger(__name__)

STATE_FILE = "prepay.sqlite"
SHUTDOWN_BUDGET_S = 4.5
_MAX_TICK_S = 60.0
_RETENTION_PERIOD_S = 6 * 3600.0  # each run prunes about six hours of readings


def _utc_now() -> datetime:
    return datetime.now(UTC)


def version() -> str:
    try:
        return metadata.version("prepay-gateway")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def read_ledger_key(path: Path) -> bytes:
    """The ledger HMAC key: a file of hex digits (``prepay keys init`` writes one).

    Raises:
        ValueError: not hex, or shorter than 32 bytes.
    """
    key = bytes.fromhex(path.read_text().strip())
    if len(key) < 32:
        raise ValueError(f"{path}: the ledger key must be at least 32 bytes")
    return key


@dataclass
class Keys:
    ledger: bytes
    gateway: Ed25519PrivateKey
    backend: Ed25519PublicKey
    operator: Ed25519PublicKey | None


def load_keys(site: Site) -> Keys:
    cfg = site.config.keys
    operator = None
    if cfg.operator_public_key is not None:
        operator = load_public_key(site.resolve(cfg.operator_public_key).read_bytes())
    return Keys(
        ledger=read_ledger_key(site.resolve(cfg.ledger_key_file)),
        gateway=load_private_key(site.resolve(cfg.gateway_private_key).read_bytes()),
        backend=load_public_key(site.resolve(cfg.backend_public_key).read_bytes()),
        operator=operator,
    )


def open_store(site: Site, keys: Keys) -> Store:
    state_dir = site.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    return Store(
        state_dir / STATE_FILE,
        ledger_key=keys.ledger,
        max_outbox_messages=site.config.outbox.max_messages,
    )


def load_book(
    site: Site, store: Store, kernel: kernels.Kernel | None = None
) -> tuple[AccountBook, Overlay]:
    """The account book of ``site`` with the backend's overlay merged in, from the store."""
    records = store.load_account_states()
    overlay = Overlay.from_record(records.pop(OVERLAY_KEY, None))
    effective = apply_overlay(site, overlay)
    ids = [a.id for a in effective.config.accounts]
    book = AccountBook(
        effective,
        records,
        {i: store.balance(i) for i in ids},
        {i: store.debt(i) for i in ids},
        kernel=kernel,
    )
    return book, overlay


def select_kernel(site: Site) -> kernels.Kernel:
    """The billing kernel the site's config asks for (built on first start when needed).

    Raises:
        KernelUnavailableError: ``billing.kernel: aot`` and it can be neither loaded nor built.
    """
    billing = site.config.billing
    cache_dir = site.resolve(billing.kernel_cache_dir) if billing.kernel_cache_dir else None
    kernel = kernels.select(billing.kernel, cache_dir)
    if kernel.mode is kernels.KernelMode.JIT and billing.kernel is kernels.KernelMode.AUTO:
        logger.warning("billing kernel %s", kernel.reason)
    else:
        logger.info("billing kernel %s", kernel.reason)
    return kernel


def build_drivers(site: Site) -> tuple[list[ReadingSource], list[Actuator]]:
    devices = site.config.devices
    sources: list[ReadingSource] = []
    actuators: list[Actuator] = []
    # Each driver's protocol library loads only for a site that has such devices (pymodbus and
    # bleak are about 6 MB resident that a LoRa-only box need not carry).
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


@dataclass
class Supervisor:
    """Restarts failed tasks with backoff and reports each failure."""

    on_failure: Callable[[str, BaseException], Awaitable[None]]
    failures: dict[str, int] = field(default_factory=dict)
    stopping: bool = False

    async def supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        delay = 0.5
        while True:
            started = asyncio.get_running_loop().time()
            try:
                await factory()
                if self.stopping:
                    return
                logger.error("task %s returned; restarting it", name)
            except Exception as exc:
                self.failures[name] = self.failures.get(name, 0) + 1
                logger.exception(
                    "task %s failed (%d times); restarting in %.1f s",
                    name,
                    self.failures[name],
                    delay,
                )
                with contextlib.suppress(Exception):
                    await self.on_failure(name, exc)
            if asyncio.get_running_loop().time() - started > 60:
                delay = 0.5
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


class DeviceJournal:
    """`ActuationJournal` that journals and publishes supply progress."""

    def __init__(
        self,
        store: Store,
        topics: SiteTopics,
        book: Callable[[], AccountBook],
        clock: Callable[[], datetime],
        wake: asyncio.Event,
    ) -> None:
        self._store = store
        self._topics = topics
        self._book = book
        self._clock = clock
        self._wake = wake

    def _write(
        self,
        device_id: str,
        on: bool,
        confirmed: bool,
        event: str,
        detail: str,
        alarm: str | None = None,
    ) -> None:
        now = self._clock()
        supply = "on" if on else "off"
        state = DeviceStatePayload(
            device=device_id,
            supply=supply if confirmed else ("off" if on else "on"),
            confirmation="confirmed" if confirmed else "pending",
            desired=None if confirmed else supply,
            last_seen=now if confirmed else None,
            ts=now,
        )
        out = self._topics.device_state_message(state)
        account = next(
            (a for a in self._book().by_id.values() if a.config.actuator == device_id), None
        )
        with self._store.transaction() as tx:
            tx.enqueue(out.topic, out.payload, out.qos, out.retain, out.message_class)
            if alarm is not None and account is not None:
                enqueue_event(tx, self._topics, account, "alarm", now, alarm=alarm, detail=detail)
            else:
                tx.record_event(
                    account.id if account else None,
                    event,
                    {"device": device_id, "supply": supply, "detail": detail},
                    now,
                )

    async def supply_pending(self, device_id: str, on: bool, reason: str) -> None:
        await asyncio.to_thread(self._write, device_id, on, False, "supply_sent", reason)
        self._wake.set()

    async def supply_confirmed(self, device_id: str, on: bool, reason: str) -> None:
        await asyncio.to_thread(self._write, device_id, on, True, "supply_confirmed", reason)
        self._wake.set()

    async def supply_alarm(self, device_id: str, on: bool, tries: int, error: str) -> None:
        detail = f"{device_id}: supply {'on' if on else 'off'} unconfirmed after {tries}: {error}"
        await asyncio.to_thread(
            self._write, device_id, on, False, "supply_alarm", detail, "supply_unconfirmed"
        )
        self._wake.set()


class Gateway:
    """One running site. Tests and benchmarks build it directly with injected parts."""

    def __init__(
        self,
        site: Site,
        *,
        clock: Callable[[], datetime] = _utc_now,
        sources: Sequence[ReadingSource] | None = None,
        actuators: Sequence[Actuator] | None = None,
        connect_mqtt: bool = True,
    ) -> None:
        self.site = site
        self.clock = clock
        self.keys = load_keys(site)
        self.kernel = select_kernel(site)
        self.store = open_store(site, self.keys)
        self.topics = SiteTopics(site.config.site)
        self.book, self.overlay = load_book(site, self.store, self.kernel)
        built_sources, built_actuators = ([], []) if sources is not None else build_drivers(site)
        self.sources = list(sources) if sources is not None else built_sources
        self.actuators = list(actuators) if actuators is not None else built_actuators
        self.wake = asyncio.Event()
        self.state_lock = asyncio.Lock()
        devices = sorted(
            {a.config.actuator for a in self.book.by_id.values() if a.config.actuator is not None}
        )
        self.actuation = ActuationManager(
            self.actuators,
            DeviceJournal(self.store, self.topics, lambda: self.book, clock, self.wake),
            site.config.actuation,
            devices,
            clock,
        )
        self.effects = Effects(self.actuation.request, self.wake)
        self.pipeline = Pipeline(
            self.store,
            self.book,
            self.topics,
            clock,
            self.effects,
            self.state_lock,
            queue_size=site.config.reading_queue,
            batch_max=site.config.batch_max,
            reload=self._rebuild,
            state_every_s=site.config.state_publish_interval_s,
        )
        self.commands = CommandHandler(
            self.store,
            lambda: self.book,
            self.topics,
            clock,
            self.effects,
            self.state_lock,
            backend_key=self.keys.backend,
            gateway_key=self.keys.gateway,
            site=lambda: self.site,
            overlay=lambda: self.overlay,
            on_overlay=self._rebuild,
        )
        self.link = (
            MqttLink(site.config.mqtt, site.config.site, version(), clock=clock)
            if connect_mqtt
            else None
        )
        self.spool = Spool(
            site.state_dir, site.config.site, self.keys.operator, self.commands.apply, clock
        )
        self.supervisor = Supervisor(self._report_failure)
        self.ready = asyncio.Event()
        self._tick = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._background: set[asyncio.Task[None]] = set()

    async def _report_failure(self, name: str, exc: BaseException) -> None:
        def write() -> None:
            with self.store.transaction() as tx:
                tx.record_event(
                    None, "task_failed", {"task": name, "error": repr(exc)}, self.clock()
                )

        await asyncio.to_thread(write)

    async def reload(self) -> None:
        """SIGHUP: re-read the site file; on success swap tariffs, policies and accounts.

        The swap happens under the state lock, between two batches: the accounts are reloaded
        from the store only once no batch is half-way, so nothing is billed twice or lost.
        """
        try:
            site = await asyncio.to_thread(load_site, self.site.path)
        except Exception:  # a bad file (any error) keeps the running configuration
            logger.exception(
                "reload of %s failed; keeping the running configuration", self.site.path
            )
            return
        async with self.state_lock:
            self.site = site
            await asyncio.to_thread(self._rebuild)
        logger.info(
            "reloaded %s: %d accounts, %d tariffs",
            site.path,
            len(self.book.by_id),
            len(site.tariffs),
        )

    def request_reload(self) -> None:
        """Signal-handler side of `reload`: schedule it (the task is kept until done)."""
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _rebuild(self) -> None:
        """Reload the accounts from the store (under the state lock, in a worker thread):
        after a command changed the overlay, or after a failed transaction left the accounts
        in memory ahead of the store."""
        self.book, self.overlay = load_book(self.site, self.store, self.kernel)
        self.pipeline.set_book(self.book)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._tick.set)

    def _reconcile_supply(self) -> None:
        """After a start, drive every device to what its account's policy wants."""
        for account in self.book.by_id.values():
            if account.config.actuator is not None:
                self.actuation.request(
                    account.config.actuator, account.policy_state.supply_on, "startup"
                )

    def _tick_due(self, now: datetime) -> None:
        with self.store.transaction() as tx:
            for account in self.book.by_id.values():
                due = next_wakeup(account.policy, account.policy_state, now)
                if due is None or due > now:
                    continue
                decision = on_tick(
                    account.policy, account.policy_state, account.billing.balance_minor, now
                )
                apply_decision(
                    tx,
                    self.topics,
                    account,
                    decision,
                    now,
                    self.effects,
                    key_base=f"tick:{now.isoformat()}",
                )
                tx.save_account_state(account.id, account.to_record())
                enqueue_account_state(tx, self.topics, account, now)

    def _journal_stale(self, changes: list[tuple[Account, bool]], now: datetime) -> None:
        with self.store.transaction() as tx:
            for account, stale in changes:
                alarm = "meter_stale" if stale else "meter_reporting"
                enqueue_event(
                    tx, self.topics, account, "alarm", now, alarm=alarm, detail=account.config.meter
                )

    async def _state_flush(self) -> None:
        """Publishes the balances that moved but were not yet due when they were billed."""
        period = max(min(self.site.config.state_publish_interval_s / 2, 5.0), 0.2)
        while True:
            await asyncio.sleep(period)
            async with self.state_lock:
                sent = await asyncio.to_thread(self.pipeline.publish_dirty_states)
            if sent:
                self.wake.set()

    async def _journal_retention(self) -> None:
        """Prunes billed readings older than ``journal_retention_days``, at start and then every
        few hours, so the journal stays bounded on a small box's SD card."""
        while True:
            days = self.site.config.journal_retention_days
            if days is not None:
                cutoff = self.clock() - timedelta(days=days)
                pruned = await asyncio.to_thread(self._prune_journal, cutoff)
                if pruned:
                    logger.info(
                        "journal: pruned %d billed readings received before %s", pruned, cutoff
                    )
            await asyncio.sleep(_RETENTION_PERIOD_S)

    def _prune_journal(self, cutoff: datetime) -> int:
        pruned = self.store.prune_journal(cutoff)
        if pruned:
            with self.store.transaction() as tx:
                tx.record_event(
                    None,
                    "journal_pruned",
                    {"readings": pruned, "received_before": cutoff.isoformat()},
                    self.clock(),
                )
        return pruned

    async def _stale_watch(self) -> None:
        """Raises ``meter_stale`` once when a meter stops reporting, ``meter_reporting`` back."""
        while True:
            limits = [m.stale_after_s for m in self.site.config.meters if m.stale_after_s]
            period = min(max(min(limits) / 4, 1.0), 60.0) if limits else 60.0
            await asyncio.sleep(period)
            if not limits:
                continue
            now = self.clock()
            async with self.state_lock:
                changes = self.pipeline.stale_check(now)
                if changes:
                    await asyncio.to_thread(self._journal_stale, changes, now)
            if changes:
                self.wake.set()

    async def _policy_clock(self) -> None:
        """Runs `on_tick` when an account's grace, window, dwell or override time comes."""
        while True:
            now = self.clock()
            wakeups = [
                w
                for a in self.book.by_id.values()
                if (w := next_wakeup(a.policy, a.policy_state, now)) is not None
            ]
            if wakeups and min(wakeups) <= now:
                async with self.state_lock:
                    try:
                        await asyncio.to_thread(self._tick_due, now)
                    except BaseException:
                        self.effects.discard()
                        await asyncio.to_thread(self._rebuild)
                        raise
                self.effects.flush()
                continue
            wait_s = _MAX_TICK_S
            if wakeups:
                wait_s = min(wait_s, max((min(wakeups) - now).total_seconds(), 0.0))
            self._tick.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s + 0.01):
                    await self._tick.wait()

    def _driver(self, source: ReadingSource) -> Callable[[], Awaitable[None]]:
        return lambda: source.run(self.pipeline)

    async def run(self, shutdown_trigger: Callable[[], Awaitable[object]]) -> None:
        """Run until ``shutdown_trigger`` returns, then shut down in order."""
        sup = self.supervisor.supervise
        self._loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as group:
                core = [
                    group.create_task(sup("pipeline", self.pipeline.run), name="pipeline"),
                    group.create_task(sup("actuation", self.actuation.run), name="actuation"),
                    group.create_task(sup("policy-clock", self._policy_clock), name="policy-clock"),
                    group.create_task(sup("spool", self.spool.run), name="spool"),
                    group.create_task(sup("stale-watch", self._stale_watch), name="stale-watch"),
                    group.create_task(sup("state-flush", self._state_flush), name="state-flush"),
                    group.create_task(
                        sup("journal-retention", self._journal_retention), name="journal-retention"
                    ),
                ]
                link_task = None
                if self.link is not None:
                    link = self.link
                    link_task = group.create_task(
                        sup("mqtt", lambda: link.run(self.store, self.wake, self.commands.handle)),
                        name="mqtt",
                    )
                drivers = [
                    group.create_task(sup(src.name, self._driver(src)), name=src.name)
                    for src in self.sources
                ]
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
                async with self.state_lock:
                    await asyncio.to_thread(
                        functools.partial(self.pipeline.publish_dirty_states, force=True)
                    )
                self.wake.set()
                if self.link is not None and link_task is not None:
                    self.link.request_stop()
                    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                        async with asyncio.timeout(max(deadline - loop.time(), 0.1)):
                            await asyncio.shield(link_task)
                for task in [*core, *([link_task] if link_task else [])]:
                    task.cancel()
        finally:
            self.store.close()
            logger.info("stopped")


async def serve(path: Path) -> int:
    """``prepay run``: load, run until SIGTERM/SIGINT, reload on SIGHUP."""
    site = load_site(path)
    gateway = Gateway(site)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.request_reload)
    logger.info(
        "site %s: %d accounts, %d sources, %d actuators; state in %s",
        site.config.site,
        len(gateway.book.by_id),
        len(gateway.sources),
        len(gateway.actuators),
        site.state_dir,
    )
    await gateway.run(stop.wait)
    return 0
