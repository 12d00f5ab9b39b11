"""Scenario files: validation errors name file, line and field; curves, commands, counters."""

from __future__ import annotations

from pathlib import Path

import pytest

from billing_engine.base.errors import InvalidConfigError
from drivers.ble.gatt import IdentityKind
from drivers.modbus.profiles import load_profile
from firmware_sim.scenario import Curve, FaultAction, load_scenario, rate_function
from firmware_sim.site_runtime import Accumulator, CustomerAction, SiteMeter, parse_command
from tests.fixtures.modbus import PROFILES_DIR

GOOD = f"""\
name: t
speed: 60
profiles_dir: {PROFILES_DIR}
broker: {{host: 127.0.0.1, port: 1883}}
modbus_tcp:
  - name: tcp0
    port: 0
    meters:
      - {{device_id: m1, unit_id: 1, profile: eastron_sdm120, curve: {{per_day: 9000}}}}
      - {{device_id: v1, unit_id: 2, profile: water_xintai_valve}}
lora:
  - name: lns0
    application_id: app
    devices:
      - {{device_id: lm1, dev_eui: 24e124136b000001, kind: meter}}
      - {{device_id: lv1, dev_eui: 24e124460c000002, kind: valve}}
faults:
  - {{at_s: 5, device: m1, fault: timeout, count: 2}}
  - {{at_s: 6, device: lm1, fault: repeat_uplinks, copies: 3}}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


def _errors(path: Path) -> list[str]:
    with pytest.raises(InvalidConfigError) as info:
        load_scenario(path)
    return [str(e) for e in info.value.errors]


def test_scenario_good_file_loads(tmp_path: Path) -> None:
    scenario = load_scenario(_write(tmp_path, GOOD))
    assert dict(scenario.devices()) == {
        "m1": "modbus",
        "v1": "modbus",
        "lm1": "lora",
        "lv1": "lora",
    }
    assert scenario.lora[0].devices[1].codec_name == "milesight-uc511"


def test_scenario_shipped_demo_loads() -> None:
    scenario = load_scenario(Path(__file__).parents[2] / "configs/sites/demo-scenario.yaml")
    families = dict(scenario.devices())
    assert sorted(families.values()).count("lora") == 2
    assert len(scenario.modbus_rtu) == 1
    assert len(scenario.faults) >= 4
    # the kiosk sells water: its customers are the demo's control lines, not a schedule
    assert [d.pours for d in scenario.ble_dispensers()] == [None]


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "words"),
    [
        pytest.param(
            "unit_id: 2, profile: water_xintai_valve}",
            "unit_id: 2, profile: water_xintai_valve, colour: red}",
            10,
            "modbus_tcp.0.meters.1.colour",
            "Extra inputs",
            id="unknown-key",
        ),
        pytest.param(
            "device: m1, fault: timeout",
            "device: m9, fault: timeout",
            18,
            "faults.0.device",
            "unknown device 'm9'",
            id="fault-unknown-device",
        ),
        pytest.param(
            "device: lm1, fault: repeat_uplinks, copies: 3",
            "device: lm1, fault: crc",
            19,
            "faults.1.fault",
            "lora device",
            id="fault-wrong-family",
        ),
        pytest.param(
            "fault: timeout, count: 2}",
            "fault: timeout, count: 2, copies: 3}",
            18,
            "faults.0",
            "remove copies",
            id="fault-option-of-another-fault",
        ),
        pytest.param(
            "kind: valve}",
            "kind: valve, codec: milesight-em300-di}",
            16,
            "lora.0.devices.1",
            "set codec: milesight-uc511",
            id="codec-does-not-fit-kind",
        ),
        pytest.param(
            "profile: eastron_sdm120",
            "profile: eastron_sdm999",
            9,
            "modbus_tcp.0.meters.0.profile",
            "no profile 'eastron_sdm999'",
            id="missing-profile",
        ),
        pytest.param(
            "{device_id: v1, unit_id: 2,",
            "{device_id: v1, unit_id: 1,",
            6,
            "modbus_tcp.0",
            "unit_id 1 is used twice",
            id="duplicate-unit-id",
        ),
        pytest.param(
            "curve: {per_day: 9000}",
            "curve: {per_day: 9000, shape: flat, hourly: [1]}",
            9,
            "modbus_tcp.0.meters.0.curve.hourly",
            "at least 24",
            id="short-hourly-curve",
        ),
    ],
)
def test_scenario_error_names_file_line_field(
    tmp_path: Path, old: str, new: str, line: int, field: str, words: str
) -> None:
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    errors = _errors(path)
    assert any(e.startswith(f"{path}:{line}: {field}: ") and words in e for e in errors), errors


def test_scenario_lora_without_broker_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("broker: {host: 127.0.0.1, port: 1883}\n", ""))
    errors = _errors(path)
    assert any("add broker:" in e and e.startswith(f"{path}:1: ") for e in errors), errors


def test_scenario_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("    port: 0\n", "    port: [0\n"))
    errors = _errors(path)
    assert errors[0].startswith(f"{path}:"), errors
    assert "<syntax>" in errors[0]


def test_curve_residential_night_below_peaks() -> None:
    rate = rate_function(Curve(per_day=24_000, shape="residential"), speed=1, start_hour=0)
    night, morning, evening = rate(3 * 3600), rate(7 * 3600), rate(19 * 3600)
    assert night < morning < evening


def test_curve_speed_sums_to_per_day_over_a_simulated_day() -> None:
    # At speed 60 a simulated hour lasts 60 real seconds = 1/60 real hour: the 24 hourly rates,
    # each over 1/60 hour, add up to per_day (less one unit per hour of integer truncation).
    curve = Curve(per_day=100_000, shape="residential")
    rate = rate_function(curve, speed=60, start_hour=0)
    used = sum(rate(h * 60 + 30) for h in range(24)) / 60
    assert 100_000 - 24 <= used <= 100_000


def test_curve_start_hour_shifts_the_day() -> None:
    curve = Curve(per_day=24_000, hourly=(0,) * 19 + (1,) + (0,) * 4)  # only 19:00-20:00
    rate = rate_function(curve, speed=1, start_hour=19)
    assert rate(0) == 24_000
    assert rate(3600) == 0


def test_accumulator_integrates_exactly() -> None:
    now = [0]
    acc = Accumulator(lambda _t: 1_000, clock_ns=lambda: now[0])  # 1000 units per hour
    now[0] = 1_800 * 10**9  # half an hour
    assert acc.take() == 500
    now[0] += 1_800 * 10**9
    assert acc.take(running=False) == 0
    now[0] += 3_600 * 10**9
    assert acc.take() == 1_000


def test_site_meter_register_rolls_over() -> None:
    now = [0]
    meter = SiteMeter(
        unit_id=1,
        profile=load_profile(PROFILES_DIR / "acrel_ddsy1352.yaml"),
        energy_milli=9_990,
        rate_milli_per_h=20,
        clock_ns=lambda: now[0],
        rollover_milli=10_000,
    )
    now[0] = 3_600 * 10**9
    meter.advance()
    assert meter.energy_milli == 10


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("m1 timeout 3", FaultAction(device="m1", fault="timeout", count=3)),
        (
            "lm1 repeat_uplinks copies=4  # comment",
            FaultAction(device="lm1", fault="repeat_uplinks", copies=4),
        ),
        ("m1 exception 2 code=2", FaultAction(device="m1", fault="exception", count=2, code=2)),
        ("  # only a comment", None),
        ("", None),
        (
            "present kiosk-1 card CARD-0001",
            CustomerAction("kiosk-1", IdentityKind.ACCOUNT_CARD, "CARD-0001"),
        ),
        (
            "present kiosk-1 ticket 3301020000100008  # a paper ticket",
            CustomerAction("kiosk-1", IdentityKind.TICKET, "3301020000100008"),
        ),
        ("present k phone PHONE-77", CustomerAction("k", IdentityKind.PHONE_ID, "PHONE-77")),
        ("pour kiosk-1 2500", CustomerAction("kiosk-1", ml=2500)),
    ],
)
def test_parse_command_reads_control_lines(
    line: str, expected: FaultAction | CustomerAction | None
) -> None:
    assert parse_command(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "m1",
        "m1 explode",
        "m1 timeout many",
        "m1 timeout copies=3",
        "present kiosk-1 card",  # no identity
        "present kiosk-1 badge CARD-0001",  # not a kind of the Request frame
        "present kiosk-1 card CARD-0001-0002-0003",  # 19 characters: the frame carries 16
        "pour kiosk-1",
        "pour kiosk-1 0",
        "pour kiosk-1 2.5",
        "pour kiosk-1 ²",  # a digit to str.isdigit, not a number of mL
    ],
)
def test_parse_command_refuses_bad_lines(line: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse_command(line)
