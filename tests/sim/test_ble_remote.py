"""BLE dispensers of a ``prepay sim`` process, driven from this process by the production driver.

The simulator runs as a subprocess with a ``ble:`` section; here the real `DispenserClient` over
the real ``BleakClient`` reaches it through `firmware_sim.ble_remote.RemoteSimBackend` (socket
from ``PREPAY_BLE_SIM_SOCKET``), exactly as ``prepay run`` would with the site file's
``backend: firmware_sim.ble_remote:RemoteSimBackend``.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from billing_engine.base.errors import InvalidConfigError
from drivers.ble.dispenser import DispenserClient, build_ble, resolve_backend
from drivers.ble.gatt import AppError, DispenseRef, RefKind
from drivers.ports import (
    DeviceRejectedError,
    DriverError,
    DriverEventKind,
    IdentityKind,
    SupplyState,
)
from firmware_sim.ble_remote import SOCKET_ENV, RemoteSimBackend
from firmware_sim.scenario import load_scenario
from tests.ble.conftest import RecordingSink, make_config, ticking_clock
from tests.ble.test_gatt_v2 import VendingRecorder
from tests.sim.helpers import SimProcess, sim_process, write_scenario
from tests.support.waiting import DEFAULT_TIMEOUT_S, eventually

pytestmark = pytest.mark.integration

ADDRESS = "AA:BB:CC:00:01:01"
DEVICE = "kiosk-1"
START_ML = 5_000
POUR_ML = 100
POUR_EVERY_S = 0.2
BACKEND_PATH = "firmware_sim.ble_remote:RemoteSimBackend"


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory: a Unix socket path must fit in 107 bytes (tmp_path may not)."""
    path = Path(tempfile.mkdtemp(prefix="ble-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _scenario(directory: Path, socket: Path, **dispenser: Any) -> Path:
    entry = {
        "device_id": DEVICE,
        "address": ADDRESS,
        "start": START_ML,
        "pours": {"ml": POUR_ML, "every_s": POUR_EVERY_S, "first_at_s": 0.1},
        **dispenser,
    }
    entry = {key: value for key, value in entry.items() if value is not None}
    return write_scenario(
        directory, {"name": "ble", "ble": {"socket": str(socket), "dispensers": [entry]}}
    )


@pytest.fixture
async def sim(
    tmp_path: Path, socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SimProcess]:
    socket = socket_dir / "ble.sock"
    monkeypatch.setenv(SOCKET_ENV, str(socket))
    async with sim_process(_scenario(tmp_path, socket)) as process:
        assert process.line("ble air:") == f"ble air: socket {socket} ({DEVICE} {ADDRESS})"
        assert socket.is_socket()
        yield process


@pytest.fixture
async def customer_sim(
    tmp_path: Path, socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SimProcess]:
    """A dispenser without scheduled pours: its customers are the control lines."""
    socket = socket_dir / "ble.sock"
    monkeypatch.setenv(SOCKET_ENV, str(socket))
    async with sim_process(_scenario(tmp_path, socket, pours=None)) as process:
        yield process


def _config(**overrides: object) -> Any:
    values: dict[str, object] = {"address": ADDRESS, "device_id": DEVICE, "meter_id": "m-kiosk-1"}
    values.update(overrides)
    return make_config(**values)


async def _wait_register_above(sink: RecordingSink, value: int) -> int:
    await sink.wait_for(lambda: bool(sink.registers) and sink.registers[-1] > value)
    return sink.registers[-1]


async def test_readings_lock_and_unlock_across_processes(sim: SimProcess) -> None:
    sink = RecordingSink()
    async with DispenserClient(_config(), backend=RemoteSimBackend, clock=ticking_clock()) as c:
        task = asyncio.create_task(c.run(sink))
        try:
            # pours arrive as readings: cumulative mL, growing
            first = await _wait_register_above(sink, START_ML)
            second = await _wait_register_above(sink, first)
            assert (first - START_ML) % 50 == 0
            assert second > first
            assert DriverEventKind.ONLINE in sink.kinds()
            assert sink.readings[-1].source == f"ble:{ADDRESS}"

            # lock: confirmed by read-back, and the simulated device is locked
            outcome = await c.apply_supply(DEVICE, on=False)
            assert outcome.confirmed
            assert outcome.observed is SupplyState.OFF
            device = await sim.wait_status(DEVICE, "locked", True)
            assert device["lock_reason"] == "no_credit"
            assert device["supply_on"] is False

            # while locked nobody pours: three more customers come, the counter stands still
            locked_total = int(device["total_ml"])
            await sink.wait_for(lambda: sink.registers[-1] == locked_total)
            later = await sim.wait_device(
                DEVICE,
                lambda d: d["pour_attempts"] >= device["pour_attempts"] + 3,
                "three pour attempts while locked",
            )
            assert later["locked"] is True
            assert later["total_ml"] == locked_total
            assert later["pours"] == device["pours"]
            assert max(sink.registers) == locked_total
            # an authorisation is refused with the device's ATT error, across the socket
            with pytest.raises(DeviceRejectedError) as refused:
                await c.authorise(DEVICE, 500, DispenseRef(RefKind.ACCOUNT, "acct-1"))
            assert refused.value.code == AppError.LOCKED

            # unlock restores the pours
            assert (await c.apply_supply(DEVICE, on=True)).confirmed
            await sim.wait_status(DEVICE, "locked", False)
            await _wait_register_above(sink, locked_total)
            assert sim.status()["devices"][DEVICE]["connected"] == 1
        finally:
            task.cancel()
            await asyncio.wait([task])
    assert c.unexpected_errors == 0
    assert c.frame_errors == 0
    await sim.wait_status(DEVICE, "connected", 0)


async def test_a_dropped_link_reconnects_without_double_counting(sim: SimProcess) -> None:
    sink = RecordingSink()
    async with DispenserClient(
        _config(reconnect_delay_s=0.1), backend=RemoteSimBackend, clock=ticking_clock()
    ) as c:
        task = asyncio.create_task(c.run(sink))
        try:
            before = await _wait_register_above(sink, START_ML)
            sim.command(f"{DEVICE} drop_links")
            await sink.wait_for(lambda: c.connects >= 2)
            await _wait_register_above(sink, before)
        finally:
            task.cancel()
            await asyncio.wait([task])
    assert sink.registers == sorted(set(sink.registers))  # strictly increasing: nothing twice


async def test_customer_control_lines_present_and_pour_a_granted_session(
    customer_sim: SimProcess,
) -> None:
    sim = customer_sim
    recorder = VendingRecorder()
    async with DispenserClient(_config(), backend=RemoteSimBackend, clock=ticking_clock()) as c:
        c.attach_vending(recorder)
        task = asyncio.create_task(c.run(RecordingSink()))
        try:
            # Nobody holds the tap before a session is granted: nothing flows.
            sim.command(f"pour {DEVICE} 500")
            idle = await sim.wait_device(DEVICE, lambda d: d["listening"], "listening")
            assert idle["total_ml"] == START_ML
            sim.command(f"present {DEVICE} card CARD-0001")
            await eventually(lambda: bool(recorder.requests), what="the card's request")
            (request,) = recorder.requests
            assert (request.dispenser_id, request.kind, request.identity) == (
                DEVICE,
                IdentityKind.CARD,
                "CARD-0001",
            )
            session_id = await c.next_session(DEVICE)
            await c.grant(DEVICE, session_id, 2_000, IdentityKind.CARD, "CARD-0001")
            # The customer holds the tap for 2.5 L; the valve closes at the 2 L granted.
            sim.command(f"pour {DEVICE} 2500")
            await eventually(
                lambda: any(r.ended for r in recorder.reports), what="the session's end report"
            )
            ended = [r for r in recorder.reports if r.ended]
            assert [(r.session_id, r.session_ml) for r in ended] == [(session_id, 2_000)]
            device = await sim.wait_device(DEVICE, lambda d: d["pours"] == 1, "one pour")
            assert device["total_ml"] == START_ML + 2_000
            assert device["state"] == "idle"
            # A ticket's code reaches the gateway as the customer scanned it.
            sim.command(f"present {DEVICE} ticket 3301020000100008")
            await eventually(lambda: len(recorder.requests) == 2, what="the ticket's request")
            assert recorder.requests[1].kind is IdentityKind.TICKET
            assert recorder.requests[1].identity == "3301020000100008"
        finally:
            task.cancel()
            await asyncio.wait([task])
    assert c.unexpected_errors == 0
    assert c.frame_errors == 0


async def test_build_ble_resolves_the_backend_import_path(sim: SimProcess) -> None:
    sources, actuators = build_ble([_config(backend=BACKEND_PATH)])
    (client,) = sources
    assert isinstance(client, DispenserClient)
    assert actuators == [client]
    async with client:
        assert await client.read_supply(DEVICE) is SupplyState.ON
        await client.set_supply(DEVICE, False)
        assert await client.read_supply(DEVICE) is SupplyState.OFF
        await sim.wait_status(DEVICE, "locked", True)
        status = await client.read_status(DEVICE)
        assert status.locked
        assert status.last_session_id >= 0


async def test_remote_backend_without_a_simulator_is_a_driver_error(
    socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SOCKET_ENV, str(socket_dir / "nobody.sock"))
    config = _config(connect_attempts=1, connect_timeout_s=0.5)
    (client,) = build_ble([config.model_copy(update={"backend": BACKEND_PATH})])[0]
    assert isinstance(client, DispenserClient)
    async with asyncio.timeout(DEFAULT_TIMEOUT_S):
        with pytest.raises(DriverError, match="failed"):
            await client.read_supply(DEVICE)


def test_resolve_backend_checks_the_import_path() -> None:
    assert resolve_backend(BACKEND_PATH) is RemoteSimBackend
    with pytest.raises(ValueError, match="cannot import"):
        resolve_backend("firmware_sim.no_such_module:RemoteSimBackend")
    with pytest.raises(ValueError, match="not a bleak backend"):
        resolve_backend("firmware_sim.ble_remote:BleAirServer")
    with pytest.raises(ValueError, match="backend"):
        _config(backend="not an import path")


async def test_sigterm_with_a_connected_gateway_stops_cleanly(sim: SimProcess) -> None:
    sink = RecordingSink()
    socket = Path(sim.status()["ble"]["socket"])
    async with DispenserClient(
        _config(reconnect_delay_s=0.1, connect_attempts=1), backend=RemoteSimBackend
    ) as c:
        task = asyncio.create_task(c.run(sink))
        try:
            await _wait_register_above(sink, START_ML)
            code, rest = await sim.stop()
            assert code == 0
            assert "stopped" in rest
            assert not await asyncio.to_thread(socket.exists)
            await sink.wait_for(lambda: DriverEventKind.OFFLINE in sink.kinds())
        finally:
            task.cancel()
            await asyncio.wait([task])


def test_scenario_checks_ble_faults_and_addresses(tmp_path: Path) -> None:
    good = _scenario(tmp_path, Path("ble.sock"))
    scenario = load_scenario(good)
    assert dict(scenario.devices()) == {DEVICE: "ble"}
    doc = good.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(doc + "faults:\n  - {at_s: 1, device: kiosk-1, fault: timeout}\n")
    with pytest.raises(InvalidConfigError, match="ble device; its faults are"):
        load_scenario(bad)
    bad.write_text(doc.replace(ADDRESS, "not-an-address"))
    with pytest.raises(InvalidConfigError, match="address"):
        load_scenario(bad)
