"""Topic names of the northbound MQTT contract, and messages built from payloads. Pure.

Every topic sits under ``prepay/{site}/``::

    status                        retained, Last Will   StatusPayload
    meter/{meter}/reading                               ReadingPayload
    meter/{meter}/readings        backlog batches       ReadingBatchPayload
    account/{account}/state       retained              AccountStatePayload
    account/{account}/event                             AccountEventPayload
    invoice/{invoice}/request                           InvoiceRequestPayload
    invoice/{invoice}/state       retained              InvoiceStatePayload
    device/{device}/state         retained              DeviceStatePayload
    cmd/{kind}                    in (backend -> gw)    see `gateway.northbound.commands`
    cmd/{kind}/result             out                   CommandResultPayload
    checkpoint                    retained              CheckpointPayload
    dispenser/{dispenser}/session                       DispenserSessionPayload (vending)

Water tickets are a plant's, not a site's: their topics sit under ``prepay/tickets/{plant}/``
(`PlantTopics`)::

    {code}/redeemed/{box}         retained              a redemption (gateway.tickets.events)
    {code}/conflict               retained              the same ticket redeemed at two boxes
    {code}/emergency/{box}        retained              an emergency ticket issued at a box
    stats/{box}                   retained              a box's ticket statistics

The payload models are in `gateway.northbound.payloads`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from billing_engine.tariff import RegisterUnit
from drivers.ports import Quality
from gateway.messages import MessageClass, Outgoing
from gateway.northbound.payloads import (
    AccountEventPayload,
    AccountStatePayload,
    CheckpointPayload,
    CommandKind,
    CommandResultPayload,
    DeviceStatePayload,
    DispenserSessionPayload,
    InvoiceRequestPayload,
    InvoiceStatePayload,
    ReadingPayload,
    StatusPayload,
    check_identifier,
    encode_payload,
)
from gateway.northbound.reading_fast_path import encode_plain_reading

TOPIC_ROOT: Final = "prepay"
QOS: Final = 1


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
    CHECKPOINT = "checkpoint"


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
class PlantTopics:
    """Topic names of one plant's water tickets (shared by all its boxes).

    Raises:
        ValueError: ``plant`` is not six digits.
    """

    plant: str

    def __post_init__(self) -> None:
        if not (len(self.plant) == 6 and self.plant.isdigit()):
            raise ValueError(f"plant code {self.plant!r} is not six digits")

    @property
    def root(self) -> str:
        return f"{TOPIC_ROOT}/tickets/{self.plant}"

    @property
    def redeemed_filter(self) -> str:
        """The subscription that receives every box's redemptions of the plant."""
        return f"{self.root}/+/redeemed/+"

    def redeemed(self, code: str, box: str) -> str:
        return f"{self.root}/{code}/redeemed/{check_identifier(box)}"

    def conflict(self, code: str) -> str:
        return f"{self.root}/{code}/conflict"

    def stats(self, box: str) -> str:
        """A box's ticket statistics (``prepay ticket stats``), retained."""
        return f"{self.root}/stats/{check_identifier(box)}"

    def emergency(self, code: str, box: str) -> str:
        """An emergency ticket issued at ``box`` while the network was down (to reconcile)."""
        return f"{self.root}/{code}/emergency/{check_identifier(box)}"


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
    def checkpoint(self) -> str:
        """The retained, signed head of the ledger (`CheckpointPayload`)."""
        return f"{self.root}/checkpoint"

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

    def dispenser_session(self, dispenser: str) -> str:
        return f"{self.root}/dispenser/{check_identifier(dispenser)}/session"

    def invoice_request(self, invoice_id: str) -> str:
        return f"{self.root}/invoice/{check_identifier(invoice_id)}/request"

    def invoice_state(self, invoice_id: str) -> str:
        return f"{self.root}/invoice/{check_identifier(invoice_id)}/state"

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
        if rest == ["checkpoint"]:
            return ParsedTopic(TopicKind.CHECKPOINT, None)
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
            batch_key=payload.meter,
        )

    def reading_message_of(
        self,
        *,
        meter: str,
        reading_id: str,
        read_at: datetime,
        register: int,
        delta: int,
        unit: RegisterUnit,
        quality: Quality,
        ts: datetime,
    ) -> Outgoing:
        """``reading_message(ReadingPayload(...))`` of these fields, byte for byte.

        The billing path sends one per reading, and building the model costs more than the
        rest of the message: fields that plainly satisfy the model are written directly
        (`gateway.northbound.reading_fast_path`); anything else goes through the model, which
        validates it (and raises its ``ValidationError``) as usual.
        """
        payload = encode_plain_reading(
            meter=meter,
            reading_id=reading_id,
            read_at=read_at,
            register=register,
            delta=delta,
            unit=unit,
            quality=quality,
            ts=ts,
        )
        if payload is None:
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
        return Outgoing(
            f"{self.root}/meter/{meter}/reading",
            payload,
            QOS,
            False,
            MessageClass.TELEMETRY,
            batch_key=meter,
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

    def dispenser_session_message(self, payload: DispenserSessionPayload) -> Outgoing:
        # Not retained (each is an event); LEDGER class: it reports money, never dropped.
        return Outgoing(
            self.dispenser_session(payload.dispenser),
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

    def invoice_request_message(self, payload: InvoiceRequestPayload) -> Outgoing:
        return Outgoing(
            self.invoice_request(payload.invoice_id),
            encode_payload(payload),
            QOS,
            False,
            MessageClass.LEDGER,
        )

    def invoice_state_message(self, payload: InvoiceStatePayload) -> Outgoing:
        return Outgoing(
            self.invoice_state(payload.invoice_id),
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

    def checkpoint_message(self, payload: CheckpointPayload) -> Outgoing:
        """Retained STATE: an unsent older checkpoint in the outbox is replaced by a newer one."""
        if payload.site != self.site:
            raise ValueError(f"a checkpoint of site {payload.site!r} is not {self.site!r}'s")
        return Outgoing(self.checkpoint, encode_payload(payload), QOS, True, MessageClass.STATE)
