"""A cancellation that pymodbus's ``connect`` loses is raised again by the bus.

On Python 3.11, ``asyncio.wait_for`` inside pymodbus's ``connect`` drops a cancellation that
arrives as the connection attempt fails, and ``connect`` answers False (CPython gh-86296). The
race is a matter of microseconds, so ``connect`` is replaced here by one that loses every
cancellation the same way: the only stand-in in these tests, for a bug of the interpreter.

pymodbus is used for RTU buses only (`_Link`), so the link here is a serial one, on a port path
that does not exist: its ``connect`` is replaced, the port is never opened. The TCP link
(`drivers.modbus.tcp_link`) cannot lose a cancellation this way: it uses no ``wait_for``, only
the call's `asyncio.timeout` (tests/modbus/test_tcp_link.py cancels its calls).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from drivers.modbus.client import _Link
from drivers.modbus.config import ModbusBusConfig
from drivers.ports import DeviceTimeoutError


def _link(timeout_s: float, tmp_path: Path) -> tuple[_Link, asyncio.Event]:
    config = ModbusBusConfig.model_validate(
        {
            "name": "bus1",
            "kind": "rtu",
            "serial": {"port": str(tmp_path / "no-such-tty")},  # never opened: connect is replaced
            "timeout_s": timeout_s,
            "devices": [
                {"device_id": "d1", "unit_id": 1, "profile": "eastron_sdm120", "meter_id": "m1"}
            ],
        }
    )
    link = _Link(config)
    connecting = asyncio.Event()

    async def connect_losing_cancellation() -> bool:
        connecting.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return False  # what pymodbus answers when wait_for lost the cancellation
        return True

    link.client.connect = connect_losing_cancellation  # type: ignore[method-assign]
    return link, connecting


async def _never() -> object:
    raise AssertionError("no request is sent without a connection")


async def test_a_cancelled_poll_stays_cancelled_when_connect_loses_it(tmp_path: Path) -> None:
    link, connecting = _link(timeout_s=30, tmp_path=tmp_path)
    call = asyncio.create_task(link.call("d1", _never))  # type: ignore[arg-type]
    await connecting.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    link.close()


async def test_a_timeout_lost_in_connect_is_still_a_timeout(tmp_path: Path) -> None:
    link, _ = _link(timeout_s=0.2, tmp_path=tmp_path)
    with pytest.raises(DeviceTimeoutError, match=r"no reply in 0\.2 s"):
        await link.call("d1", _never)  # type: ignore[arg-type]
    link.close()
