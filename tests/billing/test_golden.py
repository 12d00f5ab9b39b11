"""Golden billing cases with the hand arithmetic in comments (issue 3).

Every case runs through both the Numba kernel and the reference, and both must give the figure
worked out by hand below.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from billing_engine.engine import AccountState, BillingEngine, Crossing, ReadingStatus
from tests.billing.helpers import kernel_run, reference_run, sample

CST = ZoneInfo("Asia/Shanghai")
ZJ = "zhejiang_residential_electricity"


def both(
    tariff_name: str,
    class_name: str,
    readings: list[tuple[datetime, int]],
    opening_usage_milli: int = 0,
) -> tuple[int, int]:
    tariff = sample(tariff_name.replace("_", "-"))
    k, _ = kernel_run(tariff, class_name, readings, opening_usage_milli=opening_usage_milli)
    r, _ = reference_run(tariff, class_name, readings, opening_usage_milli=opening_usage_milli)
    return sum(x.deduction_minor for x in k), sum(x.deduction_minor for x in r)


def test_golden_tier_crossing_flat_5580_fen() -> None:
    # 2700 kWh used this year, +100 kWh on the flat tiered tariff:
    # 60 kWh x 0.538 = 32.28 yuan (tier 1 up to 2760) + 40 kWh x 0.588 = 23.52 yuan (tier 2)
    # = 55.80 yuan = 5580 fen.
    t0 = datetime(2026, 5, 10, 9, 0, tzinfo=CST)
    readings = [(t0, 10_000_000), (t0 + timedelta(minutes=30), 10_100_000)]
    assert both(ZJ, "resident", readings, opening_usage_milli=2_700_000) == (5580, 5580)


def test_golden_tier_crossing_in_1000_readings_same_5580_fen() -> None:
    # The same 100 kWh as 1000 readings of 0.1 kWh (100 Wh) one minute apart, all in the peak
    # window: the cumulative rounding makes the deductions add up to the same 55.80 yuan.
    t0 = datetime(2026, 5, 10, 9, 0, tzinfo=CST)
    readings = [(t0 + timedelta(minutes=i), 10_000_000 + 100 * i) for i in range(1001)]
    kernel_total, reference_total = both(ZJ, "resident", readings, opening_usage_milli=2_700_000)
    assert (kernel_total, reference_total) == (5580, 5580)


def test_golden_peak_valley_split_428_fen() -> None:
    # 10 kWh used evenly 21:00-23:00 in tier 1 on peak/valley (peak 08:00-22:00):
    # 5 kWh x 0.568 = 2.84 (peak, 21-22 h) + 5 kWh x 0.288 = 1.44 (valley, 22-23 h) = 4.28 yuan.
    readings = [
        (datetime(2026, 5, 10, 21, 0, tzinfo=CST), 1_000_000),
        (datetime(2026, 5, 10, 23, 0, tzinfo=CST), 1_010_000),
    ]
    assert both(ZJ, "resident_tou", readings) == (428, 428)


def test_golden_year_end_reset_inside_reading_1376_fen() -> None:
    # Tiered without TOU, 4900 kWh used in the ending year (tier 3 from 4800), 20 kWh used evenly
    # Dec 31 23:00 -> Jan 1 01:00: 10 kWh x 0.838 = 8.38 (old year, tier 3)
    # + 10 kWh x 0.538 = 5.38 (new year restarts in tier 1) = 13.76 yuan.
    readings = [
        (datetime(2025, 12, 31, 23, 0, tzinfo=CST), 50_000_000),
        (datetime(2026, 1, 1, 1, 0, tzinfo=CST), 50_020_000),
    ]
    assert both(ZJ, "resident", readings, opening_usage_milli=4_900_000) == (1376, 1376)


def test_golden_tiny_readings_round_cumulatively_538_fen() -> None:
    # tariffs.md example D: 1000 readings of 10 Wh at 0.538 yuan/kWh. Each is 0.538 fen; rounded
    # per reading it would be 10.00 yuan, truncated 0.00; cumulatively 5 380 000 µyuan = 538 fen.
    t0 = datetime(2026, 3, 2, 10, 0, tzinfo=CST)
    readings = [(t0 + timedelta(seconds=10 * i), 20_000 + 10 * i) for i in range(1001)]
    assert both(ZJ, "resident", readings) == (538, 538)


def test_golden_peak_valley_tier_crossing_96_fen() -> None:
    # tariffs.md example B, with the year at 2759 kWh: 2 kWh evenly over 21:00-23:00 is 1 kWh peak
    # then 1 kWh valley (our pro-rata split; the note's TOU registers said 1.2/0.8).
    # Peak 1 kWh x 0.568 = 0.568, tier 1 (2759 -> 2760). Valley 1 kWh x (0.288 + 0.05) = 0.338,
    # tier 2. Total 0.906 yuan -> 91 fen (half-up of 90.6).
    readings = [
        (datetime(2026, 5, 10, 21, 0, tzinfo=CST), 0),
        (datetime(2026, 5, 10, 23, 0, tzinfo=CST), 2_000),
    ]
    assert both(ZJ, "resident_tou", readings, opening_usage_milli=2_759_000) == (91, 91)


def test_golden_beijing_water_tiers_1160_fen() -> None:
    # 175 m3 used this year, +10 m3: 5 m3 x 5 yuan = 25 (tier 1 to 180) + 5 m3 x 7 = 35 = 60 yuan.
    t0 = datetime(2026, 6, 1, 8, 0, tzinfo=CST)
    readings = [(t0, 1_000_000), (t0 + timedelta(hours=1), 1_010_000)]
    assert both("beijing_residential_water", "resident", readings, opening_usage_milli=175_000) == (
        6000,
        6000,
    )


def test_golden_commercial_standing_and_vat() -> None:
    # Flat 0.70 yuan/kWh, standing 1.20 yuan/day, 13 % VAT on top, monthly cycle.
    # Baseline on Mar 1 10:00 pays Mar 1's standing charge: 1.20 x 1.13 = 1.356 -> 1.36 (136 fen).
    # Next reading Mar 3 10:00 (+100 kWh): standing for Mar 2 and Mar 3 = 2.40, energy 70.00,
    # cycle total net 1.20 + 2.40 + 70.00 = 73.60, with VAT 83.168 -> 83.17 yuan = 8317 fen
    # cumulative; so the second deduction is 8317 - 136 = 8181 fen.
    readings = [
        (datetime(2026, 3, 1, 10, 0, tzinfo=CST), 0),
        (datetime(2026, 3, 3, 10, 0, tzinfo=CST), 100_000),
    ]
    tariff = sample("commercial-flat-electricity")
    k, _ = kernel_run(tariff, "enterprise", readings)
    r, _ = reference_run(tariff, "enterprise", readings)
    assert [x.deduction_minor for x in k] == [136, 8181]
    assert [x.deduction_minor for x in r] == [136, 8181]


def test_golden_bucket_of_water_1800_fen() -> None:
    # 18.9 L at 0.952381 yuan/L = 18.0000009 yuan -> 18.00 yuan = 1800 fen.
    t0 = datetime(2026, 6, 1, 8, 0, tzinfo=CST)
    readings = [(t0, 0), (t0 + timedelta(minutes=2), 18_900)]
    assert both("bottled_water_dispenser", "bucket", readings) == (1800, 1800)


def test_engine_statuses_duplicate_out_of_order_backwards() -> None:
    tariff = sample("zhejiang-residential-electricity")
    t0 = datetime(2026, 5, 10, 9, 0, tzinfo=CST)
    readings = [
        (t0, 1_000),
        (t0 + timedelta(minutes=10), 2_000),  # +1 kWh at 0.538 -> 54 fen (53.8 rounded)
        (t0 + timedelta(minutes=10), 2_000),  # duplicate: nothing
        (t0 + timedelta(minutes=5), 1_500),  # out of order: nothing
        (t0 + timedelta(minutes=20), 1_900),  # register went backwards: reported, not billed
        (t0 + timedelta(minutes=10), 2_500),  # same instant, other register: conflict
        (t0 + timedelta(minutes=30), 3_000),  # +1 kWh from 2000: cumulative 1.076 -> 108, so 54
    ]
    k, _ = kernel_run(tariff, "resident", readings)
    r, _ = reference_run(tariff, "resident", readings)
    expected = [
        (ReadingStatus.BASELINE, 0),
        (ReadingStatus.BILLED, 54),
        (ReadingStatus.DUPLICATE, 0),
        (ReadingStatus.OUT_OF_ORDER, 0),
        (ReadingStatus.REGISTER_BACKWARDS, 0),
        (ReadingStatus.CONFLICT, 0),
        (ReadingStatus.BILLED, 54),
    ]
    assert [(x.status, x.deduction_minor) for x in k] == expected
    assert [(x.status, x.deduction_minor) for x in r] == expected


@pytest.mark.parametrize(
    ("balance", "low", "cut", "expected"),
    [
        # 5580 fen deducted from 6000: crosses the 1000 low threshold only.
        (6000, 1000, -500, Crossing.LOW),
        # From 5000 to -580: low, zero and the disconnection threshold at -500.
        (5000, 1000, -500, Crossing.LOW | Crossing.ZERO | Crossing.DISCONNECT),
        # Already below low before: only zero is new.
        (500, 1000, -6000, Crossing.ZERO),
    ],
)
def test_engine_thresholds_crossed(balance: int, low: int, cut: int, expected: Crossing) -> None:
    tariff = sample("zhejiang-residential-electricity")
    t0 = datetime(2026, 5, 10, 9, 0, tzinfo=CST)
    account = AccountState(
        balance, "resident", low_minor=low, disconnect_minor=cut, usage_milli=2_700_000
    )
    results = BillingEngine(tariff).bill(
        [account], [(0, t0, 0), (0, t0 + timedelta(minutes=30), 100_000)]
    )
    assert results[1].deduction_minor == 5580
    assert results[1].crossing & ~Crossing.SPLIT == expected
    assert account.balance_minor == balance - 5580
