"""The simulator as a program: ``python -m firmware_sim.modbus_meter`` answers mbpoll."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from tests.fixtures.modbus import PROFILES_DIR
from tests.fixtures.mosquitto import free_port
from tests.support.waiting import DEFAULT_TIMEOUT_S

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("mbpoll") is None, reason="mbpoll not installed"),
]

ROOT = Path(__file__).resolve().parents[2]


async def test_sim_program_serves_tcp_to_mbpoll() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "firmware_sim.modbus_meter",
        "--tcp",
        f"127.0.0.1:{port}",
        "--profiles-dir",
        str(PROFILES_DIR),
        "--meter",
        "17:acrel_ddsy1352:123450",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            while b"serving" not in (line := await proc.stderr.readline()):
                assert line, "the simulator exited before serving"
        mb = await asyncio.create_subprocess_exec(
            *("mbpoll", "-m", "tcp", "-p", str(port), "-a", "17", "-1", "-o", "2"),
            *("-t", "4:int", "-r", "1", "-B", "127.0.0.1"),
            stdout=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            out, _ = await mb.communicate()
        assert mb.returncode == 0
        # 123 450 Wh = 12 345 in the meter's 0.01 kWh register
        values = [ln.split(":", 1)[1].strip() for ln in out.decode().splitlines() if ln[:1] == "["]
        assert values == ["12345"]
    finally:
        proc.terminate()
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            await proc.wait()
