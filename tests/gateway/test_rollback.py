"""A state directory restored from an older copy is refused at start, so a replayed top-up is
never credited twice.

Through a real mosquitto: the gateway publishes its ledger head as a signed, retained
checkpoint with every top-up and at shutdown, and reads it back before it bills or answers a
command. A ledger behind it (an older copy) or off it (an older copy that went on by itself)
is refused with the reason and the way back; the real state directory starts again. A
checkpoint that is not this store's (another incarnation, a bad signature) is logged, not
fatal, and an unreachable broker only costs the check. Every test clears the retained
checkpoint it leaves on the broker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import aiomqtt
import pytest

from drivers.ports import Reading
from gateway.config import Site
from gateway.daemon import Gateway
from gateway.northbound.checkpoint_reader import read_retained_checkpoint
from gateway.northbound.commands import new_command, sign_command
from gateway.northbound.payloads import CommandKind, encode_payload
from gateway.northbound.receipts import make_checkpoint, verify_checkpoint
from gateway.northbound.settings import MqttSettings
from gateway.northbound.signing import generate_private_key, load_private_key
from gateway.startup import STATE_FILE, RollbackError, load_keys, read_ledger_key
from gateway.store import EntryKind, Store
from tests.fixtures.mosquitto import Broker, free_port
from tests.gateway.crash_support import Watcher
from tests.gateway.site import ROOT, load
from tests.support.gateways import FeedSource, running, settled
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

SITE = "test-site"
CHECKPOINT = f"prepay/{SITE}/checkpoint"
PREPAY = str(ROOT / ".venv" / "bin" / "prepay")
PROCESS_TIMEOUT_S = 90.0  # a loaded 2-core machine starts Python and loads the site slowly


def signed_topup(site: Site, command_id: str, amount_minor: int) -> bytes:
    key = load_private_key(site.resolve(Path("keys/backend.pem")).read_bytes())
    fields = {"account": "A1", "amount_minor": amount_minor, "currency": "CNY"}
    body = new_command(
        CommandKind.TOPUP, SITE, fields, now=datetime.now(UTC), command_id=command_id
    )
    return json.dumps(sign_command(body, key)).encode()


async def publish(broker: Broker, topic: str, payload: bytes, *, retain: bool = False) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


@asynccontextmanager
async def clearing_checkpoint(broker: Broker) -> AsyncIterator[None]:
    """Whatever happens in the block, leave no retained checkpoint behind."""
    try:
        yield
    finally:
        await publish(broker, CHECKPOINT, b"", retain=True)


def balance_in(state_dir: Path, site: Site) -> int:
    key = read_ledger_key(site.resolve(site.config.keys.ledger_key_file))
    with Store(state_dir / STATE_FILE, ledger_key=key) as store:
        return store.balance("A1")


def answers(watcher: Watcher, command_id: str) -> list[dict[str, Any]]:
    return [
        doc
        for topic, doc in watcher.messages
        if topic.endswith("cmd/topup/result") and doc.get("id") == command_id
    ]


def checkpoints(watcher: Watcher) -> list[dict[str, Any]]:
    return [doc for topic, doc in watcher.messages if topic == CHECKPOINT]


async def run_once(site: Site, watcher: Watcher) -> None:
    """Start the gateway, see it online, stop it (it checkpoints on the way out)."""
    online = watcher.statuses().count("online")
    async with running(Gateway(site, sources=[], actuators=[])):
        await watcher.wait_until(lambda: watcher.statuses().count("online") > online)
    await stopped(watcher)


async def stopped(watcher: Watcher) -> None:
    """Wait for the stopped gateway's last word: ``offline`` comes after all it drained."""
    await watcher.wait_until(lambda: watcher.statuses()[-1:] == ["offline"])


async def test_rollback_older_copy_refused_replay_not_credited_real_state_starts(
    mosquitto: Broker, tmp_path: Path
) -> None:
    site = load(tmp_path, mqtt_port=mosquitto.port)
    state = site.state_dir
    watcher = Watcher()
    topup = signed_topup(site, "top-1", 1_000)
    async with (
        clearing_checkpoint(mosquitto),
        watcher.connected(mosquitto.host, mosquitto.port),
    ):
        await run_once(site, watcher)
        shutil.copytree(state, tmp_path / "before-topup")  # a backup, taken when stopped

        gateway = Gateway(site, sources=[], actuators=[])
        async with running(gateway):
            await publish(mosquitto, f"prepay/{SITE}/cmd/topup", topup)
            await watcher.wait_until(lambda: len(answers(watcher, "top-1")) == 1)
            assert answers(watcher, "top-1")[0]["status"] == "applied"
            # The checkpoint went out with the top-up, before its result.
            assert checkpoints(watcher)[-1]["seq"] == 1
            incarnation = gateway.store.incarnation
        await stopped(watcher)
        assert checkpoints(watcher)[-1]["incarnation"] == incarnation
        assert balance_in(state, site) == 1_000

        # The state directory is replaced by the copy taken before the top-up.
        state.rename(tmp_path / "real-state")
        shutil.copytree(tmp_path / "before-topup", state)
        online = watcher.statuses().count("online")
        published = len(watcher.messages)
        with pytest.raises(RollbackError) as refused:
            async with running(Gateway(site, sources=[], actuators=[])):
                pass
        reason = str(refused.value)
        assert f"the ledger of store {incarnation} ends at seq 0" in reason
        assert "(seq 1)" in reason
        assert "restored from an older copy" in reason
        assert "prepay ledger verify --expected-head 1:" in reason
        # The replayed top-up (still unexpired) finds no gateway to apply it: it waits at
        # the broker, in the gateway's session, and the old copy is never credited.
        await publish(mosquitto, f"prepay/{SITE}/cmd/topup", topup)
        with pytest.raises(RollbackError):
            async with running(Gateway(site, sources=[], actuators=[])):
                pass
        assert watcher.statuses().count("online") == online  # never went online
        assert all(topic.endswith("/cmd/topup") for topic, _ in watcher.messages[published:])
        assert balance_in(state, site) == 0

        # With the real state directory it starts, and the replay is a duplicate.
        shutil.rmtree(state)
        (tmp_path / "real-state").rename(state)
        gateway = Gateway(site, sources=[], actuators=[])
        async with running(gateway):
            await watcher.wait_until(lambda: len(answers(watcher, "top-1")) == 2)
            assert answers(watcher, "top-1")[1]["status"] == "duplicate"
            assert gateway.store.balance("A1") == 1_000
            assert len(gateway.store.entries("A1")) == 1


async def test_rollback_prepay_run_refuses_with_the_reason_and_exits_1(
    mosquitto: Broker, tmp_path: Path
) -> None:
    site = load(tmp_path, mqtt_port=mosquitto.port)
    watcher = Watcher()
    async with clearing_checkpoint(mosquitto):
        async with watcher.connected(mosquitto.host, mosquitto.port):
            await run_once(site, watcher)
            shutil.copytree(site.state_dir, tmp_path / "before-topup")
            async with running(Gateway(site, sources=[], actuators=[])):
                await publish(
                    mosquitto, f"prepay/{SITE}/cmd/topup", signed_topup(site, "top-1", 500)
                )
                await watcher.wait_until(lambda: len(answers(watcher, "top-1")) == 1)
        shutil.rmtree(site.state_dir)
        shutil.copytree(tmp_path / "before-topup", site.state_dir)
        proc = await asyncio.create_subprocess_exec(
            PREPAY,
            "run",
            "-c",
            str(site.path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
        )
        async with asyncio.timeout(PROCESS_TIMEOUT_S):
            _, err = await proc.communicate()
        assert proc.returncode == 1, err.decode()
        assert "refusing to start: the ledger of store" in err.decode()
        assert "ends at seq 0, behind the checkpoint" in err.decode()
        assert balance_in(site.state_dir, site) == 0


async def test_rollback_diverged_copy_refused(mosquitto: Broker, tmp_path: Path) -> None:
    site = load(tmp_path, mqtt_port=mosquitto.port)
    watcher = Watcher()
    async with clearing_checkpoint(mosquitto):
        async with watcher.connected(mosquitto.host, mosquitto.port):
            await run_once(site, watcher)
            shutil.copytree(site.state_dir, tmp_path / "before-topup")
            async with running(Gateway(site, sources=[], actuators=[])):
                await publish(
                    mosquitto, f"prepay/{SITE}/cmd/topup", signed_topup(site, "top-1", 500)
                )
                await watcher.wait_until(lambda: len(answers(watcher, "top-1")) == 1)
        # The older copy went on by itself (offline): its seq 1 is another entry.
        shutil.rmtree(site.state_dir)
        shutil.copytree(tmp_path / "before-topup", site.state_dir)
        key = read_ledger_key(site.resolve(site.config.keys.ledger_key_file))
        with Store(site.state_dir / STATE_FILE, ledger_key=key) as store, store.transaction() as tx:
            tx.append_entry(
                "A1", EntryKind.TOPUP, 70, "CNY", "topup:local", created_at=datetime.now(UTC)
            )
        with pytest.raises(RollbackError, match="diverges from the checkpoint"):
            async with running(Gateway(site, sources=[], actuators=[])):
                pass


async def test_rollback_checkpoint_of_another_store_or_forged_is_ignored(
    mosquitto: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.daemon")
    site = load(tmp_path, mqtt_port=mosquitto.port)
    gateway_key = load_keys(site).gateway
    ahead = {"seq": 1_000, "mac": bytes(32), "ts": datetime.now(UTC)}
    watcher = Watcher()
    async with (
        clearing_checkpoint(mosquitto),
        watcher.connected(mosquitto.host, mosquitto.port),
    ):
        await run_once(site, watcher)  # the store exists: its incarnation is known
        key = read_ledger_key(site.resolve(site.config.keys.ledger_key_file))
        with Store(site.state_dir / STATE_FILE, ledger_key=key) as store:
            incarnation = store.incarnation
        foreign = [
            # a store started anew elsewhere under this site id (another test, another box)
            make_checkpoint(SITE, "0123456789abcdef", **ahead, gateway_key=gateway_key),
            # this store's incarnation, but not signed by this gateway's key
            make_checkpoint(SITE, incarnation, **ahead, gateway_key=generate_private_key()),
        ]
        for checkpoint in foreign:
            await publish(mosquitto, CHECKPOINT, encode_payload(checkpoint), retain=True)
            caplog.clear()
            await run_once(site, watcher)
            messages = [r.getMessage() for r in caplog.records]
            assert any(
                "rollback check:" in m and ("not compared" in m or "not valid" in m)
                for m in messages
            ), messages


async def test_rollback_check_skipped_when_the_broker_is_unreachable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.daemon")
    site = load(tmp_path, mqtt_port=free_port())  # nothing listens there
    async with running(Gateway(site, sources=[], actuators=[])) as gateway:
        assert gateway.ready.is_set()
    assert any("the rollback check could not run" in r.getMessage() for r in caplog.records)


async def test_rollback_checkpoint_published_as_the_head_moves_and_at_shutdown(
    tmp_path: Path,
) -> None:
    site = load(tmp_path, mqtt_port=free_port())
    t0 = datetime(2026, 6, 1, tzinfo=UTC)
    feed = FeedSource()
    gateway = Gateway(
        site,
        clock=lambda: t0 + timedelta(hours=1),
        sources=[feed],
        actuators=[],
        connect_mqtt=False,
        checkpoint_every=5,
    )
    public_key = load_keys(site).gateway.public_key()

    def queued() -> list[dict[str, Any]]:  # retained: the outbox keeps the newest unsent one
        return [
            json.loads(m.payload) for m in gateway.store.pending(10_000) if m.topic == CHECKPOINT
        ]

    async with running(gateway):
        # +0.1 m3 a reading at 5.00 yuan/m3: a deduction (a ledger entry) per reading
        await feed.put(*[Reading("m1", t0 + timedelta(minutes=i), 100 * i) for i in range(12)])
        await eventually(lambda: settled(gateway), what="12 readings billed")
        await eventually(queued, what="a checkpoint once the head moved by 5")
        checkpoint = verify_checkpoint(queued()[-1], public_key)
        assert checkpoint.seq >= 5
        assert checkpoint.incarnation == gateway.store.incarnation
        assert gateway.store.mac_at(checkpoint.seq) == bytes.fromhex(checkpoint.mac)
    # Stopping checkpoints the head as it was left.
    key = read_ledger_key(site.resolve(site.config.keys.ledger_key_file))
    with Store(site.state_dir / STATE_FILE, ledger_key=key) as store:
        last = [json.loads(m.payload) for m in store.pending(10_000) if m.topic == CHECKPOINT]
        seq, mac = store.ledger_head()
    assert len(last) == 1
    assert (last[0]["seq"], last[0]["mac"]) == (seq, mac.hex())
    assert seq >= 11


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_rollback_reader_gets_the_retained_checkpoint_or_none_without_waiting(
    mosquitto: Broker, protocol: Literal["5", "3.1.1"]
) -> None:
    settings = MqttSettings(host=mosquitto.host, port=mosquitto.port, protocol=protocol)
    async with clearing_checkpoint(mosquitto):
        for n in range(20):  # subscribe, unsubscribe: the retained message comes in between
            assert await read_retained_checkpoint(settings, SITE) is None
            await publish(mosquitto, CHECKPOINT, f'{{"n":{n}}}'.encode(), retain=True)
            assert await read_retained_checkpoint(settings, SITE) == f'{{"n":{n}}}'.encode()
            await publish(mosquitto, CHECKPOINT, b"", retain=True)
