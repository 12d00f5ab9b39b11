"""A Modbus TCP server of our own for `SimMeter`s: the light one, for many meters at once.

Why our own beside pymodbus's ``ModbusTcpServer`` (which `MeterSimulator.tcp` still runs, and
the tests with it): ``prepay bench site`` offers 2,000 polls a second on the same 2-core
machine as the daemon it measures, and pymodbus's server took 0.46 ms of CPU a request there
(0.77 of a core at 1,675 requests a second), so the stand-in meters, not the daemon, decided
what the machine could deliver. On a site the meters are other hardware. This server answers
from the same `SimMeter` model (its registers, supply, faults) and costs a fraction of that
(`bench site` reports the simulators' CPU).

What it serves (Modbus Application Protocol Specification V1.1b3; Modbus Messaging on TCP/IP
Implementation Guide V1.0b):

* An ADU is the MBAP header (transaction id u16, protocol id u16 = 0, length u16 = unit id +
  PDU, unit id u8) and a PDU, big-endian. A header whose protocol id is not 0 or whose length
  is outside 2..254 leaves no way to find the next frame: the connection is closed.
* FC01/02 read coils / discrete inputs (1..2000 bits, packed LSB first), FC03/04 read holding
  / input registers (1..125), FC05 write single coil (0xFF00 on, 0x0000 off), FC06 write
  single register, FC15/16 write multiple coils / registers. A write reply echoes the
  request's function, address and value (FC05/06) or count (FC15/16).
* Exception replies: 01 illegal function, 02 illegal data address (outside what the meter's
  profile uses), 03 illegal data value (a count out of range, a coil value other than
  0xFF00/0x0000, a byte count that does not match). A request to a unit id no meter has gets
  no reply, as from a meter that is not on the line.

Faults are those of `SimMeter`: `Fault.EXCEPTION` answers with the meter's exception code,
`Fault.NO_ANSWER` sends nothing and `Fault.BAD_CRC` sends the reply one byte short (its MBAP
length promises a byte that never comes), each taken as pymodbus's hooks take them.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Sequence
from typing import Final

from drivers.modbus.registers import Table
from firmware_sim.meter_model import Fault, ServedMeters, SimMeter

logger = logging.getLogger(__name__)

_MBAP: Final = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
_MBAP_SIZE: Final = 7
_MAX_LENGTH: Final = 254
_ADDRESS_COUNT: Final = struct.Struct(">HH")

_READS: Final = {1: Table.COIL, 2: Table.DISCRETE_INPUT, 3: Table.HOLDING, 4: Table.INPUT}
_MAX_BITS: Final = 2000
_MAX_REGISTERS: Final = 125
_MAX_WRITE_BITS: Final = 1968
_MAX_WRITE_REGISTERS: Final = 123

_ILLEGAL_FUNCTION: Final = 1
_ILLEGAL_ADDRESS: Final = 2
_ILLEGAL_VALUE: Final = 3

_BIT_TABLES: Final = (Table.COIL, Table.DISCRETE_INPUT)


class _ModbusError(Exception):
    """A request answered with an exception reply of ``code``."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _Unit:
    """One meter as this server keeps it: its table sizes and the values written to it."""

    def __init__(self, meter: SimMeter) -> None:
        self.meter = meter
        self.sizes = meter.table_sizes()
        # What the master wrote where the model has nothing (the model's registers and the
        # supply read-back are written over them on every read), as pymodbus's blocks keep it.
        self.written: dict[tuple[Table, int], int] = {}

    def image(self, table: Table) -> list[int]:
        """The table as 16-bit words (a bit table 16 bits a word), brought up to the clock."""
        size = self.sizes[table]
        words = [0] * ((size + 15) // 16 if table in _BIT_TABLES else size)
        for (written_table, address), value in self.written.items():
            if written_table is not table:
                continue
            if table in _BIT_TABLES:
                words[address // 16] |= value << (address % 16)
            else:
                words[address] = value
        self.meter.sync_registers(table, 0, words)
        return words

    def check_range(self, table: Table, address: int, count: int, limit: int) -> None:
        if not 1 <= count <= limit:
            raise _ModbusError(_ILLEGAL_VALUE)
        if address + count > self.sizes[table]:
            raise _ModbusError(_ILLEGAL_ADDRESS)

    def write(self, table: Table, address: int, value: int) -> None:
        if self.meter.apply_write(table, address, value):
            self.written[(table, address)] = value


def _bits_of(words: list[int], address: int, count: int) -> bytes:
    out = bytearray((count + 7) // 8)
    for i in range(count):
        bit = address + i
        if words[bit // 16] >> (bit % 16) & 1:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def _answer(unit: _Unit, function: int, data: bytes) -> bytes:
    """The reply PDU to one request PDU (``function`` + ``data``) for ``unit``.

    Raises:
        _ModbusError: the request gets an exception reply.
    """
    meter = unit.meter
    meter.requests += 1
    if meter.take_fault({Fault.EXCEPTION}) is not None:
        raise _ModbusError(meter.exception_code)
    if function in _READS:
        if len(data) != 4:
            raise _ModbusError(_ILLEGAL_VALUE)
        table = _READS[function]
        address, count = _ADDRESS_COUNT.unpack(data)
        bits = table in _BIT_TABLES
        unit.check_range(table, address, count, _MAX_BITS if bits else _MAX_REGISTERS)
        meter.advance()
        words = unit.image(table)
        if bits:
            packed = _bits_of(words, address, count)
            return bytes((function, len(packed))) + packed
        return struct.pack(f">BB{count}H", function, 2 * count, *words[address : address + count])
    if function in (5, 6):
        if len(data) != 4:
            raise _ModbusError(_ILLEGAL_VALUE)
        address, value = _ADDRESS_COUNT.unpack(data)
        table = Table.COIL if function == 5 else Table.HOLDING
        if function == 5 and value not in (0xFF00, 0x0000):
            raise _ModbusError(_ILLEGAL_VALUE)
        unit.check_range(table, address, 1, 1)
        meter.advance()
        if function == 5:
            value = 1 if value == 0xFF00 else 0
        unit.write(table, address, value)
        return bytes((function,)) + data
    if function in (15, 16):
        if len(data) < 5:
            raise _ModbusError(_ILLEGAL_VALUE)
        address, count = _ADDRESS_COUNT.unpack_from(data)
        payload = data[5:]
        if function == 15:
            table, limit, size = Table.COIL, _MAX_WRITE_BITS, (count + 7) // 8
        else:
            table, limit, size = Table.HOLDING, _MAX_WRITE_REGISTERS, 2 * count
        if data[4] != size or len(payload) != size:
            raise _ModbusError(_ILLEGAL_VALUE)
        unit.check_range(table, address, count, limit)
        meter.advance()
        for i in range(count):
            if function == 15:
                value = payload[i // 8] >> (i % 8) & 1
            else:
                (value,) = struct.unpack_from(">H", payload, 2 * i)
            unit.write(table, address + i, value)
        return bytes((function,)) + data[:4]
    raise _ModbusError(_ILLEGAL_FUNCTION)


class _Connection(asyncio.Protocol):
    """One master's connection: cuts the byte stream into requests and answers each."""

    def __init__(self, units: dict[int, _Unit], open_: set[asyncio.Transport]) -> None:
        self._units = units
        self._open = open_  # the server's connections, closed when it stops
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - a TCP server's
        self._transport = transport
        self._open.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._open.discard(self._transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _MBAP_SIZE:
            tid, protocol, length, unit_id = _MBAP.unpack_from(buffer)
            if protocol != 0 or not 2 <= length <= _MAX_LENGTH:
                logger.warning("closing a connection: bad MBAP header %s", bytes(buffer[:7]).hex())
                assert self._transport is not None  # noqa: S101 - set on connection
                self._transport.close()
                buffer.clear()
                return
            end = 6 + length
            if len(buffer) < end:
                return
            pdu = bytes(buffer[_MBAP_SIZE:end])
            del buffer[:end]
            self._reply(tid, unit_id, pdu)

    def _reply(self, tid: int, unit_id: int, pdu: bytes) -> None:
        unit = self._units.get(unit_id)
        if unit is None:
            return
        try:
            answer = _answer(unit, pdu[0], pdu[1:])
        except _ModbusError as exc:
            answer = bytes((pdu[0] | 0x80, exc.code))
        frame = _MBAP.pack(tid, 0, len(answer) + 1, unit_id) + answer
        fault = unit.meter.take_fault({Fault.NO_ANSWER, Fault.BAD_CRC})
        if fault is Fault.NO_ANSWER:
            return
        if fault is Fault.BAD_CRC:
            frame = frame[:-1]
        assert self._transport is not None  # noqa: S101 - set on connection
        self._transport.write(frame)


class OwnTcpSimulator(ServedMeters):
    """`SimMeter`s behind one Modbus TCP port of this module's server.

    The same face as `firmware_sim.modbus_meter.MeterSimulator` for TCP::

        async with OwnTcpSimulator([meter], port=0) as sim:
            port = sim.port
    """

    def __init__(self, meters: Sequence[SimMeter], host: str = "127.0.0.1", port: int = 0) -> None:
        self.meters = {m.unit_id: m for m in meters}
        if len(self.meters) != len(meters):
            raise ValueError("two simulated meters share a unit id")
        self._units = {unit_id: _Unit(m) for unit_id, m in self.meters.items()}
        self._host, self._port = host, port
        self._server: asyncio.Server | None = None
        # Python 3.11's Server cannot close its connections (close_clients is 3.13's).
        self._open: set[asyncio.Transport] = set()
        self.port = 0

    async def start(self) -> None:
        """Start listening.

        Raises:
            OSError: the address could not be bound.
        """
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self._units, self._open), self._host, self._port
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
            for transport in list(self._open):
                transport.close()
            await self._server.wait_closed()
            self._server = None
