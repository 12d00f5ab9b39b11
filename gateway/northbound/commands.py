"""Backend commands and gateway receipts: models, canonical JSON, Ed25519 signatures. Pure.

A command arrives on ``prepay/{site}/cmd/{kind}`` as one JSON object::

    {"id": "...", "kind": "topup", "site": "...", "issued_at": "...Z", "expires_at": "...Z",
     ...kind fields..., "signature": "<base64 Ed25519, 64 bytes>"}

**Canonical JSON** is the object without ``signature``, serialised as
``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()`` (UTF-8,
keys sorted by code point, no whitespace). The signature is computed over those bytes, and the
gateway recomputes them from the JSON it received, so the sender may format its JSON freely.
Commands hold no floats: money and quantities are integers (minor units) or decimal strings.
A float anywhere, NaN/Infinity, or a repeated key makes the command ``malformed``.

`parse_and_verify` decides everything that needs no store: malformed, bad_signature, wrong_site,
expired, not_yet_valid, non_positive_amount. Unknown accounts and duplicate ids are the
gateway's (it owns the ledger).

Receipts are signed the same way, by the gateway's own Ed25519 key.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any, Final, Literal, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gateway.errors import CommandRejectedError
from gateway.northbound.payloads import (
    CommandKind,
    Currency,
    Identifier,
    InvoiceDetailsPayload,
    UtcDatetime,
    format_rfc3339,
)
from gateway.northbound.settings import CommandLimits
from gateway.northbound.signing import (
    canonical_json,
    loads_strict,
    sign_document,
    signature_problem,
)

DEFAULT_LIMITS: Final = CommandLimits()


def _positive(value: int) -> int:
    if value <= 0:
        raise PydanticCustomError(
            "non_positive_amount", "amount must be > 0, got {value}", {"value": value}
        )
    return value


PositiveAmount = Annotated[int, AfterValidator(_positive)]
CommandId = Annotated[str, Field(pattern=r"^[\x21-\x7e]{1,255}$", description="printable ASCII")]
Text = Annotated[str, Field(min_length=1, max_length=500)]


class _Command(BaseModel):
    """Fields every command carries."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: CommandId
    site: Identifier
    issued_at: UtcDatetime
    expires_at: UtcDatetime
    signature: str

    @model_validator(mode="after")
    def expires_after_issued(self) -> Self:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        return self


class TopupCommand(_Command):
    """Credit ``amount_minor`` to ``account``; answered with a signed receipt."""

    kind: Literal["topup"]
    account: Identifier
    amount_minor: PositiveAmount
    currency: Currency
    payment_ref: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    invoice: InvoiceDetailsPayload | None = None  # ask the backend for an invoice of it


class RefundCommand(_Command):
    """Debit ``amount_minor`` from ``account`` (money returned outside the gateway)."""

    kind: Literal["refund"]
    account: Identifier
    amount_minor: PositiveAmount
    currency: Currency
    topup_id: CommandId | None = None
    reason: Text


class TariffCommand(_Command):
    """Install tariff ``tariff_version`` from ``effective_at`` for an account, a class or the site.

    ``tariff`` is the tariff document (see docs/tariffs); the billing engine validates it.
    """

    kind: Literal["tariff"]
    tariff_version: Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
    effective_at: UtcDatetime
    scope: Literal["account", "class", "site"]
    target: Identifier | None = None
    tariff: dict[str, Any]

    @model_validator(mode="after")
    def target_names_account_or_class(self) -> Self:
        if (self.scope == "site") != (self.target is None):
            raise ValueError("give target (account id or class name) unless scope is site")
        return self


class AccountCommand(_Command):
    """Create an account or change its settings."""

    kind: Literal["account"]
    action: Literal["create", "update"]
    account: Identifier
    currency: Currency | None = None
    tariff_class: Identifier | None = None
    meters: list[Identifier] | None = None
    devices: list[Identifier] | None = None
    low_balance_minor: Annotated[int, Field(ge=0)] | None = None
    exempt: bool | None = None

    @model_validator(mode="after")
    def create_complete_update_not_empty(self) -> Self:
        if self.action == "create" and (self.currency is None or self.tariff_class is None):
            raise ValueError("create needs currency and tariff_class")
        if self.action == "update":
            if self.currency is not None:
                raise ValueError("an account's currency cannot change; open a new account")
            changes = (self.tariff_class, self.meters, self.devices, self.low_balance_minor)
            if all(c is None for c in changes) and self.exempt is None:
                raise ValueError("update changes nothing")
        return self


class SupplyCommand(_Command):
    """Override the supply of ``device``: force on or off (until ``until``), or back to auto."""

    kind: Literal["supply"]
    device: Identifier
    override: Literal["on", "off", "auto"]
    until: UtcDatetime | None = None
    reason: Text

    @model_validator(mode="after")
    def until_only_with_override(self) -> Self:
        if self.override == "auto" and self.until is not None:
            raise ValueError("until goes with override on/off, not auto")
        return self


class ReceiptCommand(_Command):
    """Reissue a receipt, the same signed receipt unchanged: that of top-up ``topup_id``, or
    receipt number ``receipt_seq`` of any kind (a vending session's, a ticket sale's), exactly
    one of the two."""

    kind: Literal["receipt"]
    topup_id: CommandId | None = None
    receipt_seq: Annotated[int, Field(strict=True, ge=1)] | None = None

    @model_validator(mode="after")
    def one_receipt_named(self) -> Self:
        if (self.topup_id is None) == (self.receipt_seq is None):
            raise ValueError("name the receipt by topup_id or by receipt_seq, exactly one")
        return self


class MeterCommand(_Command):
    """Decide for ``meter`` whose held readings continue from a new level (the
    ``meter_reset_or_swap`` alarm): ``accept_level`` bills on from that level."""

    kind: Literal["meter"]
    meter: Identifier
    action: Literal["accept_level"]
    reason: Text


class InvoiceCommand(_Command):
    """The backend's word on invoices: ``issued`` (with its ``number``) or ``failed`` (with a
    ``reason``) for ``invoice_id``; ``reissue`` sends its request again (an operator may too);
    ``request_period`` asks one invoice for all of ``account``'s top-ups in
    [``period_from``, ``period_to``) not invoiced yet (an enterprise's month)."""

    kind: Literal["invoice"]
    action: Literal["issued", "failed", "reissue", "request_period"]
    invoice_id: Identifier | None = None
    number: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    reason: Text | None = None
    account: Identifier | None = None
    period_from: UtcDatetime | None = None
    period_to: UtcDatetime | None = None
    details: InvoiceDetailsPayload | None = None

    @model_validator(mode="after")
    def fields_of_the_action(self) -> Self:
        need = {
            "issued": ("invoice_id", "number"),
            "failed": ("invoice_id", "reason"),
            "reissue": ("invoice_id",),
            "request_period": ("account", "period_from", "period_to", "details"),
        }[self.action]
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"{self.action} needs {', '.join(missing)}")
        if self.period_from and self.period_to and self.period_to <= self.period_from:
            raise ValueError("period_to must be after period_from")
        return self


class TicketBatchCommand(_Command):
    """Water tickets issued to this box's depot: ``batch`` is the plant's signed batch document
    (ranges of paper ticket codes, product, face value, validity; docs/tickets.md), checked
    with the plant's keys, not the backend's."""

    kind: Literal["ticket_batch"]
    batch: dict[str, Any]


Command = (
    TopupCommand
    | RefundCommand
    | TariffCommand
    | AccountCommand
    | SupplyCommand
    | ReceiptCommand
    | MeterCommand
    | TicketBatchCommand
    | InvoiceCommand
)

COMMAND_MODELS: Final[dict[CommandKind, type[_Command]]] = {
    CommandKind.TOPUP: TopupCommand,
    CommandKind.REFUND: RefundCommand,
    CommandKind.TARIFF: TariffCommand,
    CommandKind.ACCOUNT: AccountCommand,
    CommandKind.SUPPLY: SupplyCommand,
    CommandKind.RECEIPT: ReceiptCommand,
    CommandKind.METER: MeterCommand,
    CommandKind.TICKET_BATCH: TicketBatchCommand,
    CommandKind.INVOICE: InvoiceCommand,
}


# --- commands -----------------------------------------------------------------------------------


def new_command(
    kind: CommandKind,
    site_id: str,
    fields: Mapping[str, Any],
    *,
    now: datetime,
    ttl: timedelta = timedelta(minutes=10),
    command_id: str | None = None,
) -> dict[str, Any]:
    """An unsigned command: ``fields`` plus id (a new UUID4 unless given), kind, site, times."""
    return {
        **fields,
        "id": command_id or str(uuid.uuid4()),
        "kind": CommandKind(kind).value,
        "site": site_id,
        "issued_at": format_rfc3339(now),
        "expires_at": format_rfc3339(now + ttl),
    }


def sign_command(body: Mapping[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """``body`` plus its ``signature`` (any old signature is replaced).

    For tests and the local ``prepay topup`` operator tool; the backend does the same.

    Raises:
        ValueError: ``body`` holds a float.
    """
    return sign_document(body, private_key)


def command_id_of(raw: bytes, max_bytes: int = DEFAULT_LIMITS.max_payload_bytes) -> str | None:
    """The ``id`` of a command payload if one can be read, for answering a rejected command.

    A payload over ``max_bytes`` is not parsed at all (its id is None): parsing is the cost a
    flood of large payloads would impose.
    """
    if len(raw) > max_bytes:
        return None
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    value = obj.get("id") if isinstance(obj, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= 255 else None


def _validation_reason(exc: ValidationError) -> tuple[str, str]:
    errors = exc.errors(include_url=False, include_input=False)
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '$'}: {e['msg']}" for e in errors)
    if all(e["type"] == "non_positive_amount" for e in errors):
        return "non_positive_amount", detail
    return "malformed", detail


def parse_and_verify(
    kind: str,
    raw: bytes,
    *,
    site_id: str,
    backend_public_key: Ed25519PublicKey,
    now: datetime,
    limits: CommandLimits = DEFAULT_LIMITS,
) -> Command:
    """Check one received command and return it as a model.

    Checks run in this order, and the first failure is the reason: size before anything is
    parsed (too_large), JSON (malformed), signature (bad_signature), shape (malformed or
    non_positive_amount), site (wrong_site), then time: expired when ``now >= expires_at``,
    not_yet_valid when ``issued_at`` is ahead of ``now`` by more than the allowed clock skew,
    lifetime_too_long when ``expires_at - issued_at`` exceeds the maximum lifetime; last the
    amount ceiling of a top-up or refund (amount_too_large).

    Args:
        kind: the ``{kind}`` level of the topic the command came on.
        raw: the MQTT payload.
        site_id: this gateway's site.
        backend_public_key: the key the site config trusts for commands.
        now: the gateway's clock, an aware datetime.
        limits: the site's bounds on commands (`CommandLimits`).

    Raises:
        CommandRejectedError: with one of the reasons above.
    """
    try:
        command_kind = CommandKind(kind)
    except ValueError:
        raise CommandRejectedError("malformed", f"unknown command kind {kind!r}") from None
    if len(raw) > limits.max_payload_bytes:
        raise CommandRejectedError(
            "too_large", f"{len(raw)} bytes; at most {limits.max_payload_bytes} are read"
        )
    try:
        obj = loads_strict(raw)
    except ValueError as exc:
        raise CommandRejectedError("malformed", str(exc)) from None
    if not isinstance(obj, dict):
        raise CommandRejectedError("malformed", "a command is a JSON object")
    problem = signature_problem(obj, backend_public_key)
    if problem:
        raise CommandRejectedError("bad_signature", problem)
    try:
        command: Command = COMMAND_MODELS[command_kind].model_validate_json(raw)  # type: ignore[assignment]
    except ValidationError as exc:
        raise CommandRejectedError(*_validation_reason(exc)) from None
    if command.site != site_id:
        raise CommandRejectedError("wrong_site", f"command is for site {command.site!r}")
    if now >= command.expires_at:
        raise CommandRejectedError("expired", f"expired at {format_rfc3339(command.expires_at)}")
    clock_skew = timedelta(seconds=limits.max_clock_skew_s)
    if command.issued_at > now + clock_skew:
        raise CommandRejectedError(
            "not_yet_valid",
            f"issued_at {format_rfc3339(command.issued_at)} is ahead of the gateway clock "
            f"{format_rfc3339(now)} by more than {clock_skew}",
        )
    lifetime = command.expires_at - command.issued_at
    if lifetime > timedelta(seconds=limits.max_lifetime_s):
        raise CommandRejectedError(
            "lifetime_too_long",
            f"valid for {lifetime}; at most {timedelta(seconds=limits.max_lifetime_s)}",
        )
    amount = getattr(command, "amount_minor", None)
    if isinstance(amount, int) and amount > limits.max_amount_minor:
        raise CommandRejectedError(
            "amount_too_large", f"{amount} minor units; at most {limits.max_amount_minor}"
        )
    return command


def command_digest(command: Command) -> str:
    """SHA-256 (hex) of the command's canonical JSON without its signature: what identifies
    its content, so that the same id with other content is told apart from a resend."""
    body = command.model_dump(mode="json", by_alias=True, exclude={"signature"})
    return hashlib.sha256(canonical_json(body)).hexdigest()
