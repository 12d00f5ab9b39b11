"""The electronic ticket: a signed payload carried as a QR code string, verified offline.

The QR code holds an ASCII string of three dot-separated parts::

    PT1.<payload>.<signature>

- ``PT1``: the format and its version.
- ``payload``: base64url, unpadded, of the ticket's canonical JSON (the project's one canonical
  form, `gateway.northbound.signing.canonical_json`: keys sorted, no whitespace, UTF-8, no
  floats).
- ``signature``: base64url, unpadded, of the 64-byte Ed25519 signature of those payload bytes
  by the key the payload names in ``kid``.

The payload (every field required, nothing else allowed)::

    {"code": "3301020000100008", "from": "2026-12-01", "kid": "56475aa75463474c",
     "origin": "sold", "product": "18.9L", "qty": 1, "scope": {"depot": "hz-xihu-03"},
     "until": "2027-06-30", "v": 1}

``code`` is a 16-digit ticket code (`gateway.tickets.codes`); ``from`` and ``until`` are the
first and last local days of validity; ``kid`` is `signing.key_id` of the signing key (the
first 16 hex digits of SHA-256 of its raw public bytes), so a box trusting several plant keys
picks the right one and keys can rotate; ``origin`` says how the ticket came to be.

Verification order: the string's shape, then the key, then the signature over the payload
bytes, then the fields. A forged or altered ticket therefore fails on its signature whatever it
claims.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import date
from enum import StrEnum
from typing import Annotated, Final, Literal, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.northbound.signing import (
    SIGNATURE_FIELD,
    canonical_json,
    key_id,
    loads_strict,
    signature_problem,
)
from gateway.tickets.codes import CodeError, TicketCode, parse_code
from gateway.tickets.reasons import Reason, Refusal
from gateway.tickets.scope import Scope
from gateway.tickets.settings import Product

PREFIX: Final = "PT1"
_MAX_TEXT: Final = 2048  # far above a real ticket (about 300 characters); bounds the work


class Origin(StrEnum):
    """How an electronic ticket came to be."""

    SOLD = "sold"  # bought singly or in a package
    GIFT = "gift"  # a promotion
    CONVERTED = "converted"  # a paper ticket exchanged 1:1 at a box (same code)


class ElectronicTicket(BaseModel):
    """The payload of an electronic ticket (see the module docstring for the wire form)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    v: Literal[1] = 1
    code: Annotated[str, Field(pattern=r"^[0-9]{16}$")]
    product: Product
    qty: Annotated[int, Field(ge=1, le=1000)] = 1
    valid_from: Annotated[date, Field(alias="from")]
    valid_until: Annotated[date, Field(alias="until")]
    scope: Scope
    kid: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    origin: Origin = Origin.SOLD

    @model_validator(mode="after")
    def code_intact_and_period_ordered(self) -> Self:
        parse_code(self.code)  # CodeError is a ValueError: pydantic reports it on the model
        if self.valid_until < self.valid_from:
            raise ValueError("until is before from")
        return self

    @property
    def ticket_code(self) -> TicketCode:
        return parse_code(self.code)

    def payload(self) -> dict[str, object]:
        """The JSON object that is signed (dates as ``YYYY-MM-DD``)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _from_b64url(text: str) -> bytes:
    # Strict: a character outside the alphabet is an error, not silently skipped.
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def encode(ticket: ElectronicTicket, key: Ed25519PrivateKey) -> str:
    """Sign ``ticket`` with the plant's ``key`` and return its QR string.

    Raises:
        ValueError: the ticket's ``kid`` is not the id of ``key``.
    """
    if ticket.kid != key_id(key.public_key()):
        raise ValueError(
            f"the ticket names key {ticket.kid}, the key given is {key_id(key.public_key())}"
        )
    body = canonical_json(ticket.payload())
    return f"{PREFIX}.{_b64url(body)}.{_b64url(key.sign(body))}"


def looks_electronic(text: str) -> bool:
    """Whether ``text`` claims to be an electronic ticket (as opposed to a typed code)."""
    return text.strip().startswith(f"{PREFIX}.")


def verify(text: str, keys: Mapping[str, Ed25519PublicKey]) -> ElectronicTicket | Refusal:
    """Verify a scanned QR string against the trusted plant keys (by key id), offline.

    Checks authenticity only; validity, scope, product and use are the judge's
    (`gateway.tickets.decisions`).

    Returns:
        The ticket, or why it is refused: `Reason.MALFORMED`, `Reason.UNKNOWN_KEY` or
        `Reason.BAD_SIGNATURE` (forged or altered).
    """
    text = text.strip()
    if len(text) > _MAX_TEXT:
        return Refusal(Reason.MALFORMED, f"longer than {_MAX_TEXT} characters")
    parts = text.split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        return Refusal(Reason.MALFORMED, f"not a {PREFIX}.<payload>.<signature> ticket string")
    try:
        body = _from_b64url(parts[1])
        signature = _from_b64url(parts[2])
        doc = loads_strict(body)
    except (binascii.Error, ValueError) as exc:
        return Refusal(Reason.MALFORMED, f"unreadable payload: {exc}")
    if not isinstance(doc, dict) or SIGNATURE_FIELD in doc:
        return Refusal(Reason.MALFORMED, "the payload is not a ticket object")
    kid = doc.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        return Refusal(
            Reason.UNKNOWN_KEY, f"signed with key {kid!r}, which this box does not trust"
        )
    # The project's one verifier: it re-derives the canonical bytes from the parsed object.
    signed = {**doc, SIGNATURE_FIELD: base64.b64encode(signature).decode("ascii")}
    try:
        problem = signature_problem(signed, key)
    except ValueError as exc:  # a float in the payload: never signed by a plant
        problem = str(exc)
    if problem:
        return Refusal(Reason.BAD_SIGNATURE, f"{problem} (forged or altered)")
    try:
        return ElectronicTicket.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "ticket"
        return Refusal(Reason.MALFORMED, f"{where}: {first['msg']}")


__all__ = [
    "PREFIX",
    "CodeError",
    "ElectronicTicket",
    "Origin",
    "Scope",
    "encode",
    "looks_electronic",
    "verify",
]
