"""Two boxes of one plant, two running gateways, one real mosquitto: a batch arrives as a
signed ``cmd/ticket_batch``; a ticket redeemed at one box is refused at the other once its
retained redemption arrives; the same ticket redeemed at both while apart is a conflict that
both publish."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.config import load_site
from gateway.daemon import Gateway
from gateway.northbound.commands import new_command, sign_command
from gateway.northbound.payloads import CommandKind
from gateway.northbound.signing import load_private_key
from gateway.ops import tickets
from gateway.tickets.reasons import Reason
from tests.fixtures.mosquitto import Broker
from tests.gateway.crash_support import Watcher
from tests.support.gateways import running
from tests.support.waiting import eventually
from tests.tickets.box import Box, batch_document, code, write_box

pytestmark = pytest.mark.integration

FROM, UNTIL = date(2026, 1, 1), date(2027, 12, 31)


async def _command(broker: Broker, box: Box, site: str, batch: dict[str, Any], cid: str) -> None:
    key = load_private_key((box.directory / "keys" / "backend.pem").read_bytes())
    body = new_command(
        CommandKind.TICKET_BATCH, site, {"batch": batch}, now=datetime.now(UTC), command_id=cid
    )
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(
            f"prepay/{site}/cmd/ticket_batch", json.dumps(sign_command(body, key)), qos=1
        )


@contextlib.asynccontextmanager
async def _gateway(box: Box) -> AsyncIterator[Gateway]:
    gateway = Gateway(load_site(box.site_file), sources=[], actuators=[])
    async with running(gateway):
        yield gateway


def _redeem(box: Box, serial: int, where: str) -> tickets.RedeemResult:
    with box.store() as store:
        return tickets.redeem(box.site(), store, code(serial), now=datetime.now(UTC), where=where)


def _refusal(box: Box, serial: int) -> Reason | None:
    with box.store() as store:
        verdict = tickets.check(box.site(), store, code(serial), now=datetime.now(UTC))
    return None if verdict.refusal is None else verdict.refusal.reason


async def test_feed_batches_by_command_redemptions_across_boxes_and_conflicts(
    mosquitto: Broker, tmp_path: Path
) -> None:
    a = write_box(tmp_path / "a", site_id="box-a", mqtt_port=mosquitto.port)
    b = write_box(tmp_path / "b", site_id="box-b", plant_keys_from=a, mqtt_port=mosquitto.port)
    batch = batch_document(a, "B-1", [(100, 50)], valid_from=FROM, valid_until=UNTIL)
    watcher = Watcher(topics=("prepay/tickets/#", "prepay/+/cmd/+/result"))
    async with watcher.connected(mosquitto.host, mosquitto.port):
        async with _gateway(a) as gw_a, _gateway(b) as gw_b:
            # The batch reaches each box as a backend command; box A also gets a forgery.
            await _command(mosquitto, a, "box-a", batch, "tb-1")
            await _command(mosquitto, b, "box-b", batch, "tb-1")
            forged = batch_document(
                a, "B-2", [(200, 5)], valid_from=FROM, valid_until=UNTIL, key=a.stranger_key
            )
            await _command(mosquitto, a, "box-a", forged, "tb-2")
            results = {}
            for site, cid in (("box-a", "tb-1"), ("box-b", "tb-1"), ("box-a", "tb-2")):
                results[site, cid] = await watcher.wait_for(
                    lambda t, d, s=site, c=cid: (
                        t == f"prepay/{s}/cmd/ticket_batch/result" and d["id"] == c
                    )
                )
            assert results["box-a", "tb-1"]["status"] == "applied"
            assert results["box-b", "tb-1"]["status"] == "applied"
            assert results["box-a", "tb-2"]["status"] == "rejected"
            assert results["box-a", "tb-2"]["reason"] == "invalid_batch"
            assert _refusal(a, 200) is Reason.NOT_ISSUED  # the forgery issued nothing

            # Ticket 100 is redeemed at box A; box B learns it from A's retained message.
            assert _redeem(a, 100, "counter 1").redeemed is not None
            await watcher.wait_for(
                lambda t, d: t == f"prepay/tickets/330102/{code(100)}/redeemed/box-a"
            )
            assert gw_a.tickets is not None
            assert gw_b.tickets is not None
            await eventually(lambda: gw_b.tickets.imported == 1, what="box B imported it")
            assert _refusal(b, 100) is Reason.USED_ELSEWHERE
            assert _refusal(b, 101) is None  # the rest of the batch is untouched

        # Network down at box A: the depot issues an emergency ticket by hand. It is reported
        # (retained, for the backend to reconcile) as soon as A's gateway runs again.
        with a.store() as store:
            emergency = tickets.issue_emergency(
                a.site(), store, "18.9L", now=datetime.now(UTC), note="typhoon"
            )
        # Apart: box A (running alone) and box B (its gateway down) both take ticket 101.
        async with _gateway(a):
            reported = await watcher.wait_for(
                lambda t, d: t == f"prepay/tickets/330102/{emergency.code}/emergency/box-a"
            )
            assert (reported["product"], reported["note"]) == ("18.9L", "typhoon")
            # The box's statistics, retained, as of this start: batch B-1 issued 50 codes,
            # ticket 100 used (phase one), the emergency ticket issued and (now) reported.
            stats = await watcher.wait_for(
                lambda t, d: (
                    t == "prepay/tickets/330102/stats/box-a"
                    and d["products"].get("18.9L", {}).get("emergency_issued") == 1
                )
            )
            product = stats["products"]["18.9L"]
            assert (product["paper_issued"], product["paper_used"]) == (50, 1)
            assert product["paper_remaining"] == 49  # 50 - 1 used
            with a.store() as store:
                assert not store.emergency_tickets(unreconciled_only=True)
            assert _redeem(a, 101, "counter 1").redeemed is not None
            assert _redeem(b, 101, "door").redeemed is not None  # B does not know yet
            await watcher.wait_for(
                lambda t, d: t == f"prepay/tickets/330102/{code(101)}/redeemed/box-a"
            )
            # B comes back: each learns the other's redemption, each sees the conflict.
            async with _gateway(b) as gw_b:
                conflict = await watcher.wait_for(
                    lambda t, d: t == f"prepay/tickets/330102/{code(101)}/conflict"
                )
                assert {conflict["here"]["box"], conflict["elsewhere"]["box"]} == {
                    "box-a",
                    "box-b",
                }
                assert gw_b.tickets is not None
                await eventually(lambda: gw_b.tickets.conflicts == 1, what="B saw it")
    with a.store() as store_a, b.store() as store_b:
        assert [c.code for c in store_a.conflicts()] == [code(101)]
        assert [c.code for c in store_b.conflicts()] == [code(101)]
