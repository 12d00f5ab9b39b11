"""Every settled vending session yields a signed receipt a customer can keep and check: the
real gateway and store, the simulated dispenser behind the real bleak client. Golden values
carry their arithmetic (35 fen per litre, half-up)."""

from __future__ import annotations

import asyncio
import contextlib
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from drivers.ble.gatt import IdentityKind
from drivers.ports import PourReport
from firmware_sim.ble_backend import SimulatedAir
from firmware_sim.dispenser import SimulatedDispenser
from gateway.cli import main
from gateway.config import Site, load_site
from gateway.daemon import Gateway
from gateway.northbound.commands import ReceiptCommand
from gateway.northbound.payloads import VendingReceiptPayload
from gateway.northbound.receipts import verify_receipt
from gateway.northbound.signing import load_public_key
from tests.gateway.site import water_account
from tests.support.gateways import running
from tests.support.waiting import eventually
from tests.vending.conftest import (
    CARD,
    dispenser_entry,
    gateway_for,
    present,
    session_messages,
    topup,
    vend_entries,
    vending_site,
)


def _public_key(site: Site) -> Path:
    return site.path.parent / "keys" / "gateway.pub.pem"


def _cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


async def _reissue(gateway: Gateway, seq: int) -> dict[str, object]:
    now = datetime.now(UTC)
    command = ReceiptCommand(
        kind="receipt",
        id=f"q-{seq}",
        site="test-site",
        issued_at=now,
        expires_at=now + timedelta(hours=1),
        signature="unused-by-apply",
        receipt_seq=seq,
    )
    result = await gateway.commands.apply(command, now)
    return result.model_dump(mode="json", exclude_none=True)


async def test_a_pour_paid_from_credit_gets_a_receipt_that_checks_out(
    site: Site, air: SimulatedAir, kiosk: SimulatedDispenser, tmp_path: Path
) -> None:
    gateway, _ = gateway_for(site, air)
    async with running(gateway):
        await topup(gateway, 1_000)  # receipt 1: the top-up
        await present(kiosk, IdentityKind.ACCOUNT_CARD, CARD)
        await eventually(lambda: kiosk.max_ml > 0, what="the dispenser is authorised")
        assert kiosk.pour(2_500) == 2_500
        kiosk.finish()
        await eventually(lambda: gateway.vending.counters.settled == 1)
        settled = session_messages(gateway)[-1]
        receipt = settled["receipt"]
        # 2.5 L x 35 fen = 87.5 -> 88 fen (half-up); 1000 - 88 = 912 after the pour.
        assert receipt == {
            **receipt,
            "kind": "vending",
            "receipt_seq": 2,  # after the top-up's: one numbering per site
            "session": "kiosk-1:1",
            "dispenser": "kiosk-1",
            "account": "A1",
            "poured_ml": 2_500,
            "billed_ml": 2_500,
            "amount_minor": 88,
            "currency": "CNY",
            "balance_after_minor": 912,
        }
        assert "ticket" not in receipt
        key = load_public_key(_public_key(site).read_bytes())
        checked = verify_receipt(receipt, key)
        assert isinstance(checked, VendingReceiptPayload)

        # A replayed end-of-session report changes nothing: no second receipt.
        before = gateway.vending.counters.replayed
        await gateway.vending.poured(
            PourReport("kiosk-1", 1, 2_500, ended=True, at=checked.closed_at)
        )
        assert gateway.vending.counters.replayed == before + 1
        with gateway.store.transaction() as tx:
            assert tx.receipt_by_seq(3) is None

        # Reissued by number through the backend's cmd/receipt: the very same signed object.
        reissued = await _reissue(gateway, 2)
        assert reissued["status"] == "applied"
        assert reissued["receipt"] == receipt
        unknown = await _reissue(gateway, 99)
        assert (unknown["status"], unknown["reason"]) == ("rejected", "unknown_receipt")

        # Printed while the daemon runs, and checked offline from the PDF.
        pdf = tmp_path / "pour.pdf"
        code, out = _cli(
            ["receipt", "print", "-c", str(site.path), "--session", "kiosk-1:1", "-o", str(pdf)]
        )
        assert (code, out.strip()) == (0, f"wrote {pdf} (receipt 2)")
    code, out = _cli(["receipt", "verify", str(pdf), "--gateway-key", str(_public_key(site))])
    assert code == 0, out
    assert out.startswith("valid receipt 2 of test-site (pdf): water 2.500 L at kiosk-1")
    assert "A1 -0.88 CNY, balance 9.12 CNY" in out


async def test_a_pour_whose_account_left_the_site_settles_charged_to_nobody_without_receipt(
    tmp_path: Path, air: SimulatedAir, kiosk: SimulatedDispenser
) -> None:
    # A1 pays with its card; while the session is open, a reload (SIGHUP) takes A1 off the
    # site (the card now names A2).
    site = vending_site(tmp_path, [dispenser_entry("kiosk-1")])
    gateway, _ = gateway_for(site, air)
    async with running(gateway):
        await topup(gateway, 1_000)
        await present(kiosk, IdentityKind.ACCOUNT_CARD, CARD)
        await eventually(lambda: kiosk.max_ml > 0, what="the dispenser is authorised")
        doc = yaml.safe_load(site.path.read_text())
        doc["accounts"] = [water_account("A2", "m2")]
        doc["devices"]["ble_dispensers"][0]["vending"]["cards"] = {CARD: "A2"}
        site.path.write_text(yaml.safe_dump(doc, sort_keys=False))
        async with gateway.ctx.lock:
            await asyncio.to_thread(gateway.ctx.reload, load_site(site.path))
        assert kiosk.pour(1_000) == 1_000
        kiosk.finish()
        await eventually(lambda: gateway.vending.counters.settled == 1)
        settled = session_messages(gateway)[-1]
        # 1 L poured, charged to nobody: 0, no balance.
        assert (settled["status"], settled["poured_ml"], settled["charge_minor"]) == (
            "settled",
            1_000,
            0,
        )
        assert "balance_minor" not in settled
        assert "receipt" not in settled  # nobody paid: nothing to give a customer
        assert vend_entries(gateway) == []
        with gateway.store.transaction() as tx:
            assert tx.receipt_by_seq(2) is None  # only the top-up's, number 1
