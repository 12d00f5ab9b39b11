"""The payloads of the northbound MQTT contract: pydantic models, their wire vocabulary and
JSON encoding. Pure: no I/O. Topic names are in `gateway.northbound.topics`.

All messages are QoS 1. Payloads are compact UTF-8 JSON objects; every one carries ``ts``, an
RFC 3339 UTC timestamp with millisecond precision and a ``Z`` suffix. Money is integer minor
units plus an ISO 4217 currency code; no payload ever holds a float.

Strings only on the wire: a field with a closed vocabulary is typed with the enum that defines
it inside the gateway (`PolicyMode`, `EventKind`, `Supply`, `Quality`, `RegisterUnit`), so the
payload and the code that fills it cannot drift apart.

Identifiers that become topic levels (site, meter, account, device) match `IDENTIFIER_PATTERN`,
so they can never contain ``/``, ``+``, ``#`` or whitespace.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Annotated, Final, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    model_validator,
)

from billing_engine.tariff import RegisterUnit
from drivers.ports import DenyReason, IdentityKind, Quality
from gateway.policy.state import EventKind, PolicyMode, Supply

IDENTIFIER_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
IDENTIFIER_RE: Final = re.compile(IDENTIFIER_PATTERN)

# Stable machine-readable reasons of a rejected command (``CommandRejectedError.reason``).
REJECT_REASONS: Final = {
    "malformed": "not JSON, a float, a missing/extra/mistyped field, kind not the topic's",
    "bad_signature": "signature missing, not base64 of 64 bytes, or not valid for the content",
    "expired": "expires_at is not after the gateway's clock",
    "not_yet_valid": "issued_at is further in the future than the allowed clock skew",
    "wrong_site": "the command names another site",
    "non_positive_amount": "a top-up or refund amount is zero or negative",
    "unknown_account": "the account does not exist on this site",
    "currency_mismatch": "the amount's currency is not the account's currency",
    "duplicate_conflict": "the id was used before with different content",
    "unknown_topup": "a receipt or refund names a top-up this site never applied",
    "unknown_receipt": "a receipt reissue names a receipt number this store never issued",
    "retained": "the command was published with the retain flag; commands must not be retained",
    "too_large": "the payload is larger than commands.max_payload_bytes; it was not parsed",
    "lifetime_too_long": "expires_at - issued_at is longer than commands.max_lifetime_s",
    "amount_too_large": "a top-up or refund above commands.max_amount_minor",
    "balance_overflow": "the top-up would take the balance out of the 64-bit range",
    "insufficient_balance": "a refund larger than the balance",
    "internal_error": "the gateway failed while applying it; nothing was changed; resend it",
}


def format_rfc3339(value: datetime) -> str:
    """An aware datetime as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC, milliseconds).

    Raises:
        ValueError: ``value`` is naive.
    """
    if value.tzinfo is None:
        raise ValueError("naive datetime: pass an aware UTC datetime")
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[
    AwareDatetime,
    AfterValidator(_to_utc),
    PlainSerializer(format_rfc3339, return_type=str, when_used="json"),
]
Identifier = Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")]
MinorUnits = Annotated[int, Field(strict=True, description="integer minor units (cents, fen)")]
Incarnation = Annotated[
    str, Field(pattern=r"^[0-9a-f]{16}$", description="the store's incarnation: 16 hex digits")
]


class CommandKind(enum.StrEnum):
    """The ``{kind}`` level of ``cmd/{kind}``."""

    TOPUP = "topup"
    REFUND = "refund"
    TARIFF = "tariff"
    ACCOUNT = "account"
    SUPPLY = "supply"
    RECEIPT = "receipt"
    INVOICE = "invoice"
    METER = "meter"
    TICKET_BATCH = "ticket_batch"


class ResultStatus(enum.StrEnum):
    """What became of a command (``cmd/{kind}/result``)."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class Confirmation(enum.StrEnum):
    """Whether a device's ``supply`` is what it confirmed, or a change is on its way."""

    CONFIRMED = "confirmed"
    PENDING = "pending"


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StatusPayload(_Payload):
    """``status``: is the gateway connected? Retained; the Last Will says ``offline``.

    In the Last Will, ``ts`` is when the connection that left the will was opened.
    """

    status: Literal["online", "offline"]
    version: str
    ts: UtcDatetime


class ReadingBilling(enum.StrEnum):
    """How a published reading is billed, when not by an account of the site (``billing``)."""

    NONE = "none"  # a publish-only meter (the site's ``publish_only:``): never billed


class ReadingPayload(_Payload):
    """``meter/{meter}/reading``: one reading, billed or of a publish-only meter.

    ``reading_id`` is the reading's identity: unique per site and stable across resends, so
    consumers dedupe on it. ``billing`` is absent for a reading billed by an account; ``none``
    marks a meter the site publishes and never bills, whose ``delta`` is the consumption since
    the meter's previous reading.
    """

    meter: Identifier
    reading_id: Annotated[str, Field(min_length=1, max_length=255)]
    read_at: UtcDatetime
    # ``register`` would shadow ABCMeta.register, hence the alias.
    register_value: int = Field(
        strict=True, alias="register", description="cumulative register, in `unit`"
    )
    delta: Annotated[
        int,
        Field(
            strict=True,
            description="consumption billed by this reading; with `billing: none`, the"
            " consumption since the meter's previous reading",
        ),
    ]
    unit: RegisterUnit
    quality: Quality
    # Absent (None, left out by `encode_payload`) on a billed reading: its bytes stay those the
    # fast path writes (`reading_fast_path`), as before the field existed.
    billing: ReadingBilling | None = Field(
        default=None, description="absent: billed by an account; `none`: never billed"
    )
    ts: UtcDatetime


class ReadingBatchPayload(_Payload):
    """``meter/{meter}/readings``: a backlog of readings of one meter, oldest first.

    Each item is exactly the `ReadingPayload` that would have gone to ``meter/{meter}/reading``.
    A reading is sent either alone or inside one batch (resends after a reconnect aside).
    """

    meter: Identifier
    readings: Annotated[list[ReadingPayload], Field(min_length=1)]
    ts: UtcDatetime


class ReceiptPayload(_Payload):
    """A top-up receipt signed by the gateway's own Ed25519 key.

    ``signature`` is base64 Ed25519 over the canonical JSON of every other field (the same rule
    as for commands). ``receipt_seq`` counts 1, 2, 3 ... per store, without gaps; ``store`` is
    the store's incarnation (receipts made before it existed have none), so the pair
    ``(store, receipt_seq)`` is unique per site even across a store started anew.
    """

    receipt_seq: Annotated[int, Field(strict=True, ge=1)]
    site: Identifier
    topup_id: Annotated[str, Field(min_length=1, max_length=255)]
    account: Identifier
    amount_minor: Annotated[int, Field(strict=True, gt=0)]
    currency: Currency
    balance_after_minor: MinorUnits
    applied_at: UtcDatetime
    payment_ref: str | None = None
    store: Incarnation | None = None
    key_id: str
    signature: str


class ReceiptKind(enum.StrEnum):
    """What a receipt is for: each kind has its own signed fields and its own QR tag."""

    TOPUP = "topup"
    VENDING = "vending"
    TICKET_SALE = "ticket_sale"


class VendingReceiptPayload(_Payload):
    """The receipt of a settled vending session at a dispenser, signed by the gateway's key
    (same rule and same per-site ``receipt_seq`` as a top-up's `ReceiptPayload`).

    Paid from an account: ``account``, ``amount_minor`` (what the pour cost), ``currency`` and
    ``balance_after_minor``. Paid with a water ticket: ``ticket`` (its code) and no money.
    ``session`` is ``{dispenser}:{session_id}``, the ledger entry's ``ref``.
    """

    kind: Literal[ReceiptKind.VENDING]
    receipt_seq: Annotated[int, Field(strict=True, ge=1)]
    site: Identifier
    session: Annotated[str, Field(min_length=3, max_length=160)]
    dispenser: Identifier
    account: Identifier | None = None
    ticket: Annotated[str, Field(pattern=r"^[0-9]{16}$")] | None = None
    poured_ml: Annotated[int, Field(strict=True, ge=0)]
    billed_ml: Annotated[int, Field(strict=True, ge=0)]
    amount_minor: Annotated[int, Field(strict=True, ge=0)] | None = None
    currency: Currency | None = None
    balance_after_minor: MinorUnits | None = None
    closed_at: UtcDatetime
    store: Incarnation | None = None
    key_id: str
    signature: str

    @model_validator(mode="after")
    def paid_one_way(self) -> Self:
        if (self.account is None) == (self.ticket is None):
            raise ValueError("a vending receipt names either the account or the ticket")
        money = (self.amount_minor, self.currency, self.balance_after_minor)
        if self.account is not None and None in money:
            raise ValueError("paid from an account: amount_minor, currency, balance_after_minor")
        if self.ticket is not None and money != (None, None, None):
            raise ValueError("paid with a ticket: no money fields")
        return self


class TicketSaleReceiptPayload(_Payload):
    """The receipt of a water ticket sold at the box (an emergency ticket, docs/tickets.md),
    signed by the gateway's key (same rule and same ``receipt_seq`` as the other receipts).

    ``amount_minor`` and ``currency`` are the product's price at the box
    (``tickets.prices_minor``); a product without a price there has neither.
    """

    kind: Literal[ReceiptKind.TICKET_SALE]
    receipt_seq: Annotated[int, Field(strict=True, ge=1)]
    site: Identifier
    code: Annotated[str, Field(pattern=r"^[0-9]{16}$")]
    ticket_kind: Literal["emergency"]
    product: Annotated[str, Field(min_length=1, max_length=32)]
    valid_until: date
    amount_minor: Annotated[int, Field(strict=True, ge=0)] | None = None
    currency: Currency | None = None
    sold_at: UtcDatetime
    store: Incarnation | None = None
    key_id: str
    signature: str

    @model_validator(mode="after")
    def price_has_currency(self) -> Self:
        if (self.amount_minor is None) != (self.currency is None):
            raise ValueError("amount_minor and currency go together")
        return self


def _receipt_tag(value: object) -> str:
    """The kind of a receipt document: top-up receipts (the first kind) carry no ``kind``."""
    if isinstance(value, dict):
        return str(value.get("kind", ReceiptKind.TOPUP))
    return str(getattr(value, "kind", ReceiptKind.TOPUP))


AnyReceipt = Annotated[
    Annotated[ReceiptPayload, Tag(ReceiptKind.TOPUP)]
    | Annotated[VendingReceiptPayload, Tag(ReceiptKind.VENDING)]
    | Annotated[TicketSaleReceiptPayload, Tag(ReceiptKind.TICKET_SALE)],
    Discriminator(_receipt_tag),
]
"""Any receipt the gateway signs, told apart by ``kind`` (absent on a top-up receipt)."""


class AccountStatePayload(_Payload):
    """``account/{account}/state``: the latest balance and state. Retained."""

    account: Identifier
    balance_minor: MinorUnits
    currency: Currency
    state: PolicyMode
    debt_minor: Annotated[int, Field(strict=True, ge=0)]
    ts: UtcDatetime


EventDetail = dict[str, str | int | bool | None]
"""An event's ``detail``: a flat JSON object of what it concerns (device, meter, reading,
reason, error ...); its keys per event and alarm are listed in the MQTT API."""


class AccountEventPayload(_Payload):
    """``account/{account}/event``: something happened. ``event_id`` is its identity."""

    event_id: Annotated[str, Field(min_length=1, max_length=255)]
    account: Identifier
    event: EventKind
    balance_minor: MinorUnits | None = None
    currency: Currency | None = None
    amount_minor: MinorUnits | None = None
    receipt: ReceiptPayload | None = None
    alarm: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")] | None = None
    detail: EventDetail | None = None
    ts: UtcDatetime

    @model_validator(mode="after")
    def receipt_with_topup_and_alarm_with_code(self) -> Self:
        if (self.event is EventKind.TOPUP_APPLIED) != (self.receipt is not None):
            raise ValueError("a receipt goes with topup_applied, and topup_applied needs one")
        if (self.event is EventKind.ALARM) != (self.alarm is not None):
            raise ValueError("an alarm code goes with event alarm, and alarm needs one")
        if self.event is EventKind.DEBT_RECOVERED and self.amount_minor is None:
            raise ValueError("debt_recovered needs amount_minor (the debt recovered)")
        if (self.balance_minor is not None or self.amount_minor is not None) and (
            self.currency is None
        ):
            raise ValueError("an amount or balance needs its currency")
        return self


class DeviceStatePayload(_Payload):
    """``device/{device}/state``: the supply switch (relay, valve). Retained.

    ``supply`` is what the device itself last reported when read back, never the gateway's
    wish; it is left out until the device has reported anything since the gateway started.
    While a change is on its way, ``confirmation`` is ``pending`` and ``desired`` says where
    it is going. ``last_seen`` is when the device last answered.
    """

    device: Identifier
    supply: Supply | None = None
    confirmation: Confirmation
    desired: Supply | None = None
    last_seen: UtcDatetime | None = None
    ts: UtcDatetime

    @model_validator(mode="after")
    def desired_only_when_pending(self) -> Self:
        if (self.confirmation is Confirmation.PENDING) != (self.desired is not None):
            raise ValueError("set desired exactly when confirmation is pending")
        if self.confirmation is Confirmation.CONFIRMED and self.supply is None:
            raise ValueError("a confirmed state says what the device reported (supply)")
        return self


class InvoiceDetailsPayload(_Payload):
    """Who an invoice is for (as a top-up or a period request gives it)."""

    title: Annotated[str, Field(min_length=1, max_length=200)]
    tax_id: Annotated[str, Field(pattern=r"^[0-9A-Za-z-]{6,32}$")] | None = None
    email: Annotated[str, Field(pattern=r"^[^@\s]{1,64}@[^@\s]{1,190}$")] | None = None


class InvoiceStatus(enum.StrEnum):
    """Where an invoice request stands."""

    REQUESTED = "requested"
    ISSUED = "issued"
    FAILED = "failed"


class InvoiceRequestPayload(_Payload):
    """``invoice/{invoice_id}/request``: please invoice these top-ups. Sent again on a reissue
    (``request`` counts 1, 2, ...); the backend answers with ``cmd/invoice``."""

    invoice_id: Identifier
    account: Identifier
    topups: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=255)]], Field(min_length=1)
    ]
    amount_minor: Annotated[int, Field(strict=True, gt=0)]
    currency: Currency
    details: InvoiceDetailsPayload
    request: Annotated[int, Field(strict=True, ge=1)]
    ts: UtcDatetime


class InvoiceStatePayload(_Payload):
    """``invoice/{invoice_id}/state``: where the request stands. Retained."""

    invoice_id: Identifier
    account: Identifier
    status: InvoiceStatus
    number: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    reason: Annotated[str, Field(min_length=1, max_length=500)] | None = None
    ts: UtcDatetime


class CommandResultPayload(_Payload):
    """``cmd/{kind}/result``: what became of a command.

    ``id`` is the command's id, left out when the payload was too broken to read one. A top-up
    (applied or duplicate) and a receipt reissue carry the receipt.
    """

    id: str | None = None
    kind: CommandKind
    status: ResultStatus
    reason: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")] | None = None
    detail: str | None = None
    receipt: AnyReceipt | None = None
    ts: UtcDatetime

    @model_validator(mode="after")
    def reason_exactly_when_rejected(self) -> Self:
        if (self.status is ResultStatus.REJECTED) != (self.reason is not None):
            raise ValueError("a reason goes with status rejected, and rejected needs one")
        return self


class CheckpointPayload(_Payload):
    """``checkpoint``: the head of the gateway's ledger, signed by its key. Retained.

    ``seq`` and ``mac`` (hex) are the newest ledger entry's sequence number and HMAC chain
    value (seq 0 and 64 zeros for an empty ledger); ``incarnation`` names the store they belong
    to. ``signature`` is base64 Ed25519 over the canonical JSON of every other field, with the
    gateway's key (as receipts). At start the gateway reads it back and refuses to run on a
    ledger that is behind it or diverges from it (a store restored from an older copy).
    """

    site: Identifier
    incarnation: Incarnation
    seq: Annotated[int, Field(strict=True, ge=0)]
    mac: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    ts: UtcDatetime
    key_id: str
    signature: str


# Every payload model, for the docs (`gateway.northbound.schemas`).
class SessionStatus(enum.StrEnum):
    """Where a vending session at a dispenser stands (`DispenserSessionPayload`)."""

    AUTHORISED = "authorised"  # the dispenser may pour up to authorised_ml
    REFUSED = "refused"  # nothing opened; reason is on the dispenser's display
    SETTLED = "settled"  # poured, billed, closed
    VOIDED = "voided"  # opened here but never started at the dispenser: nothing billed


class DispenserSessionPayload(_Payload):
    """``dispenser/{dispenser}/session``: a vending session opened, refused, settled or voided
    (docs/vending.md). ``event_id`` is its identity, as an account event's. Money is in
    ``currency``; volumes in mL. ``alarm`` ``dispenser_over_report`` says the device reported
    more than it was authorised (only the authorised volume is billed). A session paid for with
    a ticket names no account and carries no money. A settled session carries its signed
    ``receipt`` (`VendingReceiptPayload`), which the customer can print and check."""

    event_id: Annotated[str, Field(min_length=1, max_length=255)]
    dispenser: Identifier
    status: SessionStatus
    session_id: Annotated[int, Field(strict=True, ge=1)] | None = None
    request_id: Annotated[int, Field(strict=True, ge=1)] | None = None
    identity_kind: IdentityKind | None = None
    account: Identifier | None = None
    reason: DenyReason | None = None
    authorised_ml: Annotated[int, Field(strict=True, ge=0)] | None = None
    poured_ml: Annotated[int, Field(strict=True, ge=0)] | None = None
    billed_ml: Annotated[int, Field(strict=True, ge=0)] | None = None
    charge_minor: MinorUnits | None = None
    balance_minor: MinorUnits | None = None
    currency: Currency | None = None
    alarm: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")] | None = None
    receipt: VendingReceiptPayload | None = None
    ts: UtcDatetime

    @model_validator(mode="after")
    def fields_fit_status(self) -> Self:
        if (self.status is SessionStatus.REFUSED) != (self.reason is not None):
            raise ValueError("a reason goes with status refused, and refused needs one")
        if (self.status is SessionStatus.REFUSED) == (self.session_id is not None):
            raise ValueError("every status but refused names its session_id")
        if self.status is SessionStatus.SETTLED and (
            self.poured_ml is None or (self.account is not None and self.charge_minor is None)
        ):
            raise ValueError("settled needs poured_ml, and charge_minor when an account pays")
        if (self.charge_minor is not None or self.balance_minor is not None) and (
            self.currency is None
        ):
            raise ValueError("an amount or balance needs its currency")
        return self


PAYLOAD_MODELS: Final[tuple[type[_Payload], ...]] = (
    StatusPayload,
    ReadingPayload,
    ReadingBatchPayload,
    AccountStatePayload,
    AccountEventPayload,
    ReceiptPayload,
    VendingReceiptPayload,
    TicketSaleReceiptPayload,
    DeviceStatePayload,
    CommandResultPayload,
    CheckpointPayload,
    DispenserSessionPayload,
    InvoiceRequestPayload,
    InvoiceStatePayload,
)

PayloadT = TypeVar("PayloadT", bound=BaseModel)


def encode_payload(payload: BaseModel) -> bytes:
    """Compact UTF-8 JSON of a payload model; absent optional fields are left out."""
    return payload.model_dump_json(exclude_none=True, by_alias=True).encode()


def decode_payload(model: type[PayloadT], raw: bytes) -> PayloadT:
    """Parse and validate a payload (for consumers and tests).

    Raises:
        pydantic.ValidationError: ``raw`` does not match ``model``.
    """
    return model.model_validate_json(raw)


def encode_reading_batch(meter: str, readings: Sequence[bytes], ts: datetime) -> bytes:
    """A `ReadingBatchPayload` made from already encoded `ReadingPayload`s of ``meter``.

    The items are spliced in byte for byte (no re-encoding), which keeps backlog draining cheap.

    Raises:
        ValueError: no readings, or ``meter`` is not an identifier.
    """
    if not readings:
        raise ValueError("a batch needs at least one reading")
    check_identifier(meter)
    return b"".join(
        (
            b'{"meter":"',
            meter.encode(),
            b'","readings":[',
            b",".join(readings),
            b'],"ts":"',
            format_rfc3339(ts).encode(),
            b'"}',
        )
    )


def check_identifier(value: str) -> str:
    """Return ``value`` if it may be a topic level, else raise `ValueError`."""
    if not IDENTIFIER_RE.match(value):
        raise ValueError(f"{value!r} is not an identifier (pattern {IDENTIFIER_PATTERN})")
    return value
