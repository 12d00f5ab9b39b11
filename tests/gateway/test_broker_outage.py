"""The broker dies while readings flow: billing and a cutoff go on offline, and after the restart
the outbox backlog reaches the backend complete and, per meter, in order.

The gateway runs in this process with a source the test drives and a recording valve; mosquitto
is a real process, killed (SIGKILL) and restarted. The gateway reaches the broker through a
loopback relay that the test opens only once the watcher has re-subscribed: otherwise the
backlog could be delivered before anyone listens (mosquitto keeps no sessions across a kill).
The relay reads the gateway's side of the wire as MQTT packets, so a test can say which
PUBLISHes (and which reconnect attempts) a black hole swallowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from drivers.ports import Reading, SupplyState
from gateway.config import Site
from gateway.daemon import Gateway
from gateway.northbound.commands import new_command, sign_command
from gateway.northbound.payloads import CommandKind
from gateway.northbound.signing import load_private_key
from gateway.store import JournalRow, JournalState
from tests.fixtures.mosquitto import Broker
from tests.gateway.crash_support import Watcher, all_rows, audit_books
from tests.gateway.site import load, water_account
from tests.support.gateways import FeedSource, running
from tests.support.mqtt_wire import CONNECT, PUBLISH, Packet, PacketSplitter
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

BASE = datetime(2025, 3, 1, tzinfo=UTC)
STEP = timedelta(seconds=60)
METERS = ("m1", "m2")


class GatedRelay:
    """A loopback TCP relay to the broker that refuses connections while closed, and can go
    silent: a black hole passes nothing either way and closes nothing, as a dead mobile link
    does, until `restore` drops its connections (the link "dies") and lets new ones through.

    What the gateway sent into the black hole is kept as MQTT packets (`swallowed`)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.open = True
        self.blackholed = False
        self.swallowed: list[Packet] = []  # the gateway's packets lost in the black hole
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> GatedRelay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def blackhole(self) -> None:
        self.blackholed = True

    def restore(self) -> None:
        self.blackholed = False
        for writer in self._writers:
            writer.close()

    def swallowed_connects(self) -> int:
        """Connection attempts (CONNECT packets) that went into the black hole."""
        return sum(p.kind == CONNECT for p in self.swallowed)

    def swallowed_reading_ids(self) -> set[str]:
        """Readings in PUBLISHes (single or batched) that went into the black hole."""
        ids: set[str] = set()
        for packet in self.swallowed:
            if packet.kind != PUBLISH:
                continue
            if packet.topic.endswith("/reading"):
                ids.add(json.loads(packet.payload)["reading_id"])
            elif packet.topic.endswith("/readings"):
                ids.update(r["reading_id"] for r in json.loads(packet.payload)["readings"])
        return ids

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if not self.open:
                return
            if self.blackholed:  # accepted, then silence: the CONNECT goes nowhere
                packets = PacketSplitter()
                with contextlib.suppress(OSError):
                    while data := await reader.read(65536):
                        self.swallowed += packets.feed(data)
                return
            try:
                async with asyncio.timeout(2):
                    up_reader, up_writer = await asyncio.open_connection(
                        "127.0.0.1", self.upstream_port
                    )
            except OSError:
                return
            self._writers.add(up_writer)
            pipes = [
                asyncio.create_task(self._pipe(reader, up_writer, PacketSplitter())),
                asyncio.create_task(self._pipe(up_reader, writer, None)),
            ]
            self._tasks.update(pipes)
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            up_writer.close()
        finally:
            writer.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        packets: PacketSplitter | None,  # the gateway -> broker direction is read as packets
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                complete = packets.feed(data) if packets is not None else []
                if self.blackholed:
                    self.swallowed += complete
                    continue  # lost in the black hole; `restore` ends this connection
                writer.write(data)
                await writer.drain()


class DrivenSource(FeedSource):
    """`FeedSource` with meters: `emit` hands readings of every meter to the gateway."""

    def __init__(self) -> None:
        super().__init__()
        self._k = 0
        self._register = dict.fromkeys(METERS, 1_000)

    async def emit(self, count: int, litres: int) -> None:
        for _ in range(count):
            self._k += 1
            for meter in METERS:
                self._register[meter] += litres
                await self.put(Reading(meter, BASE + self._k * STEP, self._register[meter]))


class RecordingValve:
    """An `Actuator` that obeys at once and remembers what it was told."""

    name = "valve"

    def __init__(self) -> None:
        self.supply: dict[str, bool] = {"v1": True}
        self.writes: list[bool] = []

    def handles(self, device_id: str) -> bool:
        return device_id in self.supply

    async def set_supply(self, device_id: str, on: bool) -> None:
        self.supply[device_id] = on
        self.writes.append(on)

    async def read_supply(self, device_id: str) -> SupplyState:
        return SupplyState.ON if self.supply[device_id] else SupplyState.OFF


def _published_rows(gateway: Gateway) -> list[JournalRow]:
    """Journalled readings that the gateway publishes (billed or baseline)."""
    return [
        r
        for r in all_rows(gateway.store)
        if r.state is JournalState.BILLED and r.bill_status in ("billed", "baseline")
    ]


def _all_seen(gateway: Gateway, watcher: Watcher) -> Callable[[], bool]:
    def check() -> bool:
        rows = _published_rows(gateway)
        return all(
            {r.reading.reading_id for r in rows if r.reading.meter_id == m}
            <= watcher.reading_ids(m)
            for m in METERS
        )

    return check


def _outbox_empty(gateway: Gateway) -> Callable[[], bool]:
    return lambda: gateway.store.outbox_stats().total_pending == 0


async def _topup(broker: Broker, keys: Path, amount_minor: int) -> None:
    key = load_private_key((keys / "backend.pem").read_bytes())
    fields: dict[str, Any] = {"account": "A1", "amount_minor": amount_minor, "currency": "CNY"}
    body = new_command(CommandKind.TOPUP, "test-site", fields, now=datetime.now(UTC))
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(
            "prepay/test-site/cmd/topup", json.dumps(sign_command(body, key)), qos=1
        )


def _site(
    tmp_path: Path, mqtt_port: int, extra: dict[str, Any] | None = None, **mqtt_settings: Any
) -> Site:
    accounts = [water_account("A1", "m1", actuator="v1"), water_account("A2", "m2")]
    mqtt = {
        "host": "127.0.0.1",
        "port": mqtt_port,
        "backoff_initial_s": 0.1,
        "backoff_max_s": 0.5,
        "drain_deadline_s": 2.0,
        "batch_max": 7,  # the backlog goes out as several batches per meter
        **mqtt_settings,
    }
    return load(
        tmp_path, mqtt_port=mqtt_port, accounts=accounts, extra={"mqtt": mqtt, **(extra or {})}
    )


async def test_broker_outage_backlog_drains_complete_and_in_order(
    mosquitto: Broker, tmp_path: Path
) -> None:
    watcher = Watcher()
    source, valve = DrivenSource(), RecordingValve()
    async with GatedRelay(mosquitto.port) as relay:
        site = _site(tmp_path, relay.port)
        gateway = Gateway(site, sources=[source], actuators=[valve])
        async with running(gateway):
            async with watcher.connected(mosquitto.host, mosquitto.port):
                await watcher.wait_for(
                    lambda t, d: t.endswith("/status") and d["status"] == "online"
                )
                await _topup(mosquitto, tmp_path / "keys", 1_000)  # 10.00 yuan = 2 m3
                await watcher.wait_for(
                    lambda t, d: t.endswith("cmd/topup/result") and d["status"] == "applied"
                )
                # Online: 10 readings of 10 L per meter (5 fen each), all delivered.
                await source.emit(10, 10)
                await watcher.wait_until(_all_seen(gateway, watcher))
                assert valve.supply["v1"] is True

            # The broker dies. Readings go on: 40 x 100 L (50 fen each) runs A1's credit out,
            # and the valve is closed while the gateway is offline.
            relay.open = False
            await asyncio.to_thread(mosquitto.stop)
            await source.emit(40, 100)
            await eventually(lambda: valve.supply["v1"] is False, what="the valve closed offline")
            await eventually(
                lambda: len(_published_rows(gateway)) == 2 * 50, what="all 100 readings billed"
            )
            assert gateway.store.balance("A1") < 0
            assert gateway.link is not None
            assert not gateway.link.connected.is_set()
            assert gateway.store.outbox_stats().total_pending > 2 * 40

            # The broker comes back; the watcher listens before the gateway may reconnect.
            await asyncio.to_thread(mosquitto.start)
            async with watcher.connected(mosquitto.host, mosquitto.port):
                relay.open = True
                await watcher.wait_until(_all_seen(gateway, watcher))
                await watcher.wait_for(
                    lambda t, d: t.endswith("account/A1/event") and d["event"] == "cutoff"
                )
                await watcher.wait_for(
                    lambda t, d: (
                        t.endswith("device/v1/state")
                        and d.get("supply") == "off"
                        and d["confirmation"] == "confirmed"
                    )
                )
                await eventually(_outbox_empty(gateway), what="the backlog acknowledged")
            rows = _published_rows(gateway)

    # On at startup: read back, already on, nothing sent. Then off once, while offline.
    assert valve.writes == [False]
    assert any(t.endswith("/readings") for t, _ in watcher.messages)  # the backlog was batched
    # Nothing lost: every journalled reading was billed and reached the backend.
    for meter in METERS:
        journalled = [r.reading.reading_id for r in rows if r.reading.meter_id == meter]
        assert len(journalled) == 50
        assert set(journalled) <= watcher.reading_ids(meter)
        # Per-meter order kept: first sightings come in register (and time) order.
        first_seen: dict[str, dict[str, Any]] = {}
        for doc in watcher.readings(meter):
            first_seen.setdefault(doc["reading_id"], doc)
        assert list(first_seen) == journalled, meter
        registers = [d["register"] for d in first_seen.values()]
        assert registers == sorted(registers)
    audit_books(site, expect_outbox_empty=True)


async def test_silent_outage_keeps_every_unacknowledged_message(
    mosquitto: Broker, tmp_path: Path
) -> None:
    """The link black-holes (no RST, no FIN), then dies. A PUBLISH that got no PUBACK stays in
    the outbox and goes again on the next connection; nothing is deleted on a timer. (A peer
    gateway, measured side by side, lost most of such an outage this way.)"""
    watcher = Watcher()
    source, valve = DrivenSource(), RecordingValve()
    async with GatedRelay(mosquitto.port) as relay:
        site = _site(
            tmp_path,
            relay.port,
            # No timer-driven state message: what enters the black hole first is a reading.
            extra={"state_publish_interval_s": 3600},
            publish_timeout_s=1.5,
            connect_timeout_s=1.0,
        )
        gateway = Gateway(site, sources=[source], actuators=[valve])
        assert gateway.link is not None
        link = gateway.link
        async with running(gateway), watcher.connected(mosquitto.host, mosquitto.port):
            await watcher.wait_for(lambda t, d: t.endswith("/status") and d["status"] == "online")
            await source.emit(5, 10)
            await watcher.wait_until(_all_seen(gateway, watcher))
            # Every PUBACK is in: nothing is in flight when the link goes silent, so the next
            # reading is published straight into the black hole.
            await eventually(_outbox_empty(gateway), what="the online readings acknowledged")
            connects = link.counters.connects

            relay.blackhole()
            await source.emit(20, 10)
            await eventually(relay.swallowed_reading_ids, what="a PUBLISH of readings swallowed")
            lost = relay.swallowed_reading_ids()
            seen = watcher.reading_ids("m1") | watcher.reading_ids("m2")
            assert not lost & seen  # they went into the black hole, not to the backend
            await eventually(lambda: not link.connected.is_set(), what="the publish timing out")
            assert gateway.store.outbox_stats().total_pending > 0  # kept, not given up
            # Reconnects meanwhile go nowhere either: two more attempts, no session.
            attempts = relay.swallowed_connects()
            await eventually(
                lambda: relay.swallowed_connects() >= attempts + 2,
                what="two reconnect attempts swallowed",
            )
            assert link.counters.connects == connects
            assert not link.connected.is_set()

            relay.restore()
            await watcher.wait_until(_all_seen(gateway, watcher))
            await eventually(_outbox_empty(gateway), what="the outbox drained after the outage")
            assert link.counters.connects > connects
            # What the black hole swallowed reached the backend: resent from the outbox.
            assert lost <= watcher.reading_ids("m1") | watcher.reading_ids("m2")
            rows = _published_rows(gateway)

    for meter in METERS:
        journalled = [r.reading.reading_id for r in rows if r.reading.meter_id == meter]
        assert len(journalled) == 25
        first_seen = list(dict.fromkeys(d["reading_id"] for d in watcher.readings(meter)))
        assert first_seen == journalled, meter
    audit_books(site, expect_outbox_empty=True)
