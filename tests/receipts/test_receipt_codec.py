"""The receipt's QR text and PDF, without a daemon: the QR text's round trip, a page that shows
other values than its signed receipt, and that the CLI starts without the PDF libraries."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.northbound.payloads import ReceiptPayload
from gateway.northbound.signing import generate_private_key, key_id, load_public_key, sign_document
from gateway.ops.receipt_check import ReceiptRefusedError, check_file, check_qr_text
from gateway.ops.receipt_pdf import find_cjk_font, qr_text, receipt_from_qr_text, render_pdf

KEY = generate_private_key()


def _signed(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "receipt_seq": 17,
        "site": "site-1",
        "topup_id": "5f0c6a1e-0b7e-4f57-9a51-8f3b8f6f2a10",
        "account": "acc-7",
        "amount_minor": 2000,
        "currency": "CNY",
        "balance_after_minor": 3500,
        "applied_at": "2026-03-01T12:00:01.250Z",
        "key_id": key_id(KEY.public_key()),
        **overrides,
    }
    return sign_document(body, KEY)


def test_receipt_qr_text_without_optional_fields_round_trips() -> None:
    # A receipt made before stores had an incarnation, without a payment reference.
    signed = _signed()
    text = qr_text(signed)
    assert text.startswith('["prepay-receipt/1",17,"site-1",')
    assert ',"2026-03-01T12:00:01.250Z",null,null,' in text
    assert receipt_from_qr_text(text) == signed
    assert check_qr_text(text, KEY.public_key()).receipt.amount_minor == 2000


def test_receipt_qr_text_refuses_a_field_it_has_no_place_for() -> None:
    with pytest.raises(ValueError, match=r"no place for \['note'\]"):
        qr_text({**_signed(), "note": "x"})


def test_receipt_pdf_showing_other_values_refused(tmp_path: Path) -> None:
    # The attached receipt is genuine, the page printed from a forged model says 90.00 CNY.
    signed = _signed(store="3f9c2a71d04be815")
    forged = ReceiptPayload.model_validate({**signed, "amount_minor": 9000})
    path = tmp_path / "forged.pdf"
    path.write_bytes(render_pdf(signed, forged, ZoneInfo("Asia/Shanghai"), find_cjk_font()))
    with pytest.raises(ReceiptRefusedError) as refused:
        check_file(path, KEY.public_key())
    assert (refused.value.reason, refused.value.detail) == (
        "printed_mismatch",
        "the page does not show the signed Amount",
    )


def test_receipt_pdf_is_the_same_file_for_the_same_receipt() -> None:
    # Dated by the receipt, not by the printing: a reprint is byte for byte the first print.
    signed = _signed(payment_ref="operator:desk-1")
    receipt = ReceiptPayload.model_validate(signed)
    tz = ZoneInfo("Asia/Shanghai")
    first = render_pdf(signed, receipt, tz, find_cjk_font())
    assert render_pdf(signed, receipt, tz, find_cjk_font()) == first


def test_receipt_cli_start_loads_no_pdf_library() -> None:
    code = "import sys, json, gateway.cli; print(json.dumps(sorted(sys.modules)))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env
    ).stdout
    loaded = {name.split(".")[0] for name in json.loads(out.splitlines()[-1])}
    assert loaded.isdisjoint({"fpdf", "segno", "pypdf", "PIL", "fontTools"})


def test_receipt_qr_text_of_the_documented_example_verifies() -> None:
    # The MQTT API shows the QR text of its example receipt, signed by the documented test key.
    doc = (Path(__file__).parents[2] / "docs" / "mqtt-api.md").read_text()
    example = re.search(r"<!-- example:ReceiptPayload -->\n```json\n(.*?)\n```", doc, re.DOTALL)
    assert example is not None
    shown = re.search(r'```text\n(\["prepay-receipt/1",17,.*?)\n```', doc)
    assert shown is not None
    assert shown.group(1) == qr_text(json.loads(example.group(1)))
    key = load_public_key("Kay64UG8yvCyLhqU000LxzYeUm0L/hLIl5S8kyKWbdc=")
    checked = check_qr_text(shown.group(1), key)
    assert (checked.receipt.receipt_seq, checked.receipt.amount_minor) == (17, 2000)


def test_receipt_pdf_showing_a_longer_number_refused(tmp_path: Path) -> None:
    # "170" begins with the signed "17": each value is read between its label and the next.
    signed = _signed()
    forged = ReceiptPayload.model_validate({**signed, "receipt_seq": 170})
    path = tmp_path / "forged.pdf"
    path.write_bytes(render_pdf(signed, forged, ZoneInfo("UTC"), find_cjk_font()))
    with pytest.raises(ReceiptRefusedError) as refused:
        check_file(path, KEY.public_key())
    assert refused.value.detail == "the page does not show the signed Receipt no."
