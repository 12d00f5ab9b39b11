"""``prepay receipt verify``: check a receipt (a top-up's, a vending session's, a ticket
sale's) offline with the site's public key.

Anyone holding the gateway's public key can check a receipt, without the box or the network:
from the PDF (its attached signed receipt, and the printed values against it), from a JSON
file (the signed object, or the QR text), or from the QR text itself. A receipt is refused with
one reason:

* ``not_a_receipt``: the input holds no signed receipt (garbage, another PDF, other JSON);
* ``wrong_key``: it names another signing key (``key_id``) than the one given;
* ``bad_signature``: the signature does not match its content (a changed amount, say);
* ``malformed``: signed, yet not the shape of a receipt;
* ``printed_mismatch``: the PDF's page shows other values than its signed receipt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from billing_engine.base.errors import PrepayError
from gateway.northbound.receipts import AnyReceiptPayload, InvalidReceiptError, verify_receipt
from gateway.northbound.signing import key_id, loads_strict
from gateway.ops.receipt_pdf import (
    QR_TAGS,
    UnreadableReceiptError,
    printed_differences,
    read_pdf,
    receipt_from_qr_text,
    receipt_from_values,
)

_PDF_MAGIC = b"%PDF-"


class ReceiptRefusedError(PrepayError):
    """A receipt that does not check out; ``reason`` is one of the module's list."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True, slots=True)
class CheckedReceipt:
    """A receipt that checks out, and where it was read from (pdf, json or qr)."""

    receipt: AnyReceiptPayload
    source: str


def check_signed(document: object, public_key: Ed25519PublicKey) -> AnyReceiptPayload:
    """A signed receipt object, checked against the gateway's public key.

    Raises:
        ReceiptRefusedError: ``not_a_receipt``, ``wrong_key``, ``bad_signature`` or
            ``malformed``.
    """
    if not isinstance(document, dict) or "receipt_seq" not in document:
        raise ReceiptRefusedError("not_a_receipt", "no receipt_seq: not a signed receipt")
    expected = key_id(public_key)
    named = document.get("key_id")
    if named != expected:
        raise ReceiptRefusedError(
            "wrong_key", f"signed by key {named!r}, the key given is {expected!r}"
        )
    try:
        return verify_receipt(document, public_key)
    except InvalidReceiptError as exc:
        raise ReceiptRefusedError(exc.reason, exc.detail) from None


def check_qr_text(text: str, public_key: Ed25519PublicKey) -> CheckedReceipt:
    """The receipt a QR code's text carries, checked.

    Raises:
        ReceiptRefusedError: see `check_signed`.
    """
    try:
        signed = receipt_from_qr_text(text)
    except UnreadableReceiptError as exc:
        raise ReceiptRefusedError("not_a_receipt", str(exc)) from None
    return CheckedReceipt(check_signed(signed, public_key), "qr")


def check_file(path: Path, public_key: Ed25519PublicKey) -> CheckedReceipt:
    """A receipt PDF, or a JSON file of the signed receipt or of its QR text, checked.

    Raises:
        ReceiptRefusedError: see `check_signed`, and ``printed_mismatch`` for a PDF.
        OSError: the file cannot be read.
    """
    data = path.read_bytes()
    if data.startswith(_PDF_MAGIC):
        return _check_pdf(data, public_key)
    try:
        document: Any = loads_strict(data)
    except ValueError as exc:
        raise ReceiptRefusedError("not_a_receipt", f"not a PDF, nor receipt JSON: {exc}") from None
    if isinstance(document, list) and document[:1] and document[0] in QR_TAGS:
        try:
            return CheckedReceipt(check_signed(receipt_from_values(document), public_key), "qr")
        except UnreadableReceiptError as exc:
            raise ReceiptRefusedError("not_a_receipt", str(exc)) from None
    return CheckedReceipt(check_signed(document, public_key), "json")


def _check_pdf(data: bytes, public_key: Ed25519PublicKey) -> CheckedReceipt:
    try:
        pdf = read_pdf(data)
    except UnreadableReceiptError as exc:
        raise ReceiptRefusedError("not_a_receipt", str(exc)) from None
    receipt = check_signed(pdf.signed, public_key)
    differences = printed_differences(pdf.page_text, receipt)
    if differences:
        raise ReceiptRefusedError(
            "printed_mismatch",
            f"the page does not show the signed {', '.join(differences)}",
        )
    return CheckedReceipt(receipt, "pdf")
