"""Exact conversion between aware UTC datetimes (the API) and integer microseconds (the disk).

Integer arithmetic on `timedelta` only, so no float rounding can move an instant.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def to_micros(at: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime.

    Raises:
        ValueError: ``at`` is naive.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"expected an aware UTC datetime, got naive {at!r}")
    return (at - EPOCH) // _ONE_US


def from_micros(micros: int) -> datetime:
    """The aware UTC datetime of ``micros`` microseconds since the Unix epoch."""
    return EPOCH + timedelta(microseconds=micros)
