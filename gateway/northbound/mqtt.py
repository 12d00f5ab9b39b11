"""The MQTT link: outbox -> broker, broker commands -> gateway. The only module importing aiomqtt.

Protocol facts this adapter relies on:

- Everything is QoS 1. A message is "done" only when its PUBACK arrives; only then is it
  acknowledged to the outbox. What was not acknowledged when a connection drops is sent again
  from the outbox after the reconnect, so the broker may see a message twice; consumers dedupe
  on the message's identity (``reading_id``, ``event_id``, command ``id``, receipt
  ``receipt_seq``) and take retained state with the newest ``ts``.
- In-flight publishes form a bounded window (``max_inflight``). Messages are handed to the
  socket in outbox order, and acknowledged strictly as a prefix of that order, so after a
  reconnect the resent messages are a suffix: per topic, the last message sent is always the
  newest, and retained state never goes back in time.
- MQTT 5 is tried first; a broker that refuses it (CONNACK "unsupported protocol version", or
  closing the connection) gets MQTT 3.1.1 on the next attempt. ``protocol`` can force either.
- The session is persistent (clean start off, ``session_expiry_s``) so commands published while
  the gateway is offline wait at the broker. paho acknowledges an incoming command when it
  reads it, before ``on_command`` runs: a command lost in a crash is recovered by the backend
  resending it with the same ``id`` when no result arrives (a duplicate answers ``duplicate``).
- A backlog of readings of one meter is sent as one ``meter/{meter}/readings`` batch when
  ``batch_telemetry`` is on; one PUBLISH with its PUBACK costs far more than its bytes (about
  0.07 ms of CPU through paho, 0.01 ms on the publishing connection; ``prepay bench publish``).
- The outbox's messages go out on a second connection of their own (``{client_id}-out``,
  `gateway.northbound.publish_connection`: PUBLISH and PUBACK as a few byte strings, an eighth of
  paho's CPU a message); aiomqtt's main connection keeps the session, the will, the commands and
  the status. ``publish_connection: shared`` (or a broker refusing the second connection under
  ``auto``) sends them on the main connection: the drain then hands PUBLISHes to paho's client
  directly and takes the PUBACKs from its ``on_publish`` (`MqttLink._publisher`).
- A PUBACK refusing a message (MQTT 5 reason 0x80 and above: not authorized, quota exceeded,
  packet too large) is the broker's answer to that message, and sending it again gets the same
  one: it leaves the outbox like a delivered message, logged and counted (``refused``), so that
  it does not hold back every message behind it. One exception, under ``auto``: "not
  authorized" on the second connection moves the outbox to the main one (an ACL keyed on
  client ids), the message unacknowledged (`MqttLink._own_publisher`).
- The outbox is read when a connection starts (and while a read fills its chunk); after that,
  the store tells the drain what each transaction committed (`OutboxReader.follow`), in seq
  order, and the drain takes it from memory. A tail longer than a chunk (a stalled broker) is
  dropped and the outbox read again. Acknowledgements commit beside the drain, one at a time
  and at most one per commit window, in PUBACK order: the drain does not wait for the store's
  lock on the way of a message to the broker.

Why one module of this size: it is the one adapter over aiomqtt (connect, fall back, drain,
batch, receive), and the protocol facts above hold for all of it; settings, payloads and
topics live apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.client import MQTT_ERR_SUCCESS
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.messages import OutboxMessage, OutboxReader
from gateway.northbound.payloads import StatusPayload, encode_payload
from gateway.northbound.publish_connection import (
    PublishConnection,
    PublishConnectRefusedError,
    PublishEndpoint,
    open_publish_connection,
)
from gateway.northbound.send_queue import SendQueue, Unit
from gateway.northbound.settings import CommandLimits, MqttSettings, TlsSettings
from gateway.northbound.topics import QOS, SiteTopics

logger = logging.getLogger(__name__)


class CommandHandler(Protocol):
    """What the link calls for each ``cmd/{kind}`` message."""

    def __call__(self, kind: str, raw: bytes, *, retained: bool) -> Awaitable[None]: ...


class FeedHandler(Protocol):
    """What the link calls for each message under a feed's subscription (other boxes'
    ticket redemptions): the topic, the payload, and whether the broker retained it."""

    def __call__(self, topic: str, raw: bytes, *, retained: bool) -> Awaitable[None]: ...


# CONNACK codes meaning "I do not speak this protocol version" (3.1.1: 1; MQTT 5: 0x84).
_UNSUPPORTED_PROTOCOL: Final = frozenset({1, 0x84})
_DEFAULT_LIMITS: Final = CommandLimits()
_LINK_ERRORS: Final = (aiomqtt.MqttError, OSError)  # TimeoutError and ssl.SSLError are OSErrors
_NOT_AUTHORIZED: Final = 0x87  # an MQTT 5 PUBACK's reason code


@dataclass
class LinkCounters:
    """What the link has done since it was made. Read them; do not write them."""

    published: int = 0  # outbox messages acknowledged after their PUBACK
    refused: int = 0  # of which the broker's PUBACK refused (MQTT 5 reason >= 0x80)
    publishes: int = 0  # PUBLISH packets completed (a batch counts once)
    batches: int = 0  # of which batches of readings
    connects: int = 0
    reconnects: int = 0  # connections lost after being up
    commands: int = 0  # commands handed to on_command
    command_errors: int = 0  # on_command raised
    last_error: str | None = None


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


class MqttLink:
    """The gateway's connection to the utility broker.

    Args:
        settings: broker address, credentials and tuning.
        site_id: this site; topics live under ``prepay/{site_id}/``.
        version: the gateway version, published in ``status``.
        clock: aware UTC now, injectable for tests.

    Raises:
        OSError: the TLS files or the password file cannot be read.
        ssl.SSLError: the TLS files are not valid.
    """

    def __init__(
        self,
        settings: MqttSettings,
        site_id: str,
        version: str,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        command_limits: CommandLimits = _DEFAULT_LIMITS,
        ack_window_s: float = 0.0,
    ) -> None:
        self._settings = settings
        self._command_limits = command_limits
        self._ack_window_s = ack_window_s
        self._topics = SiteTopics(site_id)
        self._version = version
        self._clock = clock
        self._client_id = settings.client_id or f"prepay-gw-{site_id}"
        # Files are read here, once, at composition time, not inside the event loop.
        self._password = (
            settings.password_file.read_text().strip() if settings.password_file else None
        )
        self._tls_context = _tls_context(settings.tls) if settings.tls else None
        self.counters = LinkCounters()
        self.connected = asyncio.Event()
        self.protocol_in_use: Literal["5", "3.1.1"] | None = None
        # Where the outbox's messages go out in this (or the last) connection.
        self.publishing_on: Literal["separate", "shared"] | None = None
        self._refused_logged_at = -math.inf
        self._stop = asyncio.Event()
        self._stop_deadline = math.inf
        self._wake: asyncio.Event | None = None
        self._down_logged = False
        self._session_was_up = False
        self._feeds: dict[str, FeedHandler] = {}

    def request_stop(self) -> None:
        """Ask `run` to drain the outbox (at most ``drain_deadline_s``), say offline and return."""
        loop = asyncio.get_running_loop()
        self._stop_deadline = loop.time() + self._settings.drain_deadline_s
        self._stop.set()
        if self._wake is not None:
            self._wake.set()

    async def run(
        self,
        outbox: OutboxReader,
        wake: asyncio.Event,
        on_command: CommandHandler,
        feeds: Mapping[str, FeedHandler] | None = None,
    ) -> None:
        """Keep the link up until `request_stop` (or cancellation).

        Args:
            outbox: where the messages to send come from; acknowledged after each PUBACK.
            wake: set by the producer after it adds to the outbox.
            on_command: called with (kind, raw payload, retained) for each ``cmd/{kind}``
                message, one at a time, in arrival order. It must answer through the outbox and
                bound its own I/O; an exception it raises is logged and counted, and the link
                goes on.
            feeds: more subscriptions (topic filter -> handler), held to the same rules.
        """
        self._wake = wake
        self._feeds = dict(feeds or {})
        failures = 0
        while not self._stop.is_set():
            error: BaseException | None = None
            try:
                await self._session(outbox, wake, on_command)
            except* _LINK_ERRORS as group:
                error = _first_leaf(group)
            if error is None:
                continue  # a clean end: stop was requested
            was_up = self._session_was_up
            failures = 1 if was_up else failures + 1
            if was_up:
                self.counters.reconnects += 1
            self.counters.last_error = f"{type(error).__name__}: {error}"
            delay = self._backoff(failures)
            if not self._down_logged:
                logger.warning(
                    "MQTT link to %s:%d down (%s); retrying with backoff up to %.1f s",
                    self._settings.host,
                    self._settings.port,
                    self.counters.last_error,
                    self._settings.backoff_max_s,
                )
                self._down_logged = True
            else:
                logger.debug("MQTT connect to %s failed again: %s", self._settings.host, error)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()

    def _backoff(self, failures: int) -> float:
        growth: float = 2.0 ** min(failures - 1, 32)
        base = min(self._settings.backoff_max_s, self._settings.backoff_initial_s * growth)
        return base * random.uniform(0.8, 1.0)  # noqa: S311 - jitter spreads reconnects, no secret

    # --- one connection ---------------------------------------------------------------------

    async def _session(
        self, outbox: OutboxReader, wake: asyncio.Event, on_command: CommandHandler
    ) -> None:
        self._session_was_up = False
        async with contextlib.AsyncExitStack() as stack:
            client = await self._connect(stack)
            try:
                timeout_s = self._settings.publish_timeout_s
                async with asyncio.timeout(timeout_s):
                    # Subscribed first: on a session's first connection, a command published
                    # before its SUBSCRIBE has nobody to go to.
                    await client.subscribe(self._topics.command_filter, qos=QOS, timeout=math.inf)
                    for topic_filter in self._feeds:
                        await client.subscribe(topic_filter, qos=QOS, timeout=math.inf)
                # Before `online`: the status says the gateway can send, on both connections.
                out = await self._open_out(stack)
                async with asyncio.timeout(timeout_s):
                    await client.publish(
                        self._topics.status,
                        self._status_payload("online"),
                        qos=QOS,
                        retain=True,
                        timeout=math.inf,
                    )
                self.counters.connects += 1
                self._session_was_up = True
                self.connected.set()
                if self._down_logged or self.counters.connects == 1:
                    logger.info(
                        "MQTT link up: %s:%d as %s (MQTT %s), the outbox on %s",
                        self._settings.host,
                        self._settings.port,
                        self._client_id,
                        self.protocol_in_use,
                        "the main connection" if out is None else f"{self._client_id}-out",
                    )
                self._down_logged = False
                async with asyncio.TaskGroup() as tg:
                    receiver = tg.create_task(
                        self._receive(client, on_command), name="mqtt.receive"
                    )
                    # The publishing connection's loss ends the session like the main one's.
                    watcher = (
                        None if out is None else tg.create_task(out.wait_lost(), name="mqtt.out")
                    )
                    await self._drain(client, out, tg, outbox, wake)
                    receiver.cancel()  # drained after request_stop
                    if watcher is not None:
                        watcher.cancel()
            finally:
                self.connected.clear()
                await self._say_offline(client)

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        """Best effort: the Last Will covers a connection that is already gone."""
        with contextlib.suppress(*_LINK_ERRORS):
            async with asyncio.timeout(min(2.0, self._settings.publish_timeout_s)):
                await client.publish(
                    self._topics.status,
                    self._status_payload("offline"),
                    qos=QOS,
                    retain=True,
                    timeout=math.inf,
                )

    async def _open_out(self, stack: contextlib.AsyncExitStack) -> PublishConnection | None:
        """The outbox's own connection, or None: its messages go out on the main connection
        (``publish_connection: shared``, or a broker that refused the second one under
        ``auto``, for the rest of the process's life)."""
        s = self._settings
        if s.publish_connection == "shared" or self.publishing_on == "shared":
            self.publishing_on = "shared"
            return None
        if self.protocol_in_use is None:  # pragma: no cover - _connect sets it or raises
            raise RuntimeError("the main connection's protocol is not known")
        endpoint = PublishEndpoint(
            host=s.host,
            port=s.port,
            client_id=f"{self._client_id}-out",
            version=self.protocol_in_use,
            keepalive_s=s.keepalive_s,
            connect_timeout_s=s.connect_timeout_s,
            username=s.username,
            password=self._password,
            tls_context=self._tls_context,
        )
        try:
            out = await stack.enter_async_context(open_publish_connection(endpoint))
        except PublishConnectRefusedError as exc:
            if s.publish_connection == "separate":
                raise
            logger.warning(
                "%s; the outbox's messages go out on the main connection from now on"
                " (mqtt.publish_connection: shared says so from the start)",
                exc,
            )
            self.publishing_on = "shared"
            return None
        self.publishing_on = "separate"
        return out

    def _status_payload(self, status: Literal["online", "offline"]) -> bytes:
        return encode_payload(StatusPayload(status=status, version=self._version, ts=self._clock()))

    async def _connect(self, stack: contextlib.AsyncExitStack) -> aiomqtt.Client:
        wanted = self._settings.protocol
        versions: list[Literal["5", "3.1.1"]] = ["5", "3.1.1"] if wanted == "auto" else [wanted]
        for index, version in enumerate(versions):
            client = self._make_client(version)
            try:
                # aiomqtt bounds the handshake with `timeout`; this is the outer guard.
                async with asyncio.timeout(2 * self._settings.connect_timeout_s + 1):
                    await stack.enter_async_context(client)
            except MqttConnectError as exc:
                code = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
                if code in _UNSUPPORTED_PROTOCOL and index + 1 < len(versions):
                    logger.info("broker refused MQTT %s; trying MQTT 3.1.1", version)
                    continue
                raise
            except aiomqtt.MqttError as exc:
                # Old brokers may just drop a CONNECT they cannot parse. A broker that is down
                # fails the 3.1.1 attempt the same way, which costs one extra attempt.
                if index + 1 < len(versions) and "refused" not in str(exc).lower():
                    logger.info("MQTT %s handshake failed (%s); trying MQTT 3.1.1", version, exc)
                    continue
                raise
            self.protocol_in_use = version
            return client
        raise AssertionError("unreachable: the last protocol either connects or raises")

    def _make_client(self, version: Literal["5", "3.1.1"]) -> aiomqtt.Client:
        s = self._settings
        will = aiomqtt.Will(
            self._topics.status, self._status_payload("offline"), qos=QOS, retain=True
        )
        common = {
            "hostname": s.host,
            "port": s.port,
            "username": s.username,
            "password": self._password,
            "identifier": self._client_id,
            "will": will,
            "keepalive": s.keepalive_s,
            "timeout": s.connect_timeout_s,
            "max_inflight_messages": s.max_inflight,
            # Commands waiting for the handler: a flood is dropped here (QoS 1: the backend
            # resends on no result), it does not grow the daemon's memory.
            "max_queued_incoming_messages": self._command_limits.max_queued,
            "tls_context": self._tls_context,
            "logger": logger,
        }
        if version == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = s.session_expiry_s
            # The broker must not send us more than a command may be (plus topic and header);
            # on 3.1.1 the handler refuses an oversized command before parsing it.
            properties.MaximumPacketSize = self._command_limits.max_payload_bytes + 1_024
            client = aiomqtt.Client(
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=False,
                properties=properties,
                **common,  # type: ignore[arg-type]
            )
        else:
            client = aiomqtt.Client(
                protocol=aiomqtt.ProtocolVersion.V311,
                clean_session=False,
                **common,  # type: ignore[arg-type]
            )
        # aiomqtt warns per publish above this many pending calls; our window is the real bound.
        client.pending_calls_threshold = s.max_inflight + 10
        return client

    # --- incoming commands ----------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client, on_command: CommandHandler) -> None:
        async for message in client.messages:
            topic = message.topic.value
            feed = next((h for f, h in self._feeds.items() if message.topic.matches(f)), None)
            if feed is not None:
                await self._to_feed(feed, topic, message)
                continue
            try:
                kind = self._topics.command_kind(topic)
            except ValueError:
                logger.warning("ignoring a message on %s: not a command topic", topic)
                continue
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                payload = b"" if payload is None else str(payload).encode()
            self.counters.commands += 1
            try:
                await on_command(kind.value, bytes(payload), retained=bool(message.retain))
            # The one supervised boundary: a failing handler loses its command (logged and
            # counted; the backend resends on no result) but must not stop money events flowing.
            except Exception:
                self.counters.command_errors += 1
                logger.exception("command handler failed on %s (command dropped)", topic)

    async def _to_feed(self, feed: FeedHandler, topic: str, message: aiomqtt.Message) -> None:
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            payload = b"" if payload is None else str(payload).encode()
        try:
            await feed(topic, bytes(payload), retained=bool(message.retain))
        # The same boundary as for commands: one bad message must not end the link.
        except Exception:
            logger.exception("feed handler failed on %s (message dropped)", topic)

    # --- outgoing: the outbox drain -------------------------------------------------------

    async def _drain(
        self,
        client: aiomqtt.Client,
        out: PublishConnection | None,
        tg: asyncio.TaskGroup,
        outbox: OutboxReader,
        wake: asyncio.Event,
    ) -> None:
        window = self._settings.max_inflight
        if out is not None and out.receive_maximum is not None:
            window = min(window, out.receive_maximum)  # the broker's own bound (MQTT 5)
        per_unit = self._settings.batch_max if self._settings.batch_telemetry else 1
        # Read the outbox in big chunks and keep what was read: re-reading it on every
        # PUBACK would re-read the whole window each time. Slots are refilled one by one, so
        # the link keeps writing; waiting for many free slots stalls on Nagle + delayed ACK
        # (40 ms) and measured 10x slower.
        chunk = 2 * window * per_unit
        inflight: deque[Unit] = deque()  # in send order
        settings = self._settings
        # Read from the outbox, not yet sent; made into units (batches) as slots free up.
        ready = SendQueue(
            self._topics,
            batch=settings.batch_telemetry,
            batch_max=settings.batch_max,
            clock=self._clock,
        )
        unacked = 0  # messages handed to this connection, not yet acknowledged to the outbox
        progress = asyncio.Event()
        loop = asyncio.get_running_loop()
        publish = (
            self._publisher(client, progress) if out is None else self._own_publisher(out, progress)
        )
        timeout_s = self._settings.publish_timeout_s
        finished: list[int] = []  # PUBACKed, in order, not yet acknowledged to the outbox
        last_ack = -math.inf
        acking: asyncio.Task[None] | None = None  # the acknowledgement commit under way
        unread = True  # the outbox may hold messages not read yet
        read_after_stop = False  # the outbox was read once more after `request_stop`
        read_upto = 0  # the highest seq read on this connection: later reads start above it
        # What was committed after the last read, told by the store (`OutboxReader.follow`):
        # taken from memory instead of from the outbox. A read waited for the store's lock
        # behind the billing and journal transactions (p99 40 ms at 1,000 meters), on the way
        # of every reading to the broker. Bounded: a tail that grows past it (a stalled
        # broker) is dropped, and the outbox is read again.
        tail: list[OutboxMessage] = []
        tail_lost = False

        def on_commit(messages: list[OutboxMessage]) -> None:  # on the loop
            nonlocal tail_lost
            if not tail_lost:
                tail.extend(messages)
                if len(tail) > chunk:
                    tail.clear()
                    tail_lost = True
            wake.set()
            # The drain may be waiting for `progress` (a PUBACK, or the acknowledgement commit,
            # which waits for the store's lock behind the next batch's transaction): a commit
            # with a free slot in the window wakes it too. Waiting for the acknowledgement held
            # a batch's messages for the next batch's transaction (told -> PUBLISH p99 55 ms
            # at 1,000 meters).
            if len(inflight) < window:
                progress.set()

        def told(messages: list[OutboxMessage]) -> None:  # in the committing thread
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
                loop.call_soon_threadsafe(on_commit, messages)

        def acked(_: asyncio.Task[None]) -> None:
            progress.set()

        async def acknowledge(seqs: list[int]) -> None:  # a commit, off the event loop
            nonlocal unacked
            await asyncio.to_thread(outbox.acknowledge, seqs)
            unacked -= len(seqs)
            self.counters.published += len(seqs)

        stop_following = outbox.follow(told)
        try:
            while True:
                progress.clear()
                while inflight and inflight[0].done:
                    finished.extend(inflight.popleft().seqs)
                if acking is not None and acking.done():
                    acking.result()  # the store's error ends the session, as it did inline
                    acking = None
                # At most one acknowledgement commit per window (the site's commit_window_ms),
                # and one at a time, in PUBACK order. A message PUBACKed but not yet
                # acknowledged is not sent again on this connection (it is at or below
                # `read_upto`); after a crash it is sent again (consumers dedupe). The commit
                # runs beside the drain, which goes on publishing: awaited here, it held every
                # later message for the store's lock.
                if (
                    finished
                    and acking is None
                    and (self._stop.is_set() or loop.time() >= last_ack + self._ack_window_s)
                ):
                    batch, finished = finished, []
                    last_ack = loop.time()
                    acking = tg.create_task(acknowledge(batch))
                    acking.add_done_callback(acked)
                # The outbox is read when something was added (wake) and no tail is kept (the
                # first read, a read that filled its chunk, a dropped tail); else the tail is
                # what was added. Taken while fewer than a chunk wait: a link that falls behind
                # batches what it holds (`SendQueue`).
                if len(ready) < chunk and (unread or wake.is_set()):
                    wake.clear()  # before reading, so a message added after the read sets it
                    if unread or tail_lost:
                        # Everything committed before the read is in it; everything after it
                        # comes to the tail (with some before it too: dropped below by seq).
                        tail.clear()
                        tail_lost = False
                        pending = await asyncio.to_thread(outbox.pending, chunk, read_upto)
                        unread = len(pending) >= chunk
                    else:
                        pending = tail[:]
                        tail.clear()
                    # Only what this connection has not read yet: every message up to
                    # `read_upto` is ready, in flight or PUBACKed and waiting for its
                    # acknowledgement.
                    fresh = [m for m in pending if m.seq > read_upto]
                    if fresh:
                        read_upto = fresh[-1].seq
                    ready.extend(fresh)
                while len(inflight) < window and (unit := ready.next_unit()) is not None:
                    inflight.append(unit)
                    unacked += len(unit.seqs)
                    unit.sent_at = loop.time()
                    publish(unit)
                if (
                    self._stop.is_set()
                    and not inflight
                    and not ready
                    and not finished
                    and acking is None
                ):
                    if wake.is_set():
                        continue  # added after the last read (e.g. the shutdown's state flush)
                    if not read_after_stop:
                        # What was committed before the stop may not have been told yet: its
                        # `on_commit` can still wait in the loop's queue behind this task
                        # (seen under load: the drain returned with 50 messages unsent). One
                        # read of the outbox after the stop sees all of it.
                        read_after_stop = unread = True
                        continue
                    return
                waiting_for = progress if inflight or acking is not None else wake
                if finished and acking is None and not self._stop.is_set():
                    # Acknowledgements wait for the end of their window, not for more traffic.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(last_ack + self._ack_window_s):
                            await waiting_for.wait()
                    continue
                if self._stop.is_set():
                    try:
                        async with asyncio.timeout_at(self._stop_deadline):
                            await waiting_for.wait()
                    except TimeoutError:
                        logger.warning(
                            "stopping with %d messages not yet acknowledged; they stay in the"
                            " outbox",
                            unacked,
                        )
                        return
                elif inflight:
                    # The oldest PUBLISH without its PUBACK bounds the wait: a broker that stops
                    # answering ends the connection (TimeoutError), and the reconnect sends
                    # again.
                    async with asyncio.timeout_at(inflight[0].sent_at + timeout_s):
                        await waiting_for.wait()
                else:
                    await waiting_for.wait()
        finally:
            stop_following()

    def _publisher(self, client: aiomqtt.Client, progress: asyncio.Event) -> Callable[[Unit], None]:
        """What hands one unit to the connection, and marks it done at its PUBACK.

        paho's own ``publish``, not aiomqtt's: aiomqtt's waits for the PUBACK in a task of its
        own per message (an event, a ``wait_for``, a scan of every pending call), which cost
        about 0.04 ms of CPU per message, a quarter of a message's whole cost, measured against
        mosquitto. The PUBACK comes to paho's ``on_publish``, which runs on the event loop (aiomqtt
        reads the socket there); a message ID that is not ours goes on to aiomqtt's callback
        (the status messages it publishes itself). aiomqtt 2.x keeps paho's client as
        ``_client``; pyproject.toml pins aiomqtt below 3.
        """
        paho = client._client  # see the docstring
        by_mid: dict[int, Unit] = {}
        theirs = paho.on_publish
        if theirs is None:  # aiomqtt sets it when it makes the client
            raise RuntimeError("aiomqtt left paho's on_publish unset")
        done = self._finisher(progress)

        def on_publish(*args: Any) -> None:
            # (client, userdata, mid, reason code, properties): paho's callback API version 2.
            unit = by_mid.pop(args[2], None)
            if unit is None:
                theirs(*args)
            else:
                done(unit, getattr(args[3], "value", 0))

        paho.on_publish = on_publish

        def publish(unit: Unit) -> None:
            info = paho.publish(unit.topic, unit.payload, qos=unit.qos, retain=unit.retain)
            if info.rc != MQTT_ERR_SUCCESS:
                raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
            if info.is_published():  # QoS 0: nothing to wait for
                done(unit, 0)
            else:
                by_mid[info.mid] = unit

        return publish

    def _own_publisher(
        self, out: PublishConnection, progress: asyncio.Event
    ) -> Callable[[Unit], None]:
        """What hands one unit to the outbox's own connection, and marks it done at its PUBACK.

        Under ``publish_connection: auto``, a PUBACK "not authorized" (0x87) on this connection
        is taken as the broker's ACL knowing only the main client id (one keyed on client ids):
        the message is not acknowledged, the session ends, and from the reconnect on the
        outbox goes out on the main connection, where it was allowed before the second
        connection existed. Only a refusal there too is the topic's (counted and dropped).
        """
        done = self._finisher(progress)
        auto = self._settings.publish_connection == "auto"

        def answered(unit: Unit, reason: int) -> None:
            if auto and reason == _NOT_AUTHORIZED and self.publishing_on == "separate":
                logger.warning(
                    "the broker refused a message on %s from %s-out as not authorized (0x87);"
                    " the outbox's messages go out on the main connection from now on"
                    " (mqtt.publish_connection: separate keeps them apart)",
                    unit.topic,
                    self._client_id,
                )
                self.publishing_on = "shared"
                out.abandon("the broker does not authorize this client id to publish")
                return  # not done: sent again after the reconnect, on the main connection
            done(unit, reason)

        def publish(unit: Unit) -> None:
            out.publish(
                unit.topic,
                unit.payload,
                qos=unit.qos,
                retain=unit.retain,
                on_done=functools.partial(answered, unit),
            )

        return publish

    def _finisher(self, progress: asyncio.Event) -> Callable[[Unit, int], None]:
        """What marks a unit done at its PUBACK's reason code (0: taken; 0x80 and above: the
        broker refused it, see the module docstring) and wakes the drain."""
        counters = self.counters
        loop = asyncio.get_running_loop()

        def done(unit: Unit, reason: int) -> None:
            unit.done = True
            counters.publishes += 1
            counters.batches += unit.batched
            if reason >= 0x80:
                counters.refused += len(unit.seqs)
                # Once a minute at most: a broker refusing a whole topic refuses every reading.
                if loop.time() - self._refused_logged_at >= 60.0:
                    self._refused_logged_at = loop.time()
                    logger.error(
                        "the broker refused a message on %s (PUBACK reason 0x%02x); it is not"
                        " sent again (%d refused so far)",
                        unit.topic,
                        reason,
                        counters.refused,
                    )
            progress.set()

        return done


def _tls_context(tls: TlsSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context
