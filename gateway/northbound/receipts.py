"""What the gateway signs with its own key, and how a holder checks it: receipts and ledger
checkpoints.

A receipt is signed like a command (see `gateway.northbound.signing`): the `ReceiptPayload` of
an applied top-up, the `VendingReceiptPayload` of a settled vending session, the
`TicketSaleReceiptPayload` of a ticket sold at the box. All kinds share one ``receipt_seq``,
counting 1, 2, 3 ... per store without gaps, and ``store`` names the store (its incarnation).
A checkpoint (`CheckpointPayload`) is the ledger's head, signed the same way, published retained
so the gateway can read it back at start.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import TypeAdapter, ValidationError

from billing_engine.base.errors import PrepayError
from gateway.northbound.commands import TopupCommand
from gateway.northbound.payloads import (
    AnyReceipt,
    CheckpointPayload,
    ReceiptKind,
    ReceiptPayload,
    TicketSaleReceiptPayload,
    VendingReceiptPayload,
    format_rfc3339,
)
from gateway.northbound.signing import key_id, sign_document, signature_problem

SignedT = TypeVar("SignedT", ReceiptPayload, CheckpointPayload)
AnyReceiptPayload = ReceiptPayload | VendingReceiptPayload | TicketSaleReceiptPayload
_RECEIPTS: TypeAdapter[AnyReceiptPayload] = TypeAdapter(AnyReceipt)


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


def make_vending_receipt(
    seq: int,
    *,
    site: str,
    dispenser: str,
    session_id: int,
    poured_ml: int,
    billed_ml: int,
    closed_at: datetime,
    gateway_key: Ed25519PrivateKey,
    account: str | None = None,
    amount_minor: int | None = None,
    currency: str | None = None,
    balance_after_minor: int | None = None,
    ticket: str | None = None,
    store: str | None = None,
) -> dict[str, Any]:
    """The signed receipt of a settled vending session (see `VendingReceiptPayload`): paid from
    ``account`` (with the money fields) or with ``ticket``.

    Raises:
        ValueError: ``seq`` < 1, ``closed_at`` naive, or a body that is not a vending receipt.
    """
    body: dict[str, Any] = {
        "kind": str(ReceiptKind.VENDING),
        "receipt_seq": seq,
        "site": site,
        "session": f"{dispenser}:{session_id}",
        "dispenser": dispenser,
        "account": account,
        "ticket": ticket,
        "poured_ml": poured_ml,
        "billed_ml": billed_ml,
        "amount_minor": amount_minor,
        "currency": currency,
        "balance_after_minor": balance_after_minor,
        "closed_at": format_rfc3339(closed_at),
        "store": store,
        "key_id": key_id(gateway_key.public_key()),
    }
    return _signed(seq, body, VendingReceiptPayload, gateway_key)


def make_ticket_sale_receipt(
    seq: int,
    *,
    site: str,
    code: str,
    product: str,
    valid_until: date,
    sold_at: datetime,
    gateway_key: Ed25519PrivateKey,
    amount_minor: int | None = None,
    currency: str | None = None,
    store: str | None = None,
) -> dict[str, Any]:
    """The signed receipt of an emergency ticket sold at the box (`TicketSaleReceiptPayload`).

    Raises:
        ValueError: ``seq`` < 1, ``sold_at`` naive, or a body that is not a ticket receipt.
    """
    body: dict[str, Any] = {
        "kind": str(ReceiptKind.TICKET_SALE),
        "receipt_seq": seq,
        "site": site,
        "code": code,
        "ticket_kind": "emergency",
        "product": product,
        "valid_until": valid_until.isoformat(),
        "amount_minor": amount_minor,
        "currency": currency,
        "sold_at": format_rfc3339(sold_at),
        "store": store,
        "key_id": key_id(gateway_key.public_key()),
    }
    return _signed(seq, body, TicketSaleReceiptPayload, gateway_key)


def _signed(
    seq: int,
    body: dict[str, Any],
    model: type[VendingReceiptPayload | TicketSaleReceiptPayload],
    gateway_key: Ed25519PrivateKey,
) -> dict[str, Any]:
    """Sign ``body`` without its null fields, once it is known to be a valid ``model``: a
    receipt that its own verifier would refuse is never issued."""
    if seq < 1:
        raise ValueError("receipt sequence numbers start at 1")
    fields = {k: v for k, v in body.items() if v is not None}
    try:
        model.model_validate({**fields, "signature": "unsigned"})
    except ValidationError as exc:
        raise ValueError(f"not a valid {model.__name__}: {exc}") from None
    return sign_document(fields, gateway_key)


def verify_receipt(
    receipt: Mapping[str, Any], gateway_public_key: Ed25519PublicKey
) -> AnyReceiptPayload:
    """Check a receipt's signature and shape and return it as the model of its kind.

    Raises:
        InvalidReceiptError: reason ``bad_signature`` or ``malformed``.
    """
    try:
        problem = signature_problem(receipt, gateway_public_key)
    except ValueError as exc:
        raise InvalidReceiptError("malformed", str(exc)) from None
    if problem:
        raise InvalidReceiptError("bad_signature", problem)
    return receipt_model(receipt)


def receipt_model(receipt: Mapping[str, Any]) -> AnyReceiptPayload:
    """A signed receipt as the model of its kind (its signature is not checked here).

    Raises:
        InvalidReceiptError: reason ``malformed``.
    """
    try:
        return _RECEIPTS.validate_python(dict(receipt))
    except ValidationError as exc:
        raise InvalidReceiptError("malformed", str(exc)) from None


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
