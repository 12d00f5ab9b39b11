"""`SiteTopics.reading_message_of`, the billing path's reading message, is byte for byte
``reading_message(ReadingPayload(...))``, and refuses what the model refuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.northbound.payloads import ReadingPayload
from gateway.northbound.topics import SiteTopics

TOPICS = SiteTopics("site-1")
T0 = datetime(2026, 6, 1, 8, 30, 15, 123456, tzinfo=UTC)

ZONES = (
    UTC,
    timezone(timedelta(hours=8)),
    timezone(timedelta(hours=-3, minutes=-30)),
    ZoneInfo("Asia/Shanghai"),
    ZoneInfo("Europe/London"),
)
moments = st.builds(
    lambda dt, zone: dt.replace(tzinfo=UTC).astimezone(zone),
    st.datetimes(
        min_value=datetime(1971, 1, 1),  # noqa: DTZ001 - hypothesis wants naive bounds
        max_value=datetime(2200, 1, 1),  # noqa: DTZ001
    ),
    st.sampled_from(ZONES),
)
meters = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}", fullmatch=True)
reading_ids = st.from_regex(r"[A-Za-z0-9._:@-]{1,255}", fullmatch=True) | st.text(max_size=260)
integers = st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.integers()


def _fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "meter": "m-1",
        "reading_id": "m-1@1780302615123456",
        "read_at": T0,
        "register": 1_000_000,
        "delta": 5,
        "unit": "Wh",
        "quality": "good",
        "ts": T0 + timedelta(seconds=1),
    }
    fields.update(changes)
    return fields


def _model_message(fields: dict[str, Any]) -> Any:
    return TOPICS.reading_message(ReadingPayload(**fields))


@given(
    meter=meters,
    reading_id=reading_ids,
    read_at=moments,
    register=integers,
    delta=integers,
    unit=st.sampled_from(["Wh", "L", "mL"]),
    quality=st.sampled_from(["good", "estimated", "suspect"]),
    ts=moments,
)
def test_reading_message_of_same_bytes_as_model(**fields: Any) -> None:
    try:
        expected = _model_message(fields)
    except ValidationError:
        with pytest.raises(ValidationError):
            TOPICS.reading_message_of(**fields)
    else:
        assert TOPICS.reading_message_of(**fields) == expected


def test_reading_message_of_example() -> None:
    out = TOPICS.reading_message_of(**_fields(read_at=T0.astimezone(ZoneInfo("Asia/Shanghai"))))
    assert out.topic == "prepay/site-1/meter/m-1/reading"
    assert out.payload == (
        b'{"meter":"m-1","reading_id":"m-1@1780302615123456","read_at":"2026-06-01T08:30:15.123Z",'
        b'"register":1000000,"delta":5,"unit":"Wh","quality":"good",'
        b'"ts":"2026-06-01T08:30:16.123Z"}'
    )
    assert out == _model_message(_fields(read_at=T0.astimezone(ZoneInfo("Asia/Shanghai"))))


@pytest.mark.parametrize(
    "changes",
    [
        {"reading_id": 'quote"and\\backslash'},
        {"reading_id": "ünïcode@1"},
        {"register": 2**64},
        {"delta": -(2**70)},
    ],
)
def test_reading_message_of_unusual_fields_go_through_the_model(changes: dict[str, Any]) -> None:
    assert TOPICS.reading_message_of(**_fields(**changes)) == _model_message(_fields(**changes))


@pytest.mark.parametrize(
    "changes",
    [
        {"meter": "bad/meter"},
        {"meter": "m1\n"},
        {"reading_id": ""},
        {"reading_id": "r" * 256},
        {"register": True},
        {"delta": 1.0},
        {"unit": "kWh"},
        {"quality": "bad"},
        {"read_at": T0.replace(tzinfo=None)},
        {"ts": T0.replace(tzinfo=None)},
    ],
)
def test_reading_message_of_refuses_what_the_model_refuses(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _model_message(_fields(**changes))
    with pytest.raises(ValidationError):
        TOPICS.reading_message_of(**_fields(**changes))
