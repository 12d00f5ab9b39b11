"""The vending decision and the charge of a pour: golden values, worked by hand."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.ports import DenyReason
from gateway.policy.vending import (
    Deny,
    Grant,
    charge_minor,
    covered_ml,
    decide,
    per_bucket,
    per_litre,
    settle,
)


@pytest.mark.parametrize(
    ("price", "ml", "charge"),
    [
        (per_litre(35), 2_500, 88),  # 2.5 x 35 = 87.5 -> 88 (half-up)
        (per_litre(35), 2_871, 100),  # 100 485 / 1000 = 100.485 -> 100
        (per_litre(35), 14, 0),  # 0.49 fen -> 0
        (per_litre(35), 15, 1),  # 0.525 fen -> 1
        (per_litre(35), 0, 0),
        (per_bucket(600), 18_900, 600),  # one full bucket: the bucket price exactly
        (per_bucket(600), 9_450, 300),  # half a bucket: 5 670 000 + 9 450 = 5 679 450 // 18 900
        (per_bucket(1_000), 1, 0),  # 1 000 / 18 900 = 0.053 -> 0
    ],
)
def test_charge_golden(price: object, ml: int, charge: int) -> None:
    assert charge_minor(price, ml) == charge  # type: ignore[arg-type]


def test_covered_golden() -> None:
    # (1 000 * 1 000 + 499) // 35 = 1 000 499 // 35 = 28 585 (35 x 28 585 = 1 000 475)
    assert covered_ml(per_litre(35), 1_000) == 28_585
    assert covered_ml(per_litre(35), 0) == 0
    assert covered_ml(per_litre(35), -5) == 0


# From 1 minor unit of credit up (no credit pours nothing, though half-up would make the first
# few mL cost 0).
@given(st.integers(min_value=1, max_value=10**6), st.integers(min_value=1, max_value=10**7))
def test_covered_is_the_largest_volume_the_credit_pays(price: int, credit: int) -> None:
    for p in (per_litre(price), per_bucket(price)):
        ml = covered_ml(p, credit)
        assert charge_minor(p, ml) <= credit
        assert charge_minor(p, ml + 1) > credit


def test_decide_per_litre_caps_and_holds() -> None:
    kwargs = {"disconnect_threshold_minor": 0, "max_ml": 20_000, "max_buckets": 1}
    assert decide(per_litre(35), balance_minor=1_000, held_minor=0, **kwargs) == Grant(
        20_000,
        700,  # capped at 20 L: 20 x 35 = 700
    )
    # 100 fen free: 2 871 mL (see test_charge_golden), costing 100
    assert decide(per_litre(35), balance_minor=100, held_minor=0, **kwargs) == Grant(2_871, 100)
    # what an open session holds is not free
    assert decide(per_litre(35), balance_minor=100, held_minor=100, **kwargs) == Deny(
        DenyReason.NO_CREDIT
    )
    # the policy's floor: balance 150, threshold 100 -> 50 free -> (50 000 + 499) // 35 = 1 442
    assert decide(
        per_litre(35),
        balance_minor=150,
        held_minor=0,
        disconnect_threshold_minor=100,
        max_ml=20_000,
        max_buckets=1,
    ) == Grant(1_442, 50)


def test_decide_buckets_whole_only() -> None:
    kwargs = {"disconnect_threshold_minor": 0, "held_minor": 0, "max_ml": 50_000}
    assert decide(per_bucket(600), balance_minor=599, max_buckets=1, **kwargs) == Deny(
        DenyReason.NO_CREDIT
    )
    assert decide(per_bucket(600), balance_minor=1_300, max_buckets=1, **kwargs) == Grant(
        18_900, 600
    )
    # 1 300 // 600 = 2 buckets when two are allowed: 37 800 mL, 1 200 fen
    assert decide(per_bucket(600), balance_minor=1_300, max_buckets=3, **kwargs) == Grant(
        37_800, 1_200
    )


def test_settle_over_report_bills_the_authorised_volume() -> None:
    bill = settle(per_litre(35), authorised_ml=2_871, reported_ml=7_871)
    assert (bill.billed_ml, bill.charge_minor, bill.over_ml) == (2_871, 100, 5_000)
    bill = settle(per_litre(35), authorised_ml=20_000, reported_ml=2_500)
    assert (bill.billed_ml, bill.charge_minor, bill.over_ml) == (2_500, 88, 0)
    with pytest.raises(ValueError, match="negative"):
        settle(per_litre(35), 100, -1)
