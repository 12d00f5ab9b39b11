"""MqttLink against a real mosquitto (through a TCP proxy where the test must cut or stall it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest

from gateway.messages import OutboxListener, OutboxMessage
from gateway.northbound.mqtt import CommandHandler, MqttLink
from gateway.northbound.payloads import ReadingPayload
from gateway.northbound.settings import MqttSettings, TlsSettings
from gateway.northbound.topics import SiteTopics
from tests.fixtures.mosquitto import Broker, free_port, write_config
from tests.fixtures.mosquitto_tls import TlsBroker
from tests.northbound.peers import MemoryOutbox, Received, Recorder, TcpProxy
from tests.support.waiting import DEFAULT_TIMEOUT_S as WAIT_S
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

SITE = "s1"
TOPICS = SiteTopics(SITE)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["separate", "shared"])
def publishing(request: pytest.FixtureRequest) -> str:
    """Where the outbox's messages go out: their own connection, or the main one (paho)."""
    return str(request.param)


async def _ignore(kind: str, payload: bytes, *, retained: bool = False) -> None:
    pass


def _settings(port: int, **overrides: object) -> MqttSettings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
        "connect_timeout_s": 2.0,
        "publish_timeout_s": 10.0,
    }
    values.update(overrides)
    return MqttSettings.model_validate(values)


@contextlib.asynccontextmanager
async def running(
    link: MqttLink,
    outbox: MemoryOutbox,
    *recorders: Recorder,
    on_command: CommandHandler = _ignore,
) -> AsyncIterator[asyncio.Event]:
    """Run recorders (subscribed first) and the link; yield the link's wake event."""
    wake = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(r.run()) for r in recorders]
        for recorder in recorders:
            async with asyncio.timeout(WAIT_S):
                await recorder.subscribed.wait()
        tasks.append(tg.create_task(link.run(outbox, wake, on_command)))
        try:
            yield wake
        finally:
            for task in tasks:
                task.cancel()


def _ledger(outbox: MemoryOutbox, account: str, n: int) -> None:
    topic = TOPICS.account_event(account)
    outbox.add(topic, json.dumps({"event_id": f"{account}:{n}"}).encode())


def _reading(outbox: MemoryOutbox, meter: str, n: int) -> None:
    payload = ReadingPayload.model_validate(
        {
            "meter": meter,
            "reading_id": f"{meter}:{n}",
            "read_at": T0,
            "register": n,
            "delta": 1,
            "unit": "Wh",
            "quality": "good",
            "ts": T0,
        }
    )
    outbox.put(TOPICS.reading_message(payload))


def _identities(received: list[Received]) -> list[tuple[str, str]]:
    """(stream, identity) of every delivered contract message, batches expanded, in order."""
    out: list[tuple[str, str]] = []
    for message in received:
        body = message.json()
        if message.topic.endswith("/readings"):
            out.extend((f"meter:{r['meter']}", r["reading_id"]) for r in body["readings"])
        elif message.topic.endswith("/reading"):
            out.append((f"meter:{body['meter']}", body["reading_id"]))
        elif message.topic.endswith("/event"):
            out.append((message.topic, body["event_id"]))
    return out


class _Seen:
    """An ``until`` for a Recorder: True once every expected identity was delivered.

    Incremental, so a long stream costs O(n) and the recorder keeps up with the link.
    """

    def __init__(self, expected: set[tuple[str, str]]) -> None:
        self.missing = set(expected)
        self._checked = 0

    def __call__(self, received: list[Received]) -> bool:
        self.missing.difference_update(_identities(received[self._checked :]))
        self._checked = len(received)
        return not self.missing


def _first_seen_per_stream(received: list[Received]) -> dict[str, list[int]]:
    """Per stream, the numbers of its messages in the order first delivered (duplicates dropped)."""
    seen: set[tuple[str, str]] = set()
    streams: dict[str, list[int]] = {}
    for stream, identity in _identities(received):
        if (stream, identity) not in seen:
            seen.add((stream, identity))
            streams.setdefault(stream, []).append(int(identity.rsplit(":", 1)[1]))
    return streams


def _is_status(status: str) -> Callable[[Received], bool]:
    return lambda m: m.topic == TOPICS.status and m.json()["status"] == status


async def test_link_status_online_retained_and_last_will_when_connection_dies(
    mosquitto: Broker,
) -> None:
    async with TcpProxy(mosquitto.host, mosquitto.port) as proxy:
        link = MqttLink(_settings(proxy.port), SITE, "1.2.3")
        async with running(link, MemoryOutbox()):
            await asyncio.wait_for(link.connected.wait(), WAIT_S)
            # A subscriber arriving later gets the retained online status.
            late = Recorder(mosquitto.host, mosquitto.port, TOPICS.status)
            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(late.run())
                first = await late.next_matching(lambda m: True)
                assert late.messages[first].retain
                assert late.messages[first].json()["status"] == "online"
                assert late.messages[first].json()["version"] == "1.2.3"
                proxy.cut()  # the link's TCP connection vanishes without DISCONNECT
                await late.next_matching(_is_status("offline"), first + 1)
                await late.next_matching(_is_status("online"), first + 1)  # it came back
                task.cancel()
            assert link.counters.reconnects == 1
            assert link.counters.last_error is not None


async def test_link_commands_reach_handler_including_those_sent_while_offline(
    mosquitto: Broker,
) -> None:
    received: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def on_command(kind: str, payload: bytes, *, retained: bool = False) -> None:
        if payload == b"boom":
            raise RuntimeError("handler bug")
        await received.put((kind, payload))

    async with TcpProxy(mosquitto.host, mosquitto.port) as proxy:
        link = MqttLink(_settings(proxy.port), SITE, "1")
        async with (
            running(link, MemoryOutbox(), on_command=on_command),
            aiomqtt.Client(mosquitto.host, mosquitto.port) as backend,
        ):
            await asyncio.wait_for(link.connected.wait(), WAIT_S)
            await backend.publish(TOPICS.command("topup"), b"boom", qos=1)
            await backend.publish(TOPICS.command("topup"), b'{"id":"a"}', qos=1)
            await backend.publish(TOPICS.command("tariff"), b'{"id":"b"}', qos=1)
            await backend.publish(f"prepay/{SITE}/cmd/topup/result", b"not ours", qos=1)
            assert await asyncio.wait_for(received.get(), WAIT_S) == ("topup", b'{"id":"a"}')
            assert await asyncio.wait_for(received.get(), WAIT_S) == ("tariff", b'{"id":"b"}')
            assert link.counters.command_errors == 1

            # Offline: the persistent session keeps the command at the broker.
            proxy.refuse = True
            proxy.cut()
            await eventually(lambda: not link.connected.is_set(), what="the link down")
            await backend.publish(TOPICS.command("refund"), b'{"id":"c"}', qos=1)
            proxy.refuse = False
            # QoS 1: a command whose PUBACK died with the connection comes again (the gateway
            # answers it `duplicate` by id); the one sent while offline must arrive.
            redelivered = []
            while (item := await asyncio.wait_for(received.get(), WAIT_S)) != (
                "refund",
                b'{"id":"c"}',
            ):
                redelivered.append(item)
            assert set(redelivered) <= {("topup", b'{"id":"a"}'), ("tariff", b'{"id":"b"}')}


async def test_link_acknowledges_only_after_puback_and_drains_in_order(
    mosquitto: Broker, publishing: str
) -> None:
    outbox = MemoryOutbox()
    for n in range(300):
        _ledger(outbox, f"a{n % 3}", n)
    outbox.hold = True
    window = 20
    recorder = Recorder(
        mosquitto.host,
        mosquitto.port,
        f"prepay/{SITE}/account/#",
        until=lambda msgs: len(msgs) >= 300,
    )
    async with TcpProxy(mosquitto.host, mosquitto.port) as proxy:
        settings = _settings(proxy.port, max_inflight=window, publish_connection=publishing)
        link = MqttLink(settings, SITE, "1")
        async with running(link, outbox, recorder) as wake:
            await asyncio.wait_for(link.connected.wait(), WAIT_S)
            proxy.stall()  # PUBLISHes reach the broker; its PUBACKs do not reach the link
            outbox.hold = False
            wake.set()
            await recorder.next_matching(
                lambda m: m.json()["event_id"] == f"a{(window - 1) % 3}:{window - 1}"
            )
            # The broker has the first window of messages, yet none is acknowledged.
            assert outbox.acknowledged == []
            assert len(outbox) == 300
            proxy.resume()
            await asyncio.wait_for(outbox.emptied.wait(), WAIT_S)
            await asyncio.wait_for(recorder.done.wait(), WAIT_S)
    assert outbox.acknowledged == list(range(1, 301))
    streams = _first_seen_per_stream(recorder.messages)
    for account in ("a0", "a1", "a2"):
        assert streams[TOPICS.account_event(account)] == list(range(int(account[1]), 300, 3))
    assert link.counters.published == 300
    assert link.publishing_on == publishing


async def test_link_broker_restart_mid_stream_loses_nothing_and_keeps_order(
    mosquitto: Broker, publishing: str
) -> None:
    outbox = MemoryOutbox()
    total = 3000
    for n in range(total):
        if n % 4 == 0:
            _ledger(outbox, f"a{n % 3}", n)
        else:
            _reading(outbox, f"m{n % 5}", n)
    expected = {
        (f"meter:m{n % 5}", f"m{n % 5}:{n}")
        if n % 4
        else (TOPICS.account_event(f"a{n % 3}"), f"a{n % 3}:{n}")
        for n in range(total)
    }
    recorder = Recorder(
        mosquitto.host,
        mosquitto.port,
        f"prepay/{SITE}/#",
        until=_Seen(expected),
    )
    settings = _settings(
        mosquitto.port, max_inflight=10, batch_max=5, publish_connection=publishing
    )
    link = MqttLink(settings, SITE, "1")
    async with running(link, outbox, recorder) as wake:
        # Mid-stream: some messages delivered, many still in the outbox.
        await recorder.next_matching(
            lambda m: m.topic.endswith(("/reading", "/readings", "/event"))
        )
        await eventually(lambda: len(outbox.acknowledged) >= 200, what="200 acknowledged")
        assert len(outbox) > 0
        outbox.hold = True  # the producer pauses until the subscriber is back on the new broker
        await asyncio.to_thread(mosquitto.restart)  # SIGKILL, then a fresh process
        await eventually(
            lambda: link.counters.connects >= 2 and recorder.subscribed.is_set(),
            what="the link and the recorder back on the new broker",
        )
        outbox.hold = False
        wake.set()
        await asyncio.wait_for(outbox.emptied.wait(), WAIT_S)
        await asyncio.wait_for(recorder.done.wait(), WAIT_S)
    assert link.counters.reconnects >= 1
    assert sorted(outbox.acknowledged) == list(range(1, total + 1))
    for stream, numbers in _first_seen_per_stream(recorder.messages).items():
        assert numbers == sorted(numbers), stream
    assert link.counters.batches > 0


async def test_link_batches_reading_backlog_per_meter(mosquitto: Broker, publishing: str) -> None:
    outbox = MemoryOutbox()
    for n in range(1000):
        _reading(outbox, f"m{n % 2}", n)
    _ledger(outbox, "a0", 1000)
    recorder = Recorder(
        mosquitto.host,
        mosquitto.port,
        f"prepay/{SITE}/#",
        until=_Seen(
            {(f"meter:m{n % 2}", f"m{n % 2}:{n}") for n in range(1000)}
            | {(TOPICS.account_event("a0"), "a0:1000")}
        ),
    )
    link = MqttLink(
        _settings(mosquitto.port, batch_max=100, publish_connection=publishing), SITE, "1"
    )
    async with running(link, outbox, recorder):
        await asyncio.wait_for(recorder.done.wait(), WAIT_S)
    batches = [m for m in recorder.messages if m.topic.endswith("/readings")]
    assert batches
    assert all(len(m.json()["readings"]) <= 100 for m in batches)
    streams = _first_seen_per_stream(recorder.messages)
    assert streams["meter:m0"] == list(range(0, 1000, 2))
    assert streams["meter:m1"] == list(range(1, 1000, 2))


async def test_link_stop_drains_outbox_then_says_offline(
    mosquitto: Broker, publishing: str
) -> None:
    outbox = MemoryOutbox()
    recorder = Recorder(mosquitto.host, mosquitto.port, f"prepay/{SITE}/#")
    # A deadline a loaded machine cannot miss: the point is the order (drain, then offline).
    settings = _settings(mosquitto.port, drain_deadline_s=WAIT_S, publish_connection=publishing)
    link = MqttLink(settings, SITE, "1")
    async with running(link, outbox, recorder) as wake:
        await asyncio.wait_for(link.connected.wait(), WAIT_S)
        for n in range(50):
            _ledger(outbox, "a0", n)
        wake.set()
        link.request_stop()
        run_task = asyncio.current_task()
        assert run_task is not None
        await asyncio.wait_for(outbox.emptied.wait(), WAIT_S)
        await recorder.next_matching(_is_status("offline"))
    assert len(outbox) == 0
    assert not link.connected.is_set()


async def test_link_forced_mqtt311(mosquitto: Broker) -> None:
    outbox = MemoryOutbox()
    _ledger(outbox, "a0", 1)
    link = MqttLink(_settings(mosquitto.port, protocol="3.1.1"), SITE, "1")
    async with running(link, outbox):
        await asyncio.wait_for(outbox.emptied.wait(), WAIT_S)
    assert link.protocol_in_use == "3.1.1"


async def test_link_auto_prefers_mqtt5(mosquitto: Broker) -> None:
    link = MqttLink(_settings(mosquitto.port), SITE, "1")
    async with running(link, MemoryOutbox()):
        await asyncio.wait_for(link.connected.wait(), WAIT_S)
    assert link.protocol_in_use == "5"


async def test_link_auto_falls_back_to_mqtt311_when_broker_refuses_5(mosquitto: Broker) -> None:
    outbox = MemoryOutbox()
    _ledger(outbox, "a0", 1)
    async with TcpProxy(mosquitto.host, mosquitto.port) as proxy:
        proxy.v3_only = True
        link = MqttLink(_settings(proxy.port), SITE, "1")
        async with running(link, outbox):
            await asyncio.wait_for(outbox.emptied.wait(), WAIT_S)
    assert link.protocol_in_use == "3.1.1"


async def test_link_tls_with_client_certificate(mosquitto_tls: TlsBroker) -> None:
    tls = TlsSettings(
        ca_file=mosquitto_tls.ca_file,
        cert_file=mosquitto_tls.client_cert,
        key_file=mosquitto_tls.client_key,
    )
    outbox = MemoryOutbox()
    _ledger(outbox, "a0", 7)
    recorder = Recorder(
        mosquitto_tls.host,
        mosquitto_tls.port,
        f"prepay/{SITE}/account/#",
        tls=aiomqtt.TLSParameters(
            ca_certs=str(mosquitto_tls.ca_file),
            certfile=str(mosquitto_tls.client_cert),
            keyfile=str(mosquitto_tls.client_key),
        ),
        until=lambda msgs: len(msgs) >= 1,
    )
    link = MqttLink(_settings(mosquitto_tls.port, tls=tls), SITE, "1")
    async with running(link, outbox, recorder):
        await asyncio.wait_for(recorder.done.wait(), WAIT_S)
    assert recorder.messages[0].json() == {"event_id": "a0:7"}


async def test_link_tls_without_client_certificate_is_refused(mosquitto_tls: TlsBroker) -> None:
    tls = TlsSettings(ca_file=mosquitto_tls.ca_file)
    link = MqttLink(_settings(mosquitto_tls.port, tls=tls, connect_timeout_s=0.5), SITE, "1")
    async with running(link, MemoryOutbox()):
        await eventually(lambda: link.counters.last_error is not None, what="a refused connect")
    assert link.counters.connects == 0


class _CountedOutbox(MemoryOutbox):
    """A `MemoryOutbox` that counts the link's reads of it."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def pending(self, limit: int, after_seq: int = 0) -> list[OutboxMessage]:
        self.reads += 1
        return super().pending(limit, after_seq)


class _UntoldOutbox(_CountedOutbox):
    """An outbox whose commits reach the link's follower late: here never, the limit of a
    commit's notice still queued behind the drain when the stop comes."""

    def follow(self, listener: OutboxListener) -> Callable[[], None]:
        return lambda: None


async def test_link_stop_reads_the_outbox_once_more_for_what_it_was_not_told(
    mosquitto: Broker, publishing: str
) -> None:
    outbox = _UntoldOutbox()
    settings = _settings(mosquitto.port, drain_deadline_s=WAIT_S, publish_connection=publishing)
    link = MqttLink(settings, SITE, "1")
    async with running(link, outbox) as wake:
        await eventually(lambda: outbox.reads >= 1, what="the first read of the outbox")
        for n in range(50):
            _ledger(outbox, "a0", n)
        wake.set()
        link.request_stop()
        await asyncio.wait_for(outbox.emptied.wait(), WAIT_S)
    assert outbox.acknowledged == list(range(1, 51))
    assert outbox.reads >= 2


async def test_link_takes_what_is_committed_while_up_from_the_outbox_follower(
    mosquitto: Broker,
) -> None:
    # Once the link has read the outbox, what is committed later is told to it
    # (`OutboxReader.follow`): it publishes that without reading the outbox again.
    outbox = _CountedOutbox()
    recorder = Recorder(mosquitto.host, mosquitto.port, f"prepay/{SITE}/account/#")
    link = MqttLink(_settings(mosquitto.port, max_inflight=5, batch_telemetry=False), SITE, "1")
    async with running(link, outbox, recorder) as wake:
        await asyncio.wait_for(link.connected.wait(), WAIT_S)
        await eventually(lambda: outbox.reads == 1, what="the link's first read")
        for group in range(6):
            for n in range(
                10 * group, 10 * group + 10
            ):  # 10: what the tail keeps (2 x max_inflight)
                _ledger(outbox, "a0", n)
            wake.set()
            await eventually(
                lambda g=group: len(outbox.acknowledged) == 10 * g + 10,  # type: ignore[misc]
                what=f"group {group} acknowledged",
            )
        await recorder.next_matching(lambda m: m.json()["event_id"] == "a0:59")
    assert outbox.reads == 1
    assert outbox.acknowledged == list(range(1, 61))
    assert _first_seen_per_stream(recorder.messages)[TOPICS.account_event("a0")] == list(range(60))


async def test_link_reads_the_outbox_again_when_the_follower_falls_behind(
    mosquitto: Broker,
) -> None:
    # 100 commits at once are more than the tail keeps (2 x max_inflight = 10): it is dropped
    # and the outbox read instead, in order, each message once.
    outbox = _CountedOutbox()
    recorder = Recorder(
        mosquitto.host,
        mosquitto.port,
        f"prepay/{SITE}/account/#",
        until=lambda msgs: len(msgs) >= 100,
    )
    link = MqttLink(_settings(mosquitto.port, max_inflight=5, batch_telemetry=False), SITE, "1")
    async with running(link, outbox, recorder) as wake:
        await asyncio.wait_for(link.connected.wait(), WAIT_S)
        await eventually(lambda: outbox.reads == 1, what="the link's first read")
        for n in range(100):
            _ledger(outbox, "a0", n)
        wake.set()
        await asyncio.wait_for(outbox.emptied.wait(), WAIT_S)
        await asyncio.wait_for(recorder.done.wait(), WAIT_S)
    assert outbox.reads >= 1 + 100 // 10  # read again, a chunk of 10 at a time
    assert outbox.acknowledged == list(range(1, 101))
    assert _first_seen_per_stream(recorder.messages)[TOPICS.account_event("a0")] == list(range(100))


class _StalledAckOutbox(MemoryOutbox):
    """A `MemoryOutbox` whose acknowledgements wait for ``release``: the real store's
    acknowledgement commit waits for its lock behind the next batch's transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.waiting = 0  # acknowledgements that have begun waiting

    def acknowledge(self, seqs: list[int]) -> None:  # in a worker thread, as the store's
        self.waiting += 1
        # Bounded, past the recorder's wait below: a failing test ends instead of hanging.
        self.release.wait(3 * WAIT_S)
        super().acknowledge(seqs)


async def test_link_publishes_a_commit_while_an_acknowledgement_waits_for_the_store(
    mosquitto: Broker,
) -> None:
    # A message committed while the acknowledgement of the last one waits for the store goes
    # out at once: the drain, waiting for that acknowledgement with nothing in flight, is woken
    # by the commit too. It waited for the acknowledgement, which at 1,000 meters held each
    # batch's readings for the next batch's transaction.
    outbox = _StalledAckOutbox()
    recorder = Recorder(mosquitto.host, mosquitto.port, f"prepay/{SITE}/account/#")
    link = MqttLink(_settings(mosquitto.port, batch_telemetry=False), SITE, "1")
    async with running(link, outbox, recorder):
        await asyncio.wait_for(link.connected.wait(), WAIT_S)
        _ledger(outbox, "a0", 0)
        await eventually(lambda: outbox.waiting == 1, what="the first acknowledgement waiting")
        _ledger(outbox, "a0", 1)
        try:
            await recorder.next_matching(lambda m: m.json()["event_id"] == "a0:1")
            assert outbox.acknowledged == []  # published while the acknowledgement still waits
        finally:
            outbox.release.set()
        await eventually(lambda: outbox.acknowledged == [1, 2], what="both acknowledged")


async def test_link_publishes_on_a_connection_of_its_own_by_default(mosquitto: Broker) -> None:
    outbox = MemoryOutbox()
    _ledger(outbox, "a0", 1)
    async with TcpProxy(mosquitto.host, mosquitto.port) as proxy:
        link = MqttLink(_settings(proxy.port), SITE, "1")
        async with running(link, outbox):
            await asyncio.wait_for(outbox.emptied.wait(), WAIT_S)
    assert link.publishing_on == "separate"
    assert proxy.connections == 2  # prepay-gw-s1 and prepay-gw-s1-out


async def test_link_auto_publishes_on_the_main_connection_when_the_broker_refuses_a_second(
    mosquitto: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = MemoryOutbox()
    for n in range(20):
        _ledger(outbox, "a0", n)
    async with TcpProxy(mosquitto.host, mosquitto.port) as proxy:
        proxy.refuse_client_suffix = "-out"
        link = MqttLink(_settings(proxy.port), SITE, "1")
        async with running(link, outbox) as wake:
            await asyncio.wait_for(outbox.emptied.wait(), WAIT_S)
            # Decided for the process's life: a reconnect does not ask again.
            proxy.cut()
            await eventually(lambda: link.counters.connects == 2, what="the reconnect")
            _ledger(outbox, "a0", 20)
            wake.set()
            await asyncio.wait_for(outbox.emptied.wait(), WAIT_S)
    assert link.publishing_on == "shared"
    assert proxy.refused == 1
    assert outbox.acknowledged == list(range(1, 22))
    assert "broker refused connection 'prepay-gw-s1-out': not authorized (0x87)" in caplog.text


async def test_link_separate_stays_down_while_the_broker_refuses_the_second_connection(
    mosquitto: Broker,
) -> None:
    statuses = Recorder(mosquitto.host, mosquitto.port, TOPICS.status)
    async with TcpProxy(mosquitto.host, mosquitto.port) as proxy:
        proxy.refuse_client_suffix = "-out"
        link = MqttLink(_settings(proxy.port, publish_connection="separate"), SITE, "1")
        async with running(link, MemoryOutbox(), statuses):
            await eventually(lambda: proxy.refused >= 2, what="two refused attempts")
            # Each attempt ended with its main connection's "offline", published after the
            # refusal and PUBACKed before the next attempt: the first one has arrived by now.
            await statuses.next_matching(_is_status("offline"))
    # "online" is said only once both connections are up: never here.
    assert {m.json()["status"] for m in statuses.messages} == {"offline"}
    assert link.counters.connects == 0
    assert not link.connected.is_set()
    assert "refused connection 'prepay-gw-s1-out': not authorized" in str(link.counters.last_error)


def _events_to_record(broker: Broker, n: int) -> tuple[MemoryOutbox, Recorder]:
    """An outbox of ``n`` events of account a0, and a recorder done once it has seen each."""
    outbox = MemoryOutbox()
    for number in range(n):
        _ledger(outbox, "a0", number)
    recorder = Recorder(
        broker.host,
        broker.port,
        f"prepay/{SITE}/account/#",
        until=lambda msgs: len({m.json()["event_id"] for m in msgs}) >= n,
    )
    return outbox, recorder


async def test_link_losing_only_the_publishing_connection_reconnects_and_loses_nothing(
    mosquitto: Broker,
) -> None:
    outbox, recorder = _events_to_record(mosquitto, 300)
    outbox.hold = True
    async with TcpProxy(mosquitto.host, mosquitto.port) as proxy:
        link = MqttLink(_settings(proxy.port, max_inflight=20), SITE, "1")
        async with running(link, outbox, recorder) as wake:
            await asyncio.wait_for(link.connected.wait(), WAIT_S)
            proxy.stall()  # PUBLISHes go out, PUBACKs are held: the cut finds them in flight
            outbox.hold = False
            wake.set()
            await recorder.next_matching(lambda m: m.json()["event_id"] == "a0:19")
            proxy.cut_client("-out")
            proxy.resume()
            await asyncio.wait_for(outbox.emptied.wait(), WAIT_S)
            await asyncio.wait_for(recorder.done.wait(), WAIT_S)
    assert link.counters.reconnects == 1
    assert outbox.acknowledged == list(range(1, 301))
    assert _first_seen_per_stream(recorder.messages)[TOPICS.account_event("a0")] == list(range(300))


@contextlib.contextmanager
def _broker_with_acl(acl: str) -> Iterator[Broker]:
    """A fresh mosquitto with this ACL file. mosquitto started as root reads it as its own
    user, so it goes in a world-readable directory, not pytest's private tree."""
    with tempfile.TemporaryDirectory(prefix="mosquitto_acl_") as name:
        directory = Path(name)
        directory.chmod(0o755)
        acl_file = directory / "acl"
        acl_file.write_text(acl)
        acl_file.chmod(0o644)
        port = free_port()
        broker = Broker("127.0.0.1", port, write_config(directory, port, f"acl_file {acl_file}\n"))
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()


@pytest.mark.parametrize("publishing", ["separate", "shared", "auto"])
async def test_link_counts_a_message_the_broker_refuses_and_goes_on(publishing: str) -> None:
    # mosquitto answers a PUBLISH its ACL denies with PUBACK 0x87 (MQTT 5) and drops it. Under
    # auto the first refusal on "-out" moves the outbox to the main connection (see the test
    # above), where the same refusal is the topic's: counted and dropped there.
    outbox = MemoryOutbox()
    _ledger(outbox, "a0", 1)
    _ledger(outbox, "blocked", 2)
    _ledger(outbox, "a0", 3)
    with _broker_with_acl(
        f"topic readwrite #\ntopic deny {TOPICS.account_event('blocked')}\n"
    ) as broker:
        recorder = Recorder(
            broker.host,
            broker.port,
            f"prepay/{SITE}/account/#",
            until=lambda msgs: any(m.json()["event_id"] == "a0:3" for m in msgs),
        )
        link = MqttLink(_settings(broker.port, publish_connection=publishing), SITE, "1")
        async with running(link, outbox, recorder):
            await asyncio.wait_for(outbox.emptied.wait(), WAIT_S)
            await asyncio.wait_for(recorder.done.wait(), WAIT_S)
    assert link.counters.refused == 1
    assert outbox.acknowledged == [1, 2, 3]
    # Under auto, a0:3 may have reached the broker on "-out" before the move and again after
    # it (QoS 1: at least once; consumers dedupe by event_id).
    seen = [m.json()["event_id"] for m in recorder.messages]
    assert list(dict.fromkeys(seen)) == ["a0:1", "a0:3"]
    assert link.publishing_on == ("shared" if publishing == "auto" else publishing)


async def test_link_auto_moves_to_the_main_connection_when_the_second_may_not_publish(
    mosquitto: Broker,
) -> None:
    # A broker whose ACL is keyed on client ids: "-out" connects, but its PUBLISHes are refused
    # (0x87). Under auto nothing is dropped: the outbox goes out on the main connection.
    outbox, recorder = _events_to_record(mosquitto, 30)
    async with TcpProxy(mosquitto.host, mosquitto.port) as proxy:
        proxy.deny_publish_suffix = "-out"
        link = MqttLink(_settings(proxy.port), SITE, "1")
        async with running(link, outbox, recorder):
            await asyncio.wait_for(outbox.emptied.wait(), WAIT_S)
            await asyncio.wait_for(recorder.done.wait(), WAIT_S)
    assert proxy.denied >= 1
    assert link.publishing_on == "shared"
    assert link.counters.refused == 0
    assert outbox.acknowledged == list(range(1, 31))
    assert _first_seen_per_stream(recorder.messages)[TOPICS.account_event("a0")] == list(range(30))
