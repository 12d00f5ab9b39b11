"""Bus config validation, profile loading with line numbers, and the build_modbus factory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from billing_engine.base.errors import InvalidConfigError
from billing_engine.base.yaml_lines import load_model
from drivers.modbus.builder import build_modbus
from drivers.modbus.config import DeviceProfile, ModbusBusConfig, SerialSettings
from drivers.modbus.profiles import load_profile, profile_plan
from drivers.modbus.registers import Table
from drivers.ports import Actuator, ReadingSource
from tests.fixtures.modbus import PROFILES_DIR


def bus(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "bus0",
        "kind": "tcp",
        "host": "127.0.0.1",
        "port": 502,
        "devices": [
            {"device_id": "d1", "unit_id": 1, "profile": "eastron_sdm120", "meter_id": "m1"}
        ],
    }
    base.update(overrides)
    return base


def test_bus_config_tcp_minimal_is_valid_and_frozen() -> None:
    cfg = ModbusBusConfig.model_validate(bus())
    assert cfg.devices[0].poll_interval_s == 10.0
    with pytest.raises(ValidationError):
        cfg.timeout_s = 2  # type: ignore[misc]


def test_bus_config_rtu_needs_serial() -> None:
    with pytest.raises(ValidationError, match="needs `serial:`"):
        ModbusBusConfig.model_validate(bus(kind="rtu", host=None, port=None))


def test_bus_config_tcp_rejects_serial() -> None:
    with pytest.raises(ValidationError, match="no serial settings"):
        ModbusBusConfig.model_validate(bus(serial={"port": "/dev/ttyUSB0"}))


def test_bus_config_duplicate_unit_ids_rejected() -> None:
    devices = [
        {"device_id": "a", "unit_id": 1, "profile": "p", "meter_id": "m1"},
        {"device_id": "b", "unit_id": 1, "profile": "p", "meter_id": "m2"},
    ]
    with pytest.raises(ValidationError, match=r"unit ids \[1\] appear twice"):
        ModbusBusConfig.model_validate(bus(devices=devices))


@pytest.mark.parametrize("unit", [0, 248])
def test_bus_config_unit_id_out_of_range_rejected(unit: int) -> None:
    devices = [{"device_id": "a", "unit_id": unit, "profile": "p", "meter_id": "m1"}]
    with pytest.raises(ValidationError):
        ModbusBusConfig.model_validate(bus(devices=devices))


def test_bus_config_unknown_key_rejected() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        ModbusBusConfig.model_validate(bus(baud=9600))


@pytest.mark.parametrize(
    ("settings", "expected_s"),
    [
        ({"port": "x", "baudrate": 9600}, 3.5 * 10 / 9600),  # 8N1: 10 bits per char
        ({"port": "x", "baudrate": 9600, "parity": "E"}, 3.5 * 11 / 9600),
        ({"port": "x", "baudrate": 38400}, 0.00175),  # fixed above 19200 baud
        ({"port": "x", "inter_frame_gap_s": 0.01}, 0.01),
    ],
)
def test_serial_settings_inter_frame_gap(settings: dict[str, Any], expected_s: float) -> None:
    assert SerialSettings.model_validate(settings).effective_inter_frame_gap_s() == pytest.approx(
        expected_s
    )


def test_bus_config_yaml_error_has_line_number(tmp_path: Path) -> None:
    path = tmp_path / "bus.yaml"
    path.write_text(
        "name: bus0\nkind: rtu\nserial:\n  port: /dev/ttyUSB0\n  parity: X\n"
        "devices:\n  - {device_id: d, unit_id: 1, profile: p, meter_id: m}\n"
    )
    with pytest.raises(InvalidConfigError) as info:
        load_model(path, ModbusBusConfig)
    (error,) = info.value.errors
    assert (error.line, error.field) == (5, "serial.parity")


def test_shipped_profiles_load_and_plan() -> None:
    names = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
    assert names == ["acrel_ddsy1352", "eastron_sdm120", "eastron_sdm630", "water_xintai_valve"]
    for name in names:
        profile = load_profile(PROFILES_DIR / f"{name}.yaml")
        assert profile.name == name
        assert profile.sources
        assert profile_plan(profile)
    water = load_profile(PROFILES_DIR / "water_xintai_valve.yaml")
    (block,) = profile_plan(water)  # 0x0001..0x0009 in one FC03 request
    assert (block.table, block.address, block.count) == (Table.HOLDING, 1, 9)


def test_profile_bad_field_reports_file_line(tmp_path: Path) -> None:
    text = (PROFILES_DIR / "eastron_sdm120.yaml").read_text()
    path = tmp_path / "broken.yaml"
    path.write_text(text.replace("type: float32", "type: float16", 1))
    with pytest.raises(InvalidConfigError) as info:
        load_model(path, DeviceProfile)
    (error,) = info.value.errors
    assert error.field == "energy.type"
    assert text.splitlines()[error.line - 1].strip().startswith("type: float32")


def test_build_modbus_returns_sources_and_actuators() -> None:
    buses = [
        ModbusBusConfig.model_validate(bus()),
        ModbusBusConfig.model_validate(
            bus(
                name="bus1",
                port=503,
                devices=[
                    {
                        "device_id": "w1",
                        "unit_id": 5,
                        "profile": "water_xintai_valve",
                        "meter_id": "mw",
                        "allow_unconfirmed_supply": True,
                    },
                    {
                        "device_id": "a1",
                        "unit_id": 6,
                        "profile": "acrel_ddsy1352",
                        "meter_id": "ma",
                    },
                ],
            )
        ),
    ]
    sources, actuators = build_modbus(buses, PROFILES_DIR)
    assert [s.name for s in sources] == ["modbus[bus0]", "modbus[bus1]"]
    assert all(isinstance(s, ReadingSource) for s in sources)
    (act,) = actuators
    assert isinstance(act, Actuator)
    assert act.handles("w1")
    assert not act.handles("a1")  # unconfirmed relay register, not allowed for this device
    assert not act.handles("d1")


def test_build_modbus_missing_profile_is_a_config_error() -> None:
    cfg = ModbusBusConfig.model_validate(
        bus(devices=[{"device_id": "x", "unit_id": 1, "profile": "nope", "meter_id": "m"}])
    )
    with pytest.raises(InvalidConfigError, match="no profile 'nope'"):
        build_modbus([cfg], PROFILES_DIR)
