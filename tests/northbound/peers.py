"""Real peers for the MQTT link tests: an in-memory outbox, a TCP proxy that can cut or stall the
link's connection, and a subscriber that records what the broker delivers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from gateway.messages import MessageClass, OutboxListener, OutboxMessage, Outgoing
from tests.support.waiting import DEFAULT_TIMEOUT_S


class MemoryOutbox:
    """An `OutboxReader` in a dict. ``hold`` hides everything from `pending` and from the
    followers (a paused producer) until it is lifted."""

    def __init__(self) -> None:
        self._messages: dict[int, OutboxMessage] = {}
        self._seq = itertools.count(1)
        self.acknowledged: list[int] = []
        self._hold = False
        self.emptied = asyncio.Event()
        self._followers: list[OutboxListener] = []

    @property
    def hold(self) -> bool:
        return self._hold

    @hold.setter
    def hold(self, value: bool) -> None:
        # What the hold hid is "committed" when it is lifted: told to the followers (those
        # they have read already they drop by seq, as they do with the real store's).
        hidden = self._hold and not value
        self._hold = value
        if hidden and self._messages:
            for listener in self._followers:
                listener(list(self._messages.values()))

    def add(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        message_class: MessageClass = MessageClass.LEDGER,
        batch_key: str | None = None,
    ) -> int:
        seq = next(self._seq)
        self._messages[seq] = OutboxMessage(
            topic, payload, 1, retain, message_class, batch_key, seq=seq
        )
        self.emptied.clear()
        if not self._hold:  # else told of when the hold is lifted
            for listener in self._followers:
                listener([self._messages[seq]])
        return seq

    def put(self, message: Outgoing) -> int:
        """Store a message as the real outbox would (`Transaction.enqueue`)."""
        return self.add(
            message.topic,
            message.payload,
            retain=message.retain,
            message_class=message.message_class,
            batch_key=message.batch_key,
        )

    def pending(self, limit: int, after_seq: int = 0) -> list[OutboxMessage]:
        if self.hold:
            return []
        later = (m for seq, m in self._messages.items() if seq > after_seq)
        return list(itertools.islice(later, limit))

    def follow(self, listener: OutboxListener) -> Callable[[], None]:
        self._followers.append(listener)
        return lambda: self._followers.remove(listener)

    def acknowledge(self, seqs: list[int]) -> None:
        for seq in seqs:
            del self._messages[seq]  # KeyError = acknowledged twice or never stored: a bug
        self.acknowledged.extend(seqs)
        if not self._messages:
            self.emptied.set()

    def __len__(self) -> int:
        return len(self._messages)


class TcpProxy:
    """A loopback TCP proxy in front of the broker.

    - `cut` aborts every proxied connection (the broker sees the client vanish: Last Will).
    - `stall` stops broker -> client bytes (PUBACKs withheld) until `resume`.
    - ``refuse`` closes new connections at once; ``v3_only`` answers an MQTT 5 CONNECT the way an
      MQTT 3.1.1-only broker does (CONNACK 0x01, unacceptable protocol version) and closes.
    - ``refuse_client_suffix`` answers a CONNECT whose client id ends so with "not authorized"
      (MQTT 5 0x87, 3.1.1 0x05) and closes; `cut_client` aborts the connections of one client
      id suffix only. `refused` counts the CONNECTs refused.
    - ``deny_publish_suffix`` lets such a client connect, but keeps its QoS 1 PUBLISHes from the
      broker and answers each with an MQTT 5 PUBACK "not authorized" (0x87), as a broker whose
      ACL knows other client ids does; `denied` counts them.
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.refuse = False
        self.v3_only = False
        self.refuse_client_suffix: str | None = None
        self.refused = 0
        self.deny_publish_suffix: str | None = None
        self.denied = 0
        self._clients: dict[asyncio.StreamWriter, str] = {}  # a client's writer -> its client id
        self.connections = 0
        self.port = 0

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        self._clients.clear()

    def cut_client(self, suffix: str) -> None:
        for writer, client_id in list(self._clients.items()):
            if client_id.endswith(suffix):
                writer.transport.abort()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.transport.abort()
            return
        first = b""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            first = await _read_packet(reader)
        # CONNECT: 2-byte length, "MQTT", then the protocol level byte.
        level = first[8] if len(first) >= 9 else 0
        answer = None
        if self.v3_only and level != 4:
            answer = b"\x20\x02\x00\x01"
        elif self.refuse_client_suffix and _client_id(first).endswith(self.refuse_client_suffix):
            self.refused += 1
            answer = b"\x20\x03\x00\x87\x00" if level == 5 else b"\x20\x02\x00\x05"
        if answer is not None:
            writer.write(answer)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()  # broker down: the client sees its connection drop
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        self._clients[writer] = _client_id(first)
        up_writer.write(first)
        client_id = _client_id(first)
        if self.deny_publish_suffix and client_id.endswith(self.deny_publish_suffix):
            self._spawn(self._deny_publishes(reader, up_writer, writer))
        else:
            self._spawn(self._pump(reader, up_writer, stallable=False))
        self._spawn(self._pump(up_reader, writer, stallable=True))

    async def _deny_publishes(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
    ) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, OSError):
            while True:
                packet = await _read_packet(source)
                if packet[0] >> 4 == 3 and (packet[0] >> 1) & 0x03 == 1:  # PUBLISH, QoS 1
                    at = 1
                    while packet[at] & 0x80:  # past the remaining length
                        at += 1
                    at += 1
                    at += 2 + int.from_bytes(packet[at : at + 2], "big")  # past the topic
                    self.denied += 1
                    client.write(b"\x40\x03" + packet[at : at + 2] + b"\x87")
                    continue
                sink.write(packet)
                await sink.drain()
        sink.transport.abort()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, stallable: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                if stallable:
                    await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        sink.transport.abort()


def _client_id(connect: bytes) -> str:
    """The client id of a whole CONNECT packet (fixed header included), "" if it is not one."""
    if len(connect) < 2 or connect[0] >> 4 != 1:
        return ""
    at = 1
    while connect[at] & 0x80:  # the remaining length
        at += 1
    at += 1 + 6 + 1 + 1 + 2  # past it: "MQTT" with its length, level, flags, keep-alive
    if connect[at - 4] == 5:  # MQTT 5: the properties, their length first
        length, shift = 0, 0
        while True:
            byte = connect[at]
            at += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        at += length
    size = int.from_bytes(connect[at : at + 2], "big")
    return connect[at + 2 : at + 2 + size].decode()


async def _read_packet(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(1)
    length, multiplier, raw_length = 0, 1, b""
    while True:
        byte = await reader.readexactly(1)
        raw_length += byte
        length += (byte[0] & 0x7F) * multiplier
        multiplier *= 128
        if not byte[0] & 0x80:
            break
    return header + raw_length + await reader.readexactly(length)


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Recorder:
    """Subscribes to ``topic_filter`` and records every delivery; reconnects if the broker goes.

    ``until`` is checked after each message; `done` is set when it returns True.
    """

    host: str
    port: int
    topic_filter: str
    qos: int = 0
    tls: aiomqtt.TLSParameters | None = None
    until: Callable[[list[Received]], bool] = lambda _: False
    messages: list[Received] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    new_message: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, tls_params=self.tls) as client:
                    await client.subscribe(self.topic_filter, qos=self.qos)
                    self.subscribed.set()
                    async for message in client.messages:
                        payload = message.payload
                        assert isinstance(payload, bytes)
                        self.messages.append(
                            Received(message.topic.value, payload, bool(message.retain))
                        )
                        self.new_message.set()
                        if self.until(self.messages):
                            self.done.set()
            except aiomqtt.MqttError:
                self.subscribed.clear()
                await asyncio.sleep(0.05)  # retry pace while the broker restarts

    async def next_matching(
        self,
        predicate: Callable[[Received], bool],
        start: int = 0,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> int:
        """Index of the first message at or after ``start`` matching ``predicate``."""
        async with asyncio.timeout(timeout_s):
            while True:
                for index in range(start, len(self.messages)):
                    if predicate(self.messages[index]):
                        return index
                start = len(self.messages)
                self.new_message.clear()
                await self.new_message.wait()
