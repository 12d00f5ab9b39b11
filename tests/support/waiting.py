"""The one way tests wait for something that has no event of its own to await.

Most things a test waits for do have an event (a broker message, ``gateway.ready``): await that.
What is left (a row in the store, a simulated device's register, a counter of a running
gateway) is polled by `eventually`, with a deadline generous enough for a loaded 2-core machine:
a test on a busy CI box must get slower, not fail. A negative ("nothing happened") is never
shown by waiting: assert on a counter that would have moved.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

# A loaded 2-core machine (CI may still be busy with other work) runs a step several times
# slower than an idle one; the deadline only bounds a test that is already failing.
DEFAULT_TIMEOUT_S = 30.0
_POLL_S = 0.02


async def eventually(
    predicate: Callable[[], object], timeout_s: float = DEFAULT_TIMEOUT_S, *, what: str = ""
) -> None:
    """Return once ``predicate()`` is truthy; poll it every 20 ms.

    Raises:
        TimeoutError: still false after ``timeout_s``; the message says what was awaited.
    """
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"not true after {timeout_s} s: {what or predicate!r}")
        await asyncio.sleep(_POLL_S)


def eventually_sync(
    predicate: Callable[[], object], timeout_s: float = DEFAULT_TIMEOUT_S, *, what: str = ""
) -> None:
    """`eventually` for a test that is not a coroutine (a subprocess, a thread)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true after {timeout_s} s: {what or predicate!r}")
        time.sleep(_POLL_S)
