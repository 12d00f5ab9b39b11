"""The outbox's own connection to the broker: QoS 1 PUBLISHes out, PUBACKs in, nothing else.

The MQTT link (`gateway.northbound.mqtt`) keeps its main connection (aiomqtt over paho) for
what needs a full client: the persistent session, the Last Will, the command subscriptions, the
status messages. The outbox's drain, which is every message the gateway sends, goes out on this
second connection, whose per-message path is a few byte strings (`mqtt_wire`) instead of paho's
objects: about an eighth of paho's CPU a message (``docs/architecture.md``, eighth round).

Protocol facts it relies on:

- Clean start, no session, no will: what was not PUBACKed when the connection drops is sent
  again from the outbox after the reconnect, as with the main connection's session.
- One TCP connection carries every message in the order the drain handed them over, so
  per-topic order and "a resend is a suffix" hold as before (docs/mqtt-api.md).
- The broker's limits from its MQTT 5 CONNACK are kept: Receive Maximum bounds the messages in
  flight (`receive_maximum`), Maximum Packet Size refuses a larger message before it is sent
  (it is answered as refused, 0x95, instead of the broker dropping the connection on it, which
  would have stopped every message behind it), Server Keep Alive replaces ours. A broker that
  takes no QoS 1 or no retained messages cannot carry the gateway's API: refused at connect.
- PUBLISHes handed over in one turn of the event loop leave in one write (one system call for a
  commit's messages, not one each).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import NoReturn, cast

from gateway.northbound import mqtt_wire as wire

logger = logging.getLogger(__name__)

PACKET_TOO_LARGE = 0x95  # the reason a message above the broker's Maximum Packet Size gets


class PublishConnectionError(ConnectionError):
    """The publishing connection could not be made or was lost. A `ConnectionError` (an
    `OSError`), so the link's reconnect with backoff handles it like any broken connection."""


class PublishConnectRefusedError(PublishConnectionError):
    """The broker answered the publishing connection's CONNECT with a refusal."""

    def __init__(self, client_id: str, code: int, reason: str | None) -> None:
        said = wire.CONNECT_REFUSALS.get(code, "refused")
        extra = f": {reason}" if reason else ""
        super().__init__(f"broker refused connection {client_id!r}: {said} (0x{code:02x}){extra}")
        self.code = code


@dataclass(frozen=True)
class PublishEndpoint:
    """Where and as whom the publishing connection connects."""

    host: str
    port: int
    client_id: str
    version: wire.Version
    keepalive_s: int
    connect_timeout_s: float
    username: str | None = None
    password: str | None = None
    tls_context: ssl.SSLContext | None = None


class PublishConnection(asyncio.Protocol):
    """One publishing connection. Made by `open_publish_connection`; use `publish`."""

    def __init__(self, endpoint: PublishEndpoint) -> None:
        self._endpoint = endpoint
        self._version: wire.Version = endpoint.version
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._incoming = bytearray()
        self._connack: asyncio.Future[wire.Connack] = self._loop.create_future()
        self._lost = asyncio.Event()
        self.error: PublishConnectionError | None = None
        self._waiting: dict[int, Callable[[int], None]] = {}  # packet id -> its PUBACK's callback
        self._last_mid = 0
        self._out: list[bytes] = []  # PUBLISHes of this turn of the loop, written together
        self._flush_handle: asyncio.Handle | None = None
        self._last_write = self._loop.time()
        self._ping_sent_at: float | None = None
        self._ping_handle: asyncio.TimerHandle | None = None
        self._keepalive_s: float = float(endpoint.keepalive_s)
        self.receive_maximum: int | None = None
        self.maximum_packet_size: int | None = None
        self.unknown_pubacks = 0

    # --- what the drain uses ------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """PUBLISHes at QoS 1 still waiting for their PUBACK."""
        return len(self._waiting)

    def publish(
        self, topic: str, payload: bytes, *, qos: int, retain: bool, on_done: Callable[[int], None]
    ) -> None:
        """Hand one message to the connection. ``on_done(reason)`` is called once: at its
        PUBACK (QoS 1; 0 is success, 0x80 and above a refusal), at once at QoS 0, or at once
        with 0x95 for a message above the broker's Maximum Packet Size.

        Raises:
            PublishConnectionError: the connection is gone (and `wait_lost` has said so).
        """
        if self.error is not None:
            raise self.error
        # The gateway's messages are QoS 1 (`topics.QOS`); one the outbox holds at 2 goes at 1:
        # the outbox's resend and each message's id give a consumer what QoS 2 would, and this
        # connection speaks no PUBREC/PUBREL/PUBCOMP.
        qos = min(qos, 1)
        mid = 0
        if qos:
            mid = self._last_mid
            while True:  # the drain's window keeps this short: at most ~1,000 in flight
                mid = mid % 0xFFFF + 1
                if mid not in self._waiting:
                    break
        packet = wire.publish_packet(
            self._version, topic.encode(), payload, qos=qos, retain=retain, mid=mid
        )
        if self.maximum_packet_size is not None and len(packet) > self.maximum_packet_size:
            on_done(PACKET_TOO_LARGE)  # never sent: its packet id stays free
            return
        if qos:
            self._last_mid = mid
        self._out.append(packet)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)
        if qos:
            self._waiting[mid] = on_done
        else:
            on_done(0)

    def abandon(self, why: str) -> None:
        """End the connection now, as lost (`wait_lost` raises with ``why``); the messages in
        flight get no answer."""
        self._fail(why)

    async def wait_lost(self) -> NoReturn:
        """Return only by raising: the `PublishConnectionError` that ended the connection."""
        await self._lost.wait()
        raise self.error or PublishConnectionError("publishing connection: lost")

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a stream connection's

    def data_received(self, data: bytes) -> None:
        self._incoming += data
        try:
            packets = wire.split_packets(self._incoming)
            for first, body in packets:
                if self.error is not None:  # ended by one of them (or its callback): no more
                    return
                self._handle(first >> 4, body)
        except wire.MalformedPacketError as exc:
            self._fail(f"broker sent a malformed packet: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(f"connection lost: {exc}" if exc else "connection closed by the broker")

    # --- inside -------------------------------------------------------------------------------

    def _handle(self, kind: int, body: bytes) -> None:
        if kind == wire.PUBACK:
            mid, reason = wire.parse_puback(self._version, body)
            callback = self._waiting.pop(mid, None)
            if callback is None:
                # A PUBACK for nothing in flight (a broker's slip): counted, and the connection
                # goes on; ending it would resend everything in flight for one stray packet.
                self.unknown_pubacks += 1
                return
            callback(reason)
        elif kind == wire.PINGRESP:
            self._ping_sent_at = None
        elif kind == wire.CONNACK and not self._connack.done():
            self._connack.set_result(wire.parse_connack(self._version, body))
        elif kind == wire.DISCONNECT:
            code, said = wire.parse_disconnect(body)
            self._fail(f"broker disconnected (0x{code:02x}{': ' + said if said else ''})")
        else:
            self._fail(f"unexpected packet type {kind} from the broker")

    def _flush(self) -> None:
        self._flush_handle = None
        if self._out and self._transport is not None:
            data = b"".join(self._out)
            self._out.clear()
            self._transport.write(data)
            self._last_write = self._loop.time()

    def _send(self, packet: bytes) -> None:
        self._out.append(packet)
        self._flush()

    def _fail(self, why: str) -> None:
        if self.error is None:
            self.error = PublishConnectionError(f"publishing connection: {why}")
            self._lost.set()
            if not self._connack.done():
                self._connack.set_exception(self.error)
        if self._transport is not None:
            self._transport.abort()
        self._stop_timers()

    def _stop_timers(self) -> None:
        if self._ping_handle is not None:
            self._ping_handle.cancel()
            self._ping_handle = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    def _start_keepalive(self, keepalive_s: float) -> None:
        self._keepalive_s = keepalive_s
        if keepalive_s > 0:
            self._ping_handle = self._loop.call_later(keepalive_s / 2, self._tick)

    def _tick(self) -> None:
        """Every half keep-alive: a PINGREQ when nothing was written for that long (the broker
        drops a client silent for 1.5 keep-alives), and the connection ended when a PINGREQ
        went unanswered for a whole keep-alive (a broker or a path that vanished)."""
        now = self._loop.time()
        half = self._keepalive_s / 2
        if self._ping_sent_at is not None and now - self._ping_sent_at >= self._keepalive_s:
            self._fail(f"no PINGRESP within the {self._keepalive_s:g} s keep-alive")
            return
        if self._ping_sent_at is None and now - self._last_write >= half:
            self._ping_sent_at = now
            self._send(wire.PINGREQ_PACKET)
        self._ping_handle = self._loop.call_later(half, self._tick)

    async def handshake(self) -> None:
        """CONNECT, and wait for the CONNACK (`open_publish_connection`)."""
        e = self._endpoint
        self._send(
            wire.connect_packet(
                e.version,
                e.client_id,
                keepalive_s=e.keepalive_s,
                username=e.username,
                password=e.password,
            )
        )
        try:
            async with asyncio.timeout(e.connect_timeout_s):
                connack = await self._connack  # `_fail` ends it with the connection's error
        except TimeoutError:
            raise PublishConnectionError(
                f"publishing connection: no CONNACK within {e.connect_timeout_s:g} s"
            ) from None
        if connack.code != 0:
            raise PublishConnectRefusedError(e.client_id, connack.code, connack.reason)
        if connack.maximum_qos == 0:
            raise PublishConnectionError(
                "publishing connection: the broker takes QoS 0 only; the gateway's messages are"
                " QoS 1"
            )
        if not connack.retain_available:
            raise PublishConnectionError(
                "publishing connection: the broker keeps no retained messages; the gateway's"
                " state topics are retained"
            )
        self.receive_maximum = connack.receive_maximum
        self.maximum_packet_size = connack.maximum_packet_size
        self._start_keepalive(
            float(connack.server_keepalive_s)
            if connack.server_keepalive_s is not None
            else float(e.keepalive_s)
        )

    def close(self) -> None:
        """Say DISCONNECT (normal) after what is still to be written, and close."""
        if self._transport is not None and self.error is None:
            self._out.append(wire.DISCONNECT_PACKET)
            self._flush()
            self._transport.close()
        elif self._transport is not None:
            self._transport.abort()
        self._stop_timers()
        if self.error is None:
            self.error = PublishConnectionError("publishing connection: closed")


@contextlib.asynccontextmanager
async def open_publish_connection(endpoint: PublishEndpoint) -> AsyncIterator[PublishConnection]:
    """Connect, CONNECT and wait for the CONNACK; close with a DISCONNECT on the way out.

    Raises:
        PublishConnectRefusedError: the broker refused the CONNECT.
        PublishConnectionError: no CONNACK in time, the connection dropped, or the broker
            cannot carry QoS 1 retained messages.
        OSError: the TCP or TLS connection could not be made.
    """
    loop = asyncio.get_running_loop()
    connection = PublishConnection(endpoint)
    async with asyncio.timeout(endpoint.connect_timeout_s):
        await loop.create_connection(
            lambda: connection,
            endpoint.host,
            endpoint.port,
            ssl=endpoint.tls_context,
            server_hostname=endpoint.host if endpoint.tls_context is not None else None,
        )
    try:
        await connection.handshake()
        yield connection
    finally:
        connection.close()
