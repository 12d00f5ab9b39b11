"""Topic names and payload shapes of the northbound MQTT contract. Pure: no I/O.

Every topic sits under ``prepay/{site}/``::

    status                        retained, Last Will   StatusPayload
    meter/{meter}/reading                               ReadingPayload
    meter/{meter}/readings        backlog batches       ReadingBatchPayload
    account/{account}/state       retained              AccountStatePayload
    account/{account}/event                             AccountEventPayload
    device/{device}/state         retained              DeviceStatePayload
    cmd/{kind}                    in (backend -> gw)    see `gateway.northbound.commands`
    cmd/{kind}/result             out                   CommandResultPayload

All messages are QoS 1. Payloads are compact UTF-8 JSON objects; every one carries ``ts``, an
RFC 3339 UTC timestamp with millisecond precision and a ``Z`` suffix. Money is integer minor
units plus an ISO 4217 currency code; no payload ever holds a float.

Identifiers that become topic levels (site, meter, account, device) match `IDENTIFIER_PATTERN`,
so they can never contain ``/``, ``+``, ``#`` or whitespace.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from gateway.messages import MessageClass

TOPIC_ROOT: Final = "prepay"
IDENTIFIER_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
_IDENTIFIER_RE: Final = re.compile(IDENTIFIER_PATTERN)
QOS: Final = 1

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


class CommandKind(enum.StrEnum):
    """The ``{kind}`` level of ``cmd/{kind}``."""

    TOPUP = "topup"
    REFUND = "refund"
    TARIFF = "tariff"
    ACCOUNT = "account"
    SUPPLY = "supply"
    RECEIPT = "receipt"


class TopicKind(enum.StrEnum):
    """What a parsed topic addresses."""

    STATUS = "status"
    METER_READING = "meter_reading"
    METER_READINGS = "meter_readings"
    ACCOUNT_STATE = "account_state"
    ACCOUNT_EVENT = "account_event"
    DEVICE_STATE = "device_state"
    COMMAND = "command"
    COMMAND_RESULT = "command_result"


AccountStateName = Literal[
    "active", "low", "grace", "emergency", "cutoff_pending", "cutoff", "exempt"
]
AccountEventName = Literal[
    "low_balance",
    "grace_started",
    "emergency_credit_offered",
    "emergency_credit_accepted",
    "emergency_credit_repaid",
    "cutoff_deferred",
    "cutoff",
    "restored",
    "topup_applied",
    "debt_accrued",
    "debt_recovered",
    "override_applied",
    "override_expired",
    "alarm",
]
ResultStatus = Literal["applied", "duplicate", "rejected"]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StatusPayload(_Payload):
    """``status``: is the gateway connected? Retained; the Last Will says ``offline``.

    In the Last Will, ``ts`` is when the connection that left the will was opened.
    """

    status: Literal["online", "offline"]
    version: str
    ts: UtcDatetime


class ReadingPayload(_Payload):
    """``meter/{meter}/reading``: one billed reading.

    ``reading_id`` is the reading's identity: unique per site and stable across resends, so
    consumers dedupe on it.
    """

    meter: Identifier
    reading_id: Annotated[str, Field(min_length=1, max_length=255)]
    read_at: UtcDatetime
    # ``register`` would shadow ABCMeta.register, hence the alias.
    register_value: int = Field(
        strict=True, alias="register", description="cumulative register, in `unit`"
    )
    delta: Annotated[int, Field(strict=True, description="consumption billed by this reading")]
    unit: Literal["Wh", "L", "mL"]
    quality: Literal["good", "estimated", "suspect"]
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
    as for commands). ``receipt_seq`` counts 1, 2, 3 ... per site, without gaps.
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
    key_id: str
    signature: str


class AccountStatePayload(_Payload):
    """``account/{account}/state``: the latest balance and state. Retained."""

    account: Identifier
    balance_minor: MinorUnits
    currency: Currency
    state: AccountStateName
    debt_minor: Annotated[int, Field(strict=True, ge=0)]
    ts: UtcDatetime


class AccountEventPayload(_Payload):
    """``account/{account}/event``: something happened. ``event_id`` is its identity."""

    event_id: Annotated[str, Field(min_length=1, max_length=255)]
    account: Identifier
    event: AccountEventName
    balance_minor: MinorUnits | None = None
    currency: Currency | None = None
    amount_minor: MinorUnits | None = None
    receipt: ReceiptPayload | None = None
    alarm: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")] | None = None
    detail: str | None = None
    ts: UtcDatetime

    @model_validator(mode="after")
    def receipt_with_topup_and_alarm_with_code(self) -> Self:
        if (self.event == "topup_applied") != (self.receipt is not None):
            raise ValueError("a receipt goes with topup_applied, and topup_applied needs one")
        if (self.event == "alarm") != (self.alarm is not None):
            raise ValueError("an alarm code goes with event alarm, and alarm needs one")
        if self.event == "debt_recovered" and self.amount_minor is None:
            raise ValueError("debt_recovered needs amount_minor (the debt recovered)")
        if (self.balance_minor is not None or self.amount_minor is not None) and (
            self.currency is None
        ):
            raise ValueError("an amount or balance needs its currency")
        return self


class DeviceStatePayload(_Payload):
    """``device/{device}/state``: the supply switch (relay, valve). Retained.

    ``supply`` is the last state the device confirmed; while a change is on its way,
    ``confirmation`` is ``pending`` and ``desired`` says where it is going.
    """

    device: Identifier
    supply: Literal["on", "off"]
    confirmation: Literal["confirmed", "pending"]
    desired: Literal["on", "off"] | None = None
    last_seen: UtcDatetime | None = None
    ts: UtcDatetime

    @model_validator(mode="after")
    def desired_only_when_pending(self) -> Self:
        if (self.confirmation == "pending") != (self.desired is not None):
            raise ValueError("set desired exactly when confirmation is pending")
        return self


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
    receipt: ReceiptPayload | None = None
    ts: UtcDatetime

    @model_validator(mode="after")
    def reason_exactly_when_rejected(self) -> Self:
        if (self.status == "rejected") != (self.reason is not None):
            raise ValueError("a reason goes with status rejected, and rejected needs one")
        return self


# Every payload model, for the docs (`gateway.northbound.schemas`).
PAYLOAD_MODELS: Final[tuple[type[_Payload], ...]] = (
    StatusPayload,
    ReadingPayload,
    ReadingBatchPayload,
    AccountStatePayload,
    AccountEventPayload,
    ReceiptPayload,
    DeviceStatePayload,
    CommandResultPayload,
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
    if not _IDENTIFIER_RE.match(value):
        raise ValueError(f"{value!r} is not an identifier (pattern {IDENTIFIER_PATTERN})")
    return value


_PLAIN_READING_ID: Final = re.compile(r"[A-Za-z0-9._:@-]{1,255}")  # valid and never escaped
_READING_UNITS: Final = frozenset({"Wh", "L", "mL"})
_READING_QUALITIES: Final = frozenset({"good", "estimated", "suspect"})
_INT64: Final = range(-(2**63), 2**63)


def _plain_reading(
    meter: object,
    reading_id: object,
    read_at: object,
    register: object,
    delta: object,
    unit: object,
    quality: object,
    ts: object,
) -> bool:
    """True when `ReadingPayload` certainly accepts these fields as they are and its JSON holds
    them unescaped; exact types only, so nothing is left to the model's conversions."""
    return (
        type(meter) is str
        and _IDENTIFIER_RE.fullmatch(meter) is not None
        and type(reading_id) is str
        and _PLAIN_READING_ID.fullmatch(reading_id) is not None
        and _plain_aware(read_at)
        and _plain_aware(ts)
        and type(register) is int
        and register in _INT64
        and type(delta) is int
        and delta in _INT64
        and type(unit) is str
        and unit in _READING_UNITS
        and type(quality) is str
        and quality in _READING_QUALITIES
    )


# A billing batch stamps every message with the same ``ts``: format it once. Equal aware
# datetimes are the same instant, which is all `format_rfc3339` looks at.
_format_ts: Final = functools.lru_cache(maxsize=16)(format_rfc3339)


def _plain_aware(value: object) -> bool:
    return type(value) is datetime and value.utcoffset() is not None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message ready for the outbox: the store persists it, the MQTT link sends it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    message_class: MessageClass


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """A topic taken apart. ``key`` is the meter, account, device or command kind."""

    kind: TopicKind
    key: str | None


_SUFFIXES: Final[dict[tuple[str, str], TopicKind]] = {
    ("meter", "reading"): TopicKind.METER_READING,
    ("meter", "readings"): TopicKind.METER_READINGS,
    ("account", "state"): TopicKind.ACCOUNT_STATE,
    ("account", "event"): TopicKind.ACCOUNT_EVENT,
    ("device", "state"): TopicKind.DEVICE_STATE,
}


@dataclass(frozen=True, slots=True)
class SiteTopics:
    """Topic names of one site, and messages built from payloads.

    Raises:
        ValueError: ``site`` is not an identifier.
    """

    site: str

    def __post_init__(self) -> None:
        check_identifier(self.site)

    @property
    def root(self) -> str:
        return f"{TOPIC_ROOT}/{self.site}"

    @property
    def status(self) -> str:
        return f"{self.root}/status"

    @property
    def command_filter(self) -> str:
        """The subscription that receives every command kind."""
        return f"{self.root}/cmd/+"

    def meter_reading(self, meter: str) -> str:
        return f"{self.root}/meter/{check_identifier(meter)}/reading"

    def meter_readings(self, meter: str) -> str:
        return f"{self.root}/meter/{check_identifier(meter)}/readings"

    def account_state(self, account: str) -> str:
        return f"{self.root}/account/{check_identifier(account)}/state"

    def account_event(self, account: str) -> str:
        return f"{self.root}/account/{check_identifier(account)}/event"

    def device_state(self, device: str) -> str:
        return f"{self.root}/device/{check_identifier(device)}/state"

    def command(self, kind: CommandKind) -> str:
        return f"{self.root}/cmd/{CommandKind(kind)}"

    def command_result(self, kind: CommandKind) -> str:
        return f"{self.root}/cmd/{CommandKind(kind)}/result"

    def parse(self, topic: str) -> ParsedTopic:
        """Take one of this site's topics apart.

        Raises:
            ValueError: not a topic of this site's contract.
        """
        levels = topic.split("/")
        if levels[:2] != [TOPIC_ROOT, self.site] or len(levels) < 3:
            raise ValueError(f"{topic!r} is not under {self.root}/")
        rest = levels[2:]
        if rest == ["status"]:
            return ParsedTopic(TopicKind.STATUS, None)
        if len(rest) == 3 and (rest[0], rest[2]) in _SUFFIXES:
            return ParsedTopic(_SUFFIXES[rest[0], rest[2]], check_identifier(rest[1]))
        if rest[0] == "cmd" and len(rest) in (2, 3):
            try:
                kind = CommandKind(rest[1])
            except ValueError:
                raise ValueError(f"{topic!r}: unknown command kind {rest[1]!r}") from None
            if len(rest) == 2:
                return ParsedTopic(TopicKind.COMMAND, kind.value)
            if rest[2] == "result":
                return ParsedTopic(TopicKind.COMMAND_RESULT, kind.value)
        raise ValueError(f"{topic!r} is not a topic of the contract")

    def command_kind(self, topic: str) -> CommandKind:
        """The kind of an incoming ``cmd/{kind}`` topic.

        Raises:
            ValueError: not a command topic of this site.
        """
        parsed = self.parse(topic)
        if parsed.kind is not TopicKind.COMMAND or parsed.key is None:
            raise ValueError(f"{topic!r} is not a command topic")
        return CommandKind(parsed.key)

    # Messages: the topic key comes from the payload, so the two cannot disagree.

    def status_message(self, payload: StatusPayload) -> Outgoing:
        return Outgoing(self.status, encode_payload(payload), QOS, True, MessageClass.STATE)

    def reading_message(self, payload: ReadingPayload) -> Outgoing:
        return Outgoing(
            self.meter_reading(payload.meter),
            encode_payload(payload),
            QOS,
            False,
            MessageClass.TELEMETRY,
        )

    def reading_message_of(
        self,
        *,
        meter: str,
        reading_id: str,
        read_at: datetime,
        register: int,
        delta: int,
        unit: str,
        quality: str,
        ts: datetime,
    ) -> Outgoing:
        """``reading_message(ReadingPayload(...))`` of these fields, byte for byte.

        The billing path sends one per reading, and building the model costs more than the
        rest of the message: fields that plainly satisfy the model (exact types, identifiers
        and ids of characters JSON never escapes, 64-bit integers) are written directly;
        anything else goes through the model, which validates it (and raises its
        ``ValidationError``) as usual.
        """
        if not _plain_reading(meter, reading_id, read_at, register, delta, unit, quality, ts):
            return self.reading_message(
                ReadingPayload(
                    meter=meter,
                    reading_id=reading_id,
                    read_at=read_at,
                    register=register,
                    delta=delta,
                    unit=unit,
                    quality=quality,
                    ts=ts,
                )
            )
        payload = (
            f'{{"meter":"{meter}","reading_id":"{reading_id}",'
            f'"read_at":"{format_rfc3339(read_at)}","register":{register},"delta":{delta},'
            f'"unit":"{unit}","quality":"{quality}","ts":"{_format_ts(ts)}"}}'
        )
        return Outgoing(
            f"{self.root}/meter/{meter}/reading",
            payload.encode(),
            QOS,
            False,
            MessageClass.TELEMETRY,
        )

    def account_state_message(self, payload: AccountStatePayload) -> Outgoing:
        return Outgoing(
            self.account_state(payload.account),
            encode_payload(payload),
            QOS,
            True,
            MessageClass.STATE,
        )

    def account_event_message(self, payload: AccountEventPayload) -> Outgoing:
        return Outgoing(
            self.account_event(payload.account),
            encode_payload(payload),
            QOS,
            False,
            MessageClass.LEDGER,
        )

    def device_state_message(self, payload: DeviceStatePayload) -> Outgoing:
        return Outgoing(
            self.device_state(payload.device),
            encode_payload(payload),
            QOS,
            True,
            MessageClass.STATE,
        )

    def command_result_message(self, payload: CommandResultPayload) -> Outgoing:
        return Outgoing(
            self.command_result(payload.kind),
            encode_payload(payload),
            QOS,
            False,
            MessageClass.LEDGER,
        )


def result_payload(
    command_id: str | None,
    kind: CommandKind,
    status: ResultStatus,
    ts: datetime,
    *,
    reason: str | None = None,
    detail: str | None = None,
    receipt: dict[str, Any] | ReceiptPayload | None = None,
) -> CommandResultPayload:
    """Build a `CommandResultPayload` (``receipt`` may be the signed dict from `make_receipt`)."""
    return CommandResultPayload(
        id=command_id,
        kind=kind,
        status=status,
        reason=reason,
        detail=detail or None,
        receipt=ReceiptPayload.model_validate(receipt) if isinstance(receipt, dict) else receipt,
        ts=ts,
    )
