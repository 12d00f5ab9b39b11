"""The fixed-point scales cannot overflow int64 within the enforced limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from billing_engine import layout, money
from billing_engine.engine import AccountState, BillingEngine, ReadingStatus
from billing_engine.reference import RefAccount, ReferenceBiller
from billing_engine.tariff import Tariff


def test_overflow_worst_cycle_fits_int64() -> None:
    # Worst cycle: maximum usage at the maximum price, taxed at 100 %, plus a century of the
    # maximum standing charge, must stay below 2**63 - 1 in acc units.
    energy = money.MAX_CYCLE_USAGE_MILLI * money.MAX_PRICE_MICRO
    standing = 100 * 366 * money.MAX_STANDING_MICRO_PER_DAY * money.QTY_SCALE
    assert 2 * (energy + standing) < 2**63 - 1
    # The pro-rata split's largest intermediate: remainder (< span) x elapsed (<= span).
    assert money.MAX_READING_SPAN_S**2 < 2**63 - 1
    assert layout.MAX_CYCLE_USAGE_MILLI == money.MAX_CYCLE_USAGE_MILLI
    assert layout.MAX_READING_SPAN_S == money.MAX_READING_SPAN_S


def _extreme_tariff() -> Tariff:
    return Tariff.model_validate(
        {
            "id": "extreme",
            "name": "extreme",
            "currency": "KWD",
            "unit": "kWh",
            "timezone": "UTC",
            "cycle": {"reset": "never"},
            "versions": [
                {
                    "effective_from": "2020-01-01T00:00:00+00:00",
                    "tax": {"percent": 100, "included": False},
                    "classes": {
                        "x": {
                            "energy": Decimal(60),
                            "tiers": [
                                {"up_to": Decimal(1000), "adder": Decimal(0)},
                                {"adder": Decimal(40)},
                            ],
                            "standing_charge_per_day": Decimal(1000),
                        }
                    },
                }
            ],
        }
    )


def test_overflow_kernel_at_the_limits_equals_big_integer_reference() -> None:
    tariff = _extreme_tariff()
    t0 = datetime(2020, 1, 1, tzinfo=UTC)
    limit = money.MAX_CYCLE_USAGE_MILLI
    readings = [
        (t0, 0),
        (t0 + timedelta(days=400), limit // 2),
        (t0 + timedelta(days=900), limit),  # exactly at the usage limit: still billed
        (t0 + timedelta(days=901), limit + 1),  # one milli-unit over: refused, not wrapped
    ]
    account = AccountState(0, "x")
    got = BillingEngine(tariff).bill([account], [(0, at, reg) for at, reg in readings])
    ref = RefAccount(0, "x")
    biller = ReferenceBiller(tariff)
    want = [biller.bill(ref, at, reg) for at, reg in readings]
    assert [r.deduction_minor for r in got] == [w.deduction_minor for w in want]
    assert [r.status for r in got][:3] == [
        ReadingStatus.BASELINE,
        ReadingStatus.BILLED,
        ReadingStatus.BILLED,
    ]
    assert got[3].status is ReadingStatus.LIMIT
    # The total is about 2**35 Wh x 100 KWD/kWh x 2 (tax): 6.87e9 KWD, in fils (1e-3).
    assert -account.balance_minor == sum(w.deduction_minor for w in want)
    assert -account.balance_minor > 6_800_000_000_000
