"""`prepay receipt print|verify|reissue` against a store a running gateway wrote (see
conftest.py): the PDF a real parser reads, its QR code a real decoder reads, and every kind of
tampering refused with its reason."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import zxingcpp
from PIL import Image
from pypdf import PdfReader

from gateway.cli import main
from gateway.northbound.signing import (
    generate_private_key,
    key_id,
    public_key_to_pem,
    sign_document,
)
from gateway.ops.receipt_pdf import qr_text
from gateway.ops.receipts import write_demo_receipt
from tests.receipts.conftest import Issued

pytestmark = pytest.mark.integration

# 80 mm in PDF points: 80 / 25.4 * 72 = 226.77...
PAGE_WIDTH_PT = 226.77


def _verify(issued: Issued, *args: str) -> list[str]:
    return ["receipt", "verify", *args, "--gateway-key", str(issued.keys / "gateway.pub.pem")]


def _refusal(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """The stderr of a refused `prepay receipt verify` (exit 1)."""
    assert main(argv) == 1
    return capsys.readouterr().err.strip()


def test_receipt_topups_carry_per_site_sequence(issued: Issued) -> None:
    first, second = (result["receipt"] for result in issued.topups)
    assert (first["receipt_seq"], first["amount_minor"], first["balance_after_minor"]) == (
        1,
        2550,
        2550,  # the account starts at 0
    )
    # 2550 + 1000 = 3550
    assert (second["receipt_seq"], second["amount_minor"], second["balance_after_minor"]) == (
        2,
        1000,
        3550,
    )


def test_receipt_reissue_returns_the_same_signed_receipt(issued: Issued) -> None:
    assert issued.reissue_exit == 0
    assert issued.reissued["status"] == "applied"
    assert issued.reissued["receipt"] == issued.topups[0]["receipt"]


def test_receipt_print_while_running_writes_80mm_pdf_with_chinese_and_amounts(
    issued: Issued,
) -> None:
    assert issued.print_exit == 0
    assert issued.print_out.strip() == f"wrote {issued.pdf} (receipt 2)"
    reader = PdfReader(issued.pdf)
    (page,) = reader.pages
    assert float(page.mediabox.width) == pytest.approx(PAGE_WIDTH_PT, abs=0.01)
    text = page.extract_text()
    for printed in (
        "充值收据 TOP-UP RECEIPT",
        "test-site",
        "充值金额 Amount\n10.00 CNY",
        "充值后余额 Balance after\n35.50 CNY",  # 25.50 + 10.00
        "账户 Account\nA1",
        "收据号 Receipt no.\n2",
        "付款参考 Payment ref.\noperator:desk-2",
        "+0800 (Asia/Shanghai)",  # the Beijing tariff's zone
    ):
        assert printed in text
    attached = json.loads(reader.attachments["receipt.json"][0])
    assert attached == issued.topups[1]["receipt"]


def _qr_images(pdf: Path) -> list[Image.Image]:
    return [Image.open(io.BytesIO(image.data)) for image in PdfReader(pdf).pages[0].images]


def test_receipt_pdf_qr_decodes_to_the_signed_receipt(issued: Issued) -> None:
    (image,) = _qr_images(issued.pdf)
    (code,) = zxingcpp.read_barcodes(image)
    receipt = issued.topups[1]["receipt"]
    values = json.loads(code.text)
    assert values[0] == "prepay-receipt/1"
    # Both optional fields are there (an operator top-up has a payment reference and the
    # store its incarnation), so the values name every field of the signed receipt.
    assert dict(zip(_FIELDS, values[1:], strict=True)) == receipt
    # 4 pixels a module and a 4-module border: (width / 4 - 8) modules; version v has
    # 17 + 4 v modules. At most version 15 (77 modules) stays readable at 56 mm wide.
    modules = image.width // 4 - 8
    assert (modules - 17) % 4 == 0
    assert (modules - 17) // 4 <= 15


# The order the MQTT API documents for the QR text (written out here, not taken from the code).
_FIELDS = (
    "receipt_seq",
    "site",
    "topup_id",
    "account",
    "amount_minor",
    "currency",
    "balance_after_minor",
    "applied_at",
    "payment_ref",
    "store",
    "key_id",
    "signature",
)


def test_receipt_verify_accepts_pdf_json_and_qr_text(
    issued: Issued, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    receipt = issued.topups[1]["receipt"]
    assert main(_verify(issued, str(issued.pdf))) == 0
    assert capsys.readouterr().out.startswith(
        "valid receipt 2 of test-site (pdf): A1 +10.00 CNY, balance 35.50 CNY,"
    )
    as_json = tmp_path / "receipt.json"
    as_json.write_text(json.dumps(receipt))
    assert main(_verify(issued, str(as_json), "--json")) == 0
    answer = json.loads(capsys.readouterr().out)
    assert (answer["valid"], answer["source"], answer["receipt"]) == (True, "json", receipt)
    (image,) = _qr_images(issued.pdf)
    (code,) = zxingcpp.read_barcodes(image)
    assert main(_verify(issued, "--qr", code.text)) == 0
    assert capsys.readouterr().out.startswith("valid receipt 2 of test-site (qr):")


def test_receipt_verify_tampered_pdf_refused(
    issued: Issued, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The attached receipt is stored uncompressed: change its amount in the file's bytes,
    # 10.00 -> 90.00 CNY, same length, so the PDF's cross-reference table still holds.
    data = issued.pdf.read_bytes()
    assert data.count(b'"amount_minor": 1000,') == 1
    tampered = tmp_path / "tampered.pdf"
    tampered.write_bytes(data.replace(b'"amount_minor": 1000,', b'"amount_minor": 9000,'))
    assert json.loads(PdfReader(tampered).attachments["receipt.json"][0])["amount_minor"] == 9000
    err = _refusal(capsys, _verify(issued, str(tampered)))
    assert err == "refused: bad_signature: signature does not match the content"


def test_receipt_verify_tampered_qr_text_refused(
    issued: Issued, capsys: pytest.CaptureFixture[str]
) -> None:
    text = qr_text(issued.topups[1]["receipt"])
    assert text.count(",1000,") == 1
    err = _refusal(capsys, _verify(issued, "--qr", text.replace(",1000,", ",9000,")))
    assert err == "refused: bad_signature: signature does not match the content"


def test_receipt_verify_other_key_refused(
    issued: Issued, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = generate_private_key()
    receipt: dict[str, Any] = dict(issued.topups[1]["receipt"])
    # Signed by another key that says so: the wrong key.
    forged = sign_document({**receipt, "key_id": key_id(other.public_key())}, other)
    err = _refusal(capsys, _verify(issued, "--qr", qr_text(forged)))
    assert err.startswith("refused: wrong_key: signed by key ")
    # Signed by another key that claims the gateway's key id: a bad signature.
    err = _refusal(capsys, _verify(issued, "--qr", qr_text(sign_document(receipt, other))))
    assert err == "refused: bad_signature: signature does not match the content"
    # The genuine receipt checked with another site's key: the wrong key.
    other_pub = tmp_path / "other.pub.pem"
    other_pub.write_bytes(public_key_to_pem(other.public_key()))
    argv = ["receipt", "verify", str(issued.pdf), "--gateway-key", str(other_pub)]
    assert _refusal(capsys, argv).startswith("refused: wrong_key: ")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\x00\x01garbage", "not_a_receipt: not a PDF, nor receipt JSON: not UTF-8 JSON"),
        (b"%PDF-1.7\nnot really", "not_a_receipt: not a readable PDF"),
        (b'{"hello": "world"}', "not_a_receipt: no receipt_seq"),
        (b'["prepay-receipt/1", 1]', "not_a_receipt: not a receipt's QR text: 1 values"),
        # Money is never a float, so no signed document holds one.
        (b'{"receipt_seq": 1.5}', "not_a_receipt: not a PDF, nor receipt JSON: float 1.5"),
    ],
)
def test_receipt_verify_garbage_file_refused(
    issued: Issued,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    reason: str,
) -> None:
    path = tmp_path / "input"
    path.write_bytes(content)
    assert _refusal(capsys, _verify(issued, str(path))).startswith(f"refused: {reason}")


def test_receipt_verify_pdf_without_receipt_refused(
    issued: Issued, capsys: pytest.CaptureFixture[str]
) -> None:
    # A real PDF of ours that is no receipt: the user guide's printout would be one.
    from fpdf import FPDF  # noqa: PLC0415

    pdf = FPDF()
    pdf.add_page()
    path = issued.pdf.parent / "blank.pdf"
    path.write_bytes(bytes(pdf.output()))
    err = _refusal(capsys, _verify(issued, str(path)))
    assert err == "refused: not_a_receipt: a PDF without an attached receipt.json: not a receipt"


def test_receipt_verify_garbage_qr_text_refused(
    issued: Issued, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _refusal(capsys, _verify(issued, "--qr", "https://example.com/not-a-receipt"))
    assert err.startswith("refused: not_a_receipt: not a receipt's QR text")


def test_receipt_verify_missing_file_or_bad_key_is_one_line(
    issued: Issued, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_verify(issued, str(tmp_path / "nope.pdf"))) == 1
    assert capsys.readouterr().err.strip() == f"{tmp_path / 'nope.pdf'}: No such file or directory"
    argv = ["receipt", "verify", str(issued.pdf), "--gateway-key", str(issued.pdf)]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"{issued.pdf}: not a gateway public key: ")


def test_receipt_print_unknown_receipt_is_one_line(
    issued: Issued, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.pdf"
    argv = ["receipt", "print", "99", "-c", str(issued.site_file), "-o", str(out)]
    assert main(argv) == 1
    assert capsys.readouterr().err.startswith("no receipt number 99 in ")
    argv = ["receipt", "print", "--topup", "no-such", "-c", str(issued.site_file)]
    assert main(argv) == 1
    assert capsys.readouterr().err.startswith("no receipt for top-up 'no-such' in ")
    assert not out.exists()


def test_receipt_print_by_topup_id(
    issued: Issued, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = issued.topups[0]["receipt"]
    out = tmp_path / "first.pdf"
    argv = ["receipt", "print", "--topup", first["topup_id"], "-c", str(issued.site_file)]
    assert main([*argv, "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out} (receipt 1)"
    assert json.loads(PdfReader(out).attachments["receipt.json"][0]) == first


def test_receipt_demo_writes_newest_receipt(
    issued: Issued, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_demo_receipt(issued.site, tmp_path / ".demo")
    assert path == tmp_path / ".demo" / "receipt-2.pdf"
    assert main(_verify(issued, str(path))) == 0
    assert capsys.readouterr().out.startswith("valid receipt 2 of test-site (pdf):")


def test_receipt_print_font_without_chinese_refused(
    issued: Issued, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["receipt", "print", "2", "-c", str(issued.site_file), "-o", str(tmp_path / "r.pdf")]
    not_a_font = tmp_path / "bad.ttf"
    not_a_font.write_text("not a font")
    assert main([*argv, "--font", str(not_a_font)]) == 1
    assert capsys.readouterr().err.startswith(f"{not_a_font}: not a font: ")
    # DejaVu Sans (in every Debian) has Latin, Greek and Cyrillic, no Chinese.
    latin = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    assert main([*argv, "--font", str(latin)]) == 1
    assert capsys.readouterr().err.startswith(f"{latin}: has no glyph for ")
    assert not (tmp_path / "r.pdf").exists()
