"""Receipts of water sold: a vending session's and a ticket sale's, beside the top-up's. The
QR texts round trip and refuse what was changed; a ticket sold at the box gets its receipt in
the same transaction, with no number burnt by a refused sale; a store from before these
receipts keeps its top-up receipts."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from billing_engine.base.errors import InvalidConfigError
from gateway.cli import main
from gateway.northbound.payloads import TicketSaleReceiptPayload, VendingReceiptPayload
from gateway.northbound.receipts import make_ticket_sale_receipt, make_vending_receipt
from gateway.northbound.signing import generate_private_key, load_public_key, sign_document
from gateway.ops import tickets
from gateway.ops.receipt_check import ReceiptRefusedError, check_file, check_qr_text
from gateway.ops.receipt_pdf import find_cjk_font, qr_text, receipt_from_qr_text, render_pdf
from gateway.store import Store
from gateway.store import db as store_db
from gateway.store.tickets import EmergencyCapError
from tests.tickets.box import Box, code, write_box

KEY = generate_private_key()
CLOSED = datetime(2026, 12, 1, 9, 14, 3, 120_000, tzinfo=UTC)
NOW = datetime(2027, 1, 15, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai, the box's zone


def _pour(**paid: Any) -> dict[str, Any]:
    return make_vending_receipt(
        18,
        site="depot3",
        dispenser="kiosk-1",
        session_id=42,
        poured_ml=2_500,
        billed_ml=2_500,
        closed_at=CLOSED,
        gateway_key=KEY,
        store="3f9c2a71d04be815",
        **(
            paid
            or {"account": "A1", "amount_minor": 88, "currency": "CNY", "balance_after_minor": 912}
        ),
    )


def _sale() -> dict[str, Any]:
    return make_ticket_sale_receipt(
        19,
        site="depot3",
        code=code(900_700_001),
        product="18.9L",
        valid_until=date(2027, 2, 15),
        sold_at=NOW,
        gateway_key=KEY,
        amount_minor=1_500,
        currency="CNY",
    )


def _cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code_ = main(argv)
    return code_, out.getvalue()


# --- the codec ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("signed", "tag"),
    [
        (_pour(), "prepay-vend-receipt/1"),
        (_pour(ticket=code(7)), "prepay-vend-receipt/1"),
        (_sale(), "prepay-ticket-receipt/1"),
    ],
)
def test_water_receipt_qr_text_round_trips(signed: dict[str, Any], tag: str) -> None:
    text = qr_text(signed)
    assert json.loads(text)[0] == tag
    assert receipt_from_qr_text(text) == signed  # kind back from the tag, nulls left out
    assert check_qr_text(text, KEY.public_key()).receipt.receipt_seq == signed["receipt_seq"]


def test_water_receipts_altered_or_mislabelled_are_refused() -> None:
    # A pour made cheaper after signing: the signature no longer matches.
    cheaper = json.loads(qr_text(_pour()))
    cheaper[9] = 8  # amount_minor 88 -> 8
    with pytest.raises(ReceiptRefusedError) as refused:
        check_qr_text(json.dumps(cheaper), KEY.public_key())
    assert refused.value.reason == "bad_signature"
    # A ticket sale's values read as a vending receipt: too few values for that tag.
    relabelled = ["prepay-vend-receipt/1", *json.loads(qr_text(_sale()))[1:]]
    with pytest.raises(ReceiptRefusedError) as refused:
        check_qr_text(json.dumps(relabelled), KEY.public_key())
    assert refused.value.reason == "not_a_receipt"
    # Signed, but both an account and a ticket paid: not the shape of a vending receipt.
    body = {k: v for k, v in _pour().items() if k != "signature"}
    both = sign_document({**body, "ticket": code(7)}, KEY)
    with pytest.raises(ReceiptRefusedError) as refused:
        check_qr_text(qr_text(both), KEY.public_key())
    assert refused.value.reason == "malformed"


def test_a_vending_receipt_names_the_account_or_the_ticket_never_neither() -> None:
    with pytest.raises(ValueError, match="either the account or the ticket"):
        make_vending_receipt(
            1,
            site="s",
            dispenser="d",
            session_id=1,
            poured_ml=0,
            billed_ml=0,
            closed_at=CLOSED,
            gateway_key=KEY,
        )


def test_water_receipt_pdfs_check_out_and_a_forged_page_is_refused(tmp_path: Path) -> None:
    font = find_cjk_font()
    tz = ZoneInfo("Asia/Shanghai")
    for name, signed in (
        ("pour", _pour()),
        ("ticket-pour", _pour(ticket=code(7))),
        ("sale", _sale()),
    ):
        path = tmp_path / f"{name}.pdf"
        model = (
            TicketSaleReceiptPayload if signed["kind"] == "ticket_sale" else VendingReceiptPayload
        ).model_validate(signed)
        path.write_bytes(render_pdf(signed, model, tz, font))
        assert check_file(path, KEY.public_key()).receipt == model
    # The page says 25.000 L where the signed receipt says 2.500 L.
    forged = VendingReceiptPayload.model_validate({**_pour(), "poured_ml": 25_000})
    path = tmp_path / "forged.pdf"
    path.write_bytes(render_pdf(_pour(), forged, tz, font))
    with pytest.raises(ReceiptRefusedError) as refused:
        check_file(path, KEY.public_key())
    assert refused.value.reason == "printed_mismatch"
    assert "Poured" in refused.value.detail


def test_the_documented_water_receipts_verify_with_the_documented_key() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "mqtt-api.md").read_text()
    key = load_public_key("Kay64UG8yvCyLhqU000LxzYeUm0L/hLIl5S8kyKWbdc=")
    for model in ("VendingReceiptPayload", "TicketSaleReceiptPayload"):
        start = doc.index(f"<!-- example:{model} -->\n```json\n") + len(
            f"<!-- example:{model} -->\n```json\n"
        )
        example = json.loads(doc[start : doc.index("```", start)])
        assert check_qr_text(qr_text(example), key).receipt.receipt_seq in (18, 19)


# --- a ticket sold at the box ---------------------------------------------------------------
def test_an_emergency_ticket_sold_at_the_box_comes_with_its_receipt(tmp_path: Path) -> None:
    box: Box = write_box(tmp_path, settings={"prices_minor": {"18.9L": 1_500}, "currency": "CNY"})
    site = box.site()  # cap 2 a day
    with box.store() as store:
        first = tickets.issue_emergency(site, store, "18.9L", now=NOW, note="typhoon")
        second = tickets.issue_emergency(site, store, "18.9L", now=NOW)
        with pytest.raises(EmergencyCapError):  # refused: no ticket, no receipt number taken
            tickets.issue_emergency(site, store, "18.9L", now=NOW)
        listed = [(t.code, t.receipt_seq) for t in store.emergency_tickets()]
    assert (first.receipt_seq, second.receipt_seq) == (1, 2)
    assert listed == [(first.code, 1), (second.code, 2)]
    # The CLI sells the next day's and prints its receipt; the customer checks it offline.
    pdf = tmp_path / "sale.pdf"
    status, out = _cli(
        ["ticket", "issue-emergency", "-c", str(box.site_file), "--product", "18.9L",
         "--receipt", str(pdf), "--json"]
    )  # fmt: skip
    assert status == 0, out
    sold = json.loads(out)
    assert (sold["receipt_seq"], sold["receipt_pdf"]) == (3, str(pdf))  # the cap is per day
    gateway_pub = box.directory / "keys" / "gateway.pub.pem"
    checked = check_file(pdf, load_public_key(gateway_pub.read_bytes())).receipt
    assert isinstance(checked, TicketSaleReceiptPayload)
    assert (checked.code, checked.product, checked.amount_minor, checked.currency) == (
        sold["code"],
        "18.9L",
        1_500,
        "CNY",
    )


def test_a_ticket_sold_where_the_product_has_no_price_has_a_receipt_without_money(
    tmp_path: Path,
) -> None:
    box = write_box(tmp_path)
    with box.store() as store:
        ticket = tickets.issue_emergency(box.site(), store, "18.9L", now=NOW)
    status, out = _cli(
        ["receipt", "print", "-c", str(box.site_file), "--ticket", ticket.code,
         "-o", str(tmp_path / "r.pdf")]
    )  # fmt: skip
    assert status == 0, out
    gateway_pub = str(box.directory / "keys" / "gateway.pub.pem")
    status, out = _cli(["receipt", "verify", str(tmp_path / "r.pdf"), "--gateway-key", gateway_pub])
    assert status == 0, out
    assert f"emergency ticket {ticket.code} for 18.9L, valid until 2027-02-15" in out
    assert "CNY" not in out


def test_ticket_prices_must_name_products_of_the_box_and_a_currency(tmp_path: Path) -> None:
    box = write_box(tmp_path / "a", settings={"prices_minor": {"5L": 300}, "currency": "CNY"})
    with pytest.raises(InvalidConfigError, match=r"prices_minor names \['5L'\]"):
        box.site()
    box = write_box(tmp_path / "b", settings={"prices_minor": {"18.9L": 1_500}})
    with pytest.raises(InvalidConfigError, match="prices_minor needs currency"):
        box.site()


# --- a store from before -------------------------------------------------------------------
def test_a_version_8_store_keeps_its_top_up_receipts(tmp_path: Path) -> None:
    path = tmp_path / "v8.sqlite"
    conn = store_db.connect(path)
    assert store_db.migrate(conn, 0, store_db.MIGRATIONS[:8]) == 8
    conn.execute("UPDATE counters SET value = 1 WHERE name = 'receipt_seq'")
    conn.execute(
        "INSERT INTO receipts (seq, topup_id, account_id, payload, signature)"
        " VALUES (1, 'topup-1', 'A1', X'7B7D', X'7369')"
    )
    conn.close()
    with Store(path, ledger_key=b"k" * 32) as store:
        kept = store.receipt_for_topup("topup-1")
        with store.transaction() as tx:
            assert tx.next_receipt_seq() == 2  # numbering goes on
    assert kept is not None
    assert (kept.seq, kept.kind, kept.subject, kept.account_id) == (1, "topup", "topup-1", "A1")
    assert (kept.payload, kept.signature) == (b"{}", b"si")
