"""Top-up receipts: what the gateway signs with its own key, and how a holder checks one.

A receipt is the `ReceiptPayload` of an applied top-up, signed like a command (see
`gateway.northbound.signing`). ``receipt_seq`` counts 1, 2, 3 ... per site, without gaps.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from billing_engine.base.errors import PrepayError
from gateway.northbound.commands import TopupCommand
from gateway.northbound.payloads import ReceiptPayload, format_rfc3339
from gateway.northbound.signing import key_id, sign_document, signature_problem


class InvalidReceiptError(PrepayError):
    """A receipt failed verification; ``reason`` is malformed or bad_signature."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def make_receipt(
    seq: int,
    topup: TopupCommand,
    balance_after_minor: int,
    *,
    applied_at: datetime,
    gateway_key: Ed25519PrivateKey,
) -> dict[str, Any]:
    """The signed receipt of an applied top-up, as a JSON-ready dict (see `ReceiptPayload`).

    Store it as it is: a reissue sends the same dict again.

    Raises:
        ValueError: ``seq`` < 1 or ``applied_at`` is naive.
    """
    if seq < 1:
        raise ValueError("receipt sequence numbers start at 1")
    body: dict[str, Any] = {
        "receipt_seq": seq,
        "site": topup.site,
        "topup_id": topup.id,
        "account": topup.account,
        "amount_minor": topup.amount_minor,
        "currency": topup.currency,
        "balance_after_minor": balance_after_minor,
        "applied_at": format_rfc3339(applied_at),
        "key_id": key_id(gateway_key.public_key()),
    }
    if topup.payment_ref is not None:
        body["payment_ref"] = topup.payment_ref
    return sign_document(body, gateway_key)


def verify_receipt(
    receipt: Mapping[str, Any], gateway_public_key: Ed25519PublicKey
) -> ReceiptPayload:
    """Check a receipt's signature and shape and return it as a model.

    Raises:
        InvalidReceiptError: reason ``bad_signature`` or ``malformed``.
    """
    try:
        problem = signature_problem(receipt, gateway_public_key)
    except ValueError as exc:
        raise InvalidReceiptError("malformed", str(exc)) from None
    if problem:
        raise InvalidReceiptError("bad_signature", problem)
    try:
        return ReceiptPayload.model_validate(dict(receipt))
    except ValidationError as exc:
        raise InvalidReceiptError("malformed", str(exc)) from None
