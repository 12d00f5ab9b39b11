"""Plausibility on by default, and one alarm per hold condition (`gateway.policy.quality`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from billing_engine.tariff import Unit
from drivers.modbus.profiles import load_profile
from gateway.policy.quality import (
    BACKWARDS,
    JUMP,
    RESET_OR_SWAP,
    HoldWatch,
    MeterConfig,
    Rating,
    Verdict,
    check,
    on_billed,
    on_hold,
    with_defaults,
)

PROFILES = Path(__file__).resolve().parents[2] / "configs" / "devices"
T0 = datetime(2026, 6, 1, tzinfo=UTC)
SDM120 = Rating(Decimal("10.35"), "kWh", "eastron_sdm120")


@pytest.mark.parametrize(
    ("unit", "rate"),
    [(Unit.KWH, Decimal(100)), (Unit.M3, Decimal(40)), (Unit.LITRE, Decimal(4000))],
)
def test_defaults_per_unit_when_nothing_is_known(unit: Unit, rate: Decimal) -> None:
    assert with_defaults(None, "m1", unit, None) == MeterConfig(id="m1", max_rate_per_h=rate)


def test_defaults_from_the_profile_rating_with_headroom() -> None:
    # 10.35 kWh/h rated x 1.25 headroom = 12.9375 kWh/h
    got = with_defaults(None, "m1", Unit.KWH, SDM120)
    assert got.max_rate_per_h == Decimal("12.9375")


def test_defaults_ignore_a_rating_in_another_unit() -> None:
    # A profile in kWh says nothing about a meter billed in m3.
    assert with_defaults(None, "m1", Unit.M3, SDM120).max_rate_per_h == Decimal(40)


def test_defaults_keep_the_site_value_and_the_other_settings() -> None:
    own = MeterConfig(id="m1", max_rate_per_h=Decimal(5))
    assert with_defaults(own, "m1", Unit.KWH, SDM120) is own
    partial = MeterConfig(id="m1", rollover_at=Decimal(100_000), stale_after_s=600)
    got = with_defaults(partial, "m1", Unit.KWH, None)
    assert (got.rollover_at, got.stale_after_s, got.max_rate_per_h) == (
        Decimal(100_000),
        600,
        Decimal(100),
    )


@pytest.mark.parametrize(
    ("name", "rated"),
    [
        ("acrel_ddsy1352", Decimal("13.2")),  # 60 A x 220 V x 1 = 13,200 W
        ("eastron_sdm120", Decimal("10.35")),  # 45 A x 230 V x 1 = 10,350 W
        ("eastron_sdm630", Decimal(69)),  # 100 A x 230 V x 3 = 69,000 W
        ("water_xintai_valve", Decimal("7.875")),  # Q4 = 1.25 x Q3 6.3 m3/h (DN25, assumed)
    ],
)
def test_every_shipped_profile_has_its_rated_maximum(name: str, rated: Decimal) -> None:
    assert load_profile(PROFILES / f"{name}.yaml").max_rate_per_h == rated


def test_default_holds_a_million_kwh_and_bills_a_real_hour() -> None:
    meter = with_defaults(None, "m1", Unit.KWH, SDM120)
    hour = T0 + timedelta(hours=1)

    def verdict(register_kwh: int, at: datetime) -> Verdict:
        return check(
            meter,
            raw_milli=register_kwh * 1000,
            read_at=at,
            wraps=0,
            last_register_milli=1_000_000,
            last_read_at=T0,
        ).verdict

    assert verdict(1_001_000, T0 + timedelta(seconds=10)) is Verdict.JUMP  # +1,000,000 kWh
    assert verdict(1_012, hour) is Verdict.BILL  # +12 kWh in an hour <= 12.9375
    assert verdict(1_013, hour) is Verdict.JUMP  # +13 kWh in an hour > 12.9375
    # Not after the last reading: the engine's duplicate / conflict / out of order, never a jump.
    assert verdict(1_001_000, T0) is Verdict.BILL


def _hold(
    watch: HoldWatch, reason: str, seconds: int, register_kwh: int
) -> tuple[HoldWatch, list[str]]:
    at = T0 + timedelta(seconds=seconds)
    after, alarms = on_hold(
        MeterConfig(id="m1", max_rate_per_h=Decimal(36)),  # 10 Wh a second
        watch,
        reason=reason,
        reading_id=f"m1@{seconds}",
        register_milli=register_kwh * 1000,
        read_at=at,
        billed_milli=1_000_000,
    )
    return after, [f"{a.code} {'state=' + a.state}" for a in alarms]


def test_a_flood_of_spikes_raises_one_alarm_and_one_clear() -> None:
    watch = HoldWatch()
    raised: list[str] = []
    for i in range(22):  # each spike far from the last one: no new level
        watch, alarms = _hold(watch, JUMP, 10 * (i + 1), 2_000_000 * (i + 1))
        raised += alarms
    assert raised == [f"{JUMP} state=raised"]
    assert (watch.held, watch.first, watch.decision) == (22, "m1@10", False)
    after, cleared = on_billed(watch, "m1@300")
    assert [(a.code, "state=" + a.state) for a in cleared] == [(JUMP, "state=cleared")]
    assert "the 22 reading(s) held since m1@10 stay held, discarded" in cleared[0].message
    assert after == HoldWatch()
    assert on_billed(after, "m1@310") == (HoldWatch(), [])


@pytest.mark.parametrize(
    ("reason", "level_kwh"), [(JUMP, 50_000), (BACKWARDS, 0)], ids=["swap", "reset"]
)
def test_readings_continuing_from_the_new_level_ask_once_for_a_decision(
    reason: str, level_kwh: int
) -> None:
    watch, first = _hold(HoldWatch(), reason, 10, level_kwh)
    assert first == [f"{reason} state=raised"]
    # 3 kWh in 20 min = 9 kWh/h <= 36: plausible from the new level, not from the billed 1000.
    watch, second = _hold(watch, reason, 1210, level_kwh + 3)
    assert second == [f"{RESET_OR_SWAP} state=raised"]
    for i in range(10):
        watch, more = _hold(watch, reason, 1210 + 600 * (i + 1), level_kwh + 4 + i)
        assert more == []
    assert watch.decision
    assert watch.held == 12
    # The operator's replaced_at makes the next reading a baseline: both clear.
    _, cleared = on_billed(watch, "m1@9000")
    assert [a.code for a in cleared] == [reason, RESET_OR_SWAP]


def test_a_spike_then_a_fall_are_two_conditions() -> None:
    watch, alarms = _hold(HoldWatch(), JUMP, 10, 9_000_000)
    watch, more = _hold(watch, BACKWARDS, 20, 900)  # below the level: no decision
    assert alarms + more == [f"{JUMP} state=raised", f"{BACKWARDS} state=raised"]
    _, cleared = on_billed(watch, "m1@30")
    assert [a.code for a in cleared] == [JUMP, BACKWARDS]


def test_the_watch_survives_the_account_record() -> None:
    watch, _ = _hold(HoldWatch(), JUMP, 10, 50_000)
    watch, _ = _hold(watch, JUMP, 1210, 50_003)
    assert HoldWatch.from_record(watch.to_record()) == watch
    assert HoldWatch.from_record(HoldWatch().to_record()) == HoldWatch()
    assert HoldWatch.from_record({}) == HoldWatch()  # a record from before the watch
