"""The billing path's fast encoding of a `ReadingPayload`: the same bytes, without the model.

An optimisation behind the contract of `ReadingPayload` and `encode_payload`: one reading
message is made per billed reading, and validating and serialising the pydantic model costs
more than the rest of the message. When every field *plainly* satisfies the model (exact types,
an identifier and a reading id of characters JSON never escapes, 64-bit integers, aware
datetimes, the enums themselves), the JSON is written directly; otherwise `encode_plain_reading`
returns None and the caller goes through the model. ``tests/gateway/test_reading_message.py``
holds the two to the same bytes on generated input (a differential test).
"""

from __future__ import annotations

import functools
import re
from datetime import datetime
from typing import Final, cast

from billing_engine.tariff import RegisterUnit
from drivers.ports import Quality
from gateway.northbound.payloads import IDENTIFIER_RE, format_rfc3339

_PLAIN_READING_ID: Final = re.compile(r"[A-Za-z0-9._:@-]{1,255}")  # valid and never escaped
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
        and IDENTIFIER_RE.fullmatch(meter) is not None
        and type(reading_id) is str
        and _PLAIN_READING_ID.fullmatch(reading_id) is not None
        and _plain_aware(read_at)
        and _plain_aware(ts)
        and type(register) is int
        and register in _INT64
        and type(delta) is int
        and delta in _INT64
        and type(unit) is RegisterUnit
        and type(quality) is Quality
    )


# A billing batch stamps every message with the same ``ts``: format it once. Equal aware
# datetimes are the same instant, which is all `format_rfc3339` looks at.
_format_ts: Final = functools.lru_cache(maxsize=16)(format_rfc3339)


def _plain_aware(value: object) -> bool:
    return type(value) is datetime and value.utcoffset() is not None


def encode_plain_reading(
    *,
    meter: object,
    reading_id: object,
    read_at: object,
    register: object,
    delta: object,
    unit: object,
    quality: object,
    ts: object,
) -> bytes | None:
    """The JSON `encode_payload(ReadingPayload(...))` gives for these fields, or None when
    they are not plainly valid (then only the model may say what they become)."""
    if not _plain_reading(meter, reading_id, read_at, register, delta, unit, quality, ts):
        return None
    # `_plain_reading` checked both are exact aware datetimes.
    read_at, ts = cast(datetime, read_at), cast(datetime, ts)
    return (
        f'{{"meter":"{meter}","reading_id":"{reading_id}",'
        f'"read_at":"{format_rfc3339(read_at)}","register":{register},"delta":{delta},'
        f'"unit":"{unit}","quality":"{quality}","ts":"{_format_ts(ts)}"}}'
    ).encode()
