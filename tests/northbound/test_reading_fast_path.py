"""The reading fast path writes exactly what the model writes, and is taken for plain input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from billing_engine.tariff import RegisterUnit
from drivers.ports import Quality
from gateway.northbound.payloads import ReadingPayload, encode_payload
from gateway.northbound.reading_fast_path import encode_plain_reading

moments = st.builds(
    lambda dt, hours: dt.replace(tzinfo=UTC).astimezone(timezone(timedelta(hours=hours))),
    st.datetimes(
        min_value=datetime(1971, 1, 1),  # noqa: DTZ001 - hypothesis wants naive bounds
        max_value=datetime(2200, 1, 1),  # noqa: DTZ001
    ),
    st.integers(min_value=-12, max_value=14),
)
plain = {
    "meter": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}", fullmatch=True),
    "reading_id": st.from_regex(r"[A-Za-z0-9._:@-]{1,255}", fullmatch=True),
    "read_at": moments,
    "register": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "delta": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "unit": st.sampled_from(list(RegisterUnit)),
    "quality": st.sampled_from(list(Quality)),
    "ts": moments,
}


@given(**plain)
def test_reading_fast_path_plain_fields_same_bytes_as_model(**fields: Any) -> None:
    fast = encode_plain_reading(**fields)
    assert fast is not None  # plain input takes the fast path
    assert fast == encode_payload(ReadingPayload(**fields))


def test_reading_fast_path_declines_what_it_cannot_vouch_for() -> None:
    base: dict[str, Any] = {
        "meter": "m-1",
        "reading_id": "m-1@1",
        "read_at": datetime(2026, 6, 1, tzinfo=UTC),
        "register": 1,
        "delta": 1,
        "unit": RegisterUnit.WH,
        "quality": Quality.GOOD,
        "ts": datetime(2026, 6, 1, tzinfo=UTC),
    }
    assert encode_plain_reading(**base) is not None
    for change in (
        {"unit": "Wh"},  # a plain string: only the model may convert it
        {"quality": "good"},
        {"reading_id": 'quote"'},
        {"register": 2**63},
        {"delta": True},
        {"read_at": datetime(2026, 6, 1)},  # noqa: DTZ001 - naive on purpose
    ):
        assert encode_plain_reading(**{**base, **change}) is None, change
