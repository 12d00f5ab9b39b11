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

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any, Final, Literal, NoReturn, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
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

from billing_engine.errors import PrepayError
from gateway.errors import CommandRejectedError
from gateway.northbound.topics import (
    CommandKind,
    Currency,
    Identifier,
    ReceiptPayload,
    UtcDatetime,
    format_rfc3339,
)

DEFAULT_CLOCK_SKEW: Final = timedelta(minutes=5)
SIGNATURE_FIELD: Final = "signature"
_SIGNATURE_LEN: Final = 64


class InvalidReceiptError(PrepayError):
    """A receipt failed verification; ``reason`` is malformed or bad_signature."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


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
    """Reissue the receipt of top-up ``topup_id`` (the same signed receipt, unchanged)."""

    kind: Literal["receipt"]
    topup_id: CommandId


Command = (
    TopupCommand | RefundCommand | TariffCommand | AccountCommand | SupplyCommand | ReceiptCommand
)

COMMAND_MODELS: Final[dict[CommandKind, type[_Command]]] = {
    CommandKind.TOPUP: TopupCommand,
    CommandKind.REFUND: RefundCommand,
    CommandKind.TARIFF: TariffCommand,
    CommandKind.ACCOUNT: AccountCommand,
    CommandKind.SUPPLY: SupplyCommand,
    CommandKind.RECEIPT: ReceiptCommand,
}


# --- canonical JSON -----------------------------------------------------------------------------


class _NotStrictJsonError(ValueError):
    pass


def _no_float(text: str) -> NoReturn:
    raise _NotStrictJsonError(f"float {text} (use integer minor units or a decimal string)")


def _no_constant(text: str) -> NoReturn:
    raise _NotStrictJsonError(f"{text} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _NotStrictJsonError(f"key {key!r} repeated")
        result[key] = value
    return result


def loads_strict(raw: bytes) -> Any:
    """Parse JSON that has no floats, no NaN/Infinity and no repeated keys.

    Raises:
        ValueError: not UTF-8 JSON, or one of the above.
    """
    try:
        return json.loads(
            raw.decode("utf-8"),
            parse_float=_no_float,
            parse_constant=_no_constant,
            object_pairs_hook=_unique_keys,
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not UTF-8 JSON: {exc}") from exc
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def _check_no_float(value: object, path: str = "$") -> None:
    if isinstance(value, float):
        raise ValueError(f"{path} is a float (use integer minor units or a decimal string)")  # noqa: TRY004 - a bad value, reported like every other
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_no_float(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_no_float(item, f"{path}[{index}]")


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: ``obj`` minus ``signature``, sorted keys, no whitespace, UTF-8.

    Raises:
        ValueError: ``obj`` holds a float.
    """
    body = {k: v for k, v in obj.items() if k != SIGNATURE_FIELD}
    _check_no_float(body)
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _sign(obj: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    signature = base64.b64encode(key.sign(canonical_json(obj))).decode("ascii")
    return {**{k: v for k, v in obj.items() if k != SIGNATURE_FIELD}, SIGNATURE_FIELD: signature}


def _signature_ok(obj: Mapping[str, Any], key: Ed25519PublicKey) -> str:
    """Empty string when ``obj``'s signature is valid, else why not."""
    encoded = obj.get(SIGNATURE_FIELD)
    if not isinstance(encoded, str):
        return "no signature"
    try:
        signature = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        return "signature is not base64"
    if len(signature) != _SIGNATURE_LEN:
        return "signature is not 64 bytes"
    try:
        key.verify(signature, canonical_json(obj))
    except InvalidSignature:
        return "signature does not match the content"
    return ""


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
    return _sign(body, private_key)


def command_id_of(raw: bytes) -> str | None:
    """The ``id`` of a command payload if one can be read, for answering a rejected command."""
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
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
) -> Command:
    """Check one received command and return it as a model.

    Checks run in this order, and the first failure is the reason: JSON (malformed), signature
    (bad_signature), shape (malformed or non_positive_amount), site (wrong_site), then time:
    expired when ``now >= expires_at``, not_yet_valid when ``issued_at > now + clock_skew``.

    Args:
        kind: the ``{kind}`` level of the topic the command came on.
        raw: the MQTT payload.
        site_id: this gateway's site.
        backend_public_key: the key the site config trusts for commands.
        now: the gateway's clock, an aware datetime.
        clock_skew: how far in the future ``issued_at`` may be.

    Raises:
        CommandRejectedError: with one of the reasons above.
    """
    try:
        command_kind = CommandKind(kind)
    except ValueError:
        raise CommandRejectedError("malformed", f"unknown command kind {kind!r}") from None
    try:
        obj = loads_strict(raw)
    except ValueError as exc:
        raise CommandRejectedError("malformed", str(exc)) from None
    if not isinstance(obj, dict):
        raise CommandRejectedError("malformed", "a command is a JSON object")
    problem = _signature_ok(obj, backend_public_key)
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
    if command.issued_at > now + clock_skew:
        raise CommandRejectedError(
            "not_yet_valid",
            f"issued_at {format_rfc3339(command.issued_at)} is ahead of the gateway clock "
            f"{format_rfc3339(now)} by more than {clock_skew}",
        )
    return command


# --- receipts -----------------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short stable name for a public key: the first 16 hex digits of SHA-256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


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
    return _sign(body, gateway_key)


def verify_receipt(
    receipt: Mapping[str, Any], gateway_public_key: Ed25519PublicKey
) -> ReceiptPayload:
    """Check a receipt's signature and shape and return it as a model.

    Raises:
        InvalidReceiptError: reason ``bad_signature`` or ``malformed``.
    """
    try:
        problem = _signature_ok(receipt, gateway_public_key)
    except ValueError as exc:
        raise InvalidReceiptError("malformed", str(exc)) from None
    if problem:
        raise InvalidReceiptError("bad_signature", problem)
    try:
        return ReceiptPayload.model_validate(dict(receipt))
    except ValidationError as exc:
        raise InvalidReceiptError("malformed", str(exc)) from None


# --- keys ---------------------------------------------------------------------------------------


def generate_private_key() -> Ed25519PrivateKey:
    """A new Ed25519 key (for the gateway's receipts, or a test backend)."""
    return Ed25519PrivateKey.generate()


def private_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: protect the file with its mode (0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_to_pem(key: Ed25519PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    """An Ed25519 private key from PKCS#8 PEM.

    Raises:
        ValueError: not PEM, or not an Ed25519 key.
    """
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")  # noqa: TRY004 - bad input, not a bug
    return key


def load_public_key(data: bytes | str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM, or from base64 of its 32 raw bytes (handy in YAML).

    Raises:
        ValueError: neither form, or not an Ed25519 key.
    """
    blob = data.encode() if isinstance(data, str) else data
    if blob.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(blob)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return key
    try:
        raw = base64.b64decode(blob.strip(), validate=True)
    except binascii.Error as exc:
        raise ValueError("neither PEM nor base64") from exc
    if len(raw) != 32:
        raise ValueError("a raw Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)
