"""What the gateway signs with its own key, and how a holder checks it: top-up receipts and
ledger checkpoints.

A receipt is the `ReceiptPayload` of an applied top-up, signed like a command (see
`gateway.northbound.signing`). ``receipt_seq`` counts 1, 2, 3 ... per store, without gaps, and
``store`` names the store (its incarnation). A checkpoint (`CheckpointPayload`) is the ledger's
head, signed the same way, published retained so the gateway can read it back at start.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from billing_engine.base.errors import PrepayError
from gateway.northbound.commands import TopupCommand
from gateway.northbound.payloads import CheckpointPayload, ReceiptPayload, format_rfc3339
from gateway.northbound.signing import key_id, sign_document, signature_problem

SignedT = TypeVar("SignedT", ReceiptPayload, CheckpointPayload)


class InvalidSignedDocumentError(PrepayError):
    """A signed document failed verification; ``reason`` is malformed or bad_signature."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class InvalidReceiptError(InvalidSignedDocumentError):
    """A receipt failed verification."""


class InvalidCheckpointError(InvalidSignedDocumentError):
    """A checkpoint failed verification."""


def _verified(
    document: Mapping[str, Any],
    public_key: Ed25519PublicKey,
    model: type[SignedT],
    error: type[InvalidSignedDocumentError],
) -> SignedT:
    """``document`` as ``model`` once its signature and shape are checked."""
    try:
        problem = signature_problem(document, public_key)
    except ValueError as exc:
        raise error("malformed", str(exc)) from None
    if problem:
        raise error("bad_signature", problem)
    try:
        return model.model_validate(dict(document))
    except ValidationError as exc:
        raise error("malformed", str(exc)) from None


def make_receipt(
    seq: int,
    topup: TopupCommand,
    balance_after_minor: int,
    *,
    applied_at: datetime,
    gateway_key: Ed25519PrivateKey,
    store: str | None = None,
) -> dict[str, Any]:
    """The signed receipt of an applied top-up, as a JSON-ready dict (see `ReceiptPayload`).

    ``store``: the incarnation of the store that applied it (signed with the rest).
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
    if store is not None:
        body["store"] = store
    return sign_document(body, gateway_key)


def verify_receipt(
    receipt: Mapping[str, Any], gateway_public_key: Ed25519PublicKey
) -> ReceiptPayload:
    """Check a receipt's signature and shape and return it as a model.

    Raises:
        InvalidReceiptError: reason ``bad_signature`` or ``malformed``.
    """
    return _verified(receipt, gateway_public_key, ReceiptPayload, InvalidReceiptError)


def make_checkpoint(
    site: str,
    incarnation: str,
    seq: int,
    mac: bytes,
    *,
    ts: datetime,
    gateway_key: Ed25519PrivateKey,
) -> CheckpointPayload:
    """The ledger head ``(seq, mac)`` of store ``incarnation``, signed with the gateway's key.

    Raises:
        pydantic.ValidationError: a field is out of its range (a negative seq, a MAC that is
            not 32 bytes, an incarnation that is not 16 hex digits).
    """
    body: dict[str, Any] = {
        "site": site,
        "incarnation": incarnation,
        "seq": seq,
        "mac": mac.hex(),
        "ts": format_rfc3339(ts),
        "key_id": key_id(gateway_key.public_key()),
    }
    return CheckpointPayload.model_validate(sign_document(body, gateway_key))


def verify_checkpoint(
    checkpoint: Mapping[str, Any], gateway_public_key: Ed25519PublicKey
) -> CheckpointPayload:
    """Check a checkpoint's signature and shape and return it as a model.

    Raises:
        InvalidCheckpointError: reason ``bad_signature`` or ``malformed``.
    """
    return _verified(checkpoint, gateway_public_key, CheckpointPayload, InvalidCheckpointError)
