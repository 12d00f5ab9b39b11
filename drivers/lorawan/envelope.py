"""Network-server MQTT envelopes: topics and JSON in, typed events out; downlinks out (pure).

ChirpStack v4 (``chirpstack_api`` ``integration.proto``, protobuf JSON mapping: camelCase, bytes
as base64, ``devEui`` hex):

* events ``{prefix}/{application_id}/device/{dev_eui}/event/{up,join,ack,txack,...}``;
* enqueue ``{prefix}/{application_id}/device/{dev_eui}/command/down`` with a ``DownlinkCommand``
  ``{"id", "devEui", "confirmed", "fPort", "data"}``; the ``id`` comes back as the
  ``queueItemId`` of the ``ack`` event (``acknowledged`` true, or false on time-out) and of
  ``txack`` (gateway took it for TX: not proof of delivery).

The Things Stack v3 (``docs/integrations/other-integrations/mqtt``, ``.../data-formats``):

* ``v3/{app}[@{tenant}]/devices/{device_id}/{up,join,down/queued,down/sent,down/ack,down/nack,
  down/failed}``; publish ``.../down/push`` ``{"downlinks": [{"f_port", "frm_payload",
  "priority", "confirmed", "correlation_ids"}]}``. Empty fields (0, false, "") are omitted.

NB-IoT platforms push JSON whose field names differ per platform: `NbiotMapping` names them.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from drivers.ports import FrameError


class EnvelopeError(FrameError):
    """A network-server message could not be parsed. ``device_id`` is the topic."""


@dataclass(frozen=True, slots=True)
class Uplink:
    """One application uplink as the network server reported it.

    Attributes:
        device_key: the network server's id for the device: lower-case DevEUI (ChirpStack) or
            device id (TTS, NB-IoT).
        dev_eui: lower-case DevEUI when the message carries it.
        f_cnt: the uplink frame counter (0 when omitted).
        f_port: the LoRaWAN port, None for NB-IoT.
        payload: the application payload (decrypted by the network server).
        received_at: when the network server received it (aware UTC).
        dedup_id: ChirpStack ``deduplicationId``, when present.
        confirmed: a confirmed uplink.
    """

    device_key: str
    dev_eui: str | None
    f_cnt: int
    f_port: int | None
    payload: bytes
    received_at: datetime
    dedup_id: str | None = None
    confirmed: bool = False


class DownlinkStatus(enum.StrEnum):
    """What the network server says about a downlink."""

    QUEUED = "queued"
    SENT = "sent"  # handed to a gateway (ChirpStack txack, TTS down/sent): not delivered yet
    ACKED = "acked"  # the device acknowledged a confirmed downlink
    NACKED = "nacked"  # not acknowledged (ChirpStack ack with acknowledged=false, TTS nack)
    FAILED = "failed"  # could not be scheduled (TTS down/failed)


@dataclass(frozen=True, slots=True)
class DownlinkEvent:
    """A downlink's life-cycle event.

    Attributes:
        command_id: ChirpStack ``queueItemId``, or the first of our TTS correlation ids.
        payload: the downlink bytes when the event carries them (TTS).
    """

    device_key: str
    status: DownlinkStatus
    at: datetime
    command_id: str | None = None
    f_port: int | None = None
    payload: bytes | None = None


@dataclass(frozen=True, slots=True)
class JoinEvent:
    """The device (re)joined: a new session, its frame counters restart at 0."""

    device_key: str
    at: datetime


Event = Uplink | DownlinkEvent | JoinEvent

_FRACTION = re.compile(r"\.(\d+)")


def parse_time(text: str) -> datetime:
    """RFC 3339 with any number of fraction digits (TTS sends nanoseconds) -> aware UTC.

    Raises:
        ValueError: not a timestamp, or no UTC offset.
    """
    text = _FRACTION.sub(lambda m: "." + (m.group(1) + "000000")[:6], text, count=1)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without offset: {text!r}")
    return parsed.astimezone(UTC)


def _load(body: bytes, where: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EnvelopeError(where, f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise EnvelopeError(where, "JSON body is not an object")
    return data


def _b64(text: object, where: str) -> bytes:
    if text is None or text == "":
        return b""
    if not isinstance(text, str):
        raise EnvelopeError(where, "payload is not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise EnvelopeError(where, f"payload is not base64: {exc}") from exc


def _int(value: object, where: str, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise EnvelopeError(where, f"{name} is not an integer")
    try:
        return int(value)
    except ValueError as exc:
        raise EnvelopeError(where, f"{name} is not an integer") from exc


def _time(value: object, where: str, fallback: datetime) -> datetime:
    if value is None:
        return fallback
    if not isinstance(value, str):
        raise EnvelopeError(where, "time is not a string")
    try:
        return parse_time(value)
    except ValueError as exc:
        raise EnvelopeError(where, str(exc)) from exc


# -- ChirpStack v4 ------------------------------------------------------------------------------


def chirpstack_event_filter(prefix: str, application_id: str) -> str:
    """The subscription for all device events of one application."""
    return f"{prefix}/{application_id}/device/+/event/+"


def chirpstack_down_topic(prefix: str, application_id: str, dev_eui: str) -> str:
    """Where to publish a `DownlinkCommand`."""
    return f"{prefix}/{application_id}/device/{dev_eui.lower()}/command/down"


def parse_chirpstack(topic: str, body: bytes, *, now: datetime) -> Event | None:
    """Parse one ChirpStack event; None for events we do not use (status, log, location...).

    Raises:
        EnvelopeError: malformed topic or body.
    """
    parts = topic.split("/")
    if len(parts) < 5 or parts[-4] != "device" or parts[-2] != "event":
        raise EnvelopeError(topic, "not a ChirpStack device event topic")
    dev_eui = parts[-3].lower()
    kind = parts[-1]
    if kind not in {"up", "join", "ack", "txack"}:
        return None
    data = _load(body, topic)
    at = _time(data.get("time"), topic, now)
    info = data.get("deviceInfo") or {}
    body_eui = str(info.get("devEui", dev_eui)).lower()
    if body_eui != dev_eui:
        raise EnvelopeError(topic, f"deviceInfo.devEui {body_eui} differs from the topic")
    if kind == "up":
        f_port = data.get("fPort")
        return Uplink(
            device_key=dev_eui,
            dev_eui=dev_eui,
            f_cnt=_int(data.get("fCnt"), topic, "fCnt"),
            f_port=None if f_port is None else _int(f_port, topic, "fPort"),
            payload=_b64(data.get("data"), topic),
            received_at=at,
            dedup_id=data.get("deduplicationId"),
            confirmed=bool(data.get("confirmed", False)),
        )
    if kind == "join":
        return JoinEvent(dev_eui, at)
    queue_item = data.get("queueItemId")
    if kind == "ack":
        status = DownlinkStatus.ACKED if data.get("acknowledged") else DownlinkStatus.NACKED
    else:
        status = DownlinkStatus.SENT
    return DownlinkEvent(dev_eui, status, at, command_id=queue_item)


def encode_chirpstack_down(
    dev_eui: str, f_port: int, payload: bytes, *, confirmed: bool, command_id: str
) -> bytes:
    """A ChirpStack ``DownlinkCommand`` as JSON (``devEui`` must match the topic's)."""
    return json.dumps(
        {
            "id": command_id,
            "devEui": dev_eui.lower(),
            "confirmed": confirmed,
            "fPort": f_port,
            "data": base64.b64encode(payload).decode("ascii"),
        },
        separators=(",", ":"),
    ).encode()


# -- The Things Stack v3 ------------------------------------------------------------------------

_TTS_KINDS: dict[str, DownlinkStatus | Literal["up", "join"]] = {
    "up": "up",
    "join": "join",
    "down/queued": DownlinkStatus.QUEUED,
    "down/sent": DownlinkStatus.SENT,
    "down/ack": DownlinkStatus.ACKED,
    "down/nack": DownlinkStatus.NACKED,
    "down/failed": DownlinkStatus.FAILED,
}

_TTS_BODY_KEYS: dict[DownlinkStatus, str] = {
    DownlinkStatus.QUEUED: "downlink_queued",
    DownlinkStatus.SENT: "downlink_sent",
    DownlinkStatus.ACKED: "downlink_ack",
    DownlinkStatus.NACKED: "downlink_nack",
    DownlinkStatus.FAILED: "downlink_failed",
}

TTS_CORRELATION_PREFIX = "prepay:"
"""Our correlation id prefix on TTS downlinks, to match acks to commands."""


def tts_user(application_id: str, tenant_id: str | None) -> str:
    """``app@tenant`` (TTN: ``app@ttn``), or ``app`` on The Things Stack Open Source."""
    return f"{application_id}@{tenant_id}" if tenant_id else application_id


def tts_event_filters(prefix: str, user: str) -> list[str]:
    """The subscriptions for uplinks, joins and downlink events."""
    return [f"{prefix}/{user}/devices/+/{kind}" for kind in _TTS_KINDS]


def tts_down_topic(prefix: str, user: str, device_id: str) -> str:
    """Where to publish a downlink push (appends to the device's queue)."""
    return f"{prefix}/{user}/devices/{device_id}/down/push"


def parse_tts(topic: str, body: bytes, *, now: datetime) -> Event | None:
    """Parse one TTS application event; None for events we do not use.

    Raises:
        EnvelopeError: malformed topic or body.
    """
    parts = topic.split("/")
    try:
        at_devices = parts.index("devices")
    except ValueError as exc:
        raise EnvelopeError(topic, "not a TTS device topic") from exc
    if at_devices + 2 >= len(parts):
        raise EnvelopeError(topic, "not a TTS device topic")
    device_id = parts[at_devices + 1]
    kind = _TTS_KINDS.get("/".join(parts[at_devices + 2 :]))
    if kind is None:
        return None
    data = _load(body, topic)
    ids = data.get("end_device_ids") or {}
    if ids.get("device_id", device_id) != device_id:
        raise EnvelopeError(topic, "end_device_ids.device_id differs from the topic")
    dev_eui = ids.get("dev_eui")
    received = _time(data.get("received_at"), topic, now)
    if kind == "up":
        up = data.get("uplink_message")
        if not isinstance(up, dict):
            raise EnvelopeError(topic, "no uplink_message")
        f_port = up.get("f_port")
        return Uplink(
            device_key=device_id,
            dev_eui=dev_eui.lower() if isinstance(dev_eui, str) else None,
            f_cnt=_int(up.get("f_cnt"), topic, "f_cnt"),
            f_port=_int(f_port, topic, "f_port") if f_port is not None else 0,
            payload=_b64(up.get("frm_payload"), topic),
            received_at=_time(up.get("received_at"), topic, received),
            confirmed=bool(up.get("confirmed", False)),
        )
    if kind == "join":
        return JoinEvent(device_id, received)
    down = data.get(_TTS_BODY_KEYS[kind]) or {}
    if kind is DownlinkStatus.FAILED:
        down = down.get("downlink") or {}
    ours = [c for c in down.get("correlation_ids", []) if str(c).startswith(TTS_CORRELATION_PREFIX)]
    f_port = down.get("f_port")
    return DownlinkEvent(
        device_id,
        kind,
        received,
        command_id=ours[0].removeprefix(TTS_CORRELATION_PREFIX) if ours else None,
        f_port=_int(f_port, topic, "f_port") if f_port is not None else None,
        payload=_b64(down.get("frm_payload"), topic) if "frm_payload" in down else None,
    )


TtsPriority = Literal["LOWEST", "LOW", "BELOW_NORMAL", "NORMAL", "ABOVE_NORMAL", "HIGH", "HIGHEST"]


def encode_tts_down(
    f_port: int,
    payload: bytes,
    *,
    confirmed: bool,
    command_id: str,
    priority: TtsPriority = "NORMAL",
) -> bytes:
    """A TTS ``down/push`` body with one downlink, tagged with our correlation id."""
    return json.dumps(
        {
            "downlinks": [
                {
                    "f_port": f_port,
                    "frm_payload": base64.b64encode(payload).decode("ascii"),
                    "priority": priority,
                    "confirmed": confirmed,
                    "correlation_ids": [TTS_CORRELATION_PREFIX + command_id],
                }
            ]
        },
        separators=(",", ":"),
    ).encode()


# -- generic NB-IoT JSON ------------------------------------------------------------------------


class NbiotMapping(BaseModel):
    """Where a platform's JSON push keeps each value. Paths are dotted (``payload.meter.vol``).

    ``register_milli_per_unit`` turns the JSON number into milli-units: a volume in m3 with
    a billing unit of m3 takes 1000 (m3 -> litres); a value already in litres takes 1.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str = "nbiot/+/up"
    device_id_path: str = "deviceId"
    timestamp_path: str | None = "timestamp"
    timestamp_format: Literal["iso", "epoch_s", "epoch_ms"] = "iso"
    register_path: str = "register"
    register_milli_per_unit: Decimal = Decimal(1000)
    seq_path: str | None = None


@dataclass(frozen=True, slots=True)
class NbiotReading:
    """One NB-IoT push, mapped."""

    device_key: str
    read_at: datetime
    register_milli: int
    seq: int | None


def _path(data: dict[str, Any], path: str, where: str) -> object:
    node: object = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise EnvelopeError(where, f"no field {path!r}")
        node = node[part]
    return node


def parse_nbiot(topic: str, body: bytes, mapping: NbiotMapping, *, now: datetime) -> NbiotReading:
    """Map one NB-IoT JSON push; the register is exact (decimal), rounded half-even to milli.

    Raises:
        EnvelopeError: not JSON, a mapped field missing, or a value of the wrong kind.
    """
    data = _load(body, topic)
    device = _path(data, mapping.device_id_path, topic)
    if not isinstance(device, str | int) or isinstance(device, bool):
        raise EnvelopeError(topic, f"{mapping.device_id_path} is not a string or integer")
    raw = _path(data, mapping.register_path, topic)
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise EnvelopeError(topic, f"{mapping.register_path} is not a number")
    try:
        # str() first: a JSON float 12.345 becomes Decimal("12.345"), not its binary value.
        milli = (Decimal(str(raw)) * mapping.register_milli_per_unit).to_integral_value()
    except InvalidOperation as exc:
        raise EnvelopeError(topic, f"{mapping.register_path} is not a number") from exc
    if milli < 0:
        raise EnvelopeError(topic, f"{mapping.register_path} is negative")
    read_at = now
    if mapping.timestamp_path is not None:
        stamp = _path(data, mapping.timestamp_path, topic)
        if mapping.timestamp_format == "iso":
            read_at = _time(stamp, topic, now)
        elif isinstance(stamp, int | float) and not isinstance(stamp, bool):
            seconds = stamp / 1000 if mapping.timestamp_format == "epoch_ms" else stamp
            read_at = datetime.fromtimestamp(seconds, UTC)
        else:
            raise EnvelopeError(topic, f"{mapping.timestamp_path} is not an epoch number")
    seq = None
    if mapping.seq_path is not None:
        seq = _int(_path(data, mapping.seq_path, topic), topic, mapping.seq_path)
    return NbiotReading(str(device), read_at, int(milli), seq)
