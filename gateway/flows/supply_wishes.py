"""`SupplyWishes`: the supply changes decisions ask for, held until their transaction commits.

A decision made inside a transaction may want a relay opened or a valve closed. The wish must
not reach the device before the decision is on disk (a crash would leave a cut nobody can
explain), and must be dropped if the transaction rolls back. So the flows collect wishes here
while the transaction runs, `flush` them to actuation once it has committed, and `discard` them
when it failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

SupplyRequest = Callable[[str, bool, str], None]


@dataclass(frozen=True, slots=True)
class SupplyWish:
    """A supply change a committed decision asks of a device."""

    device_id: str
    on: bool
    reason: str


class SupplyWishes:
    """Collects supply wishes during a transaction; `flush` hands them over after commit."""

    def __init__(self, wake: asyncio.Event) -> None:
        self._wake = wake
        self._request: SupplyRequest | None = None
        self._pending: list[SupplyWish] = []

    def deliver_to(self, request: SupplyRequest) -> None:
        """Where wishes go (actuation's ``request``); set once, when the daemon is composed."""
        self._request = request

    def supply(self, device_id: str, on: bool, reason: str) -> None:
        self._pending.append(SupplyWish(device_id, on, reason))

    def discard(self) -> None:
        """Drop the wishes of a transaction that rolled back."""
        self._pending.clear()

    def flush(self) -> None:
        """Run in the event loop after the transaction committed."""
        pending, self._pending = self._pending, []
        if self._request is not None:
            for wish in pending:
                self._request(wish.device_id, wish.on, wish.reason)
        elif pending:
            logger.error("%d supply wishes and no actuation to deliver them to", len(pending))
        self._wake.set()
