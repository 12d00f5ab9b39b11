"""The simulator's own Modbus TCP server (`firmware_sim.modbus_tcp_server`) on the wire.

Read by two clients that do not share its code: pymodbus's ``AsyncModbusTcpClient`` and the
gateway's `TcpLink`. Its answers are held to hand-worked words and, for every register of every
shipped profile, to what pymodbus's own server answers for the same meter.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus.config import DeviceProfile
from drivers.modbus.registers import Table
from drivers.ports import DeviceRejectedError, DeviceTimeoutError, FrameError
from firmware_sim.meter_model import Fault, SimMeter
from firmware_sim.modbus_meter import MeterSimulator
from firmware_sim.modbus_tcp_server import OwnTcpSimulator
from tests.fixtures.modbus import (
    PROFILES_DIR,
    REPLY_TIMEOUT_S,
    tcp_link,
)
from tests.support.waiting import DEFAULT_TIMEOUT_S

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHORT_TIMEOUT_S = 0.2  # a test that expects no reply pays this


def _frozen(meter: SimMeter) -> SimMeter:
    meter.clock_ns = lambda: 0  # the register moves only when a test moves it
    meter.__post_init__()
    return meter


@contextlib.asynccontextmanager
async def _pymodbus_client(port: int) -> AsyncIterator[AsyncModbusTcpClient]:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=REPLY_TIMEOUT_S, retries=0)
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


async def test_own_server_answers_the_gateway_link_word_for_word(
    modbus_profiles: dict[str, DeviceProfile],
) -> None:
    sdm = SimMeter(1, modbus_profiles["eastron_sdm120"], energy_milli=1_234_500)
    relay = SimMeter(3, modbus_profiles["acrel_ddsy1352"], energy_milli=98_760)
    relay.extras["voltage"] = 2301
    async with OwnTcpSimulator([sdm, relay]) as sim, tcp_link(sim.port) as link:
        # input 0x46..0x4B: frequency 0.0, energy 1234.5, export 0.0 as float32 ABCD;
        # 1234.5 = 1.00110100101b x 2^10: exponent 127 + 10 = 0x89 -> 0x449A5000
        assert await link.read("sdm", 1, Table.INPUT, 0x46, 6) == [0, 0, 0x449A, 0x5000, 0, 0]
        # holding 0x00..0x01: energy u32 98 760 Wh / scale 10 = 9876; 0x0B: voltage 2301
        assert await link.read("relay", 3, Table.HOLDING, 0x00, 2) == [0, 9876]
        assert await link.read("relay", 3, Table.HOLDING, 0x0B, 1) == [2301]
        assert await link.read("relay", 3, Table.COIL, 0, 1) == [True]  # supply on, read back
        await link.write("relay", 3, Table.COIL, 0, 0)  # FC05 0x0000: relay open
        assert (relay.supply_on, relay.supply_writes) == (False, [False])
        assert await link.read("relay", 3, Table.COIL, 0, 1) == [False]
    # the first exchange as sent and answered: tid 1, protocol 0, length 6, unit 1, FC04,
    # 0x0046, count 6; reply length 15 (unit, FC, byte count 12, six words)
    assert link.dump().startswith(
        "tx:000100000006010400460006 rx:00010000000f01040c00000000449a500000000000 tx:"
    )
    # FC05 off, the 5th request, echoed: unit 3, address 0, value 0x0000
    assert "tx:000500000006030500000000 rx:000500000006030500000000" in link.dump()
    assert sdm.requests == 1
    assert relay.requests == 5


@pytest.mark.parametrize("supply_on", [True, False])
@pytest.mark.parametrize("profile", sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
async def test_own_server_serves_every_register_as_pymodbus_serves_it(
    modbus_profiles: dict[str, DeviceProfile], profile: str, supply_on: bool
) -> None:
    def meter() -> SimMeter:
        m = _frozen(
            SimMeter(7, modbus_profiles[profile], energy_milli=4_321_987, supply_on=supply_on)
        )
        for i, name in enumerate(modbus_profiles[profile].registers):
            m.extras[name] = 11 * (i + 1)
        return m

    ours, theirs = meter(), meter()
    sizes = ours.table_sizes()
    async with (
        OwnTcpSimulator([ours]) as own,
        MeterSimulator.tcp([theirs]) as reference,
        _pymodbus_client(own.port) as a,
        _pymodbus_client(reference.port) as b,
    ):
        compared = 0
        for table, size in sizes.items():
            if size == 0:
                continue
            for start in range(0, size, 100):
                count = min(100, size - start)
                if table is Table.INPUT:
                    ra = await a.read_input_registers(start, count=count, device_id=7)
                    rb = await b.read_input_registers(start, count=count, device_id=7)
                elif table is Table.HOLDING:
                    ra = await a.read_holding_registers(start, count=count, device_id=7)
                    rb = await b.read_holding_registers(start, count=count, device_id=7)
                elif table is Table.COIL:
                    ra = await a.read_coils(start, count=count, device_id=7)
                    rb = await b.read_coils(start, count=count, device_id=7)
                else:
                    ra = await a.read_discrete_inputs(start, count=count, device_id=7)
                    rb = await b.read_discrete_inputs(start, count=count, device_id=7)
                assert not ra.isError(), (table, start, ra)
                assert not rb.isError(), (table, start, rb)
                assert (ra.registers, ra.bits) == (rb.registers, rb.bits), (table, start)
                compared += count
    assert compared == sum(sizes.values())
    assert ours.requests == theirs.requests > 0


async def test_own_server_writes_singles_and_multiples_through_the_meter_model(
    modbus_profiles: dict[str, DeviceProfile],
) -> None:
    relay = _frozen(SimMeter(3, modbus_profiles["acrel_ddsy1352"]))
    valve = _frozen(SimMeter(2, modbus_profiles["water_xintai_valve"]))
    async with OwnTcpSimulator([relay, valve]) as sim, _pymodbus_client(sim.port) as client:
        # FC15 one coil, off; FC05 on
        assert not (await client.write_coils(0, [False], device_id=3)).isError()
        assert (relay.supply_on, relay.supply_writes) == (False, [False])
        assert not (await client.write_coil(0, True, device_id=3)).isError()
        assert (relay.supply_on, relay.supply_writes) == (True, [False, True])
        # FC16 to 0x1C..0x1D: 2 closes the valve (0x1C), 0x1D is beyond the profile's table
        rejected = await client.write_registers(0x1C, [2, 5], device_id=2)
        assert rejected.isError()
        assert rejected.exception_code == 2
        assert valve.supply_writes == []  # nothing of a refused request is applied
        assert not (await client.write_registers(0x1C, [2], device_id=2)).isError()
        assert valve.supply_on is False
        read = await client.read_holding_registers(0x1C, count=1, device_id=2)
        assert read.registers == [2]  # off_mask 0x0002
        # a meter that acknowledges a supply write and keeps its state
        valve.ignore_writes = True
        assert not (await client.write_register(0x1C, 1, device_id=2)).isError()
        assert (valve.supply_on, valve.supply_writes) == (False, [False, True])  # acknowledged
        read = await client.read_holding_registers(0x1C, count=1, device_id=2)
        assert read.registers == [2]  # still closed


async def test_own_server_refuses_what_a_meter_refuses(
    modbus_profiles: dict[str, DeviceProfile],
) -> None:
    relay = _frozen(SimMeter(3, modbus_profiles["acrel_ddsy1352"]))
    async with OwnTcpSimulator([relay]) as sim, _pymodbus_client(sim.port) as client:
        # holding table of the DDSY1352 profile: 0x00..0x0D, 14 registers
        assert relay.table_sizes()[Table.HOLDING] == 14
        assert not (await client.read_holding_registers(0, count=14, device_id=3)).isError()
        beyond = await client.read_holding_registers(1, count=14, device_id=3)
        assert beyond.isError()
        assert beyond.exception_code == 2
        input_table = await client.read_input_registers(0, count=1, device_id=3)
        assert input_table.isError()
        assert input_table.exception_code == 2
    async with OwnTcpSimulator([relay]) as sim:
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        try:

            async def exchange(pdu: bytes) -> bytes:
                writer.write(struct.pack(">HHHB", 9, 0, len(pdu) + 1, 3) + pdu)
                async with asyncio.timeout(DEFAULT_TIMEOUT_S):
                    header = await reader.readexactly(7)
                    (length,) = struct.unpack_from(">H", header, 4)
                    return await reader.readexactly(length - 1)

            assert await exchange(bytes([3, 0, 0, 0, 0])) == bytes([0x83, 3])  # count 0
            assert await exchange(bytes([3, 0, 0, 0, 126])) == bytes([0x83, 3])  # count 126
            assert await exchange(bytes([5, 0, 0, 0x12, 0x34])) == bytes([0x85, 3])  # coil value
            assert await exchange(bytes([7])) == bytes([0x87, 1])  # FC07: not served
            # FC16 whose byte count disagrees with its register count
            assert await exchange(bytes([16, 0, 0, 0, 2, 2, 0, 1])) == bytes([0x90, 3])
            assert relay.supply_writes == []
        finally:
            writer.close()


async def test_own_server_plays_the_meter_faults(
    modbus_profiles: dict[str, DeviceProfile],
) -> None:
    sdm = _frozen(SimMeter(1, modbus_profiles["eastron_sdm120"], energy_milli=1_234_500))
    async with OwnTcpSimulator([sdm]) as sim:
        async with tcp_link(sim.port) as link:
            sdm.set_fault(Fault.EXCEPTION, count=1, code=4)
            with pytest.raises(DeviceRejectedError):
                await link.read("sdm", 1, Table.INPUT, 0x46, 6)
        async with tcp_link(sim.port, SHORT_TIMEOUT_S) as link:
            sdm.set_fault(Fault.NO_ANSWER, count=1)
            with pytest.raises(DeviceTimeoutError):
                await link.read("sdm", 1, Table.INPUT, 0x46, 6)
            sdm.set_fault(Fault.BAD_CRC, count=1)  # on TCP: a reply one byte short
            with pytest.raises(FrameError):
                await link.read("sdm", 1, Table.INPUT, 0x46, 6)
            with pytest.raises(DeviceTimeoutError):  # a unit no meter has: no reply
                await link.read("ghost", 9, Table.INPUT, 0x46, 6)
            # each fault was for one reply only: the meter answers again
            assert await link.read("sdm", 1, Table.INPUT, 0x48, 2) == [0x449A, 0x5000]
    assert sdm.fault is None


async def test_own_server_hangs_up_on_a_frame_it_cannot_cut(
    modbus_profiles: dict[str, DeviceProfile],
) -> None:
    sdm = _frozen(SimMeter(1, modbus_profiles["eastron_sdm120"]))
    async with OwnTcpSimulator([sdm]) as sim:
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        try:
            # protocol id 1: not Modbus; the server cannot know where the next frame begins
            writer.write(struct.pack(">HHHBBHH", 1, 1, 6, 1, 4, 0x46, 6))
            async with asyncio.timeout(DEFAULT_TIMEOUT_S):
                assert await reader.read() == b""  # closed, nothing answered
        finally:
            writer.close()
        async with tcp_link(sim.port) as link:  # and it serves the next connection
            assert len(await link.read("sdm", 1, Table.INPUT, 0x46, 6)) == 6
    assert sdm.requests == 1


def test_sim_program_refuses_its_own_server_on_a_serial_line() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "firmware_sim.modbus_meter",
            "--serial",
            "/dev/null",
            "--server",
            "own",
            "--meter",
            "1:eastron_sdm120",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEFAULT_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 2
    assert "--server own serves Modbus TCP only" in result.stderr
