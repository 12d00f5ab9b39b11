"""Run ``python -m firmware_sim`` as a real process and talk to what it serves."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from drivers.modbus.client import ModbusBus
from drivers.modbus.profiles import load_profiles
from tests.fixtures.modbus import PROFILES_DIR, bus_config
from tests.support.waiting import DEFAULT_TIMEOUT_S, eventually

ROOT = Path(__file__).resolve().parents[2]


def write_scenario(directory: Path, doc: dict[str, Any]) -> Path:
    """Write ``scenario.yaml`` (profiles from configs/devices unless given)."""
    doc = {"profiles_dir": str(PROFILES_DIR), **doc}
    path = directory / "scenario.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class SimProcess:
    """A running simulator: its announcement lines, status file and control file."""

    proc: asyncio.subprocess.Process
    status_path: Path
    control_path: Path
    lines: list[str] = field(default_factory=list)

    def line(self, prefix: str) -> str:
        return next(line for line in self.lines if line.startswith(prefix))

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.status_path.read_text())
        return doc

    async def wait_device(
        self, device_id: str, predicate: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        """Wait until the status file's ``devices[device_id]`` satisfies ``predicate``.

        Returns that entry, so that the values a test goes on with come from the same snapshot.
        The status file has no change notification a test could await: it is polled.
        """
        matched: list[dict[str, Any]] = []

        def check() -> bool:
            # the file appears after the first write; a reader may race its replacement
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                device: dict[str, Any] = self.status()["devices"][device_id]
                if predicate(device):
                    matched.append(device)
                    return True
            return False

        await eventually(check, what=f"status of {device_id}: {what}")
        return matched[-1]

    async def wait_status(self, device_id: str, key: str, value: object) -> dict[str, Any]:
        """Wait until the status file shows ``devices[device_id][key] == value``."""
        return await self.wait_device(device_id, lambda d: d[key] == value, f"{key} == {value!r}")

    def command(self, line: str) -> None:
        with self.control_path.open("a") as handle:
            handle.write(line + "\n")

    async def stop(self) -> tuple[int, str]:
        """SIGTERM; the exit code and what it printed after ``ready``."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stdout is not None
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            rest = await self.proc.stdout.read()
            code = await self.proc.wait()
        return code, rest.decode()


@contextlib.asynccontextmanager
async def sim_process(scenario: Path, *extra: str) -> AsyncIterator[SimProcess]:
    """Start the simulator on ``scenario`` and yield once it printed ``ready``."""
    status = scenario.parent / "status.json"
    control = scenario.parent / "control"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "firmware_sim",
        "-c",
        str(scenario),
        "--status",
        str(status),
        "--control",
        str(control),
        *extra,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    sim = SimProcess(proc, status, control)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            while True:
                raw = await proc.stdout.readline()
                assert raw, f"the simulator exited before ready: {sim.lines}"
                sim.lines.append(raw.decode().rstrip())
                if sim.lines[-1].startswith("ready"):
                    break
        yield sim
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def modbus_bus(name: str, endpoint: dict[str, Any], devices: list[dict[str, Any]]) -> ModbusBus:
    """The gateway's own Modbus driver, pointed at the simulator; tests poll it by hand.

    No retries and never offline: each `ModbusBus.poll_device` is one request, counted once.
    """
    config = bus_config(name, endpoint, devices, retries=0, offline_after=100)
    profiles = load_profiles(PROFILES_DIR, [d["profile"] for d in devices])
    return ModbusBus(config, profiles)
