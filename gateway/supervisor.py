"""`Supervisor`: every long-running task of the daemon runs under it.

A task that fails is logged, counted, reported (the daemon journals a ``task_failed`` event)
and restarted with exponential backoff, 0.5 s doubling to 30 s, reset after a minute of good
running: never silently lost, never restarted in a tight loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

_FIRST_DELAY_S = 0.5
_MAX_DELAY_S = 30.0
_HEALTHY_AFTER_S = 60.0


@dataclass
class Supervisor:
    """Restarts failed tasks with backoff and reports each failure."""

    on_failure: Callable[[str, BaseException], Awaitable[None]]
    failures: dict[str, int] = field(default_factory=dict)
    stopping: bool = False

    async def supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run ``factory()`` until the daemon stops, restarting it after a failure."""
        delay = _FIRST_DELAY_S
        while True:
            started = asyncio.get_running_loop().time()
            try:
                await factory()
                if self.stopping:
                    return
                logger.error("task %s returned; restarting it", name)
            except Exception as exc:  # the one supervised boundary: log, count, restart
                self.failures[name] = self.failures.get(name, 0) + 1
                logger.exception(
                    "task %s failed (%d times); restarting in %.1f s",
                    name,
                    self.failures[name],
                    delay,
                )
                with contextlib.suppress(Exception):
                    await self.on_failure(name, exc)
            if asyncio.get_running_loop().time() - started > _HEALTHY_AFTER_S:
                delay = _FIRST_DELAY_S
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY_S)
