"""ChirpStack v4 and TTS v3 envelopes, downlink encoding, and the generic NB-IoT mapping."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from drivers.lorawan.envelope import (
    DownlinkEvent,
    DownlinkStatus,
    EnvelopeError,
    JoinEvent,
    NbiotMapping,
    Uplink,
    encode_chirpstack_down,
    encode_tts_down,
    parse_chirpstack,
    parse_nbiot,
    parse_time,
    parse_tts,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
APP = "8f5a2b1c-3d4e-4f60-9a7b-1c2d3e4f5a6b"
CS_UP = f"application/{APP}/device/24e124460c123456/event/up"

# Shape of chirpstack_api integration.proto UplinkEvent (wire-formats.md section 1).
CS_UP_BODY = {
    "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
    "time": "2026-01-01T10:00:00.123Z",
    "deviceInfo": {
        "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
        "applicationId": APP,
        "applicationName": "water",
        "deviceProfileId": "2a3f5c1e-6a0b-4b8e-9f0e-3d1c2b4a5e6f",
        "deviceProfileName": "UC511",
        "deviceName": "valve-17",
        "devEui": "24e124460c123456",
        "deviceClassEnabled": "CLASS_A",
        "tags": {},
    },
    "devAddr": "01ab23cd",
    "adr": True,
    "dr": 5,
    "fCnt": 42,
    "fPort": 85,
    "confirmed": False,
    "data": "AXVcAwEABMgFAAAA",
    "object": {"battery": 92, "valve_1": "close", "valve_1_pulse": 5},
    "rxInfo": [{"gatewayId": "0016c001f153a14c", "rssi": -57, "snr": 9.5}],
    "txInfo": {"frequency": 868100000},
}

# Shape of the TTS data-formats uplink (wire-formats.md section 2), with nanosecond times.
TTS_UP = "v3/water@ttn/devices/valve-17/up"
TTS_UP_BODY = {
    "end_device_ids": {
        "device_id": "valve-17",
        "application_ids": {"application_id": "water"},
        "dev_eui": "24E124460C123456",
        "dev_addr": "260BABCD",
    },
    "correlation_ids": ["as:up:01HZX"],
    "received_at": "2026-01-01T10:00:00.412345678Z",
    "uplink_message": {
        "f_port": 85,
        "f_cnt": 42,
        "frm_payload": "AXVcAwEABMgFAAAA",
        "decoded_payload": {"battery": 92, "valve_1": "close", "valve_1_pulse": 5},
        "rx_metadata": [{"gateway_ids": {"gateway_id": "gw-1"}, "rssi": -68, "snr": 9.2}],
        "received_at": "2026-01-01T10:00:00.392837261Z",
    },
}


def _json(body: object) -> bytes:
    return json.dumps(body).encode()


def test_chirpstack_uplink_parses_all_fields() -> None:
    event = parse_chirpstack(CS_UP, _json(CS_UP_BODY), now=NOW)
    assert event == Uplink(
        device_key="24e124460c123456",
        dev_eui="24e124460c123456",
        f_cnt=42,
        f_port=85,
        payload=bytes.fromhex("01755c03010004c805000000"),
        received_at=datetime(2026, 1, 1, 10, 0, 0, 123000, tzinfo=UTC),
        dedup_id="3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
        confirmed=False,
    )


def test_chirpstack_uplink_without_fcnt_or_data_defaults_to_zero_and_empty() -> None:
    body = {k: v for k, v in CS_UP_BODY.items() if k not in {"fCnt", "data"}}
    event = parse_chirpstack(CS_UP, _json(body), now=NOW)
    assert isinstance(event, Uplink)
    assert (event.f_cnt, event.payload) == (0, b"")


def test_chirpstack_ack_and_txack_carry_the_queue_item_id() -> None:
    base = f"application/{APP}/device/24e124460c123456/event/"
    ack = {
        "time": "2026-01-01T10:05:00Z",
        "deviceInfo": CS_UP_BODY["deviceInfo"],
        "queueItemId": "q-1",
        "acknowledged": True,
        "fCntDown": 7,
    }
    nack = {**ack, "acknowledged": False}
    txack = {
        "downlinkId": 1,
        "time": "2026-01-01T10:04:00Z",
        "queueItemId": "q-1",
        "fCntDown": 7,
        "gatewayId": "0016c001f153a14c",
    }
    parsed = [
        parse_chirpstack(base + k, _json(b), now=NOW)
        for k, b in (("ack", ack), ("ack", nack), ("txack", txack))
    ]
    assert [(e.status, e.command_id) for e in parsed if isinstance(e, DownlinkEvent)] == [
        (DownlinkStatus.ACKED, "q-1"),
        (DownlinkStatus.NACKED, "q-1"),
        (DownlinkStatus.SENT, "q-1"),
    ]


def test_chirpstack_join_and_ignored_events() -> None:
    base = f"application/{APP}/device/24e124460c123456/event/"
    join = parse_chirpstack(base + "join", _json({"time": "2026-01-01T10:00:00Z"}), now=NOW)
    assert join == JoinEvent("24e124460c123456", datetime(2026, 1, 1, 10, tzinfo=UTC))
    assert parse_chirpstack(base + "status", b"{}", now=NOW) is None
    assert parse_chirpstack(base + "log", b"{}", now=NOW) is None


@pytest.mark.parametrize(
    ("topic", "body", "message"),
    [
        (CS_UP, b"not json", "not JSON"),
        (CS_UP, b"[1]", "not an object"),
        (CS_UP, _json({**CS_UP_BODY, "data": "%%%"}), "not base64"),
        (CS_UP, _json({**CS_UP_BODY, "fCnt": "x"}), "fCnt is not an integer"),
        ("application/x/up", b"{}", "not a ChirpStack"),
        (CS_UP.replace("24e124460c123456", "24e124460c000000"), _json(CS_UP_BODY), "differs"),
    ],
)
def test_chirpstack_malformed_is_envelope_error(topic: str, body: bytes, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        parse_chirpstack(topic, body, now=NOW)


def test_chirpstack_downlink_command_json() -> None:
    body = json.loads(
        encode_chirpstack_down(
            "24E124460C123456", 85, bytes.fromhex("ff1d0000"), confirmed=True, command_id="q-1"
        )
    )
    assert body == {
        "id": "q-1",
        "devEui": "24e124460c123456",
        "confirmed": True,
        "fPort": 85,
        "data": "/x0AAA==",
    }


def test_tts_uplink_parses_with_nanosecond_time() -> None:
    event = parse_tts(TTS_UP, _json(TTS_UP_BODY), now=NOW)
    assert event == Uplink(
        device_key="valve-17",
        dev_eui="24e124460c123456",
        f_cnt=42,
        f_port=85,
        payload=bytes.fromhex("01755c03010004c805000000"),
        received_at=datetime(2026, 1, 1, 10, 0, 0, 392837, tzinfo=UTC),
    )


def test_tts_uplink_omitted_fcnt_is_zero() -> None:
    up = {k: v for k, v in TTS_UP_BODY["uplink_message"].items() if k != "f_cnt"}
    event = parse_tts(TTS_UP, _json({**TTS_UP_BODY, "uplink_message": up}), now=NOW)
    assert isinstance(event, Uplink)
    assert event.f_cnt == 0


def test_tts_downlink_events_match_our_correlation_id() -> None:
    down = {
        "f_port": 85,
        "frm_payload": "/x0AAA==",
        "confirmed": True,
        "correlation_ids": ["prepay:c-1", "as:downlink:01H"],
    }
    ids = TTS_UP_BODY["end_device_ids"]
    base = "v3/water@ttn/devices/valve-17/"
    ack = parse_tts(
        base + "down/ack", _json({"end_device_ids": ids, "downlink_ack": down}), now=NOW
    )
    failed = parse_tts(
        base + "down/failed",
        _json({"end_device_ids": ids, "downlink_failed": {"downlink": down, "error": {}}}),
        now=NOW,
    )
    assert ack == DownlinkEvent(
        "valve-17", DownlinkStatus.ACKED, NOW, "c-1", 85, bytes.fromhex("ff1d0000")
    )
    assert isinstance(failed, DownlinkEvent)
    assert (failed.status, failed.command_id) == (DownlinkStatus.FAILED, "c-1")
    assert parse_tts(base + "service/data", b"{}", now=NOW) is None


def test_tts_join_event() -> None:
    body = {
        "end_device_ids": TTS_UP_BODY["end_device_ids"],
        "received_at": "2026-01-01T09:00:00Z",
        "join_accept": {"session_key_id": "AYx"},
    }
    assert parse_tts("v3/water@ttn/devices/valve-17/join", _json(body), now=NOW) == JoinEvent(
        "valve-17", datetime(2026, 1, 1, 9, tzinfo=UTC)
    )


def test_tts_down_push_json() -> None:
    body = json.loads(
        encode_tts_down(
            85, bytes.fromhex("ff1d2000"), confirmed=True, command_id="c-2", priority="HIGH"
        )
    )
    assert body == {
        "downlinks": [
            {
                "f_port": 85,
                "frm_payload": "/x0gAA==",
                "priority": "HIGH",
                "confirmed": True,
                "correlation_ids": ["prepay:c-2"],
            }
        ]
    }


def test_parse_time_normalises_offsets_to_utc() -> None:
    assert parse_time("2026-01-01T12:00:00+02:00") == datetime(2026, 1, 1, 10, tzinfo=UTC)
    with pytest.raises(ValueError, match="without offset"):
        parse_time("2026-01-01T12:00:00")


def test_nbiot_mapping_nested_paths_epoch_ms_and_exact_decimal() -> None:
    mapping = NbiotMapping(
        topic="ctwing/+/push",
        device_id_path="deviceId",
        timestamp_path="timestamp",
        timestamp_format="epoch_ms",
        register_path="payload.serviceData.cumulativeFlow",
        register_milli_per_unit=Decimal(1000),
        seq_path="payload.serviceData.seq",
    )
    body = {
        "deviceId": "nb-0042",
        "timestamp": 1767261600000,
        "payload": {"serviceData": {"cumulativeFlow": 12.345, "seq": 17}},
    }
    reading = parse_nbiot("ctwing/x/push", _json(body), mapping, now=NOW)
    assert reading.device_key == "nb-0042"
    assert reading.register_milli == 12345  # 12.345 m3, exact, not 12344 from binary float
    assert reading.read_at == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert reading.seq == 17


def test_nbiot_mapping_iso_time_and_integer_device_id() -> None:
    mapping = NbiotMapping(
        device_id_path="imei", register_path="litres", register_milli_per_unit=Decimal(1)
    )
    body = {"imei": 861234567890123, "timestamp": "2026-01-01T10:00:00Z", "litres": 501}
    reading = parse_nbiot("nbiot/x/up", _json(body), mapping, now=NOW)
    assert (reading.device_key, reading.register_milli, reading.seq) == (
        "861234567890123",
        501,
        None,
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"timestamp": "2026-01-01T10:00:00Z", "register": 1}, "no field 'deviceId'"),
        ({"deviceId": "a", "timestamp": "2026-01-01T10:00:00Z", "register": "x"}, "not a number"),
        ({"deviceId": "a", "timestamp": "2026-01-01T10:00:00Z", "register": -1}, "negative"),
        ({"deviceId": "a", "timestamp": "yesterday", "register": 1}, "Invalid isoformat"),
    ],
)
def test_nbiot_bad_push_is_envelope_error(body: dict[str, object], message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        parse_nbiot("nbiot/a/up", _json(body), NbiotMapping(), now=NOW)


def test_base64_of_wire_format_examples() -> None:
    assert base64.b64decode("AXVcAwEABMgFAAAA").hex() == "01755c03010004c805000000"
