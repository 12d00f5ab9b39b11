"""Simulated Modbus meters served by real pymodbus servers (TCP or serial).

Run as a program::

    python -m firmware_sim.modbus_meter --tcp 127.0.0.1:5020 --meter 1:eastron_sdm120
    python -m firmware_sim.modbus_meter --serial /dev/pts/7 --meter 3:water_xintai_valve:12345:600

(``--server own`` serves the same meters over TCP from `firmware_sim.modbus_tcp_server`, a
lighter server of our own), or use `MeterSimulator` in tests. The meters themselves, their
registers, consumption, supply and faults, are `firmware_sim.meter_model.SimMeter`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import SimDevice

from drivers.modbus.profiles import load_profile
from firmware_sim.meter_model import Fault, ServedMeters, SimMeter
from firmware_sim.modbus_tcp_server import OwnTcpSimulator

logger = logging.getLogger(__name__)


class MeterSimulator(ServedMeters):
    """A Modbus server (TCP or serial) with one or more `SimMeter`s on it.

    Use as an async context manager after `tcp` or `serial`::

        async with MeterSimulator.tcp([meter], port=0) as sim:
            port = sim.port
    """

    def __init__(self, meters: Sequence[SimMeter], *, framer_rtu: bool) -> None:
        self.meters = {m.unit_id: m for m in meters}
        if len(self.meters) != len(meters):
            raise ValueError("two simulated meters share a unit id")
        self._rtu = framer_rtu
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._start: Callable[[], ModbusTcpServer | ModbusSerialServer] = self._no_start
        self.port = 0

    @staticmethod
    def _no_start() -> ModbusTcpServer:
        raise RuntimeError("build the simulator with MeterSimulator.tcp() or .serial()")

    @classmethod
    def tcp(cls, meters: Sequence[SimMeter], host: str = "127.0.0.1", port: int = 0) -> Self:
        """A Modbus TCP server; ``port=0`` picks a free port (read `port` after start)."""
        sim = cls(meters, framer_rtu=False)
        sim._start = lambda: ModbusTcpServer(
            sim._devices(), address=(host, port), trace_packet=sim._trace_packet
        )
        return sim

    @classmethod
    def serial(
        cls,
        meters: Sequence[SimMeter],
        port: str,
        *,
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
    ) -> Self:
        """A Modbus RTU server on a serial device (a pty from socat in tests)."""
        sim = cls(meters, framer_rtu=True)
        sim._start = lambda: ModbusSerialServer(
            sim._devices(),
            port=port,
            baudrate=baudrate,
            parity=parity,
            stopbits=stopbits,
            trace_packet=sim._trace_packet,
        )
        return sim

    def _devices(self) -> list[SimDevice]:
        return [m.sim_device() for m in self.meters.values()]

    def _trace_packet(self, sending: bool, packet: bytes) -> bytes:
        """Apply reply faults on the wire: silence or a corrupted frame."""
        if not sending or not packet:
            return packet
        unit = packet[0] if self._rtu else packet[6] if len(packet) > 6 else -1
        meter = self.meters.get(unit)
        if meter is None:
            return packet
        fault = meter.take_fault({Fault.NO_ANSWER, Fault.BAD_CRC})
        if fault is Fault.NO_ANSWER:
            return b""
        if fault is Fault.BAD_CRC:
            if self._rtu:
                return packet[:-1] + bytes([packet[-1] ^ 0xFF])
            return packet[:-1]  # MBAP length now promises a byte that never comes
        return packet

    async def start(self) -> None:
        """Start listening.

        Raises:
            RuntimeError: the port or device could not be opened.
        """
        server = self._start()
        await server.serve_forever(background=True)
        self._server = server
        if isinstance(server, ModbusTcpServer):
            sockets = getattr(server.transport, "sockets", None) or []
            if sockets:
                self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop the server and close its connections."""
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None


# ------------------------------------------------------------------ program


def _parse_meter(text: str, profiles_dir: Path) -> SimMeter:
    parts = text.split(":")
    if not 2 <= len(parts) <= 4:
        raise argparse.ArgumentTypeError(f"--meter wants UNIT:PROFILE[:MILLI[:RATE]], got {text}")
    profile = load_profile(profiles_dir / f"{parts[1]}.yaml")
    return SimMeter(
        unit_id=int(parts[0]),
        profile=profile,
        energy_milli=int(parts[2]) if len(parts) > 2 else 0,
        rate_milli_per_h=int(parts[3]) if len(parts) > 3 else 0,
    )


async def _serve(sim: ServedMeters) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        logger.info("serving %d meter(s); port %s", len(sim.meters), sim.port or "serial")
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m firmware_sim.modbus_meter``."""
    parser = argparse.ArgumentParser(prog="python -m firmware_sim.modbus_meter")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", metavar="HOST:PORT")
    where.add_argument("--serial", metavar="DEVICE")
    parser.add_argument("--baudrate", type=int, default=9600)
    parser.add_argument("--parity", choices=["N", "E", "O"], default="N")
    parser.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
    parser.add_argument(
        "--server",
        choices=["pymodbus", "own"],
        default="pymodbus",
        help="TCP only: pymodbus's server, or the light one of firmware_sim.modbus_tcp_server",
    )
    parser.add_argument("--profiles-dir", type=Path, default=Path("configs/devices"))
    parser.add_argument(
        "--meter",
        action="append",
        required=True,
        metavar="UNIT:PROFILE[:MILLI[:RATE_PER_H]]",
        help="a meter to serve (repeat for several units on one bus)",
    )
    args = parser.parse_args(argv)
    if args.server == "own" and not args.tcp:
        parser.error("--server own serves Modbus TCP only")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    meters = [_parse_meter(m, args.profiles_dir) for m in args.meter]
    sim: ServedMeters
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        if args.server == "own":
            sim = OwnTcpSimulator(meters, host or "127.0.0.1", int(port))
        else:
            sim = MeterSimulator.tcp(meters, host or "127.0.0.1", int(port))
    else:
        sim = MeterSimulator.serial(
            meters,
            args.serial,
            baudrate=args.baudrate,
            parity=args.parity,
            stopbits=args.stopbits,
        )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(sim))
    return 0


if __name__ == "__main__":
    sys.exit(main())
