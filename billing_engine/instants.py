"""The billing engine's time unit: whole milliseconds since 1970-01-01 UTC (``*_ms``).

A reading's identity is its meter and its instant to the microsecond (``drivers/ports.py``);
the engine bills to the millisecond, so two polls of a meter in the same second are two
readings, each billed as itself, while two readings in the same millisecond are the same
instant (a duplicate, or a conflict when the registers differ).

The conversion is exact integer arithmetic on `datetime` values, never through
``datetime.timestamp()``: its float can land a hair below an exact millisecond (x.1 s is not a
binary fraction), and flooring that would bill the reading a millisecond early. An instant is
floored to its millisecond, which for an aware datetime is what dropping the sub-millisecond
digits gives. The kernel's and the reference's instants come from here, so
they agree to the millisecond. (The unit was the whole second before store schema 9, which
migrates saved account states forward.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS = timedelta(milliseconds=1)
MS_PER_S = 1_000


def to_ms(at: datetime) -> int:
    """``at`` (aware) as whole UTC milliseconds since the epoch, floored.

    Raises:
        TypeError: ``at`` is naive (an unknown offset cannot be billed).
    """
    return (at - EPOCH) // ONE_MS


def from_ms(at_ms: int) -> datetime:
    """The aware UTC instant of ``at_ms`` milliseconds since the epoch."""
    return EPOCH + timedelta(milliseconds=at_ms)


def floor_ms(at: datetime) -> datetime:
    """``at`` with its sub-millisecond part dropped: the instant the engine bills it at."""
    return from_ms(to_ms(at))
