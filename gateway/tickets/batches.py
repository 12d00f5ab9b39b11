"""The ``ticket_batch``: the signed issue list that makes paper codes valid at a depot.

The plant prints paper tickets in batches and hands each batch to a depot with an issue list of
code ranges and counts. The backend sends the list as a signed JSON document (the project's
canonical JSON and Ed25519, `gateway.northbound.signing`; ``signature`` is base64 of the
signature over the document without it)::

    {"kind": "ticket_batch", "batch": "B2026-0007", "plant": "330102", "product": "18.9L",
     "face_minor": 2000, "currency": "CNY", "from": "2026-12-01", "until": "2027-06-30",
     "scope": {"region": "hz"}, "ranges": [{"first_serial": 10000, "count": 500}],
     "kid": "56475aa75463474c", "signature": "..."}

A paper code is valid only when its plant is the batch's and its serial lies in one of the
ranges (``first_serial`` to ``first_serial + count - 1``). Serials from 900000000 up belong to
emergency tickets and are never in a batch. Ranges of one batch may not overlap; the store
refuses a batch whose ranges overlap another batch's.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping
from datetime import date
from typing import Annotated, Any, Literal, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.northbound.signing import canonical_json, key_id, loads_strict, sign_document
from gateway.northbound.signing import signature_problem as _signature_problem
from gateway.tickets.codes import MAX_PLANT_SERIAL, TicketCode
from gateway.tickets.scope import Scope
from gateway.tickets.settings import PlantCode, Product

#: At most this many codes in one range (a print run); bounds a typo'd count.
MAX_RANGE_COUNT = 10_000_000


class BatchError(ValueError):
    """A batch document that cannot be used (unreadable, untrusted, forged, inconsistent)."""


class CodeRange(BaseModel):
    """``count`` consecutive serials from ``first_serial``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    first_serial: Annotated[int, Field(ge=0, le=MAX_PLANT_SERIAL)]
    count: Annotated[int, Field(ge=1, le=MAX_RANGE_COUNT)]

    @property
    def last_serial(self) -> int:
        return self.first_serial + self.count - 1

    @model_validator(mode="after")
    def below_emergency_serials(self) -> Self:
        if self.last_serial > MAX_PLANT_SERIAL:
            raise ValueError(
                f"the range ends at serial {self.last_serial}; serials from"
                f" {MAX_PLANT_SERIAL + 1} up are reserved for emergency tickets"
            )
        return self

    def __contains__(self, serial: object) -> bool:
        return isinstance(serial, int) and self.first_serial <= serial <= self.last_serial


class TicketBatch(BaseModel):
    """A batch's terms and ranges (the document without its signature)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    kind: Literal["ticket_batch"] = "ticket_batch"
    batch: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
    plant: PlantCode
    product: Product
    face_minor: Annotated[int, Field(ge=0)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    valid_from: Annotated[date, Field(alias="from")]
    valid_until: Annotated[date, Field(alias="until")]
    scope: Scope
    ranges: Annotated[tuple[CodeRange, ...], Field(min_length=1, max_length=10_000)]
    kid: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]

    @model_validator(mode="after")
    def ranges_apart_and_period_ordered(self) -> Self:
        if self.valid_until < self.valid_from:
            raise ValueError("until is before from")
        ordered = sorted(self.ranges, key=lambda r: r.first_serial)
        for before, after in itertools.pairwise(ordered):
            if after.first_serial <= before.last_serial:
                raise ValueError(
                    f"ranges overlap: serials {before.first_serial}-{before.last_serial} and"
                    f" {after.first_serial}-{after.last_serial}"
                )
        return self

    @property
    def count(self) -> int:
        """How many codes the batch issues."""
        return sum(r.count for r in self.ranges)

    def holds(self, code: TicketCode) -> bool:
        """Whether ``code`` is one of this batch's."""
        return code.plant == self.plant and any(code.serial in r for r in self.ranges)

    def document(self) -> dict[str, Any]:
        """The JSON object that is signed."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def sign_batch(batch: TicketBatch, key: Ed25519PrivateKey) -> dict[str, Any]:
    """The signed batch document (the plant's side: ``prepay ticket make batch``).

    Raises:
        ValueError: the batch's ``kid`` is not the id of ``key``.
    """
    if batch.kid != key_id(key.public_key()):
        raise ValueError(
            f"the batch names key {batch.kid}, the key given is {key_id(key.public_key())}"
        )
    return sign_document(batch.document(), key)


def content_hash(batch: TicketBatch) -> str:
    """SHA-256 (hex) of the batch's canonical JSON: the same batch id with other content is a
    conflict, the same content again is a repeat."""
    return hashlib.sha256(canonical_json(batch.document())).hexdigest()


def verify_batch(raw: bytes, keys: Mapping[str, Ed25519PublicKey]) -> TicketBatch:
    """Read and verify a signed batch document against the trusted plant keys.

    Raises:
        BatchError: not strict JSON, an untrusted key, a signature that does not match (forged
            or altered), or terms that do not hold (the message names the field).
    """
    try:
        doc = loads_strict(raw)
    except ValueError as exc:
        raise BatchError(str(exc)) from None
    if not isinstance(doc, dict):
        raise BatchError("a batch is a JSON object")
    kid = doc.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise BatchError(f"signed with key {kid!r}, which this box does not trust")
    try:
        problem = _signature_problem(doc, key)
    except ValueError as exc:
        problem = str(exc)
    if problem:
        raise BatchError(f"{problem} (forged or altered)")
    body = {k: v for k, v in doc.items() if k != "signature"}
    try:
        return TicketBatch.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "batch"
        raise BatchError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None
