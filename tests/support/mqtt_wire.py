"""MQTT control packets on the wire, for test relays that must say what they passed or lost.

`PacketSplitter` cuts one direction of a connection (client -> broker) into packets as bytes
arrive, in any chunking; a PUBLISH carries its topic and payload (MQTT 3.1.1 or 5, told by the
connection's CONNECT).
"""

from __future__ import annotations

from dataclasses import dataclass

CONNECT = 1
PUBLISH = 3


@dataclass(frozen=True)
class Packet:
    kind: int  # the control packet type: CONNECT, PUBLISH, ...
    topic: str = ""  # PUBLISH only
    payload: bytes = b""  # PUBLISH only


def _varint(data: bytes | bytearray, at: int) -> tuple[int, int] | None:
    """(value, index after it) of the variable byte integer at ``at``; None if incomplete."""
    value, shift = 0, 0
    while at < len(data):
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7
    return None


class PacketSplitter:
    """Client -> broker bytes in, whole packets out."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._level = 4  # MQTT 3.1.1 until a CONNECT says otherwise

    def feed(self, data: bytes) -> list[Packet]:
        """The packets that ``data`` completes, in order."""
        self._buffer += data
        packets: list[Packet] = []
        while len(self._buffer) >= 2:
            length = _varint(self._buffer, 1)
            if length is None or length[1] + length[0] > len(self._buffer):
                break
            size, start = length
            header, body = self._buffer[0], bytes(self._buffer[start : start + size])
            del self._buffer[: start + size]
            packets.append(self._packet(header, body))
        return packets

    def _packet(self, header: int, body: bytes) -> Packet:
        kind = header >> 4
        if kind == CONNECT:
            # protocol name (2-byte length + "MQTT"), then the protocol level byte
            name_length = int.from_bytes(body[:2], "big")
            self._level = body[2 + name_length]
            return Packet(kind)
        if kind != PUBLISH:
            return Packet(kind)
        topic_length = int.from_bytes(body[:2], "big")
        at = 2 + topic_length
        topic = body[2:at].decode()
        if (header >> 1) & 0x03:  # QoS 1 or 2: a packet identifier
            at += 2
        if self._level == 5:  # properties: their length, then themselves
            properties = _varint(body, at)
            assert properties is not None, "a PUBLISH cut inside its properties"
            at = properties[1] + properties[0]
        return Packet(kind, topic, body[at:])
