"""Topic builders/parsers and payload codecs (pure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.messages import MessageClass
from gateway.northbound.payloads import (
    IDENTIFIER_PATTERN,
    AccountEventPayload,
    AccountStatePayload,
    CommandKind,
    CommandResultPayload,
    DeviceStatePayload,
    ReadingBatchPayload,
    ReadingPayload,
    ResultStatus,
    StatusPayload,
    decode_payload,
    encode_payload,
    encode_reading_batch,
    format_rfc3339,
)
from gateway.northbound.topics import SiteTopics, TopicKind

TOPICS = SiteTopics("site-1")
TS = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
IDS = st.from_regex(IDENTIFIER_PATTERN.replace("{0,127}", "{0,30}"), fullmatch=True)


def _reading(n: int = 1) -> ReadingPayload:
    return ReadingPayload.model_validate(
        {
            "meter": "m-1",
            "reading_id": f"m-1:{n}",
            "read_at": TS,
            "register": 1000 + n,
            "delta": n,
            "unit": "L",
            "quality": "good",
            "ts": TS,
        }
    )


def test_topics_names() -> None:
    assert TOPICS.status == "prepay/site-1/status"
    assert TOPICS.meter_reading("m-1") == "prepay/site-1/meter/m-1/reading"
    assert TOPICS.meter_readings("m-1") == "prepay/site-1/meter/m-1/readings"
    assert TOPICS.account_state("a") == "prepay/site-1/account/a/state"
    assert TOPICS.account_event("a") == "prepay/site-1/account/a/event"
    assert TOPICS.device_state("v") == "prepay/site-1/device/v/state"
    assert TOPICS.command(CommandKind.TOPUP) == "prepay/site-1/cmd/topup"
    assert TOPICS.command_result(CommandKind.RECEIPT) == "prepay/site-1/cmd/receipt/result"
    assert TOPICS.command_filter == "prepay/site-1/cmd/+"


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "a b", "-x", "é", "a" * 129])
def test_topics_bad_identifier_raises(bad: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        TOPICS.meter_reading(bad)
    with pytest.raises(ValueError, match="identifier"):
        SiteTopics(bad)


@given(key=IDS)
def test_topics_parse_inverts_builders(key: str) -> None:
    pairs = [
        (TOPICS.meter_reading(key), TopicKind.METER_READING),
        (TOPICS.meter_readings(key), TopicKind.METER_READINGS),
        (TOPICS.account_state(key), TopicKind.ACCOUNT_STATE),
        (TOPICS.account_event(key), TopicKind.ACCOUNT_EVENT),
        (TOPICS.device_state(key), TopicKind.DEVICE_STATE),
    ]
    for topic, kind in pairs:
        parsed = TOPICS.parse(topic)
        assert (parsed.kind, parsed.key) == (kind, key)


@pytest.mark.parametrize("kind", list(CommandKind))
def test_topics_parse_commands(kind: CommandKind) -> None:
    assert TOPICS.command_kind(TOPICS.command(kind)) is kind
    parsed = TOPICS.parse(TOPICS.command_result(kind))
    assert (parsed.kind, parsed.key) == (TopicKind.COMMAND_RESULT, kind.value)


@pytest.mark.parametrize(
    "topic",
    [
        "prepay/site-2/status",
        "prepay/site-1",
        "prepay/site-1/meter/m-1",
        "prepay/site-1/meter/m-1/other",
        "prepay/site-1/cmd/launch",
        "prepay/site-1/cmd/topup/other",
        "other/site-1/status",
    ],
)
def test_topics_parse_foreign_topic_raises(topic: str) -> None:
    with pytest.raises(ValueError, match=r"not|unknown"):
        TOPICS.parse(topic)


def test_topics_command_kind_of_result_topic_raises() -> None:
    with pytest.raises(ValueError, match="not a command topic"):
        TOPICS.command_kind(TOPICS.command_result(CommandKind.TOPUP))


def test_format_rfc3339_utc_milliseconds_z() -> None:
    assert format_rfc3339(TS) == "2026-03-01T12:00:00.123Z"
    plus_two = TS.astimezone(timezone(timedelta(hours=2)))
    assert format_rfc3339(plus_two) == "2026-03-01T12:00:00.123Z"
    with pytest.raises(ValueError, match="naive"):
        format_rfc3339(datetime(2026, 1, 1))  # noqa: DTZ001 - the naive case under test


def test_encode_payload_compact_json_with_register_alias() -> None:
    raw = encode_payload(_reading())
    assert b" " not in raw
    body = json.loads(raw)
    assert body["register"] == 1001
    assert body["ts"] == "2026-03-01T12:00:00.123Z"
    assert decode_payload(ReadingPayload, raw).register_value == 1001


def test_payload_naive_timestamp_rejected() -> None:
    with pytest.raises(ValidationError):
        StatusPayload(status="online", version="1", ts=datetime(2026, 1, 1))  # noqa: DTZ001


def test_payload_float_money_rejected() -> None:
    with pytest.raises(ValidationError):
        AccountStatePayload.model_validate(
            {
                "account": "a",
                "balance_minor": 1.5,
                "currency": "GBP",
                "state": "active",
                "debt_minor": 0,
                "ts": TS,
            }
        )


def test_encode_reading_batch_splices_items_into_valid_batch() -> None:
    items = [encode_payload(_reading(n)) for n in range(3)]
    batch = decode_payload(ReadingBatchPayload, encode_reading_batch("m-1", items, TS))
    assert [r.reading_id for r in batch.readings] == ["m-1:0", "m-1:1", "m-1:2"]
    with pytest.raises(ValueError, match="at least one"):
        encode_reading_batch("m-1", [], TS)


def test_messages_carry_retain_and_class() -> None:
    state = AccountStatePayload(
        account="a", balance_minor=-5, currency="CNY", state="grace", debt_minor=0, ts=TS
    )
    out = TOPICS.account_state_message(state)
    assert (out.topic, out.qos, out.retain, out.message_class) == (
        "prepay/site-1/account/a/state",
        1,
        True,
        MessageClass.STATE,
    )
    reading = TOPICS.reading_message(_reading())
    assert (reading.retain, reading.message_class) == (False, MessageClass.TELEMETRY)
    device = DeviceStatePayload(device="v", supply="on", confirmation="confirmed", ts=TS)
    assert TOPICS.device_state_message(device).retain
    status = TOPICS.status_message(StatusPayload(status="online", version="1", ts=TS))
    assert status.retain
    event = AccountEventPayload(event_id="e", account="a", event="cutoff", ts=TS)
    assert TOPICS.account_event_message(event).message_class is MessageClass.LEDGER


@pytest.mark.parametrize(
    "fields",
    [
        {"event": "topup_applied"},  # no receipt
        {"event": "alarm"},  # no alarm code
        {"event": "cutoff", "alarm": "tamper"},
        {"event": "debt_recovered", "currency": "GBP"},  # no amount
        {"event": "low_balance", "balance_minor": 10},  # no currency
    ],
)
def test_account_event_cross_field_rules(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        AccountEventPayload.model_validate({"event_id": "e", "account": "a", "ts": TS, **fields})


def test_device_state_desired_only_when_pending() -> None:
    with pytest.raises(ValidationError):
        DeviceStatePayload(device="v", supply="on", confirmation="pending", ts=TS)
    with pytest.raises(ValidationError):
        DeviceStatePayload(device="v", supply="on", confirmation="confirmed", desired="off", ts=TS)


def test_result_payload_rules_and_encoding() -> None:
    rejected = CommandResultPayload(
        kind=CommandKind.TOPUP, status=ResultStatus.REJECTED, ts=TS, reason="malformed"
    )
    body = json.loads(TOPICS.command_result_message(rejected).payload)
    assert body == {
        "kind": "topup",
        "status": "rejected",
        "reason": "malformed",
        "ts": "2026-03-01T12:00:00.123Z",
    }
    with pytest.raises(ValidationError):
        CommandResultPayload(id="x", kind=CommandKind.TOPUP, status=ResultStatus.REJECTED, ts=TS)
    with pytest.raises(ValidationError):
        CommandResultPayload(
            id="x", kind=CommandKind.TOPUP, status=ResultStatus.APPLIED, ts=TS, reason="malformed"
        )
