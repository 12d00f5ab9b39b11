"""The console's listening socket: connections it accepts have Nagle's algorithm off, so a
small answer on a kept-alive connection is not held back for the client's delayed ACK."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from gateway.console.server import _listening_socket


async def test_console_socket_accepts_connections_with_nodelay() -> None:
    nodelay: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted = transport.get_extra_info("socket")
            nodelay.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    listening = _listening_socket("127.0.0.1", 0)
    server = await asyncio.get_running_loop().create_server(Probe, sock=listening)
    async with server:
        port = listening.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(10):
            assert await nodelay != 0
        writer.close()
        await writer.wait_closed()


def test_console_socket_with_the_port_taken_is_an_os_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="in use") as refused:
            _listening_socket("127.0.0.1", port)
        assert refused.value.errno == errno.EADDRINUSE
