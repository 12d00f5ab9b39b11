"""Invoices that are never lost: a top-up with invoice details is followed by an invoice
request through the outbox, its status follows the backend's answers, it can be reissued, and
an enterprise asks one invoice for a period's top-ups. Through a real mosquitto."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.config import load_site
from gateway.daemon import Gateway
from gateway.store.invoices import invoice_id_of
from tests.fixtures.mosquitto import Broker, free_port
from tests.gateway.crash_support import Watcher
from tests.gateway.site import load, write_site
from tests.gateway.test_end_to_end import send_command
from tests.support.gateways import running

pytestmark = pytest.mark.integration

DETAILS = {
    "title": "杭州西湖水务有限公司",
    "tax_id": "91330106MA2H0X1234",
    "email": "ap@example.cn",
}


def _result(watcher: Watcher, command_id: str) -> Any:
    return watcher.wait_for(lambda t, d: t.endswith("/result") and d.get("id") == command_id)


def _state(watcher: Watcher, invoice_id: str, status: str) -> Any:
    return watcher.wait_for(
        lambda t, d: t.endswith(f"/invoice/{invoice_id}/state") and d["status"] == status
    )


async def test_invoices_requested_answered_reissued_and_by_period(
    mosquitto: Broker, tmp_path: Path
) -> None:
    site = load(tmp_path, mqtt_port=mosquitto.port)
    keys = tmp_path / "keys"
    watcher = Watcher()
    async with watcher.connected(mosquitto.host, mosquitto.port), running(Gateway(site)) as gw:
        # Ready is the gateway's; commands need its link subscribed, which "online" follows.
        await watcher.wait_for(lambda t, d: t.endswith("/status") and d["status"] == "online")

        async def command(kind: str, fields: dict[str, Any], cid: str) -> dict[str, Any]:
            await send_command(mosquitto, keys, kind, fields, cid)
            result: dict[str, Any] = await _result(watcher, cid)
            return result

        # A top-up of 100.00 with invoice details: applied, and an invoice request follows.
        topup = {"account": "A1", "amount_minor": 10_000, "currency": "CNY", "invoice": DETAILS}
        assert (await command("topup", topup, "t-inv"))["status"] == "applied"
        inv = invoice_id_of("t-inv")
        request = await watcher.wait_for(lambda t, d: t.endswith(f"/invoice/{inv}/request"))
        assert request["topups"] == ["t-inv"]
        assert (request["amount_minor"], request["currency"], request["request"]) == (
            10_000,
            "CNY",
            1,
        )
        assert request["details"] == DETAILS
        await _state(watcher, inv, "requested")

        # The backend fails it (a wrong tax id), the operator reissues, the backend issues it.
        failed = {"action": "failed", "invoice_id": inv, "reason": "tax id not found"}
        assert (await command("invoice", failed, "i-1"))["status"] == "applied"
        assert (await _state(watcher, inv, "failed"))["reason"] == "tax id not found"
        reissue = [
            "invoice",
            "reissue",
            inv,
            "-c",
            str(site.path),
            "--operator-key",
            str(keys / "operator.pem"),
            "--wait",
            "60",
        ]
        assert await asyncio.to_thread(main, reissue) == 0
        await watcher.wait_for(
            lambda t, d: t.endswith(f"/invoice/{inv}/request") and d["request"] == 2
        )
        issued = {"action": "issued", "invoice_id": inv, "number": "No.04471234"}
        assert (await command("invoice", issued, "i-2"))["status"] == "applied"
        assert (await _state(watcher, inv, "issued"))["number"] == "No.04471234"
        # Issued again with another number: refused, the first number stands.
        other = {**issued, "number": "No.99999999"}
        refused = await command("invoice", other, "i-3")
        assert (refused["status"], refused["reason"]) == ("rejected", "invoice_conflict")
        unknown = await command("invoice", {**issued, "invoice_id": "inv-nope"}, "i-4")
        assert unknown["reason"] == "unknown_invoice"

        # An enterprise's period: two top-ups without invoice details, one invoice for both
        # (20.00 + 30.00 = 50.00); the top-up invoiced above is not taken again.
        for cid, amount in (("t-a", 2_000), ("t-b", 3_000)):
            fields = {"account": "A1", "amount_minor": amount, "currency": "CNY"}
            assert (await command("topup", fields, cid))["status"] == "applied"
        now = datetime.now(UTC)
        period = {
            "action": "request_period",
            "account": "A1",
            "period_from": (now - timedelta(days=1)).isoformat(),
            "period_to": (now + timedelta(days=1)).isoformat(),
            "details": {"title": "杭州西湖水务有限公司"},
        }
        assert (await command("invoice", period, "p-1"))["status"] == "applied"
        monthly = invoice_id_of("p-1")
        request = await watcher.wait_for(lambda t, d: t.endswith(f"/invoice/{monthly}/request"))
        assert (request["topups"], request["amount_minor"]) == (["t-a", "t-b"], 5_000)
        again = await command("invoice", period, "p-2")
        assert again["reason"] == "nothing_to_invoice"

        listed = {i.invoice_id: i for i in gw.store.invoices("A1")}
        assert (listed[inv].status, listed[inv].number, listed[inv].requests) == (
            "issued",
            "No.04471234",
            2,
        )
        assert listed[monthly].status == "requested"


async def test_invoice_request_waits_in_the_outbox_while_the_broker_is_away(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site_file = write_site(tmp_path, mqtt_port=free_port())  # nothing listens there
    gateway = Gateway(load_site(site_file))
    argv = [
        "topup",
        "-c",
        str(site_file),
        "--account",
        "A1",
        "--amount",
        "12.00",
        "--operator-key",
        str(tmp_path / "keys" / "operator.pem"),
        "--invoice-title",
        "Li Lei",
        "--wait",
        "60",
    ]
    async with running(gateway):
        assert await asyncio.to_thread(main, argv) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        inv = invoice_id_of(result["id"])
        pending = [m.topic for m in gateway.store.pending(1000)]
        assert f"prepay/test-site/invoice/{inv}/request" in pending
        assert f"prepay/test-site/invoice/{inv}/state" in pending
    assert main(["invoice", "list", "-c", str(site_file), "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert (listed["invoice_id"], listed["status"], listed["amount_minor"]) == (
        inv,
        "requested",
        1200,
    )
    assert main(["topup", *argv[1:9], "--tax-id", "123456"]) == 2  # tax id without a title
