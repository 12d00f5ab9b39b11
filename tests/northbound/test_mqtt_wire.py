"""The publishing connection's MQTT packets, byte for byte against the standard's layout (hand
assembled below), and read back by the tests' own packet splitter, which shares no code with
them."""

from __future__ import annotations

import pytest

from gateway.northbound import mqtt_wire as wire
from tests.support.mqtt_wire import CONNECT, PUBLISH, PacketSplitter


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        # 1.5.5's table: the boundaries of one, two, three and four bytes.
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_varint_matches_the_standards_table(n: int, encoded: bytes) -> None:
    assert wire.varint(n) == encoded


@pytest.mark.parametrize("n", [-1, 268_435_456])
def test_varint_refuses_what_four_bytes_cannot_hold(n: int) -> None:
    with pytest.raises(ValueError, match="remaining length"):
        wire.varint(n)


def test_connect_311_with_credentials_byte_for_byte() -> None:
    packet = wire.connect_packet(
        "3.1.1",
        "gw-out",
        keepalive_s=30,
        username="u",
        password="pw",  # noqa: S106 - a test's
    )
    # 00 04 "MQTT" | level 4 | flags 0xC2 (user 0x80, password 0x40, clean 0x02) | keepalive 30
    # | client id 00 06 "gw-out" | 00 01 "u" | 00 02 "pw": 10 + 8 + 3 + 4 = 25 bytes
    body = b"\x00\x04MQTT\x04\xc2\x00\x1e" + b"\x00\x06gw-out" + b"\x00\x01u" + b"\x00\x02pw"
    assert packet == b"\x10\x19" + body
    assert PacketSplitter().feed(packet)[0].kind == CONNECT


def test_connect_5_without_credentials_has_an_empty_property_list() -> None:
    packet = wire.connect_packet("5", "c", keepalive_s=60)
    # level 5, flags 0x02 (clean start only), keepalive 60, properties length 0, "c": 14 bytes
    assert packet == b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x01c"


@pytest.mark.parametrize("version", ["3.1.1", "5"])
def test_publish_qos1_retained_byte_for_byte(version: wire.Version) -> None:
    packet = wire.publish_packet(version, b"a/b", b"{}", qos=1, retain=True, mid=0x0102)
    # first byte 0x30 | QoS 1 << 1 | retain = 0x33; topic 00 03 "a/b"; packet id 01 02;
    # MQTT 5 adds a property length of 0; then the payload.
    properties = b"\x00" if version == "5" else b""
    body = b"\x00\x03a/b" + b"\x01\x02" + properties + b"{}"
    assert packet == b"\x33" + bytes([len(body)]) + body
    splitter = PacketSplitter()
    splitter.feed(wire.connect_packet(version, "c", keepalive_s=30))
    [seen] = splitter.feed(packet)
    assert (seen.kind, seen.topic, seen.payload) == (PUBLISH, "a/b", b"{}")


def test_publish_qos0_has_no_packet_identifier() -> None:
    packet = wire.publish_packet("3.1.1", b"t", b"x", qos=0, retain=False, mid=7)
    assert packet == b"\x30\x04\x00\x01tx"


def test_publish_with_a_two_byte_length() -> None:
    payload = bytes(200)
    packet = wire.publish_packet("3.1.1", b"t", payload, qos=1, retain=False, mid=1)
    # 3 (topic) + 2 (id) + 200 = 205 = 0xCD: 0xCD 0x01 as a variable byte integer
    assert packet[:3] == b"\x32\xcd\x01"
    assert len(packet) == 3 + 205


def test_split_packets_takes_whole_packets_in_any_chunking() -> None:
    stream = b"\x40\x02\x00\x01" + b"\xd0\x00" + b"\x40\x03\x00\x02\x87"
    for cut in range(len(stream) + 1):
        buffer = bytearray()
        seen = []
        for chunk in (stream[:cut], stream[cut:]):
            buffer += chunk
            seen += wire.split_packets(buffer)
        assert seen == [(0x40, b"\x00\x01"), (0xD0, b""), (0x40, b"\x00\x02\x87")], cut
        assert buffer == b""


def test_split_packets_leaves_a_partial_length_in_the_buffer() -> None:
    buffer = bytearray(b"\x40\x02\x00\x01\x30\x80")  # a PUBACK, then a length still arriving
    assert wire.split_packets(buffer) == [(0x40, b"\x00\x01")]
    assert buffer == b"\x30\x80"


def test_split_packets_refuses_a_five_byte_length_and_an_oversized_packet() -> None:
    with pytest.raises(wire.MalformedPacketError, match="four bytes"):
        wire.split_packets(bytearray(b"\x40\x80\x80\x80\x80\x01"))
    oversized = bytearray(b"\x40" + wire.varint(wire.MAX_INCOMING + 1))
    with pytest.raises(wire.MalformedPacketError, match="at most"):
        wire.split_packets(oversized)


def test_connack_311() -> None:
    assert wire.parse_connack("3.1.1", b"\x00\x00") == wire.Connack(0)
    assert wire.parse_connack("3.1.1", b"\x00\x05").code == 5


def test_connack_5_reads_the_limits_and_steps_over_other_properties() -> None:
    properties = (
        b"\x21\x00\x14"  # Receive Maximum 20
        + b"\x27\x00\x01\x00\x00"  # Maximum Packet Size 65,536
        + b"\x13\x00\x0a"  # Server Keep Alive 10
        + b"\x26\x00\x01k\x00\x01v"  # a User Property, skipped
        + b"\x12\x00\x02id"  # Assigned Client Identifier, skipped
        + b"\x1f\x00\x02ok"  # Reason String
    )
    body = b"\x00\x00" + bytes([len(properties)]) + properties
    assert wire.parse_connack("5", body) == wire.Connack(
        0,
        receive_maximum=20,
        maximum_packet_size=65_536,
        server_keepalive_s=10,
        reason="ok",
    )


def test_connack_5_no_retain_and_qos0_only() -> None:
    properties = b"\x25\x00\x24\x00"  # Retain Available 0, Maximum QoS 0
    connack = wire.parse_connack("5", b"\x00\x00\x04" + properties)
    assert (connack.retain_available, connack.maximum_qos) == (False, 0)


@pytest.mark.parametrize(
    "body",
    [
        b"\x00",  # too short
        b"\x00\x00\x05\x21\x00",  # Receive Maximum cut short
        b"\x00\x00\x02\x7e\x00",  # an unknown property
        b"\x00\x00\x09\x21\x00\x01",  # properties longer than the packet
        b"\x00\x00\x03\x1f\x00\x05",  # a string longer than its properties
        b"\x00\x00\x03\x21\x00\x00",  # Receive Maximum 0: nothing could ever be sent
        b"\x00\x00\x05\x27\x00\x00\x00\x00",  # Maximum Packet Size 0
    ],
)
def test_connack_malformed(body: bytes) -> None:
    with pytest.raises(wire.MalformedPacketError):
        wire.parse_connack("5", body)


def test_puback() -> None:
    assert wire.parse_puback("3.1.1", b"\x01\x02") == (0x0102, 0)
    assert wire.parse_puback("5", b"\x01\x02") == (0x0102, 0)  # 3.4.2.1: no reason is success
    assert wire.parse_puback("5", b"\x00\x07\x87\x00") == (7, 0x87)
    with pytest.raises(wire.MalformedPacketError):
        wire.parse_puback("5", b"\x01")


def test_disconnect() -> None:
    assert wire.parse_disconnect(b"") == (0, None)
    assert wire.parse_disconnect(b"\x8e") == (0x8E, None)
    assert wire.parse_disconnect(b"\x9c\x07\x1f\x00\x04gone") == (0x9C, "gone")
