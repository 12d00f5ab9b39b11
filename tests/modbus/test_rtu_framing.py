"""Modbus RTU framing as the gateway's bus receives it, through a real pty pair (socat).

After pymodbus' own framer tests: one reply frame delivered whole, in halves, byte by byte, with
junk before it, and with a bad CRC. The test plays the device by hand on the pty's device side,
so each case controls exactly which bytes reach the gateway's serial port and in which pieces.
The request is one FC03 read of the valve register, whose 7-byte reply is small enough to
deliver a byte at a time in a few milliseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import serial_asyncio
from pymodbus.framer import FramerRTU

from drivers.modbus.client import ModbusBus
from drivers.modbus.config import DeviceProfile
from drivers.ports import FrameError, SupplyState
from tests.fixtures.modbus import (
    REPLY_TIMEOUT_S,
    PtyPair,
    bus_config,
    modbus_device,
    rtu_endpoint,
)
from tests.support.waiting import DEFAULT_TIMEOUT_S

pytestmark = pytest.mark.integration

UNIT = 9


def rtu_frame(body: bytes) -> bytes:
    """``body`` (unit, function, data) with its CRC-16/Modbus, low byte first."""
    return body + FramerRTU.compute_CRC(body).to_bytes(2, "big")


# FC03, start 0x001C (the valve register of water_xintai_valve), one register.
REQUEST = rtu_frame(bytes([UNIT, 0x03, 0x00, 0x1C, 0x00, 0x01]))
# FC03 reply, 2 bytes: 0x0001 = "open" bit set -> supply ON.
REPLY_OPEN = rtu_frame(bytes([UNIT, 0x03, 0x02, 0x00, 0x01]))
REPLY_CLOSED = rtu_frame(bytes([UNIT, 0x03, 0x02, 0x00, 0x02]))

# Pieces are written this far apart so that the gateway's port sees them in separate reads, as
# from a slow line or a USB adapter flushing early. A loaded machine may still merge pieces;
# a merged frame must decode too, so the pace can only weaken a case, never fail it.
PIECE_GAP_S = 0.005

Pieces = Callable[[bytes], list[bytes]]


def whole(frame: bytes) -> list[bytes]:
    return [frame]


def halves(frame: bytes) -> list[bytes]:
    middle = len(frame) // 2
    return [frame[:middle], frame[middle:]]


def byte_by_byte(frame: bytes) -> list[bytes]:
    return [frame[i : i + 1] for i in range(len(frame))]


class HandDevice:
    """The device side of the pty, answering each request with bytes the test chooses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def answer(self, pieces: list[bytes]) -> bytes:
        """Read one request, then write ``pieces`` one by one; returns the request."""
        request = await self.reader.readexactly(len(REQUEST))
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(PIECE_GAP_S)  # pacing the stimulus, not waiting for a result
            self.writer.write(piece)
            await self.writer.drain()
        return request


@pytest.fixture
async def hand_device(modbus_pty: PtyPair) -> AsyncIterator[HandDevice]:
    reader, writer = await serial_asyncio.open_serial_connection(
        url=modbus_pty.device_side, baudrate=9600
    )
    try:
        yield HandDevice(reader, writer)
    finally:
        writer.close()


def valve_bus(
    modbus_pty: PtyPair, profiles: dict[str, DeviceProfile], timeout_s: float
) -> ModbusBus:
    config = bus_config(
        "rs485f",
        rtu_endpoint(modbus_pty.master_side),
        [modbus_device("water", UNIT, "water_xintai_valve", allow_unconfirmed_supply=True)],
        timeout_s=timeout_s,
        retries=0,
    )
    return ModbusBus(config, profiles)


async def read_valve(bus: ModbusBus, device: HandDevice, pieces: list[bytes]) -> SupplyState:
    """One `read_supply` answered by ``device`` with ``pieces``."""
    async with asyncio.timeout(DEFAULT_TIMEOUT_S):
        state, request = await asyncio.gather(bus.read_supply("water"), device.answer(pieces))
    assert request == REQUEST
    return state


@pytest.mark.parametrize(
    ("pieces", "junk"),
    [
        pytest.param(whole, b"", id="whole"),
        pytest.param(halves, b"", id="in-halves"),
        pytest.param(byte_by_byte, b"", id="byte-by-byte"),
        pytest.param(whole, b"\x00\x00", id="junk-before"),
        pytest.param(byte_by_byte, b"\x00\x00", id="junk-before-byte-by-byte"),
    ],
)
async def test_rtu_reply_frame_decodes_however_it_arrives(
    modbus_pty: PtyPair,
    modbus_profiles: dict[str, DeviceProfile],
    hand_device: HandDevice,
    pieces: Pieces,
    junk: bytes,
) -> None:
    # The deadline only bounds a failing case: a good frame returns as soon as it is complete.
    async with valve_bus(modbus_pty, modbus_profiles, timeout_s=DEFAULT_TIMEOUT_S / 3) as bus:
        assert await read_valve(bus, hand_device, pieces(junk + REPLY_OPEN)) is SupplyState.ON
        # the next transaction starts clean: nothing of the last one is left in the buffer
        assert await read_valve(bus, hand_device, pieces(REPLY_CLOSED)) is SupplyState.OFF
        stats = bus.stats("water")
        assert (stats.frame_errors, stats.timeouts) == (0, 0)


async def test_rtu_reply_with_bad_crc_is_a_frame_error_and_the_line_recovers(
    modbus_pty: PtyPair, modbus_profiles: dict[str, DeviceProfile], hand_device: HandDevice
) -> None:
    corrupted = REPLY_OPEN[:-1] + bytes([REPLY_OPEN[-1] ^ 0xFF])
    # A bad frame is only known bad when the deadline passes without a good one: keep it short.
    async with valve_bus(modbus_pty, modbus_profiles, timeout_s=REPLY_TIMEOUT_S) as bus:
        with pytest.raises(FrameError, match=corrupted.hex()):
            await read_valve(bus, hand_device, whole(corrupted))
        stats = bus.stats("water")
        assert (stats.frame_errors, stats.timeouts) == (1, 0)  # bytes came: not silence
        assert await read_valve(bus, hand_device, whole(REPLY_OPEN)) is SupplyState.ON
