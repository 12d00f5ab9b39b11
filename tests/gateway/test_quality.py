"""Meter data quality: rollover, replacement, backwards, implausible jumps, stale meters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from drivers.ports import Reading
from gateway.config import load_site
from gateway.policy.quality import MeterConfig, Verdict, check, stale_meters
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import write_site
from tests.support.gateways import offline_gateway, running, settled
from tests.support.waiting import eventually

T0 = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)
METER = MeterConfig(id="m1", rollover_at=Decimal(100_000), max_rate_per_h=Decimal(50))


def test_quality_rollover_unwraps_register() -> None:
    # A 5-digit m3 counter: 99 990 m3 -> 10 m3 is a wrap of 20 m3, not a 99 980 m3 fall.
    got = check(
        METER,
        raw_milli=10_000,
        read_at=T0 + timedelta(hours=1),
        wraps=0,
        last_register_milli=99_990_000,
        last_read_at=T0,
    )
    assert (got.verdict, got.register_milli, got.wraps) == (Verdict.ROLLOVER, 100_010_000, 1)
    # The next reading after the wrap keeps the offset.
    nxt = check(
        METER,
        raw_milli=15_000,
        read_at=T0 + timedelta(hours=2),
        wraps=1,
        last_register_milli=100_010_000,
        last_read_at=T0 + timedelta(hours=1),
    )
    assert (nxt.verdict, nxt.register_milli, nxt.wraps) == (Verdict.BILL, 100_015_000, 1)


def test_quality_backwards_without_wrap_is_left_to_the_engine() -> None:
    got = check(
        METER,
        raw_milli=50_000_000,
        read_at=T0 + timedelta(hours=1),
        wraps=0,
        last_register_milli=60_000_000,
        last_read_at=T0,
    )
    assert (got.verdict, got.register_milli) == (Verdict.BILL, 50_000_000)


def test_quality_implausible_jump_is_held() -> None:
    # 50 m3/h allowed; 200 m3 in one hour is not plausible.
    got = check(
        METER,
        raw_milli=1_200_000,
        read_at=T0 + timedelta(hours=1),
        wraps=0,
        last_register_milli=1_000_000,
        last_read_at=T0,
    )
    assert got.verdict is Verdict.JUMP
    ok = check(
        METER,
        raw_milli=1_040_000,
        read_at=T0 + timedelta(hours=1),
        wraps=0,
        last_register_milli=1_000_000,
        last_read_at=T0,
    )
    assert ok.verdict is Verdict.BILL


def test_quality_replaced_meter_rebases_once() -> None:
    meter = MeterConfig(id="m1", replaced_at=T0 + timedelta(minutes=30))
    first = check(
        meter,
        raw_milli=5,
        read_at=T0 + timedelta(hours=1),
        wraps=3,
        last_register_milli=9_000_000,
        last_read_at=T0,
    )
    assert (first.verdict, first.register_milli, first.wraps) == (Verdict.REBASE, 5, 0)
    later = check(
        meter,
        raw_milli=900,
        read_at=T0 + timedelta(hours=2),
        wraps=0,
        last_register_milli=5,
        last_read_at=T0 + timedelta(hours=1),
    )
    assert later.verdict is Verdict.BILL


def test_quality_stale_meters() -> None:
    meters = {"m1": MeterConfig(id="m1", stale_after_s=600), "m2": MeterConfig(id="m2")}
    seen = {"m1": T0, "m2": T0}
    assert stale_meters(meters, seen, T0 + timedelta(seconds=599)) == set()
    assert stale_meters(meters, seen, T0 + timedelta(seconds=601)) == {"m1"}


async def test_pipeline_rollover_billed_jump_held_replacement_rebased(tmp_path: Path) -> None:
    site_file = write_site(
        tmp_path,
        mqtt_port=free_port(),
        extra={
            "meters": [
                {
                    "id": "m1",
                    "rollover_at": 100_000,
                    "max_rate_per_h": 50,
                    "replaced_at": (T0 + timedelta(hours=5)).isoformat(),
                },
            ]
        },
    )
    gateway, feed = offline_gateway(load_site(site_file), lambda: T0 + timedelta(hours=9))
    readings = [
        (0, 99_990_000),  # baseline near the top of the counter
        (0, 99_990_001),  # same second, one litre more: not billed, not held (next one bills)
        (1, 10_000),  # wrapped: +20 m3 at 5 yuan = 100 yuan
        (2, 1_000_000),  # +990 m3 in an hour: implausible, held
        (3, 20_000),  # +10 m3 since the last billed: 50 yuan
        (6, 300),  # after the swap at 05:00: new baseline, nothing charged
        (7, 1_300),  # +1 m3 on the new meter: 5 yuan
    ]
    async with running(gateway):
        await feed.put(*(Reading("m1", T0 + timedelta(hours=h), r) for h, r in readings))
        await eventually(lambda: settled(gateway), what="7 readings billed or held")
        # 20 m3 + 10 m3 + 1 m3 = 31 m3 at 5.00 yuan (tier 1) = 155.00 yuan
        assert gateway.probe.balance_minor("A1") == -15_500
        assert gateway.probe.counters().held == 1
        alarms = [e.detail.get("alarm") for e in gateway.store.events("A1")]
    assert {"meter_rollover", "implausible_jump", "meter_replaced"} <= set(alarms)
