"""Golden cases for millisecond billing (issue 12): every poll is a reading billed as itself.

The engine's instant is the reading's time floored to the millisecond, so two polls in one
second are two billed readings, while two readings in one millisecond are the same instant.
Each case runs through the kernel and the reference, which must both give the hand figure.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from billing_engine.engine import Crossing, ReadingStatus
from tests.billing.helpers import kernel_run, reference_run, sample

CST = ZoneInfo("Asia/Shanghai")
ZJ = "zhejiang-residential-electricity"


def statuses_and_deductions(
    class_name: str, readings: list[tuple[datetime, int]]
) -> list[tuple[ReadingStatus, int]]:
    """What the kernel did with each reading, after checking the reference did the same."""
    tariff = sample(ZJ)
    kernel, _ = kernel_run(tariff, class_name, readings)
    reference, _ = reference_run(tariff, class_name, readings)
    got = [(r.status, r.deduction_minor) for r in kernel]
    assert [(ReadingStatus(r.status), r.deduction_minor) for r in reference] == got
    return got


def test_golden_two_polls_400_ms_apart_in_one_second_both_billed() -> None:
    # Flat 0.538 yuan/kWh, tier 1. Baseline at 09:00:00, then two polls at 09:00:01.100 and
    # 09:00:01.500, each +1 kWh: 1 kWh x 0.538 = 0.538 -> 54 fen (half-up of 53.8); then the
    # cycle's 2 kWh = 1.076 -> 108 fen, so the second poll deducts 108 - 54 = 54 fen. In whole
    # seconds the second poll was a conflict and its kWh went into the next reading.
    t0 = datetime(2026, 5, 10, 9, 0, tzinfo=CST)
    readings = [
        (t0, 1_000_000),
        (t0 + timedelta(seconds=1, milliseconds=100), 1_001_000),
        (t0 + timedelta(seconds=1, milliseconds=500), 1_002_000),
    ]
    assert statuses_and_deductions("resident", readings) == [
        (ReadingStatus.BASELINE, 0),
        (ReadingStatus.BILLED, 54),
        (ReadingStatus.BILLED, 54),
    ]


def test_golden_same_millisecond_duplicate_or_conflict_next_millisecond_billed() -> None:
    # 09:00:01.100000 +1 kWh: 0.538 -> 54 fen. 400 us later, same millisecond and register: a
    # duplicate. 999 us after it, still the same millisecond, 0.5 kWh more: a conflict, nothing
    # billed. At 09:00:01.101 (the next millisecond) the same +0.5 kWh is billed: the cycle's
    # 1.5 kWh = 0.807 -> 81 fen, so 81 - 54 = 27 fen.
    t0 = datetime(2026, 5, 10, 9, 0, tzinfo=CST)
    poll = t0 + timedelta(seconds=1, milliseconds=100)
    readings = [
        (t0, 1_000_000),
        (poll, 1_001_000),
        (poll + timedelta(microseconds=400), 1_001_000),
        (poll + timedelta(microseconds=999), 1_001_500),
        (poll + timedelta(milliseconds=1), 1_001_500),
    ]
    assert statuses_and_deductions("resident", readings) == [
        (ReadingStatus.BASELINE, 0),
        (ReadingStatus.BILLED, 54),
        (ReadingStatus.DUPLICATE, 0),
        (ReadingStatus.CONFLICT, 0),
        (ReadingStatus.BILLED, 27),
    ]


def test_golden_peak_valley_boundary_between_sub_second_polls_split_by_ms() -> None:
    # Peak 0.568 until 22:00, valley 0.288 after (tier 1, no adder). 21:59:59.900 -> 22:00:00.300
    # is 400 ms: 100 ms peak, 300 ms valley. +10 kWh: floor(10000 Wh x 100 / 400) = 2500 Wh peak
    # x 0.568 = 1.42 yuan, 7500 Wh valley x 0.288 = 2.16 yuan; 3.58 yuan = 358 fen. (In whole
    # seconds it was 21:59:59 -> 22:00:00, all peak: 5.68 yuan.)
    # Then 22:00:00.300 -> 22:00:00.303, +1 kWh, all valley: 1 kWh x 0.288 -> the cycle's
    # 3.58 + 0.288 = 3.868 -> 387 fen, so 387 - 358 = 29 fen.
    evening = datetime(2026, 5, 10, 21, 59, 59, 900_000, tzinfo=CST)
    readings = [
        (evening, 0),
        (evening + timedelta(milliseconds=400), 10_000),
        (evening + timedelta(milliseconds=403), 11_000),
    ]
    assert statuses_and_deductions("resident_tou", readings) == [
        (ReadingStatus.BASELINE, 0),
        (ReadingStatus.BILLED, 358),
        (ReadingStatus.BILLED, 29),
    ]
    results, _ = kernel_run(sample(ZJ), "resident_tou", readings)
    assert results[1].crossing & Crossing.SPLIT
    assert not results[2].crossing & Crossing.SPLIT


def test_golden_boundary_split_floors_by_the_millisecond() -> None:
    # 21:59:59.999 -> 22:00:00.002 is 3 ms, 1 ms of it peak. +1 kWh: floor(1000 Wh x 1 / 3) =
    # 333 Wh peak x 0.568 = 0.189144 yuan; the other 667 Wh valley x 0.288 = 0.192096 yuan;
    # 0.38124 yuan -> 38 fen (half-up).
    evening = datetime(2026, 5, 10, 21, 59, 59, 999_000, tzinfo=CST)
    readings = [(evening, 5_000), (evening + timedelta(milliseconds=3), 6_000)]
    assert statuses_and_deductions("resident_tou", readings) == [
        (ReadingStatus.BASELINE, 0),
        (ReadingStatus.BILLED, 38),
    ]
