"""The Modbus TCP link (`drivers.modbus.tcp_link.TcpLink`) against real servers.

Normal traffic against the firmware simulator (a pymodbus server); the misbehaviours a real
server does not produce (a stale transaction id, garbage, a hang-up mid-request, a reply of the
wrong size) against `RawServer`, a TCP server in this file that answers each request as the test
tells it to.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.modbus.config import DeviceProfile
from drivers.modbus.registers import Table
from drivers.ports import DeviceRejectedError, DeviceTimeoutError, FrameError
from firmware_sim.meter_model import SimMeter
from firmware_sim.modbus_meter import MeterSimulator
from tests.fixtures.modbus import tcp_link
from tests.fixtures.mosquitto import free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

# A test that expects a timeout pays it; one that expects a reply gets the usual deadline.
SHORT_TIMEOUT_S = 0.2


# ---------------------------------------------------------------- against the simulator


async def test_tcp_link_reads_all_four_tables_from_the_simulator(
    modbus_profiles: dict[str, DeviceProfile],
) -> None:
    sdm = SimMeter(1, modbus_profiles["eastron_sdm120"], energy_milli=1_234_500)
    acrel = modbus_profiles["acrel_ddsy1352"]
    assert acrel.supply is not None
    # The same relay, its state read back from discrete input 0 instead of coil 0.
    relay_di = acrel.model_copy(
        update={"supply": acrel.supply.model_copy(update={"read_table": Table.DISCRETE_INPUT})}
    )
    relay = SimMeter(3, relay_di, energy_milli=98_760)
    relay.extras["voltage"] = 2301
    async with MeterSimulator.tcp([sdm, relay]) as sim, tcp_link(sim.port) as link:
        # input 0x46..0x4B: frequency 0.0, energy 1234.5, export 0.0 as float32 ABCD;
        # 1234.5 = 1.00110100101b x 2^10: exponent 127 + 10 = 0x89, so 0 10001001 0011010010100...
        # = 0x449A5000
        words = await link.read("sdm", 1, Table.INPUT, 0x46, 6)
        assert words == [0, 0, 0x449A, 0x5000, 0, 0]
        # holding 0x00..0x01: energy u32 98 760 Wh / scale 10 = 9876; 0x0B: voltage 2301
        assert await link.read("relay", 3, Table.HOLDING, 0x00, 2) == [0, 9876]
        assert await link.read("relay", 3, Table.HOLDING, 0x0B, 1) == [2301]
        assert await link.read("relay", 3, Table.DISCRETE_INPUT, 0, 1) == [True]  # supply on
        assert await link.read("relay", 3, Table.COIL, 0, 1) == [False]  # never written
        assert all(type(w) is int for w in words)
    # the first request as sent: tid 1, protocol 0, length 6, unit 1, FC04, 0x0046, count 6;
    # its reply: tid 1, protocol 0, length 15 (unit, FC, byte count, 12 bytes), unit 1, FC04,
    # 12 bytes, the six words above
    assert link.dump().startswith(
        "tx:000100000006010400460006 rx:00010000000f01040c00000000449a500000000000 tx:"
    )


async def test_tcp_link_writes_a_coil_and_a_register_to_the_simulator(
    modbus_profiles: dict[str, DeviceProfile],
) -> None:
    relay = SimMeter(3, modbus_profiles["acrel_ddsy1352"])
    valve = SimMeter(2, modbus_profiles["water_xintai_valve"])
    async with MeterSimulator.tcp([relay, valve]) as sim, tcp_link(sim.port) as link:
        await link.write("relay", 3, Table.COIL, 0, 0)  # FC05 0x0000: relay open
        assert (relay.supply_on, relay.supply_writes) == (False, [False])
        assert await link.read("relay", 3, Table.COIL, 0, 1) == [False]
        await link.write("relay", 3, Table.COIL, 0, 1)  # FC05 0xFF00: relay closed
        assert (relay.supply_on, relay.supply_writes) == (True, [False, True])
        assert await link.read("relay", 3, Table.COIL, 0, 1) == [True]
        await link.write("valve", 2, Table.HOLDING, 0x1C, 2)  # FC06: 2 closes the valve
        assert valve.supply_on is False
        assert await link.read("valve", 2, Table.HOLDING, 0x1C, 1) == [2]  # off_mask 0x0002
    # FC05 on, the 3rd request: tid 3, protocol 0, length 6, unit 3, address 0, value 0xFF00,
    # echoed by the device
    assert "tx:00030000000603050000ff00 rx:00030000000603050000ff00" in link.dump()


# ---------------------------------------------------------------- against a hand-played peer


@dataclass(frozen=True)
class Request:
    """One request as the peer received it (every request of the link is 12 bytes)."""

    tid: int
    unit: int
    function: int
    address: int
    word: int  # count for a read, value for a write

    def reply(self, pdu: bytes, *, tid: int | None = None, unit: int | None = None) -> bytes:
        """An ADU carrying ``pdu``, with this request's transaction and unit id unless given."""
        tid = self.tid if tid is None else tid
        unit = self.unit if unit is None else unit
        return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu

    def registers(self, *words: int, tid: int | None = None) -> bytes:
        """A read reply of this request's function carrying ``words``."""
        pdu = bytes([self.function, 2 * len(words)]) + struct.pack(f">{len(words)}H", *words)
        return self.reply(pdu, tid=tid)


#: What the peer does with a request: the bytes to send back (b"": nothing), or None to hang up.
Answer = Callable[[Request], Awaitable[bytes | None]]


class RawServer:
    """A Modbus TCP peer on a free port that answers each request with ``answer``."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.received: asyncio.Queue[Request] = asyncio.Queue()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            while True:
                request = Request(*struct.unpack(">HxxxxBBHH", await reader.readexactly(12)))
                await self.received.put(request)
                out = await self.answer(request)
                if out is None:
                    break
                writer.write(out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the link closed the connection
        finally:
            writer.close()


async def _counting_up(request: Request) -> bytes:
    """A read reply of 1, 2, ... up to the count asked."""
    return request.registers(*range(1, request.word + 1))


async def test_tcp_link_unpacks_bits_lsb_first_and_drops_the_padding() -> None:
    async def bits(request: Request) -> bytes:
        # 10 coils in 2 bytes: 0xA5 = 1010 0101b -> bits 0..7 = 1,0,1,0,0,1,0,1;
        # 0xFE = 1111 1110b -> bits 8, 9 = 0, 1 and six padding bits set (to be ignored)
        return request.reply(bytes([request.function, 2, 0xA5, 0xFE]))

    async with RawServer(bits) as server, tcp_link(server.port) as link:
        got = await link.read("d1", 1, Table.COIL, 0, 10)
        assert got == [True, False, True, False, False, True, False, True, False, True]
        assert all(type(b) is bool for b in got)
        assert await link.read("d1", 1, Table.DISCRETE_INPUT, 0, 10) == got
    functions = [server.received.get_nowait().function for _ in range(2)]
    assert functions == [1, 2]  # read coils, read discrete inputs


async def test_tcp_link_skips_a_stale_reply_and_takes_its_own() -> None:
    async def stale_first(request: Request) -> bytes:
        # the reply to an earlier request (given up on) arrives first, in the same segment
        return request.registers(111, tid=request.tid - 1) + request.registers(222)

    async with RawServer(stale_first) as server, tcp_link(server.port) as link:
        assert await link.read("d1", 1, Table.HOLDING, 0, 1) == [222]
        assert await link.read("d1", 1, Table.HOLDING, 0, 1) == [222]
    assert server.connections == 1
    # both rx frames are in the dump: the stale one (tid 0, 111 = 0x6f) then the right one (tid 1)
    assert "rx:000000000005010302006f rx:00010000000501030200de" in link.dump()


async def test_tcp_link_only_a_stale_reply_is_no_reply() -> None:
    async def only_stale(request: Request) -> bytes:
        return request.registers(111, tid=request.tid + 100)

    async with RawServer(only_stale) as server, tcp_link(server.port, SHORT_TIMEOUT_S) as link:
        # a well-formed reply to another transaction: the device answered, but not this request
        with pytest.raises(DeviceTimeoutError, match=r"no reply in 0\.2 s"):
            await link.read("d1", 1, Table.HOLDING, 0, 1)
    # tid 101 = 0x0065, protocol 0, length 5, unit 1, FC03, 2 bytes, 111 = 0x006f
    assert link.dump().endswith("rx:006500000005010302006f")
    assert server.connections == 1


async def test_tcp_link_exception_reply_is_rejected_with_its_code() -> None:
    async def illegal_address(request: Request) -> bytes:
        return request.reply(bytes([request.function | 0x80, 0x02]))

    async with RawServer(illegal_address) as server, tcp_link(server.port) as link:
        with pytest.raises(DeviceRejectedError, match="rejected with code 2") as caught:
            await link.read("d1", 1, Table.INPUT, 0x46, 6)
        assert caught.value.code == 2
        with pytest.raises(DeviceRejectedError):
            await link.write("d1", 1, Table.HOLDING, 0x1C, 1)


@pytest.mark.parametrize(
    ("make_reply", "message"),
    [
        (lambda r: r.registers(1), "asked 2 registers, got 1"),
        (lambda r: r.registers(1, 2, 3), "asked 2 registers, got 3"),
        (lambda r: r.reply(bytes([0x03, 4, 0, 1, 0, 2])), "function 3 to a request of function 4"),
        (lambda r: r.reply(bytes([0x04, 4, 0, 1, 0, 2]), unit=9), "from unit 9, asked unit 1"),
        (lambda r: r.reply(bytes([0x04, 5, 0, 1, 0, 2])), "byte count does not fit"),
    ],
    ids=["too_few", "too_many", "other_function", "other_unit", "bad_byte_count"],
)
async def test_tcp_link_reply_that_does_not_answer_is_a_frame_error(
    make_reply: Callable[[Request], bytes], message: str
) -> None:
    async def answer(request: Request) -> bytes:
        return make_reply(request)

    async with RawServer(answer) as server, tcp_link(server.port) as link:
        with pytest.raises(FrameError, match=message):
            await link.read("d1", 1, Table.INPUT, 0, 2)
        # the framing held: the same connection serves the next request
        with pytest.raises(FrameError, match=message):
            await link.read("d1", 1, Table.INPUT, 0, 2)
    assert server.connections == 1


async def test_tcp_link_wrong_bit_count_is_a_frame_error() -> None:
    async def one_byte(request: Request) -> bytes:
        return request.reply(bytes([request.function, 1, 0xFF]))

    async with RawServer(one_byte) as server, tcp_link(server.port) as link:
        with pytest.raises(FrameError, match="asked 10 bits, got 8"):
            await link.read("d1", 1, Table.COIL, 0, 10)


@pytest.mark.parametrize(
    ("garbage", "message"),
    [
        # shorter than a header: nothing to judge until the timeout
        (b"\xde\xad\xbe\xef", r"no valid reply in 0\.2 s; got deadbeef"),
        # an HTTP peer: protocol id "TP" (0x5450), not 0
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", r"not Modbus TCP \(protocol id 21584.*got 48545450"),
        # a length field beyond the 260-byte ADU: 300 = 0x012C
        (b"\x00\x01\x00\x00\x01\x2c\x01\x04", r"length 300\); got 00010000012c0104"),
    ],
    ids=["short", "not_modbus", "too_long"],
)
async def test_tcp_link_garbage_is_a_frame_error_and_the_next_call_reconnects(
    garbage: bytes, message: str
) -> None:
    async def garbage_on_first_connection(request: Request) -> bytes:
        return garbage if server.connections == 1 else await _counting_up(request)

    server = RawServer(garbage_on_first_connection)
    async with server, tcp_link(server.port, SHORT_TIMEOUT_S) as link:
        with pytest.raises(FrameError, match=message):
            await link.read("d1", 1, Table.HOLDING, 0, 2)
        assert await link.read("d1", 1, Table.HOLDING, 0, 2) == [1, 2]
    assert server.connections == 2  # the stream could not be trusted: a new connection
    assert f"rx:{garbage.hex()}" in link.dump()


async def test_tcp_link_silence_is_a_timeout() -> None:
    async def silence(request: Request) -> bytes:
        return b""

    async with RawServer(silence) as server, tcp_link(server.port, SHORT_TIMEOUT_S) as link:
        with pytest.raises(DeviceTimeoutError, match=r"no reply in 0\.2 s"):
            await link.read("d1", 1, Table.INPUT, 0, 2)
        with pytest.raises(DeviceTimeoutError, match=r"no reply in 0\.2 s"):
            await link.write("d1", 1, Table.COIL, 0, 1)
    assert server.connections == 1  # silence alone does not cost the connection


async def test_tcp_link_hang_up_mid_request_is_a_timeout_and_the_next_call_reconnects() -> None:
    async def hang_up_first(request: Request) -> bytes | None:
        return None if server.connections == 1 else await _counting_up(request)

    server = RawServer(hang_up_first)
    async with server, tcp_link(server.port) as link:
        with pytest.raises(DeviceTimeoutError, match="not connected: connection closed"):
            await link.read("d1", 1, Table.HOLDING, 0, 3)
        assert await link.read("d1", 1, Table.HOLDING, 0, 3) == [1, 2, 3]
    assert server.connections == 2


async def test_tcp_link_refused_connection_cannot_connect() -> None:
    async with tcp_link(free_port()) as link:  # nothing listens there
        with pytest.raises(DeviceTimeoutError, match="d1: cannot connect to the bus"):
            await link.read("d1", 1, Table.HOLDING, 0, 1)
    assert link.dump() == ""  # nothing was sent


async def test_tcp_link_late_reply_to_a_cancelled_call_is_not_the_next_calls() -> None:
    release = asyncio.Event()

    async def first_late(request: Request) -> bytes:
        if request.tid == 1:
            await release.wait()
            return request.registers(0xDEAD)
        return request.registers(0x0002)

    timeout_s = 30.0  # only the cancellation ends the first call
    async with RawServer(first_late) as server, tcp_link(server.port, timeout_s) as link:
        call = asyncio.create_task(link.read("d1", 1, Table.HOLDING, 0, 1))
        assert (await server.received.get()).tid == 1
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        release.set()
        late = "rx:000100000005010302dead"  # tid 1, length 5, unit 1, FC03, 2 bytes, 0xDEAD
        await eventually(lambda: link.dump().endswith(late), what="the late reply received")
        assert await link.read("d1", 1, Table.HOLDING, 0, 1) == [2]
    assert server.connections == 1


# Builds and polls a TCP bus as the daemon does (`build_modbus`), nothing listening at the port.
_POLL_A_TCP_BUS = """
import asyncio, json, sys
from drivers.modbus.builder import build_modbus
from drivers.modbus.config import ModbusBusConfig
from tests.fixtures.modbus import PROFILES_DIR, RecordingSink

async def main():
    config = ModbusBusConfig.model_validate({
        "name": "b", "kind": "tcp", "host": "127.0.0.1", "port": int(sys.argv[1]),
        "devices": [{"device_id": "d1", "unit_id": 1, "profile": "eastron_sdm120",
                     "meter_id": "m1"}],
    })
    (bus,), _ = build_modbus([config], PROFILES_DIR)
    await bus.poll_device("d1", RecordingSink())
    await bus.aclose()
    loaded = sorted({"pymodbus", "serial"} & set(sys.modules))
    print(json.dumps([bus.stats("d1").last_error, loaded]))

asyncio.run(main())
"""


def test_tcp_link_a_tcp_bus_runs_without_pymodbus() -> None:
    # A site with TCP buses only never loads pymodbus or pyserial (the RTU link's libraries).
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    out = subprocess.run(
        [sys.executable, "-c", _POLL_A_TCP_BUS, str(free_port())],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=Path(__file__).resolve().parents[2],  # the checkout: `tests` is importable
    ).stdout
    last_error, loaded = json.loads(out.splitlines()[-1])
    assert "cannot connect to the bus" in last_error
    assert loaded == []
