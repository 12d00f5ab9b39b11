"""`FlowContext`: what every flow shares, and the one way to reload the accounts.

The pipeline, the command handler, the device journal and the daemon's timers all work on the
same collaborators: the store, the site's topics, the clock, the state lock, the supply wishes
and the account book. They hold this one object instead of each a copy (or a getter) of each,
so a reload is seen by all of them at once.

**The state lock.** Everything that reads or changes the accounts in memory and writes them to
the store runs under ``lock``, in a worker thread, one transaction at a time: a billing batch, a
command, a policy tick, a stale-meter check. The lock is held for one transaction, never across
I/O to a device or the broker.

**Reload** (`FlowContext.reload`) rebuilds the account book from the store: after SIGHUP (with a
new site file), after a backend command changed the overlay, and after a failed transaction
left the accounts in memory ahead of the store. It runs under the lock, in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from billing_engine.kernels import Kernel
from drivers.ports import Clock
from gateway.config import Site
from gateway.flows.accounts import AccountBook, credit_opening_balances, load_book
from gateway.flows.overlay import Overlay
from gateway.flows.supply_wishes import SupplyWishes
from gateway.northbound.topics import SiteTopics
from gateway.store import Store


class FlowContext:
    """The shared collaborators of the flows (see the module docstring).

    Attributes:
        site: the operator's site file as loaded (the backend's overlay is not merged in).
        store: the state file.
        topics: topic names and message builders of the site.
        clock: the gateway's clock (aware UTC datetimes).
        lock: the state lock.
        wake: set when the outbox has something new (the MQTT link waits on it).
        wishes: supply wishes collected during a transaction, handed to actuation after it.
        book: the accounts as the gateway runs them (the overlay merged in).
        overlay: what backend commands changed on top of the site file.
    """

    def __init__(
        self,
        site: Site,
        store: Store,
        clock: Clock,
        *,
        kernel: Kernel | None = None,
    ) -> None:
        self.site = site
        self.store = store
        self.topics = SiteTopics(site.config.site)
        self.clock = clock
        self.kernel = kernel
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.wishes = SupplyWishes(self.wake)
        self.book: AccountBook
        self.overlay: Overlay
        credit_opening_balances(site, store, clock())
        self.book, self.overlay = load_book(site, store, kernel)
        self._on_reload: list[Callable[[], None]] = []

    def on_reload(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in the reloading thread) after every reload."""
        self._on_reload.append(callback)

    def reload(self, site: Site | None = None) -> None:
        """Rebuild the account book from the store, with ``site`` if given (SIGHUP).

        Call it under the state lock, in a worker thread. A caller reloading after a failed
        transaction discards that transaction's supply wishes first (`SupplyWishes.discard`).
        """
        if site is not None:
            self.site = site
            credit_opening_balances(site, self.store, self.clock())
        self.book, self.overlay = load_book(self.site, self.store, self.kernel)
        for callback in self._on_reload:
            callback()
