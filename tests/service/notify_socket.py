"""The systemd side of the notify protocol, for tests: a real Unix datagram socket that
collects what the daemon sends (sd_notify(3)), the way systemd's manager socket would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.support.waiting import DEFAULT_TIMEOUT_S

Message = dict[str, str]
_BILLED = re.compile(r"readings billed: ([\d,]+)")


def billed(message: Message) -> int:
    """The number of billed readings a ``STATUS=`` line reports (-1 when none)."""
    found = _BILLED.search(message.get("STATUS", ""))
    return int(found.group(1).replace(",", "")) if found else -1


def stalled(message: Message) -> bool:
    return message.get("STATUS", "").startswith("stalled for ")


def pinged(message: Message) -> bool:
    return message.get("WATCHDOG") == "1"


class NotifySocket:
    """Receives sd_notify datagrams; each one is kept as a dict of its assignments.

    Attributes:
        address: what goes into ``NOTIFY_SOCKET`` (``@name`` for an abstract socket).
        messages: every datagram received so far, in order.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.messages: list[Message] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind("\0" + address[1:] if address.startswith("@") else address)
        self._socket.setblocking(False)

    @classmethod
    @contextlib.contextmanager
    def bound(cls, address: str) -> Iterator[NotifySocket]:
        listener = cls(address)
        try:
            yield listener
        finally:
            listener._socket.close()

    @classmethod
    def abstract_name(cls) -> str:
        """A fresh abstract address (no file to clean up), as systemd itself uses."""
        return f"@prepay-test-notify-{os.getpid()}-{os.urandom(4).hex()}"

    @classmethod
    def path_in(cls, directory: Path) -> str:
        return str(directory / "notify.sock")

    def _take(self, data: bytes) -> Message:
        lines = data.decode().split("\n")
        message = dict(line.split("=", 1) for line in lines if "=" in line)
        self.messages.append(message)
        return message

    def drain(self) -> None:
        """Take what has arrived already, without waiting."""
        while True:
            try:
                self._take(self._socket.recv(4096))
            except BlockingIOError:
                return

    async def wait_for(
        self,
        predicate: Callable[[Message], bool],
        *,
        count: int = 1,
        after: int = 0,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> Message:
        """The ``count``-th message from index ``after`` on that satisfies ``predicate``.

        Raises:
            TimeoutError: not received within ``timeout_s``.
        """
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            while True:
                self.drain()
                matching = [m for m in self.messages[after:] if predicate(m)]
                if len(matching) >= count:
                    return matching[count - 1]
                self._take(await loop.sock_recv(self._socket, 4096))
