"""Plausibility at the engine's time unit, the millisecond (issue 12): a poll in the same second
as the last billed reading is billed, so it is judged; one in the same millisecond is not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from gateway.policy.quality import MeterConfig, Verdict, check

T0 = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)
# 50 m3/h allows at least one second's worth: 50 000 L / 3600 s = 13.9 L.
METER = MeterConfig(id="m1", max_rate_per_h=Decimal(50))


def _verdict(register_milli: int, after: timedelta) -> Verdict:
    return check(
        METER,
        raw_milli=register_milli,
        read_at=T0 + after,
        wraps=0,
        last_register_milli=1_000_000,
        last_read_at=T0,
    ).verdict


def test_quality_jump_400_ms_after_the_last_reading_is_held() -> None:
    # +100 L in 400 ms, in the same second: far above 13.9 L, held.
    assert _verdict(1_000_100, timedelta(milliseconds=400)) is Verdict.JUMP


def test_quality_plausible_rise_400_ms_after_the_last_reading_is_billed() -> None:
    # +10 L in 400 ms: within the one second's worth (13.9 L).
    assert _verdict(1_000_010, timedelta(milliseconds=400)) is Verdict.BILL


def test_quality_same_millisecond_is_left_to_the_engine() -> None:
    # 500 us later, the same millisecond: the engine's conflict, which bills nothing, so it is
    # never a jump.
    assert _verdict(1_000_100, timedelta(microseconds=500)) is Verdict.BILL
