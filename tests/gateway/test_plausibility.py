"""Plausibility on by default, recovery after a spike without an operator, one alarm per
condition: the whole gateway (journal, quality check, engine, store), fed like a driver.

Prices: Zhejiang residential electricity, class ``resident``: 0.538 yuan/kWh in tier 1 (up to
2760 kWh a year, which no test here leaves), tax included, no standing charge, so N kWh cost
N x 53.8 fen. Meter e1 is an Eastron SDM120 on a Modbus bus: its default plausible rate is the
profile's rated 10.35 kWh/h x 1.25 = 12.9375 kWh/h.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.sites import PROFILES, TARIFFS, account
from bench.sites import write_site as write_site_file
from drivers.ports import DriverEvent, DriverEventKind, Reading, utc_now
from gateway.cli import main
from gateway.config import load_site
from gateway.daemon import Gateway
from tests.fixtures.mosquitto import free_port
from tests.support.gateways import offline_gateway, running, settled
from tests.support.waiting import eventually

T0 = datetime(2026, 6, 1, tzinfo=UTC)
TARIFF = "zhejiang_residential_electricity"
NOW = T0 + timedelta(days=2)  # the gateway's clock: after every reading of these tests


def clock() -> datetime:
    return NOW


def kwh(meter: str, at: timedelta, register_kwh: float) -> Reading:
    return Reading(meter, T0 + at, round(register_kwh * 1000))


def _write(tmp_path: Path, accounts: list[str], meters: list[dict[str, Any]] | None = None) -> Path:
    """A site of electricity accounts ``E<n>`` on meters ``e<n>``; e1 and e3 are SDM120s on a
    Modbus bus (nothing connects to it: the test feeds the readings)."""
    devices = [
        {"device_id": f"d-{m}", "unit_id": i + 1, "profile": "eastron_sdm120", "meter_id": m}
        for i, m in enumerate(("e1", "e3"))
    ]
    bus = {"name": "bus0", "kind": "tcp", "host": "127.0.0.1", "port": 1502, "devices": devices}
    extra: dict[str, Any] = {"devices": {"profiles_dir": str(PROFILES), "modbus_buses": [bus]}}
    if meters is not None:
        extra["meters"] = meters
    return write_site_file(
        tmp_path,
        site_id="test-site",
        mqtt_port=free_port(),
        tariffs=[TARIFFS / "zhejiang-residential-electricity.yaml"],
        accounts=[account(a, a.lower(), tariff=TARIFF) for a in accounts],
        extra=extra,
    )


def alarms(gateway: Gateway, account_id: str) -> list[tuple[str, str]]:
    """The account's alarms: (code, state) in the order raised."""
    found = []
    for e in gateway.store.events(account_id):
        if e.kind == "alarm":
            detail = e.detail["detail"]
            if "state" in detail:
                found.append((e.detail["alarm"], f"state={detail['state']}"))
            else:  # meter_replaced: a notice, with the new baseline
                found.append((e.detail["alarm"], f"new baseline {detail['baseline_milli']}"))
    return found


def held_reasons(gateway: Gateway) -> list[tuple[str, str | None]]:
    return [(r.reading.reading_id, r.hold_reason) for r in gateway.store.held(1000)]


async def feed_all(
    site_file: Path, readings: list[Reading], check: Callable[[Gateway], None]
) -> None:
    """Run a gateway on the site, hand it ``readings``, wait until all are billed or held, and
    run ``check`` on it before it stops."""
    gateway, feed = offline_gateway(load_site(site_file), clock)
    async with running(gateway):
        await feed.put(*readings)
        await eventually(lambda: settled(gateway), what=f"{len(readings)} readings billed or held")
        check(gateway)


async def test_a_million_kwh_spike_charges_nothing_and_the_true_readings_bill_on(
    tmp_path: Path,
) -> None:
    spike = kwh("e1", timedelta(hours=1, seconds=10), 1_001_010)  # +1,000,000 kWh in 10 s
    readings = [
        kwh("e1", timedelta(0), 1_000),  # baseline
        kwh("e1", timedelta(hours=1), 1_010),  # +10 kWh
        spike,  # held: far beyond 12.9375 kWh/h
        kwh("e1", timedelta(hours=2), 1_020),  # +10 kWh from the billed 1010: billed
        kwh("e1", timedelta(hours=3), 1_030),  # +10 kWh
    ]

    def check(gateway: Gateway) -> None:
        # 3 x 10 kWh x 53.8 fen = 3 x 538 = 1614 fen; the spike deducts nothing (without a
        # default rate it deducted 83,666,500 fen and held every true reading after it).
        assert gateway.probe.balance_minor("E1") == -1614
        assert gateway.probe.counters().deducted_minor == 1614
        assert gateway.probe.billed_with_status("billed") == 3
        assert gateway.probe.counters().held == 1
        assert held_reasons(gateway) == [(spike.reading_id, "implausible_jump")]
        assert alarms(gateway, "E1") == [
            ("implausible_jump", "state=raised"),
            ("implausible_jump", "state=cleared"),
        ]
        cleared = [e for e in gateway.store.events("E1") if e.kind == "alarm"][-1]
        assert (
            f"held since {spike.reading_id} stay held, discarded"
            in cleared.detail["detail"]["message"]
        )

    await feed_all(_write(tmp_path, ["E1"]), readings, check)


async def test_default_rate_comes_from_the_profile_else_the_unit_and_the_site_overrides_it(
    tmp_path: Path,
) -> None:
    # +20 kWh in one hour on each meter:
    # e1, SDM120 profile: 20 > 12.9375 kWh/h -> held;
    # e2, no profile: the kWh default 100 kWh/h -> billed, 20 x 53.8 = 1076 fen;
    # e3, SDM120 but `max_rate_per_h: 30` in the site's meters: -> billed, 1076 fen.
    site_file = _write(tmp_path, ["E1", "E2", "E3"], [{"id": "e3", "max_rate_per_h": 30}])
    readings = [
        kwh(m, at, register)
        for m in ("e1", "e2", "e3")
        for at, register in ((timedelta(0), 500), (timedelta(hours=1), 520))
    ]

    def check(gateway: Gateway) -> None:
        balances = {a: gateway.probe.balance_minor(a) for a in ("E1", "E2", "E3")}
        assert balances == {"E1": 0, "E2": -1076, "E3": -1076}
        assert [reason for _, reason in held_reasons(gateway)] == ["implausible_jump"]
        assert alarms(gateway, "E1") == [("implausible_jump", "state=raised")]

    await feed_all(site_file, readings, check)


@pytest.mark.parametrize(
    ("reason", "level_kwh"),
    [("implausible_jump", 50_000), ("register_backwards", 0)],
    ids=["swapped-for-a-higher-register", "reset-to-zero"],
)
async def test_a_real_reset_or_swap_stays_held_and_asks_once_for_a_decision(
    tmp_path: Path, reason: str, level_kwh: int
) -> None:
    site_file = _write(tmp_path, ["E1"])
    swap_at = timedelta(hours=1, seconds=10)

    def new_meter(k: int) -> Reading:
        # the new level, then 5 kWh an hour from it: plausible from the level, not from 1010
        return kwh("e1", swap_at + timedelta(hours=k), level_kwh + 5 * k)

    first = [kwh("e1", timedelta(0), 1_000), kwh("e1", timedelta(hours=1), 1_010)]
    first += [new_meter(k) for k in range(11)]  # the level and 10 readings continuing it
    raised = [(reason, "state=raised"), ("meter_reset_or_swap", "state=raised")]

    def before_restart(gateway: Gateway) -> None:
        assert gateway.probe.balance_minor("E1") == -538  # 10 kWh x 53.8 fen, before the swap
        assert gateway.probe.counters().held == 11
        assert alarms(gateway, "E1") == raised  # 11 held readings, 2 alarms

    await feed_all(site_file, first, before_restart)

    def after_restart(gateway: Gateway) -> None:
        # The watch was saved with the account: a restart raises nothing again.
        assert gateway.probe.counters().held == 1
        assert alarms(gateway, "E1") == raised

    await feed_all(site_file, [new_meter(11)], after_restart)

    # The operator decides: the meter was swapped at swap_at (site file, then a restart).
    doc = yaml.safe_load(site_file.read_text())
    doc["meters"] = [{"id": "e1", "replaced_at": (T0 + swap_at).isoformat()}]
    site_file.write_text(yaml.safe_dump(doc, sort_keys=False))

    def after_decision(gateway: Gateway) -> None:
        # new_meter(12) is the new baseline; new_meter(13) adds 5 kWh: 5 x 53.8 = 269 fen.
        # 538 + 269 = 807 fen in all.
        assert gateway.probe.balance_minor("E1") == -807
        baseline = new_meter(12).register_milli
        assert alarms(gateway, "E1") == [
            *raised,
            ("meter_replaced", f"new baseline {baseline}"),
            (reason, "state=cleared"),
            ("meter_reset_or_swap", "state=cleared"),
        ]

    await feed_all(site_file, [new_meter(12), new_meter(13)], after_decision)


@pytest.mark.parametrize(
    ("reason", "register_kwh"),
    [
        ("implausible_jump", lambda i: 2_000_000 * (i + 1)),  # each far from the one before
        ("register_backwards", lambda i: 1_009 - i),  # a register sliding back, kWh by kWh
    ],
    ids=["spikes", "backwards"],
)
async def test_n_held_readings_raise_one_alarm_not_n(
    tmp_path: Path, reason: str, register_kwh: Callable[[int], int]
) -> None:
    n = 22  # the count of the issue: 22 alarms in 7 s for one meter
    readings = [kwh("e1", timedelta(0), 1_000), kwh("e1", timedelta(hours=1), 1_010)]
    readings += [
        kwh("e1", timedelta(hours=1, seconds=10 * (i + 1)), register_kwh(i)) for i in range(n)
    ]
    readings.append(kwh("e1", timedelta(hours=2), 1_020))  # +10 kWh from 1010: billed

    def check(gateway: Gateway) -> None:
        assert gateway.probe.counters().held == n
        assert [r for _, r in held_reasons(gateway)] == [reason] * n  # each reading marked
        assert alarms(gateway, "E1") == [(reason, "state=raised"), (reason, "state=cleared")]
        assert gateway.probe.balance_minor("E1") == -1076  # 2 x 10 kWh x 53.8 fen

    await feed_all(_write(tmp_path, ["E1"]), readings, check)


async def test_the_operator_accepts_the_new_level_and_billing_continues_from_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site_file = _write(tmp_path, ["E1"])
    swap_at = timedelta(hours=1, seconds=10)

    def new_meter(k: int) -> Reading:
        # swapped for a meter at 50,000 kWh, then 5 kWh an hour from it
        return kwh("e1", swap_at + timedelta(hours=k), 50_000 + 5 * k)

    accept = [
        "meter",
        "accept",
        "e1",
        "--reason",
        "meter swapped, work order 77",
        "--operator-key",
        str(tmp_path / "keys" / "operator.pem"),
        "-c",
        str(site_file),
        "--wait",
        "60",  # the daemon answers at once; a loaded machine may take seconds
        "--json",
    ]
    # Commands are checked against the real time (issued_at): this gateway runs on it.
    gateway, feed = offline_gateway(load_site(site_file), utc_now)
    async with running(gateway):
        # Nothing is waiting for a decision yet: refused, nothing changes.
        assert await asyncio.to_thread(main, accept) == 0
        refused = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (refused["status"], refused["reason"]) == ("rejected", "no_decision_pending")

        readings = [kwh("e1", timedelta(0), 1_000), kwh("e1", timedelta(hours=1), 1_010)]
        readings += [new_meter(k) for k in range(11)]  # the level and 10 readings from it
        await feed.put(*readings)
        await eventually(lambda: settled(gateway), what="13 readings billed or held")
        assert gateway.probe.balance_minor("E1") == -538  # 10 kWh x 53.8 fen
        assert gateway.probe.counters().held == 11

        assert await asyncio.to_thread(main, accept) == 0
        applied = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert applied["status"] == "applied"

        # From the accepted level (the last held reading, 50,050 kWh): +5 kWh, +5 kWh,
        # 2 x 5 x 53.8 = 538 fen; the held readings stay held, never billed.
        await feed.put(new_meter(11), new_meter(12))
        await eventually(lambda: settled(gateway), what="2 more readings billed")
        assert gateway.probe.balance_minor("E1") == -538 - 538
        assert gateway.probe.counters().held == 11
        assert alarms(gateway, "E1") == [
            ("implausible_jump", "state=raised"),
            ("meter_reset_or_swap", "state=raised"),
            ("implausible_jump", "state=cleared"),
            ("meter_reset_or_swap", "state=cleared"),
        ]
        [*_, cleared] = [e for e in gateway.store.events("E1") if e.kind == "alarm"]
        assert "work order 77" in cleared.detail["detail"]["message"]


async def test_an_event_of_a_meter_only_device_is_an_alarm_on_its_meters_account(
    tmp_path: Path,
) -> None:
    # d-e1 is the Modbus device that reads meter e1 (billing E1); it has no actuator.
    gateway, _feed = offline_gateway(load_site(_write(tmp_path, ["E1"])), clock)
    async with running(gateway):
        offline = DriverEvent("d-e1", DriverEventKind.OFFLINE, NOW, {"error": "DeviceTimeoutError"})
        await gateway.pipeline.event(offline)

        def alarms_of_e1() -> list[Any]:
            return [e for e in gateway.store.events("E1") if e.kind == "alarm"]

        await eventually(alarms_of_e1, what="the device's alarm on E1")
        [event] = alarms_of_e1()
        assert event.detail["alarm"] == "device_offline"
        assert event.detail["detail"] == {"device": "d-e1", "error": "DeviceTimeoutError"}
