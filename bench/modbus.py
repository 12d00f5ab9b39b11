"""``prepay bench modbus``: the gateway's Modbus path against raw pymodbus, and 1,000 meters.

Measures, in one run:

1. transactions/s of raw ``AsyncModbusTcpClient.read_input_registers`` and of the gateway's
   `ModbusBus.poll_device` (same request: 6 input registers of an SDM120, one per poll, plus
   decoding to milli-units and building a `Reading`) over TCP loopback;
2. the same two over a socat pty pair with RTU framing (the inter-frame gap is set to 0 here:
   a pty has no line timing, and the gap would measure the RS485 spec, not our code);
3. the sustained reading rate with 1,000 simulated meters (8 TCP servers x 125 unit ids)
   polled every second by 8 buses (``--fleet-buses``, ``--fleet-meters-per-bus``).

The simulators run as separate processes (``python -m firmware_sim.modbus_meter``) so the
gateway's CPU is measured, not the simulator's; each is used once it logs that it serves (a TCP
one on a port it picked itself). The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.modbus.client import ModbusBus
from drivers.modbus.config import DeviceProfile, ModbusBusConfig
from drivers.modbus.profiles import load_profile
from drivers.ports import DriverEvent, Reading

ROOT = Path(__file__).resolve().parents[1]
PROFILES_DIR = ROOT / "configs" / "devices"
PROFILE = "eastron_sdm120"
# Starting a simulator (a Python process importing pymodbus) takes ~1 s on an idle machine; on
# a loaded 2-core box, eight of them at once take far longer. This bounds only a broken start.
READY_TIMEOUT_S = 120.0
_SERVING = re.compile(r": serving \d+ meter\(s\); port (\S+)$")


class _NullSink:
    """Counts readings; `reached` is set once ``target`` readings have arrived."""

    def __init__(self, target: int = 0) -> None:
        self.readings = 0
        self.target = target
        self.reached = asyncio.Event()

    async def put(self, reading: Reading) -> None:
        self.readings += 1
        if self.readings >= self.target:
            self.reached.set()

    async def event(self, event: DriverEvent) -> None:
        pass


def energy_profile() -> DeviceProfile:
    """The SDM120 profile without the voltage register: one 6-register request per poll
    (frequency, import and export energy, 0x0046-0x004B), where the full profile sends a second
    request for the voltage at 0x0000."""
    full = load_profile(PROFILES_DIR / f"{PROFILE}.yaml")
    extra = {k: v for k, v in full.registers.items() if k != "voltage"}
    return full.model_copy(update={"registers": extra})


class _Simulator:
    """A simulator process (``python -m firmware_sim.modbus_meter``): started on entering,
    stopped on leaving; `ready` waits for its "serving" log line (and learns its TCP port)."""

    def __init__(
        self, where: list[str], units: range, *, nice: int = 0, server: str = "pymodbus"
    ) -> None:
        meters = [arg for u in units for arg in ("--meter", f"{u}:{PROFILE}:{1000 + u}:3600")]
        self._args = [*where, "--server", server, "--profiles-dir", str(PROFILES_DIR), *meters]
        self._where = " ".join(where)
        self._serving = asyncio.Event()
        self._log: deque[str] = deque(maxlen=20)  # the last lines, for an error message
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.port = 0  # a TCP simulator's port, once ready
        self._nice = nice  # niceness added at start (`nice -n`); 0: the bench's own

    async def __aenter__(self) -> _Simulator:
        # coreutils' nice, so that every thread of the simulator runs at the lower priority
        # (`bench site --sim-nice`); lowering one's own child's priority needs no privilege.
        nice = ["nice", "-n", str(self._nice)] if self._nice else []
        self._proc = await asyncio.create_subprocess_exec(
            *nice,
            sys.executable,
            "-m",
            "firmware_sim.modbus_meter",
            *self._args,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read_log(), name=f"sim-log {self._where}")
        return self

    async def _read_log(self) -> None:
        assert self._proc is not None  # noqa: S101 - set before this task starts
        assert self._proc.stderr is not None  # noqa: S101 - started with stderr=PIPE
        # Read to the end: a full pipe would stop the simulator mid-benchmark.
        async for raw in self._proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._log.append(line)
            if not self._serving.is_set() and (match := _SERVING.search(line)):
                self.port = int(match.group(1)) if match.group(1).isdigit() else 0
                self._serving.set()

    @property
    def pid(self) -> int:
        """The simulator's process id (``nice`` execs it, so it is the same process)."""
        assert self._proc is not None  # noqa: S101 - entered
        return self._proc.pid

    async def ready(self) -> None:
        """Return once the simulator serves.

        Raises:
            RuntimeError: it exited, or did not serve within `READY_TIMEOUT_S`.
        """
        assert self._reader is not None  # noqa: S101 - entered
        serving = asyncio.create_task(self._serving.wait())
        try:
            await asyncio.wait(
                {serving, self._reader},
                timeout=READY_TIMEOUT_S,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            serving.cancel()
        if not self._serving.is_set():
            tail = "\n".join(self._log)
            raise RuntimeError(f"the simulator ({self._where}) did not start:\n{tail}")

    async def __aexit__(self, *exc: object) -> None:
        assert self._proc is not None  # noqa: S101 - entered
        assert self._reader is not None  # noqa: S101 - entered
        if self._proc.returncode is None:
            self._proc.terminate()
        try:
            async with asyncio.timeout(10):
                await self._proc.wait()
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.contextmanager
def _pty_pair() -> Iterator[tuple[str, str]]:
    socat = shutil.which("socat")
    if socat is None:
        raise RuntimeError("socat is not installed")
    proc = subprocess.Popen(  # noqa: S603 - fixed arguments
        [socat, "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None  # noqa: S101 - Popen with PIPE
    paths: list[str] = []
    while len(paths) < 2:
        line = proc.stderr.readline().decode()
        if not line:
            raise RuntimeError("socat failed")
        if match := re.search(r"PTY is (\S+)", line):
            paths.append(match.group(1))
    try:
        yield paths[0], paths[1]
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stderr.close()


async def _rate(op: Callable[[], Awaitable[Any]], seconds: float) -> float:
    loop = asyncio.get_running_loop()
    for _ in range(20):  # warm up: connection, caches
        await op()
    count, start = 0, loop.time()
    while (now := loop.time()) - start < seconds:
        await op()
        count += 1
    return count / (now - start)


@contextlib.asynccontextmanager
async def _bus(cfg: dict[str, Any], profile: DeviceProfile) -> AsyncIterator[ModbusBus]:
    async with ModbusBus(ModbusBusConfig.model_validate(cfg), {PROFILE: profile}) as bus:
        yield bus


def _device(unit: int, interval_s: float = 1.0) -> dict[str, Any]:
    return {
        "device_id": f"m{unit}",
        "unit_id": unit,
        "profile": PROFILE,
        "meter_id": f"meter{unit}",
        "poll_interval_s": interval_s,
    }


async def _compare(
    raw_client: AsyncModbusTcpClient | AsyncModbusSerialClient,
    bus_cfg: dict[str, Any],
    profile: DeviceProfile,
    seconds: float,
) -> tuple[float, float]:
    async def raw_op() -> None:
        rr = await raw_client.read_input_registers(0x46, count=6, device_id=1)
        if rr.isError():
            raise RuntimeError("raw read failed")

    await raw_client.connect()
    try:
        raw = await _rate(raw_op, seconds)
    finally:
        raw_client.close()
    sink = _NullSink()
    async with _bus(bus_cfg, profile) as bus:

        async def gw_op() -> None:
            if await bus.poll_device("m1", sink) is None:
                raise RuntimeError(f"gateway poll failed: {bus.stats('m1').last_error}")

        gateway = await _rate(gw_op, seconds)
    return raw, gateway


async def _fleet(profile: DeviceProfile, seconds: float, n_buses: int, per_bus: int) -> float:
    async with contextlib.AsyncExitStack() as stack:
        sims = [
            await stack.enter_async_context(
                _Simulator(["--tcp", "127.0.0.1:0"], range(1, per_bus + 1))
            )
            for _ in range(n_buses)
        ]
        await asyncio.gather(*(sim.ready() for sim in sims))  # they start side by side
        sink = _NullSink(target=n_buses * per_bus)
        buses = [
            ModbusBus(
                ModbusBusConfig.model_validate(
                    {
                        "name": f"fleet{i}",
                        "kind": "tcp",
                        "host": "127.0.0.1",
                        "port": sim.port,
                        "timeout_s": 1.0,
                        "devices": [_device(u) for u in range(1, per_bus + 1)],
                    }
                ),
                {PROFILE: profile},
            )
            for i, sim in enumerate(sims)
        ]
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(b.run(sink), name=f"bench:{b.name}") for b in buses]
            # the first round connects; measure steady state after it
            async with asyncio.timeout(READY_TIMEOUT_S):
                await sink.reached.wait()
            start_count, start = sink.readings, loop.time()
            await asyncio.sleep(seconds)
            rate = (sink.readings - start_count) / (loop.time() - start)
            for task in tasks:
                task.cancel()
        return rate


async def _answering(client: AsyncModbusSerialClient) -> None:
    """Return once the simulator answers on the serial line (a pty may need a moment after the
    simulator serves).

    Raises:
        RuntimeError: no answer within `READY_TIMEOUT_S`.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S
    await client.connect()
    while loop.time() < deadline:
        # Each attempt is bounded by the client's own timeout; no cancellation is relied on.
        with contextlib.suppress(ModbusException, OSError):
            rr = await client.read_input_registers(0x46, count=6, device_id=1)
            if not rr.isError():
                return
        await asyncio.sleep(0.1)  # not answering yet: try again
    raise RuntimeError(f"the serial simulator did not answer within {READY_TIMEOUT_S} s")


async def _run(seconds: float, fleet_seconds: float, buses: int, per_bus: int) -> dict[str, Any]:
    profile = energy_profile()
    results: dict[str, Any] = {}

    async with _Simulator(["--tcp", "127.0.0.1:0"], range(1, 2)) as sim:
        await sim.ready()
        raw, gw = await _compare(
            AsyncModbusTcpClient("127.0.0.1", port=sim.port, retries=0, reconnect_delay=0),
            {
                "name": "bench_tcp",
                "kind": "tcp",
                "host": "127.0.0.1",
                "port": sim.port,
                "devices": [_device(1)],
            },
            profile,
            seconds,
        )
    results["tcp_raw_tps"], results["tcp_gateway_tps"] = round(raw, 1), round(gw, 1)
    print(f"TCP loopback : raw pymodbus {raw:8.1f} tx/s, gateway {gw:8.1f} tx/s")

    with _pty_pair() as (gw_side, sim_side):
        async with _Simulator(["--serial", sim_side, "--baudrate", "115200"], range(1, 2)) as sim:
            await sim.ready()
            probe = AsyncModbusSerialClient(gw_side, baudrate=115200, retries=0, timeout=0.5)
            try:
                await _answering(probe)
            finally:
                probe.close()
            raw_pty, gw_pty = await _compare(
                AsyncModbusSerialClient(gw_side, baudrate=115200, retries=0, reconnect_delay=0),
                {
                    "name": "bench_pty",
                    "kind": "rtu",
                    "serial": {"port": gw_side, "baudrate": 115200, "inter_frame_gap_s": 0},
                    "devices": [_device(1)],
                },
                profile,
                seconds,
            )
    results["pty_raw_tps"], results["pty_gateway_tps"] = round(raw_pty, 1), round(gw_pty, 1)
    print(f"RTU over pty : raw pymodbus {raw_pty:8.1f} tx/s, gateway {gw_pty:8.1f} tx/s")

    meters = buses * per_bus
    fleet = await _fleet(profile, fleet_seconds, n_buses=buses, per_bus=per_bus)
    results["fleet_meters"] = meters
    results["fleet_poll_interval_s"] = 1.0
    results["fleet_readings_per_s"] = round(fleet, 1)
    label = f"{meters} meters"
    print(f"{label:<13}: {fleet:8.1f} readings/s sustained (target {meters}/s)")

    # overhead = extra time per transaction, relative to raw pymodbus
    results["tcp_overhead_ratio"] = round(raw / gw - 1, 3)
    results["pty_overhead_ratio"] = round(raw_pty / gw_pty - 1, 3)
    results["overhead_ratio"] = max(results["tcp_overhead_ratio"], results["pty_overhead_ratio"])
    return results


def main(argv: list[str]) -> int:
    """Run the benchmark; print a summary and, last, one JSON line."""
    parser = argparse.ArgumentParser(prog="prepay bench modbus")
    parser.add_argument("--seconds", type=float, default=2.0, help="per raw/gateway measurement")
    parser.add_argument("--fleet-seconds", type=float, default=3.0)
    parser.add_argument("--fleet-buses", type=int, default=8, help="TCP simulators, one bus each")
    parser.add_argument("--fleet-meters-per-bus", type=int, default=125)
    args = parser.parse_args(argv)
    # pymodbus logs a frame dump on every late reply; the numbers are what matter here
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    started = time.monotonic()
    results = asyncio.run(
        _run(args.seconds, args.fleet_seconds, args.fleet_buses, args.fleet_meters_per_bus)
    )
    results["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
