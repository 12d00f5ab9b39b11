"""Codec YAML: vendor test vectors, registers, valve commands, and errors."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from billing_engine.base.errors import InvalidConfigError
from drivers.lorawan.codec import (
    CodecSpec,
    ExampleSpec,
    decode_payload,
    load_codecs,
    register_milli,
    supply_command,
    supply_state,
)
from drivers.ports import FrameError, SupplyState
from firmware_sim.lns_uplink import apply_uc511_downlink, encode_em300_di, encode_uc511
from tests.lorawan.helpers import CODECS_DIR, codecs

CODECS = codecs()
VECTORS = [
    pytest.param(codec, example, id=f"{codec.name}:{i}")
    for codec in CODECS.values()
    for i, example in enumerate(codec.examples)
]


def test_codecs_ship_a_meter_and_a_valve_with_vectors() -> None:
    assert {"milesight-em300-di", "milesight-uc511", "axioma-qalcosonic-w1"} <= set(CODECS)
    assert all(codec.examples and codec.source for codec in CODECS.values())
    assert CODECS["milesight-uc511"].commands is not None


@pytest.mark.parametrize(("codec", "example"), VECTORS)
def test_codec_vendor_example_decodes_to_vendor_values(codec: CodecSpec, example: object) -> None:
    assert isinstance(example, ExampleSpec)
    decoded = decode_payload(codec, bytes.fromhex(example.hex), example.f_port)
    assert {k: decoded.values.get(k) for k in example.expect} == example.expect
    assert decoded.undecoded_from is None


def test_em300_di_register_applies_device_k_factor() -> None:
    codec = CODECS["milesight-em300-di"]
    values = decode_payload(codec, bytes.fromhex("01755c05c800010000"), 85).values
    assert register_milli(codec, values) == 256
    # 10 litres per pulse, billed in m3: milli-m3 = litres = 2560
    assert register_milli(codec, values, multiply=10) == 2560
    # 4 pulses per litre: 64 litres
    assert register_milli(codec, values, divide=4) == 64


def test_axioma_register_is_current_volume_in_litres() -> None:
    codec = CODECS["axioma-qalcosonic-w1"]
    example = codec.examples[0]
    values = decode_payload(codec, bytes.fromhex(example.hex), 100).values
    # vendor: current_volume_m3 6.054 = log 5.938 + history 0.116
    assert register_milli(codec, values) == 6054


def test_axioma_wrong_length_is_frame_error() -> None:
    codec = CODECS["axioma-qalcosonic-w1"]
    with pytest.raises(FrameError, match="50 bytes, want 51"):
        decode_payload(codec, bytes(50), 100, device_id="m1")


def test_axioma_unknown_frame_version_is_frame_error() -> None:
    codec = CODECS["axioma-qalcosonic-w1"]
    with pytest.raises(FrameError, match="frame version"):
        decode_payload(codec, b"\x02" + bytes(50), 100)


def test_codec_wrong_port_is_frame_error() -> None:
    with pytest.raises(FrameError, match="fPort 7"):
        decode_payload(CODECS["milesight-em300-di"], bytes.fromhex("01755c"), 7)


def test_tlv_truncated_channel_is_frame_error() -> None:
    with pytest.raises(FrameError, match="needs 4 bytes, 2 left"):
        decode_payload(CODECS["milesight-em300-di"], bytes.fromhex("01755c05c80001"), 85)


def test_tlv_unknown_channel_keeps_what_came_before() -> None:
    decoded = decode_payload(CODECS["milesight-em300-di"], bytes.fromhex("01755c99990102"), 85)
    assert decoded.values == {"battery": 92}
    assert decoded.undecoded_from == 3


def test_uc511_valve_state_and_commands() -> None:
    codec = CODECS["milesight-uc511"]
    closed = decode_payload(codec, bytes.fromhex("01755c03010004c805000000"), 85).values
    opened = decode_payload(codec, bytes.fromhex("030101"), 85).values
    assert supply_state(codec, closed) is SupplyState.OFF
    assert supply_state(codec, opened) is SupplyState.ON
    assert supply_state(codec, {"battery": 92}) is None
    # wire-formats.md: close valve 1 = ff1d0000 = "/x0AAA==", open = ff1d2000 = "/x0gAA=="
    assert base64.b64encode(supply_command(codec, on=False).payload) == b"/x0AAA=="
    assert base64.b64encode(supply_command(codec, on=True).payload) == b"/x0gAA=="


def test_uc511_commands_drive_the_simulated_firmware() -> None:
    codec = CODECS["milesight-uc511"]
    assert apply_uc511_downlink(supply_command(codec, on=False).payload) is False
    assert apply_uc511_downlink(supply_command(codec, on=True).payload) is True
    assert apply_uc511_downlink(bytes.fromhex("ff1d2100")) is None  # valve 2


def test_simulator_payloads_decode_with_the_codecs() -> None:
    meter = decode_payload(CODECS["milesight-em300-di"], encode_em300_di(80, 123456), 85)
    valve = decode_payload(
        CODECS["milesight-uc511"], encode_uc511(70, valve_open=False, pulse=42), 85
    )
    assert meter.values == {"battery": 80, "pulse": 123456}
    assert valve.values == {"battery": 70, "valve_1": "close", "valve_1_pulse": 42}


def test_codec_file_errors_name_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "name: bad\n"
        "device: x\n"
        "source: x\n"
        "layout: tlv\n"
        "channels:\n"
        "  - id: 1\n"
        "    type: 0x75\n"
        "    fields: [{name: battery, type: u7}]\n"
    )
    with pytest.raises(InvalidConfigError) as caught:
        load_codecs(tmp_path)
    (error,) = caught.value.errors
    assert error.line == 8
    assert "channels.0.fields.0.type" in error.field


def test_codec_unknown_hook_is_rejected(tmp_path: Path) -> None:
    text = (CODECS_DIR / "axioma-qalcosonic-w1.yaml").read_text()
    (tmp_path / "x.yaml").write_text(text.replace("hook: axioma_w1_enhanced", "hook: nope"))
    with pytest.raises(InvalidConfigError, match="unknown hook 'nope'"):
        load_codecs(tmp_path)


def test_codec_valve_without_commands_is_rejected(tmp_path: Path) -> None:
    text = (CODECS_DIR / "milesight-uc511.yaml").read_text()
    cut = text[: text.index("commands:")] + text[text.index("examples:") :]
    (tmp_path / "x.yaml").write_text(cut)
    with pytest.raises(InvalidConfigError, match="supply and commands together"):
        load_codecs(tmp_path)
