"""The few MQTT packets the outbox's own publishing connection speaks, as bytes. Pure: no I/O.

Written here rather than taken from paho because paho's per-message path is what the drain
paid for: 66-70 µs of CPU a QoS 1 message with its PUBACK (a message object, a message-info
object with a condition variable, a reason-code and a properties object per PUBACK), against
8-9 µs for these functions and the connection around them, against one mosquitto in one
process (``prepay bench publish``; ``docs/architecture.md``, eighth round).

Only what a publisher needs: CONNECT, CONNACK, PUBLISH (QoS 0 and 1), PUBACK, PINGREQ/PINGRESP
and DISCONNECT, MQTT 3.1.1 (OASIS Standard, 2014) and MQTT 5.0 (OASIS Standard, 2019); the
section numbers below are 5.0's. Subscribing and receiving stay with aiomqtt on the link's main
connection.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Literal

Version = Literal["5", "3.1.1"]

CONNACK: Final = 2
PUBACK: Final = 4
PINGRESP: Final = 13
DISCONNECT: Final = 14

PINGREQ_PACKET: Final = b"\xc0\x00"
DISCONNECT_PACKET: Final = b"\xe0\x00"  # 5.0: remaining length 0 is reason 0x00, normal

# The largest remaining length a packet may declare (four length bytes, 1.5.5).
MAX_REMAINING: Final = 268_435_455
# What a broker sends a publisher is small (a CONNACK, PUBACKs, PINGRESP, a DISCONNECT, with a
# reason string at most); a longer packet is a broken or hostile peer, refused before it is
# buffered.
MAX_INCOMING: Final = 65_536

# MQTT 5 property identifiers (2.2.2.2) and how each is encoded, to read the ones we use and
# step over the others: 1 / 2 / 4 bytes, a variable byte integer, a length-prefixed string or
# binary, or a string pair.
_PROPERTY_KIND: Final[dict[int, str]] = {
    0x01: "1", 0x02: "4", 0x03: "s", 0x08: "s", 0x09: "s", 0x0B: "v", 0x11: "4", 0x12: "s",
    0x13: "2", 0x15: "s", 0x16: "s", 0x17: "1", 0x18: "4", 0x19: "1", 0x1A: "s", 0x1C: "s",
    0x1F: "s", 0x21: "2", 0x22: "2", 0x23: "2", 0x24: "1", 0x25: "1", 0x26: "p", 0x27: "4",
    0x28: "1", 0x29: "1", 0x2A: "1",
}  # fmt: skip
_SERVER_KEEP_ALIVE: Final = 0x13
_REASON_STRING: Final = 0x1F
_RECEIVE_MAXIMUM: Final = 0x21
_MAXIMUM_QOS: Final = 0x24
_RETAIN_AVAILABLE: Final = 0x25
_MAXIMUM_PACKET_SIZE: Final = 0x27


class MalformedPacketError(ValueError):
    """The broker sent bytes that are not the packet they claim to be."""


def varint(n: int) -> bytes:
    """``n`` as an MQTT variable byte integer (1.5.5)."""
    if not 0 <= n <= MAX_REMAINING:
        raise ValueError(f"remaining length {n} outside 0..{MAX_REMAINING}")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _string(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"a string of {len(data)} bytes is longer than MQTT's 65,535")
    return struct.pack(">H", len(data)) + data


def connect_packet(
    version: Version,
    client_id: str,
    *,
    keepalive_s: int,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    """A CONNECT with a clean start and no will: the publishing connection keeps no session
    (what was not PUBACKed is sent again from the outbox) and says nothing when it dies (the
    main connection's will does)."""
    flags = 0x02  # clean session / clean start
    payload = _string(client_id.encode())
    if username is not None:
        flags |= 0x80
        payload += _string(username.encode())
    if password is not None:
        flags |= 0x40
        payload += _string(password.encode())
    level = 5 if version == "5" else 4
    header = _string(b"MQTT") + bytes((level, flags)) + struct.pack(">H", keepalive_s)
    if version == "5":
        header += b"\x00"  # no properties: session expiry 0, the broker's defaults
    body = header + payload
    return b"\x10" + varint(len(body)) + body


def publish_packet(
    version: Version, topic: bytes, payload: bytes, *, qos: int, retain: bool, mid: int
) -> bytes:
    """A PUBLISH (3.3). ``mid`` is ignored at QoS 0, which has no packet identifier."""
    first = 0x30 | (qos << 1) | (1 if retain else 0)
    parts = [struct.pack(">H", len(topic)), topic]
    if qos:
        parts.append(struct.pack(">H", mid))
    if version == "5":
        parts.append(b"\x00")  # no properties
    parts.append(payload)
    body = b"".join(parts)
    return bytes((first,)) + varint(len(body)) + body


def split_packets(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Take every whole packet off the front of ``buffer``: (first byte, body) each.

    What is left is the start of a packet still arriving.

    Raises:
        MalformedPacketError: a remaining length longer than four bytes or above `MAX_INCOMING`.
    """
    packets: list[tuple[int, bytes]] = []
    start = 0
    end = len(buffer)
    while True:
        index = start + 1
        length = 0
        for shift in (0, 7, 14, 21):
            if index >= end:  # the packet's length itself is still arriving
                del buffer[:start]
                return packets
            byte = buffer[index]
            index += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
        else:
            raise MalformedPacketError("a remaining length longer than four bytes")
        if length > MAX_INCOMING:
            raise MalformedPacketError(
                f"a packet of {length} bytes from the broker (at most {MAX_INCOMING})"
            )
        if index + length > end:
            del buffer[:start]
            return packets
        packets.append((buffer[start], bytes(buffer[index : index + length])))
        start = index + length


@dataclass(frozen=True, slots=True)
class Connack:
    """What a CONNACK said. ``code`` 0 is accepted; the limits are the broker's (MQTT 5), None
    when it gave none (no limit, or 3.1.1)."""

    code: int
    receive_maximum: int | None = None
    maximum_packet_size: int | None = None
    server_keepalive_s: int | None = None
    maximum_qos: int | None = None
    retain_available: bool = True
    reason: str | None = None


def _properties(body: bytes, at: int) -> tuple[dict[int, int | str], int]:
    """The properties starting at ``at`` (their length first): the numeric and string ones by
    identifier (a repeated one keeps its last value), and where they end."""
    length, at = _read_varint(body, at)
    end = at + length
    if end > len(body):
        raise MalformedPacketError("properties run past the packet")
    found: dict[int, int | str] = {}
    while at < end:
        identifier = body[at]
        at += 1
        kind = _PROPERTY_KIND.get(identifier)
        if kind is None:
            raise MalformedPacketError(f"unknown property 0x{identifier:02x}")
        if kind in ("1", "2", "4"):
            size = int(kind)
            if at + size > end:
                raise MalformedPacketError(f"property 0x{identifier:02x} runs past the packet")
            found[identifier] = int.from_bytes(body[at : at + size], "big")
            at += size
        elif kind == "v":
            found[identifier], at = _read_varint(body, at)
        else:
            for _ in range(2 if kind == "p" else 1):
                if at + 2 > end:
                    raise MalformedPacketError(f"property 0x{identifier:02x} runs past the packet")
                size = int.from_bytes(body[at : at + 2], "big")
                at += 2
                if at + size > end:
                    raise MalformedPacketError(f"property 0x{identifier:02x} runs past the packet")
                if kind == "s":
                    found[identifier] = body[at : at + size].decode("utf-8", "replace")
                at += size
    return found, end


def _read_varint(body: bytes, at: int) -> tuple[int, int]:
    value = 0
    for shift in (0, 7, 14, 21):
        if at >= len(body):
            raise MalformedPacketError("a variable byte integer runs past the packet")
        byte = body[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
    raise MalformedPacketError("a variable byte integer longer than four bytes")


def parse_connack(version: Version, body: bytes) -> Connack:
    """A CONNACK's body (3.2)."""
    if len(body) < 2:
        raise MalformedPacketError(f"a CONNACK of {len(body)} bytes")
    code = body[1]
    if version != "5" or len(body) == 2:
        return Connack(code)
    found, _ = _properties(body, 2)

    def number(identifier: int) -> int | None:
        value = found.get(identifier)
        return value if isinstance(value, int) else None

    reason = found.get(_REASON_STRING)
    receive_maximum = number(_RECEIVE_MAXIMUM)
    maximum_packet_size = number(_MAXIMUM_PACKET_SIZE)
    # 3.2.2.3.3 and 3.2.2.3.6: a value of 0 is a protocol error (and would let nothing out).
    if receive_maximum == 0 or maximum_packet_size == 0:
        raise MalformedPacketError("a CONNACK with a Receive Maximum or Maximum Packet Size of 0")
    return Connack(
        code,
        receive_maximum=receive_maximum,
        maximum_packet_size=maximum_packet_size,
        server_keepalive_s=number(_SERVER_KEEP_ALIVE),
        maximum_qos=number(_MAXIMUM_QOS),
        retain_available=number(_RETAIN_AVAILABLE) != 0,
        reason=reason if isinstance(reason, str) else None,
    )


def parse_puback(version: Version, body: bytes) -> tuple[int, int]:
    """A PUBACK's (packet identifier, reason code) (3.4). 3.1.1 has no reason: 0."""
    if len(body) < 2:
        raise MalformedPacketError(f"a PUBACK of {len(body)} bytes")
    mid = (body[0] << 8) | body[1]
    reason = body[2] if version == "5" and len(body) > 2 else 0
    return mid, reason


def parse_disconnect(body: bytes) -> tuple[int, str | None]:
    """A broker's DISCONNECT (MQTT 5 only, 3.14): its reason code and reason string."""
    if not body:
        return 0, None
    reason = None
    if len(body) > 1:
        found, _ = _properties(body, 1)
        text = found.get(_REASON_STRING)
        reason = text if isinstance(text, str) else None
    return body[0], reason


# Reason codes of a refused CONNECT, 3.1.1 (3.2.2.3) and 5.0 (3.2.2.2), for the log.
CONNECT_REFUSALS: Final[dict[int, str]] = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8C: "bad authentication method",
    0x90: "topic name invalid",
    0x95: "packet too large",
    0x97: "quota exceeded",
    0x99: "payload format invalid",
    0x9A: "retain not supported",
    0x9B: "QoS not supported",
    0x9C: "use another server",
    0x9D: "server moved",
    0x9F: "connection rate exceeded",
}
