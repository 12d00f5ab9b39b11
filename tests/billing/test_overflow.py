"""The fixed-point scales cannot overflow int64 within the enforced limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import example, given
from hypothesis import strategies as st

from billing_engine import layout, money
from billing_engine.engine import AccountState, BillingEngine, ReadingStatus
from billing_engine.kernel import _split
from billing_engine.reference import RefAccount, ReferenceBiller
from billing_engine.tariff import Tariff


def test_overflow_worst_cycle_fits_int64() -> None:
    # Worst cycle: maximum usage at the maximum price, taxed at 100 %, plus a century of the
    # maximum standing charge, must stay below 2**63 - 1 in acc units.
    energy = money.MAX_CYCLE_USAGE_MILLI * money.MAX_PRICE_MICRO
    standing = 100 * 366 * money.MAX_STANDING_MICRO_PER_DAY * money.QTY_SCALE
    assert 2 * (energy + standing) < 2**63 - 1
    # The pro-rata split's largest intermediates (money.py): remainder (< span) x elapsed
    # (<= span) multiplied directly up to SPLIT_DIRECT_MAX_MS; above it, one long-hand step:
    # partial remainder (< span) x 2**20 + remainder (<= quantity) x a 20-bit digit.
    assert money.SPLIT_DIRECT_MAX_MS**2 < 2**63 - 1
    assert money.MAX_READING_SPAN_MS < 2**42  # three 20-bit digits hold elapsed
    step = money.MAX_READING_SPAN_MS * 2**20 + money.MAX_CYCLE_USAGE_MILLI * (2**20 - 1)
    assert step < 2**63 - 1
    assert layout.MAX_CYCLE_USAGE_MILLI == money.MAX_CYCLE_USAGE_MILLI
    assert layout.MAX_READING_SPAN_MS == money.MAX_READING_SPAN_MS
    assert layout.SPLIT_DIRECT_MAX_MS == money.SPLIT_DIRECT_MAX_MS


@given(
    quantity=st.integers(0, money.MAX_CYCLE_USAGE_MILLI),
    span=st.integers(1, money.MAX_READING_SPAN_MS),
    data=st.data(),
)
@example(  # every digit of elapsed and the remainder at their largest
    quantity=money.MAX_CYCLE_USAGE_MILLI, span=money.MAX_READING_SPAN_MS, data=None
)
@example(quantity=money.MAX_CYCLE_USAGE_MILLI, span=money.SPLIT_DIRECT_MAX_MS, data=None)
@example(quantity=money.MAX_CYCLE_USAGE_MILLI, span=money.SPLIT_DIRECT_MAX_MS + 1, data=None)
@example(  # a remainder of span - 1: (remainder x elapsed) ~ 3.6e19 would wrap if multiplied
    quantity=2 * money.SPLIT_DIRECT_MAX_MS - 2, span=2 * money.SPLIT_DIRECT_MAX_MS - 1, data=None
)
def test_overflow_split_is_exact_up_to_the_limits(
    quantity: int, span: int, data: st.DataObject | None
) -> None:
    # The pro-rata split in milliseconds: exact floor(quantity x elapsed / span) over the whole
    # range, both below SPLIT_DIRECT_MAX_MS (multiplied directly) and above (long-hand).
    elapsed_values = [0, 1, span // 3, span - 1, span] if data is None else []
    if data is not None:
        elapsed_values.append(data.draw(st.integers(0, span)))
    for elapsed in elapsed_values:
        assert _split(quantity, elapsed, span) == quantity * elapsed // span, (elapsed, span)


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
