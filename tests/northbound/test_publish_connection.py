"""The outbox's own publishing connection: against a real mosquitto, and against a scripted
broker for what mosquitto will not do on demand (refuse, limit, stall, disconnect, garble)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiomqtt
import pytest

from gateway.northbound import mqtt_wire as wire
from gateway.northbound.publish_connection import (
    PACKET_TOO_LARGE,
    PublishConnectionError,
    PublishConnectRefusedError,
    PublishEndpoint,
    open_publish_connection,
)
from tests.fixtures.mosquitto import Broker
from tests.support.mqtt_wire import PUBLISH, Packet, PacketSplitter
from tests.support.waiting import DEFAULT_TIMEOUT_S as WAIT_S

pytestmark = pytest.mark.integration

PINGREQ = 12
DISCONNECT = 14


def _endpoint(port: int, version: wire.Version = "5", **overrides: object) -> PublishEndpoint:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "client_id": "gw-out",
        "version": version,
        "keepalive_s": 30,
        "connect_timeout_s": 5.0,
    }
    values.update(overrides)
    return PublishEndpoint(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("version", ["5", "3.1.1"])
async def test_messages_reach_a_real_broker_in_order_with_retain_kept(
    mosquitto: Broker, version: wire.Version
) -> None:
    got: list[tuple[str, bytes, bool]] = []
    acks: list[int] = []
    all_acked = asyncio.Event()

    def answered(reason: int) -> None:
        acks.append(reason)
        if len(acks) == 300:
            all_acked.set()

    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as subscriber:
        await subscriber.subscribe("t/#", qos=1)
        async with open_publish_connection(_endpoint(mosquitto.port, version)) as out:
            # 300 messages handed over in one turn of the loop (one write).
            for n in range(300):
                out.publish(f"t/{n % 3}", str(n).encode(), qos=1, retain=n == 299, on_done=answered)
            async with asyncio.timeout(WAIT_S):
                async for message in subscriber.messages:
                    assert isinstance(message.payload, bytes)
                    got.append((message.topic.value, message.payload, bool(message.retain)))
                    if len(got) == 300:
                        break
            await asyncio.wait_for(all_acked.wait(), WAIT_S)  # may trail the deliveries
            assert out.in_flight == 0
    assert [payload for _, payload, _ in got] == [str(n).encode() for n in range(300)]
    assert got[5][0] == "t/2"
    assert acks == [0] * 300
    # The retained flag went with the last message: a late subscriber gets it retained.
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as late:
        await late.subscribe("t/2", qos=1)
        async with asyncio.timeout(WAIT_S):
            message = await anext(aiter(late.messages))
    assert (message.payload, message.retain) == (b"299", True)


async def test_a_qos2_message_goes_at_qos1(mosquitto: Broker) -> None:
    # At QoS 2 mosquitto would answer PUBREC, which this connection does not speak: it would
    # end the connection instead of answering.
    async with open_publish_connection(_endpoint(mosquitto.port)) as out:
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        out.publish("t", b"x", qos=2, retain=False, on_done=answer.set_result)
        # A PUBACK: 0x00, or 0x10 (taken, no matching subscribers: mosquitto 2's answer here),
        # both success codes of MQTT 5.
        assert await asyncio.wait_for(answer, WAIT_S) in (0x00, 0x10)
        assert out.error is None


@dataclass
class ScriptedBroker:
    """A broker that answers CONNECT with ``connack`` and each PUBLISH with a PUBACK of
    ``puback_reason`` (none while ``withhold_pubacks``), PINGREQs while ``answer_pings``."""

    connack: bytes = b"\x20\x03\x00\x00\x00"  # MQTT 5, accepted, no properties
    puback_reason: int | None = None
    withhold_pubacks: bool = False
    answer_pings: bool = True
    received: list[Packet] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.StreamWriter | None = None
    port: int = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        splitter = PacketSplitter()
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                for packet in splitter.feed(data):
                    self.received.append(packet)
                    self.arrived.set()
                    if packet.kind == 1:
                        writer.write(self.connack)
                    elif packet.kind == PUBLISH and not self.withhold_pubacks:
                        mid = len([p for p in self.received if p.kind == PUBLISH])
                        reason = b"" if self.puback_reason is None else bytes([self.puback_reason])
                        writer.write(b"\x40" + bytes([2 + len(reason)]) + mid.to_bytes(2) + reason)
                    elif packet.kind == PINGREQ and self.answer_pings:
                        writer.write(b"\xd0\x00")

    def kinds(self) -> list[int]:
        return [p.kind for p in self.received]

    async def wait_for(self, kind: int) -> None:
        async with asyncio.timeout(WAIT_S):
            while kind not in self.kinds():
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def scripted(broker: ScriptedBroker) -> AsyncIterator[ScriptedBroker]:
    server = await asyncio.start_server(broker._serve, "127.0.0.1", 0)
    broker.port = server.sockets[0].getsockname()[1]
    try:
        yield broker
    finally:
        if broker.writer is not None:
            broker.writer.transport.abort()
        server.close()
        await server.wait_closed()


def _connack_5(properties: bytes, code: int = 0) -> bytes:
    body = b"\x00" + bytes([code, len(properties)]) + properties
    return b"\x20" + bytes([len(body)]) + body


async def test_refused_connect_names_the_reason() -> None:
    async with scripted(ScriptedBroker(connack=_connack_5(b"", code=0x87))) as broker:
        with pytest.raises(PublishConnectRefusedError, match=r"'gw-out': not authorized \(0x87\)"):
            async with open_publish_connection(_endpoint(broker.port)):
                pass


async def test_311_refusal_code() -> None:
    async with scripted(ScriptedBroker(connack=b"\x20\x02\x00\x02")) as broker:
        with pytest.raises(PublishConnectRefusedError, match="identifier rejected") as caught:
            async with open_publish_connection(_endpoint(broker.port, "3.1.1")):
                pass
    assert caught.value.code == 2


@pytest.mark.parametrize(
    ("properties", "why"),
    [(b"\x24\x00", "QoS 0 only"), (b"\x25\x00", "no retained messages")],
)
async def test_a_broker_that_cannot_carry_the_api_is_refused(properties: bytes, why: str) -> None:
    async with scripted(ScriptedBroker(connack=_connack_5(properties))) as broker:
        with pytest.raises(PublishConnectionError, match=why):
            async with open_publish_connection(_endpoint(broker.port)):
                pass


async def test_no_connack_in_time() -> None:
    async with scripted(ScriptedBroker(connack=b"")) as broker:
        with pytest.raises(PublishConnectionError, match=r"no CONNACK within 0\.2 s"):
            async with open_publish_connection(_endpoint(broker.port, connect_timeout_s=0.2)):
                pass


async def test_the_brokers_limits_are_kept() -> None:
    # Receive Maximum 5, Maximum Packet Size 100 bytes.
    limits = b"\x21\x00\x05" + b"\x27\x00\x00\x00\x64"
    async with (
        scripted(ScriptedBroker(connack=_connack_5(limits))) as broker,
        open_publish_connection(_endpoint(broker.port)) as out,
    ):
        assert out.receive_maximum == 5
        big: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        fits: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        # topic 2 + 1, packet id 2, properties 1, payload 95: a body of 101 bytes, 103 with
        # the header, above 100: refused here. With 90 bytes of payload: 96 + 2 = 98, sent.
        out.publish("t", bytes(95), qos=1, retain=False, on_done=big.set_result)
        out.publish("t", bytes(90), qos=1, retain=False, on_done=fits.set_result)
        answers = await asyncio.wait_for(asyncio.gather(big, fits), WAIT_S)
    assert answers == [PACKET_TOO_LARGE, 0]
    publishes = [p for p in broker.received if p.kind == PUBLISH]
    assert [len(p.payload) for p in publishes] == [90]


async def test_a_refusing_puback_is_passed_on() -> None:
    async with (
        scripted(ScriptedBroker(puback_reason=0x87)) as broker,
        open_publish_connection(_endpoint(broker.port)) as out,
    ):
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        out.publish("t", b"x", qos=1, retain=False, on_done=answer.set_result)
        assert await asyncio.wait_for(answer, WAIT_S) == 0x87


async def test_a_brokers_disconnect_ends_the_connection_with_its_reason() -> None:
    async with (
        scripted(ScriptedBroker(withhold_pubacks=True)) as broker,
        open_publish_connection(_endpoint(broker.port)) as out,
    ):
        out.publish("t", b"x", qos=1, retain=False, on_done=lambda r: None)
        await broker.wait_for(PUBLISH)
        assert broker.writer is not None
        broker.writer.write(b"\xe0\x08\x8b\x06\x1f\x00\x03bye")  # 0x8B server shutting down
        with pytest.raises(PublishConnectionError, match=r"broker disconnected \(0x8b: bye\)"):
            await asyncio.wait_for(out.wait_lost(), WAIT_S)
        with pytest.raises(PublishConnectionError):
            out.publish("t", b"y", qos=1, retain=False, on_done=lambda r: None)


async def test_garbage_from_the_broker_ends_the_connection() -> None:
    async with (
        scripted(ScriptedBroker()) as broker,
        open_publish_connection(_endpoint(broker.port)) as out,
    ):
        assert broker.writer is not None
        broker.writer.write(b"\x30\x00")  # a PUBLISH to a client that subscribed to nothing
        with pytest.raises(PublishConnectionError, match="unexpected packet type 3"):
            await asyncio.wait_for(out.wait_lost(), WAIT_S)


async def test_a_puback_for_nothing_in_flight_is_counted_not_fatal() -> None:
    async with (
        scripted(ScriptedBroker()) as broker,
        open_publish_connection(_endpoint(broker.port)) as out,
    ):
        assert broker.writer is not None
        broker.writer.write(b"\x40\x02\x12\x34")
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        out.publish("t", b"x", qos=1, retain=False, on_done=answer.set_result)
        assert await asyncio.wait_for(answer, WAIT_S) == 0
        assert out.unknown_pubacks == 1
        assert out.error is None


async def test_keepalive_pings_when_idle_and_gives_up_when_unanswered() -> None:
    # The broker's Server Keep Alive (1 s) replaces ours (30 s): a PINGREQ after half a second
    # of silence, answered; then unanswered, the connection ends a keep-alive later.
    async with (
        scripted(ScriptedBroker(connack=_connack_5(b"\x13\x00\x01"))) as broker,
        open_publish_connection(_endpoint(broker.port)) as out,
    ):
        await broker.wait_for(PINGREQ)
        broker.answer_pings = False
        with pytest.raises(PublishConnectionError, match="no PINGRESP within the 1 s"):
            await asyncio.wait_for(out.wait_lost(), WAIT_S)
    assert broker.kinds().count(PINGREQ) >= 2


async def test_a_clean_close_says_disconnect() -> None:
    async with scripted(ScriptedBroker()) as broker:
        async with open_publish_connection(_endpoint(broker.port)):
            pass
        await broker.wait_for(DISCONNECT)
    assert broker.kinds() == [1, DISCONNECT]
