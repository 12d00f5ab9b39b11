"""LnsConfig validation (with YAML lines), build_lns, and the router's pure paths."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from billing_engine.base.errors import InvalidConfigError
from billing_engine.base.yaml_lines import load_model
from drivers.lorawan.adapter import LnsAdapter, build_lns
from drivers.lorawan.config import LnsConfig
from drivers.lorawan.router import UplinkRouter
from drivers.ports import Actuator, DriverEventKind, ReadingSource
from tests.lorawan.helpers import CODECS_DIR, codecs

NOW = datetime(2026, 1, 1, tzinfo=UTC)
APP = "8f5a2b1c-3d4e-4f60-9a7b-1c2d3e4f5a6b"

GOOD_YAML = f"""\
name: site-a
kind: chirpstack
broker:
  host: 127.0.0.1
  port: 1883
  username: gateway
  password: secret
application_id: {APP}
qos: 1
devices:
  - dev_eui: 24E124136B000001
    codec: milesight-em300-di
    meter_id: M1
  - dev_eui: 24e124460c000002
    codec: milesight-uc511
    valve_device_id: V2
"""


def _config(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "a",
        "kind": "chirpstack",
        "broker": {"host": "h"},
        "application_id": APP,
        "devices": [
            {"dev_eui": "24e124136b000001", "codec": "milesight-em300-di", "meter_id": "M1"}
        ],
    }
    data.update(changes)
    return data


def test_config_loads_from_yaml_and_hides_the_password(tmp_path: Path) -> None:
    path = tmp_path / "lns.yaml"
    path.write_text(GOOD_YAML)
    config = load_model(path, LnsConfig)
    assert config.prefix == "application"
    assert config.device_key(config.devices[0]) == "24e124136b000001"
    assert "secret" not in repr(config)


def test_config_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "lns.yaml"
    path.write_text(GOOD_YAML.replace("dev_eui: 24E124136B000001", "dev_eui: 24E1"))
    with pytest.raises(InvalidConfigError) as caught:
        load_model(path, LnsConfig)
    (error,) = caught.value.errors
    assert (error.line, error.field) == (11, "devices.0.dev_eui")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {
                "kind": "tts",
                "qos": 1,
                "devices": [{"device_id": "d", "codec": "milesight-em300-di", "meter_id": "M1"}],
            },
            "QoS 0",
        ),
        ({"application_id": None}, "needs application_id"),
        ({"kind": "nbiot"}, "needs an nbiot"),
        ({"kind": "tts"}, "tts devices need device_id"),
        ({"devices": [{"dev_eui": "24e124136b000001", "codec": "x"}]}, "meter_id, valve"),
        ({"devices": [{"dev_eui": "24e124136b000001", "meter_id": "M1"}]}, "need a codec"),
        (
            {
                "devices": [
                    {"dev_eui": "24e124136b000001", "codec": "c", "meter_id": "M1"},
                    {"dev_eui": "24E124136B000001", "codec": "c", "meter_id": "M2"},
                ]
            },
            "appears twice",
        ),
        ({"tenant_id": "ttn"}, "only for kind tts"),
        ({"extra": 1}, "Extra inputs"),
    ],
)
def test_config_rules(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LnsConfig.model_validate(_config(**changes))


def test_build_lns_splits_sources_and_actuators(tmp_path: Path) -> None:
    path = tmp_path / "lns.yaml"
    path.write_text(GOOD_YAML)
    config = load_model(path, LnsConfig)
    sources, actuators = build_lns([config], CODECS_DIR)
    assert len(sources) == 1
    assert len(actuators) == 1
    assert sources[0] is actuators[0]
    assert isinstance(sources[0], ReadingSource)
    assert isinstance(actuators[0], Actuator)
    assert sources[0].name == "lns[site-a]"


def test_build_lns_unknown_codec_and_unfit_codec_are_config_errors() -> None:
    config = LnsConfig.model_validate(
        _config(
            devices=[
                {"dev_eui": "24e124136b000001", "codec": "nope", "meter_id": "M1"},
                {
                    "dev_eui": "24e124136b000002",
                    "codec": "milesight-em300-di",
                    "valve_device_id": "V",
                },
            ]
        )
    )
    with pytest.raises(InvalidConfigError) as caught:
        build_lns([config], CODECS_DIR)
    fields = [e.field for e in caught.value.errors]
    assert fields == ["devices.0.codec", "devices.1.valve_device_id"]


def _up(dev_eui: str, f_cnt: int, data: str) -> tuple[str, bytes]:
    topic = f"application/{APP}/device/{dev_eui}/event/up"
    body = {
        "time": "2026-01-01T10:00:00Z",
        "deviceInfo": {"devEui": dev_eui},
        "fCnt": f_cnt,
        "fPort": 85,
        "data": data,
    }
    return topic, json.dumps(body).encode()


def test_router_bad_payload_is_frame_error_event_and_no_reading() -> None:
    router = UplinkRouter(LnsConfig.model_validate(_config()), codecs())
    routed = router.route(*_up("24e124136b000001", 1, "AXVcBcgA"), now=NOW)  # truncated pulse
    assert routed.readings == []
    assert [e.kind for e in routed.events] == [DriverEventKind.FRAME_ERROR]
    assert routed.events[0].device_id == "M1"


def test_router_unknown_device_and_bad_json_are_counted() -> None:
    router = UplinkRouter(LnsConfig.model_validate(_config()), codecs())
    assert router.route(*_up("0000000000000000", 1, "AXVc"), now=NOW).readings == []
    routed = router.route(f"application/{APP}/device/24e124136b000001/event/up", b"{", now=NOW)
    assert [e.kind for e in routed.events] == [DriverEventKind.FRAME_ERROR]
    assert router.stats == {"unknown_device": 1, "bad_envelope": 1}


def test_router_payload_without_register_yields_no_reading() -> None:
    router = UplinkRouter(LnsConfig.model_validate(_config()), codecs())
    routed = router.route(*_up("24e124136b000001", 1, "AXVc"), now=NOW)  # battery only
    assert routed.readings == []
    assert routed.events == []


def test_adapter_is_both_ports() -> None:
    adapter = LnsAdapter(LnsConfig.model_validate(_config()), codecs())
    assert isinstance(adapter, ReadingSource)
    assert isinstance(adapter, Actuator)
