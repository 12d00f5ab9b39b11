"""systemd's notify protocol, and the service watch that speaks it for ``prepay run``.

Protocol facts this module relies on (sd_notify(3), systemd.service(5)):

- ``$NOTIFY_SOCKET`` names a Unix datagram socket: a path, or an abstract address written with
  a leading ``@`` that stands for a NUL byte. Unset means "not started by systemd for
  ``Type=notify``": then nothing is sent.
- One datagram carries newline-separated ``KEY=VALUE`` assignments: ``READY=1`` ends the start
  (systemd starts the units ordered after it only then), ``STATUS=`` is the one line ``systemctl
  status`` shows, ``WATCHDOG=1`` feeds the watchdog, ``STOPPING=1`` begins the stop.
- ``$WATCHDOG_USEC`` (with ``WatchdogSec=``) is the watchdog period in microseconds; systemd
  kills and restarts the service when no ``WATCHDOG=1`` arrives within it. ``$WATCHDOG_PID``,
  when set, names the one process it applies to. The documented advice is to ping at half the
  period.

Why no library: this is a dozen lines of stdlib socket code, and ``sdnotify`` on PyPI has not
been released since 2017 (``systemd-python`` needs libsystemd headers to build); vsock
addresses (systemd 253+, for virtual machines) are not supported here.

**What the watchdog means here.** A ping says the pipeline could take a turn, not that readings
arrived: an idle site is healthy. Every ``period`` (half of ``WatchdogSec``) the watch goes
through what every batch goes through: it takes the state lock (billing, commands and timers
hold it) and, in a worker thread, reads through the store, whose own lock every journal and
billing write holds; all within half a period. A batch, command or timer stuck under the state
lock, a store write that does not end (a SQLite call hanging on a dying SD card, or waiting on
another process that holds the database's write lock), a worker pool that no longer answers, or
an event loop that does not turn (then the watch itself does not run) withholds the ping, and
says so in ``STATUS=``; systemd restarts the daemon once a whole ``WatchdogSec`` passed without
one. The worst gap between two good pings is one period plus one check, three quarters of the
watchdog period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Mapping

from gateway.flows.probe import Counters
from gateway.store import Store

logger = logging.getLogger(__name__)

#: How often ``STATUS=`` is refreshed when systemd asked for no watchdog.
STATUS_PERIOD_S = 10.0


class Notifier:
    """Sends sd_notify datagrams to one address; does nothing without one.

    A send that fails (systemd restarting, a full socket buffer) is logged once and dropped: the
    daemon's work must not depend on its supervisor's socket.
    """

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._socket: socket.socket | None = None
        self._failing = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> None:
        """Send ``assignments`` (``"READY=1"``, ``"STATUS=..."``) in one datagram."""
        if self.address is None:
            return
        # An abstract socket's name starts with a NUL byte, written "@" in the variable.
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # not inherited
            self._socket.setblocking(False)  # never wait on systemd in the event loop
        try:
            self._socket.sendto("\n".join(assignments).encode(), target)
        except OSError as exc:
            if not self._failing:
                logger.warning("cannot notify systemd at %s: %s", self.address, exc)
            self._failing = True
        else:
            self._failing = False

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_period_s(environ: Mapping[str, str] = os.environ) -> float | None:
    """Half of systemd's watchdog period for this process, or None when it set none."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", "0"))
        pid = int(environ.get("WATCHDOG_PID", str(os.getpid())))
    except ValueError:
        return None
    if usec <= 0 or pid != os.getpid():
        return None
    return usec / 2 / 1_000_000


def describe(counters: Counters) -> str:
    """The ``STATUS=`` line of a running gateway."""
    return (
        f"running; readings billed: {counters.billed:,}, held: {counters.held:,};"
        f" commands applied: {counters.commands_applied:,};"
        f" supply commands sent: {counters.supply_sent:,}"
    )


class ServiceWatch:
    """``READY=1`` once the gateway is ready, then ``WATCHDOG=1`` and ``STATUS=`` every period
    while the pipeline could take a turn (see the module docstring), ``STOPPING=1`` on stop.

    Args:
        notifier: where the datagrams go.
        lock: the state lock every batch takes.
        store: the store every journal and billing write goes through.
        counters: the running gateway's counters (for ``STATUS=``).
        period_s: how often to check and ping; None: no watchdog, ``STATUS=`` only.
    """

    def __init__(
        self,
        notifier: Notifier,
        lock: asyncio.Lock,
        store: Store,
        counters: Callable[[], Counters],
        period_s: float | None,
    ) -> None:
        self.notifier = notifier
        self._lock = lock
        self._store = store
        self._counters = counters
        self.period_s = period_s
        self._status = ""

    @classmethod
    def from_environment(
        cls,
        lock: asyncio.Lock,
        store: Store,
        counters: Callable[[], Counters],
        environ: Mapping[str, str] = os.environ,
    ) -> ServiceWatch:
        notifier = Notifier.from_environment(environ)
        return cls(notifier, lock, store, counters, watchdog_period_s(environ))

    async def pipeline_turns(self, budget_s: float) -> bool:
        """The state lock is free and a worker thread reads through the store, all within
        ``budget_s``. The read (the ledger head: one row) waits only for a store write in
        progress; in WAL mode no other process's lock holds up a reader."""
        try:
            async with asyncio.timeout(budget_s), self._lock:
                await asyncio.to_thread(self._store.chain_head)
        except TimeoutError:
            return False
        return True

    def _set_status(self, status: str, *more: str) -> None:
        if status != self._status or more:
            self._status = status
            self.notifier.notify(*more, f"STATUS={status}")

    async def run(self, ready: asyncio.Event, stop: asyncio.Event) -> None:
        """Announce readiness once ``ready`` is set, watch until ``stop`` is set."""
        stopping = asyncio.create_task(stop.wait(), name="service-watch.stop")
        try:
            started = asyncio.create_task(ready.wait(), name="service-watch.ready")
            await asyncio.wait({started, stopping}, return_when=asyncio.FIRST_COMPLETED)
            started.cancel()
            if not stopping.done():
                self._set_status(describe(self._counters()), "READY=1")
                await self._watch(stopping)
        finally:
            stopping.cancel()
            if stop.is_set():
                self.notifier.notify("STOPPING=1", "STATUS=stopping: billing what is queued")
            self.notifier.close()

    async def _watch(self, stopping: asyncio.Task[bool]) -> None:
        loop = asyncio.get_running_loop()
        period = self.period_s
        stalled_since: float | None = None
        while True:
            started = loop.time()
            if period is None:
                self._set_status(describe(self._counters()))
            elif await self.pipeline_turns(period / 2):
                if stalled_since is not None:
                    logger.warning(
                        "the pipeline turns again after %.1f s; watchdog pings resumed",
                        loop.time() - stalled_since,
                    )
                stalled_since = None
                self._set_status(describe(self._counters()), "WATCHDOG=1")
            else:
                if stalled_since is None:  # a state change: logged once, until it recovers
                    stalled_since = started
                    logger.error(
                        "the pipeline could not take a turn within %.1f s (the state lock or"
                        " the store is held, or no worker thread answers); watchdog pings"
                        " withheld",
                        period / 2,
                    )
                # A new line every period: `systemctl status` shows how long it has lasted.
                self._set_status(
                    f"stalled for {loop.time() - stalled_since:.1f} s: the pipeline could not take"
                    f" a turn within {period / 2:.1f} s; watchdog ping withheld"
                )
            wait_s = (period or STATUS_PERIOD_S) - (loop.time() - started)
            await asyncio.wait({stopping}, timeout=max(wait_s, 0.0))
            if stopping.done():
                return

    @contextlib.asynccontextmanager
    async def watching(self, ready: asyncio.Event, stop: asyncio.Event) -> AsyncIterator[None]:
        """Run `run` for the block (nothing when systemd did not ask for notifications); it
        ends with the block at the latest."""
        if not self.notifier.enabled:
            yield
            return
        task = asyncio.create_task(self.run(ready, stop), name="service-watch")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.wait({task})  # its end, without re-raising its cancellation
