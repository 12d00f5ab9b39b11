"""The site's water tickets as the console sees them: one ticket store of the console's own, and
a redemption at the counter.

The console opens its own `TicketStore` on the store file, once, in a worker thread (opening
checks the schema in a short write transaction): its connection and lock are its own, so the
console never waits for the daemon's ticket store or the state lock (WAL: readers never block
the writer; a redemption's ``BEGIN IMMEDIATE`` takes its turn with the daemon's writes). The
daemon's ticket feed publishes the console's redemptions like the CLI's, from the store.

`CounterTickets.redeem` is the path of ``prepay ticket redeem``
(`gateway.flows.ticket_redemption`, which `gateway.ops.tickets.redeem` takes too): the same
reading of what was presented (a code, or an electronic ticket verified against the plant keys),
the same judge over the same facts, the same one-transaction, exactly-once `TicketStore.redeem`,
idempotent by the redemption id.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.flows.ticket_redemption import present, redeem_presented
from gateway.store.tickets import Redemption, TicketStore
from gateway.tickets.decisions import code_of
from gateway.tickets.reasons import Refusal
from gateway.tickets.settings import TicketSettings


@dataclass(frozen=True, slots=True)
class CounterRedemption:
    """What a redemption at the counter came to: exactly one of the three is set."""

    code: str | None  # None: not a ticket at all
    redeemed: Redemption | None = None
    replayed: Redemption | None = None  # this request was answered before (nothing changed)
    refusal: Refusal | None = None

    @property
    def status(self) -> str:
        """``redeemed``, ``duplicate`` (answered before) or ``refused``."""
        if self.redeemed is not None:
            return "redeemed"
        return "duplicate" if self.replayed is not None else "refused"


class CounterTickets:
    """The console's ticket store of one site (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        site_id: str,
        settings: TicketSettings,
        plant_keys: Mapping[str, Ed25519PublicKey],
        clock: Callable[[], datetime],
    ) -> None:
        self.settings = settings
        self._path = path
        self._site_id = site_id
        self._keys = dict(plant_keys)
        self._clock = clock
        self._store: TicketStore | None = None
        self._lock = threading.Lock()

    def store(self) -> TicketStore:
        """The console's ticket store, opened on first use (call in a worker thread)."""
        with self._lock:
            if self._store is None:
                self._store = TicketStore(self._path, box_id=self._site_id, clock=self._clock)
            return self._store

    def close(self) -> None:
        """Close the store if it was opened (when the console stops). Idempotent."""
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def redeem(self, text: str, *, where: str, redemption_id: str) -> CounterRedemption:
        """Redeem what was presented, once (call in a worker thread).

        Raises:
            IdempotencyConflictError: ``redemption_id`` was used for another ticket.
            StoreError: the database failed (nothing was recorded).
        """
        presented = present(text.strip(), self._keys)
        if isinstance(presented, Refusal):
            return CounterRedemption(None, refusal=presented)
        result = redeem_presented(
            self.store(),
            self.settings,
            presented,
            redemption_id=redemption_id,
            where=where,
            now=self._clock(),
        )
        return CounterRedemption(
            code_of(presented).text,
            redeemed=result.redeemed,
            replayed=result.replayed,
            refusal=result.refused,
        )
