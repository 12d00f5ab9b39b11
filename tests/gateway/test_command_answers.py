"""Every command gets exactly one answer, and a command outside the limits changes nothing.

Through a real mosquitto: the test plays the backend, publishes signed commands on
``cmd/{kind}`` and reads the answers on ``cmd/{kind}/result``, as a utility's backend would.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.daemon import Gateway
from gateway.northbound.commands import new_command, sign_command
from gateway.northbound.payloads import CommandKind
from gateway.northbound.receipts import verify_receipt
from gateway.northbound.signing import load_private_key, load_public_key
from gateway.startup import STATE_FILE
from gateway.store import EntryKind
from tests.fixtures.mosquitto import Broker
from tests.gateway.crash_support import Watcher
from tests.gateway.site import load
from tests.support.gateways import running

SITE = "test-site"


@dataclass
class Backend:
    """The utility's side of the contract, for one test."""

    broker: Broker
    keys: Path
    watcher: Watcher
    gateway: Gateway

    def signed(self, kind: str, fields: dict[str, Any], command_id: str, **times: Any) -> bytes:
        key = load_private_key((self.keys / "backend.pem").read_bytes())
        body = new_command(
            CommandKind(kind), SITE, fields, now=datetime.now(UTC), command_id=command_id
        )
        body.update(times)
        return json.dumps(sign_command(body, key)).encode()

    async def send(self, kind: str, raw: bytes, *, retain: bool = False) -> None:
        async with aiomqtt.Client(self.broker.host, self.broker.port) as client:
            await client.publish(f"prepay/{SITE}/cmd/{kind}", raw, qos=1, retain=retain)

    async def result(self, kind: str, command_id: str | None, nth: int = 1) -> dict[str, Any]:
        """The ``nth`` answer on ``cmd/{kind}/result`` to ``command_id`` (None: no id)."""

        def answers() -> list[dict[str, Any]]:
            return [
                doc
                for topic, doc in self.watcher.messages
                if topic == f"prepay/{SITE}/cmd/{kind}/result" and doc.get("id") == command_id
            ]

        await self.watcher.wait_until(lambda: len(answers()) >= nth)
        return answers()[nth - 1]

    def answers_to(self, command_id: str) -> int:
        return sum(
            1
            for topic, doc in self.watcher.messages
            if topic.endswith("/result") and doc.get("id") == command_id
        )

    def ledger_entries(self) -> int:
        return len(self.gateway.store.entries("A1"))


@asynccontextmanager
async def backend(mosquitto: Broker, tmp_path: Path) -> AsyncIterator[Backend]:
    site = load(tmp_path, mqtt_port=mosquitto.port)
    watcher = Watcher()
    gateway = Gateway(site, sources=[], actuators=[])
    async with watcher.connected(mosquitto.host, mosquitto.port), running(gateway):
        await watcher.wait_for(lambda t, d: t.endswith("/status") and d["status"] == "online")
        yield Backend(mosquitto, tmp_path / "keys", watcher, gateway)


def _topup(amount_minor: int) -> dict[str, Any]:
    return {"account": "A1", "amount_minor": amount_minor, "currency": "CNY"}


async def test_command_same_id_other_content_is_refused_not_replayed(
    mosquitto: Broker, tmp_path: Path
) -> None:
    async with backend(mosquitto, tmp_path) as be:
        original = be.signed("topup", _topup(500), "same-id")
        await be.send("topup", original)
        first = await be.result("topup", "same-id")
        assert first["status"] == "applied"
        # The same id, signed again with other content (70,000 fen): not a resend.
        await be.send("topup", be.signed("topup", _topup(70_000), "same-id"))
        conflict = await be.result("topup", "same-id", nth=2)
        assert (conflict["status"], conflict["reason"]) == ("rejected", "duplicate_conflict")
        # The very same command again is a resend: the first result and receipt, no effect.
        await be.send("topup", original)
        again = await be.result("topup", "same-id", nth=3)
        assert again["status"] == "duplicate"
        assert again["receipt"] == first["receipt"]
        assert be.gateway.store.balance("A1") == 500
        assert be.ledger_entries() == 1


async def test_command_outside_the_limits_is_rejected_with_its_reason(
    mosquitto: Broker, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    async with backend(mosquitto, tmp_path) as be:
        cases = {
            "huge": (be.signed("topup", _topup(2**63), "huge"), "amount_too_large"),
            "huger": (be.signed("topup", _topup(10**30), "huger"), "amount_too_large"),
            "decade": (
                be.signed(
                    "topup",
                    _topup(100),
                    "decade",
                    issued_at=(now - timedelta(days=1)).isoformat(),
                    expires_at=(now + timedelta(days=3650)).isoformat(),
                ),
                "lifetime_too_long",
            ),
            "stale": (
                be.signed(
                    "topup",
                    _topup(100),
                    "stale",
                    issued_at=(now - timedelta(days=3)).isoformat(),
                    expires_at=(now + timedelta(hours=1)).isoformat(),
                ),
                "lifetime_too_long",
            ),
        }
        for raw, _ in cases.values():
            await be.send("topup", raw)
        for command_id, (_, reason) in cases.items():
            result = await be.result("topup", command_id)
            assert (result["status"], result["reason"]) == ("rejected", reason), command_id
        assert be.gateway.store.balance("A1") == 0
        assert be.ledger_entries() == 0
        assert all(be.answers_to(command_id) == 1 for command_id in cases)


async def test_command_over_the_size_limit_is_not_parsed(mosquitto: Broker, tmp_path: Path) -> None:
    # On MQTT 5 the gateway announces its maximum packet size and the broker drops a larger
    # command before sending it; on 3.1.1 it arrives, and the gateway refuses it unparsed.
    site = load(tmp_path, mqtt_port=mosquitto.port)
    mqtt = site.config.mqtt.model_copy(update={"protocol": "3.1.1"})
    site = dataclasses.replace(site, config=site.config.model_copy(update={"mqtt": mqtt}))
    watcher = Watcher()
    gateway = Gateway(site, sources=[], actuators=[])
    async with watcher.connected(mosquitto.host, mosquitto.port), running(gateway):
        await watcher.wait_for(lambda t, d: t.endswith("/status") and d["status"] == "online")
        be = Backend(mosquitto, tmp_path / "keys", watcher, gateway)
        padding = "x" * (300 * 1024)  # the default limit is 256 KiB
        await be.send("topup", be.signed("topup", {**_topup(100), "payment_ref": padding}, "big"))
        too_large = await be.result("topup", None)  # not parsed, so answered without an id
        assert (too_large["status"], too_large["reason"]) == ("rejected", "too_large")
        assert gateway.store.balance("A1") == 0


async def test_command_receipt_reissue_returns_the_signed_receipt(
    mosquitto: Broker, tmp_path: Path
) -> None:
    async with backend(mosquitto, tmp_path) as be:
        await be.send("topup", be.signed("topup", _topup(2_550), "top-1"))
        applied = await be.result("topup", "top-1")
        await be.send("receipt", be.signed("receipt", {"topup_id": "top-1"}, "reissue-1"))
        reissued = await be.result("receipt", "reissue-1")
        assert reissued["status"] == "applied"
        assert reissued["receipt"] == applied["receipt"]
        gateway_key = load_public_key((be.keys / "gateway.pub.pem").read_bytes())
        receipt = verify_receipt(reissued["receipt"], gateway_key)
        # 25.50 yuan credited to an empty account: 2,550 fen after.
        assert (receipt.amount_minor, receipt.balance_after_minor) == (2_550, 2_550)
        await be.send("receipt", be.signed("receipt", {"topup_id": "never"}, "reissue-2"))
        unknown = await be.result("receipt", "reissue-2")
        assert (unknown["status"], unknown["reason"]) == ("rejected", "unknown_topup")


async def test_command_retained_is_refused(mosquitto: Broker, tmp_path: Path) -> None:
    # Published retained before the gateway subscribes: the broker delivers it with the retain
    # flag, as it would at every restart of the gateway.
    site = load(tmp_path, mqtt_port=mosquitto.port)
    key = load_private_key((tmp_path / "keys" / "backend.pem").read_bytes())
    body = new_command(CommandKind.TOPUP, SITE, _topup(900), now=datetime.now(UTC))
    raw = json.dumps(sign_command(body, key)).encode()
    topic = f"prepay/{SITE}/cmd/topup"
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
        await client.publish(topic, raw, qos=1, retain=True)
    try:
        watcher = Watcher()
        gateway = Gateway(site, sources=[], actuators=[])
        async with watcher.connected(mosquitto.host, mosquitto.port), running(gateway):
            result = await watcher.wait_for(
                lambda t, d: t.endswith("cmd/topup/result") and d.get("id") == body["id"]
            )
            assert (result["status"], result["reason"]) == ("rejected", "retained")
            assert gateway.store.balance("A1") == 0
    finally:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.publish(topic, b"", qos=1, retain=True)  # clear it for other tests


async def test_command_failing_inside_is_answered_internal_error_and_changes_nothing(
    mosquitto: Broker, tmp_path: Path
) -> None:
    async with backend(mosquitto, tmp_path) as be:
        await be.send("topup", be.signed("topup", _topup(1_000), "ok-1"))
        assert (await be.result("topup", "ok-1"))["status"] == "applied"
        # A damaged store (the receipt counter set back by hand): the next receipt number is
        # taken already, so the top-up's transaction fails half-way.
        with sqlite3.connect(be.gateway.site.state_dir / STATE_FILE) as conn:
            conn.execute("UPDATE counters SET value = 0 WHERE name = 'receipt_seq'")
        await be.send("topup", be.signed("topup", _topup(2_000), "broken-1"))
        result = await be.result("topup", "broken-1")
        assert (result["status"], result["reason"]) == ("rejected", "internal_error")
        assert be.gateway.store.balance("A1") == 1_000
        assert be.gateway.probe.balance_minor("A1") == 1_000  # memory reloaded, not ahead
        assert [e.kind for e in be.gateway.store.entries("A1")] == [EntryKind.TOPUP]
        assert be.gateway.probe.counters().commands_rejected == 1  # one answer, one count
