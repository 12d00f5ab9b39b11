"""DispenserClient over the real BleakClient, against the simulated dispenser backend."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from bleak import BleakClient

from drivers.ble.config import BleDispenserConfig
from drivers.ble.dispenser import DispenserClient, build_ble
from drivers.ble.gatt import (
    DISPENSED_UUID,
    SERVICE_UUID,
    STATUS_UUID,
    U32_MAX,
    AppError,
    DispenseRef,
    DispenserState,
    FaultCode,
    RefKind,
    RefuseCommand,
    RefuseReason,
)
from drivers.ble.protocols import Dispenser
from drivers.ports import (
    Actuator,
    DeviceRejectedError,
    DriverError,
    DriverEventKind,
    Quality,
    ReadingSource,
    SupplyState,
)
from firmware_sim.ble_backend import SimulatedAir
from firmware_sim.dispenser import SimulatedDispenser
from tests.ble.conftest import ADDRESS, START_ML, RecordingSink, make_config, ticking_clock

ACCOUNT = DispenseRef(RefKind.ACCOUNT, "acct-42")
TICKET = DispenseRef(RefKind.PAPER_TICKET, "3301011234567890")


def assert_strictly_increasing(values: list[int]) -> None:
    assert all(a < b for a, b in itertools.pairwise(values)), values


# ---- the simulator as bleak sees it ---------------------------------------------------------


async def test_sim_backend_exposes_profile_through_bleak_service_collection(
    air: SimulatedAir, dispenser: SimulatedDispenser
) -> None:
    async with BleakClient(ADDRESS, backend=air.backend(), timeout=2) as client:
        service = client.services.get_service(SERVICE_UUID)
        assert service is not None
        dispensed = service.get_characteristic(DISPENSED_UUID)
        assert dispensed is not None
        assert dispensed.properties == ["read", "notify"]
        assert [d.description for d in dispensed.descriptors] == [
            "Client Characteristic Configuration"
        ]
        assert client.services.get_service("180a") is not None
        assert await client.read_gatt_char("2a26") == bytearray(b"1.0.0")
    assert dispenser.connected == 0


# ---- connect -------------------------------------------------------------------------------


async def test_client_connect_after_failures_retries_and_succeeds(
    client: DispenserClient, dispenser: SimulatedDispenser
) -> None:
    dispenser.fail_next_connects = 2  # attempts allowed: 4
    assert await client.read_supply("disp-1") is SupplyState.ON
    assert dispenser.connect_attempts == 3
    assert client.is_connected


async def test_client_connect_all_attempts_fail_raises_driver_error(
    air: SimulatedAir, dispenser: SimulatedDispenser
) -> None:
    dispenser.fail_next_connects = 10
    config = make_config(connect_attempts=2)
    async with DispenserClient(config, backend=air.backend()) as client:
        with pytest.raises(DriverError, match="disp-1: connect to AA:BB:CC:00:00:01 failed"):
            await client.read_supply("disp-1")
    assert dispenser.connect_attempts == 2


async def test_run_connect_failures_offline_once_then_online(
    air: SimulatedAir, dispenser: SimulatedDispenser, sink: RecordingSink
) -> None:
    dispenser.fail_next_connects = 5  # two rounds of 2 attempts fail, the third round connects
    config = make_config(connect_attempts=2)
    async with DispenserClient(config, backend=air.backend()) as client:
        task = asyncio.create_task(client.run(sink))
        await sink.wait_for(lambda: DriverEventKind.ONLINE in sink.kinds())
        task.cancel()
        await asyncio.wait([task])
    assert sink.kinds() == [DriverEventKind.OFFLINE, DriverEventKind.ONLINE]  # said once
    assert sink.registers == [START_ML]
    assert dispenser.connect_attempts == 6


# ---- readings --------------------------------------------------------------------------------


async def test_run_notifications_become_cumulative_ml_readings(
    running: DispenserClient, dispenser: SimulatedDispenser, sink: RecordingSink
) -> None:
    await running.authorise("disp-1", 1_000, ACCOUNT)
    assert dispenser.pour(200, step_ml=50) == 200
    await sink.wait_for_register(START_ML + 200)
    # the initial catch-up read, then one reading per notification; the authorise
    # notification repeats the same total and is not emitted twice
    assert sink.registers == [1_000, 1_050, 1_100, 1_150, 1_200]
    first = sink.readings[0]
    assert first.meter_id == "water-1"
    assert first.source == "ble:AA:BB:CC:00:00:01"
    assert first.quality is Quality.GOOD
    assert_strictly_increasing([int(r.read_at.timestamp()) for r in sink.readings])


async def test_authorise_then_pour_stops_at_authorised_volume(
    running: DispenserClient, dispenser: SimulatedDispenser, sink: RecordingSink
) -> None:
    session_id = await running.authorise("disp-1", 300, TICKET)
    assert session_id == 1
    assert dispenser.pour(1_000) == 300  # the valve closes at max_ml
    assert dispenser.total_ml == START_ML + 300
    assert dispenser.pour(100) == 0  # session over: nothing more flows
    await sink.wait_for_register(START_ML + 300)
    assert sink.registers[-1] == START_ML + 300
    assert (await running.read_status("disp-1")).state is DispenserState.IDLE
    authorise = dispenser.commands[0]
    assert authorise == dispenser.commands[-1]
    assert getattr(authorise, "ref", None) == TICKET


async def test_authorise_twice_uses_next_session_id(
    client: DispenserClient, dispenser: SimulatedDispenser
) -> None:
    assert await client.authorise("disp-1", 100, ACCOUNT) == 1
    dispenser.pour(100)
    assert await client.authorise("disp-1", 100, ACCOUNT) == 2
    assert dispenser.last_session_id == 2


async def test_authorise_while_session_open_rejected_busy(
    client: DispenserClient, dispenser: SimulatedDispenser
) -> None:
    await client.authorise("disp-1", 500, ACCOUNT)
    with pytest.raises(DeviceRejectedError) as info:
        await client.authorise("disp-1", 500, ACCOUNT)
    assert info.value.code == AppError.BUSY


async def test_refuse_cancels_open_session_and_reaches_device(
    client: DispenserClient, dispenser: SimulatedDispenser
) -> None:
    session_id = await client.authorise("disp-1", 500, ACCOUNT)
    dispenser.pour(100)
    await client.refuse("disp-1", RefuseReason.NO_CREDIT, session_id)
    assert dispenser.commands[-1] == RefuseCommand(session_id, RefuseReason.NO_CREDIT)
    assert dispenser.pour(100) == 0
    assert dispenser.state is DispenserState.IDLE


async def test_stop_ends_session(client: DispenserClient, dispenser: SimulatedDispenser) -> None:
    session_id = await client.authorise("disp-1", 500, ACCOUNT)
    dispenser.pour(150)
    await client.stop("disp-1", session_id)
    assert dispenser.pour(100) == 0
    assert dispenser.total_ml == START_ML + 150


# ---- lock --------------------------------------------------------------------------------------


async def test_lock_confirmed_by_read_back(
    client: DispenserClient, dispenser: SimulatedDispenser
) -> None:
    outcome = await client.apply_supply("disp-1", on=False)
    assert outcome.confirmed
    assert outcome.observed is SupplyState.OFF
    assert dispenser.locked  # the device-side truth
    with pytest.raises(DeviceRejectedError) as info:
        await client.authorise("disp-1", 100, ACCOUNT)
    assert info.value.code == AppError.LOCKED
    assert (await client.apply_supply("disp-1", on=True)).confirmed
    assert not dispenser.locked


async def test_lock_via_actuator_port_set_then_read_back(
    client: DispenserClient, dispenser: SimulatedDispenser
) -> None:
    actuator: Actuator = client
    await actuator.set_supply("disp-1", on=False)
    assert await actuator.read_supply("disp-1") is SupplyState.OFF
    assert dispenser.locked


async def test_lock_mid_pour_closes_valve(
    client: DispenserClient, dispenser: SimulatedDispenser
) -> None:
    await client.authorise("disp-1", 1_000, ACCOUNT)
    dispenser.pour(100)
    await client.set_supply("disp-1", on=False)
    assert dispenser.pour(100) == 0


async def test_lock_ignored_by_device_reported_unconfirmed(
    client: DispenserClient, dispenser: SimulatedDispenser
) -> None:
    dispenser.ignore_lock_writes = True
    outcome = await client.apply_supply("disp-1", on=False)
    assert not outcome.confirmed
    assert outcome.requested is SupplyState.OFF
    assert outcome.observed is SupplyState.ON
    assert not dispenser.locked
    # the same through the Actuator port: the write "succeeds", the read-back tells the truth
    await client.set_supply("disp-1", on=False)
    assert await client.read_supply("disp-1") is SupplyState.ON


async def test_set_supply_other_device_raises_driver_error(client: DispenserClient) -> None:
    assert not client.handles("disp-2")
    with pytest.raises(DriverError, match="disp-2: not driven by ble\\[disp-1\\]"):
        await client.set_supply("disp-2", on=False)


# ---- reconnect ---------------------------------------------------------------------------------


async def test_disconnect_mid_pour_reconnects_without_double_counting(
    running: DispenserClient, dispenser: SimulatedDispenser, sink: RecordingSink
) -> None:
    await running.authorise("disp-1", 600, ACCOUNT)
    dispenser.disconnect_at_session_ml = 200
    # The link drops at 200 mL; the dispenser keeps pouring to the authorised 600 mL offline.
    assert dispenser.pour(600, step_ml=50) == 600
    await sink.wait_for_register(START_ML + 600)  # caught up by the read after reconnecting
    assert sink.kinds() == [DriverEventKind.ONLINE, DriverEventKind.OFFLINE, DriverEventKind.ONLINE]
    assert running.connects == 2
    # After the reconnect, notifications flow again on the new connection.
    await running.authorise("disp-1", 100, ACCOUNT)
    dispenser.pour(100)
    await sink.wait_for_register(START_ML + 700)

    registers = sink.registers
    assert_strictly_increasing(registers)  # no value emitted twice, none going back
    assert registers[0] == START_ML
    assert registers[-1] == dispenser.total_ml == START_ML + 700
    assert START_ML + 250 not in registers  # poured while offline: covered by the catch-up


async def test_sink_sees_each_register_once_across_drops_racing_commands(
    running: DispenserClient, dispenser: SimulatedDispenser, sink: RecordingSink
) -> None:
    # The next authorise may reconnect before `run` has noticed the drop: the reader must move
    # to the newer connection, and the sink must still see every register value once.
    for i in range(1, 4):
        await running.authorise("disp-1", 100, ACCOUNT)
        dispenser.pour(100)
        dispenser.drop_links()
        await sink.wait_for_register(START_ML + 100 * i)
    assert_strictly_increasing(sink.registers)
    assert sink.registers[-1] == dispenser.total_ml == START_ML + 300
    assert running.connects >= 3


# ---- counters, faults, frames ------------------------------------------------------------------


async def test_run_counter_wrap_unwrapped_and_reported(
    air: SimulatedAir, sink: RecordingSink
) -> None:
    dispenser = air.add(SimulatedDispenser(ADDRESS, total_ml=U32_MAX - 99))
    async with DispenserClient(make_config(), backend=air.backend(), clock=ticking_clock()) as c:
        task = asyncio.create_task(c.run(sink))
        await sink.wait_for_register(U32_MAX - 99)
        await c.authorise("disp-1", 300, ACCOUNT)
        dispenser.pour(300, step_ml=100)
        await sink.wait_for_register(U32_MAX - 99 + 300)
        task.cancel()
        await asyncio.wait([task])
    assert dispenser.total_ml == 200  # the device's u32 wrapped
    assert DriverEventKind.ROLLOVER in sink.kinds()
    assert_strictly_increasing(sink.registers)


async def test_run_garbage_notification_reported_and_loop_continues(
    running: DispenserClient, dispenser: SimulatedDispenser, sink: RecordingSink
) -> None:
    dispenser.inject_notification(DISPENSED_UUID, b"\x01\x02\x03")
    await sink.wait_for(lambda: DriverEventKind.FRAME_ERROR in sink.kinds())
    event = sink.events[-1]
    assert event.detail == {"frame": "010203", "reason": "length 3, expected 14"}
    await running.authorise("disp-1", 100, ACCOUNT)
    dispenser.pour(100)
    await sink.wait_for_register(START_ML + 100)
    assert running.frame_errors == 1


async def test_run_fault_status_seen_and_authorise_rejected(
    running: DispenserClient, dispenser: SimulatedDispenser, sink: RecordingSink
) -> None:
    dispenser.raise_fault(FaultCode.NO_WATER)
    dispenser.inject_notification(STATUS_UUID, b"")  # a frame error after it, as a marker
    await sink.wait_for(lambda: DriverEventKind.FRAME_ERROR in sink.kinds())
    assert running.faulted() is FaultCode.NO_WATER
    with pytest.raises(DeviceRejectedError) as info:
        await running.authorise("disp-1", 100, ACCOUNT)
    assert info.value.code == AppError.FAULTED


async def test_counter_backwards_reading_suspect_and_reported(
    running: DispenserClient, dispenser: SimulatedDispenser, sink: RecordingSink
) -> None:
    dispenser.total_ml = 10  # the dispenser's board was swapped
    await running.authorise("disp-1", 50, ACCOUNT)
    dispenser.pour(50)
    await sink.wait_for_register(60)
    assert DriverEventKind.COUNTER_RESET in sink.kinds()
    backwards = next(r for r in sink.readings if r.register_milli == 10)
    assert backwards.quality is Quality.SUSPECT


# ---- signed authorisations ---------------------------------------------------------------------

KEY_HEX = "00112233445566778899aabbccddeeff"


async def test_authorise_signed_accepted_by_device_with_same_key(air: SimulatedAir) -> None:
    dispenser = air.add(SimulatedDispenser(ADDRESS, auth_key=bytes.fromhex(KEY_HEX)))
    async with DispenserClient(make_config(auth_key_hex=KEY_HEX), backend=air.backend()) as c:
        assert await c.authorise("disp-1", 250, ACCOUNT) == 1
    assert dispenser.pour(500) == 250


async def test_authorise_unsigned_or_wrong_key_rejected_bad_mac(air: SimulatedAir) -> None:
    air.add(SimulatedDispenser(ADDRESS, auth_key=bytes.fromhex(KEY_HEX)))
    for overrides in ({}, {"auth_key_hex": "ff" * 16}):
        async with DispenserClient(make_config(**overrides), backend=air.backend()) as c:
            with pytest.raises(DeviceRejectedError) as info:
                await c.authorise("disp-1", 250, ACCOUNT)
        assert info.value.code == AppError.BAD_MAC


# ---- factory and config ------------------------------------------------------------------------


def test_build_ble_one_client_per_config_as_source_and_actuator(air: SimulatedAir) -> None:
    configs = [
        make_config(),
        make_config(address="AA:BB:CC:00:00:02", device_id="disp-2", meter_id="water-2"),
    ]
    sources, actuators = build_ble(configs, backend=air.backend())
    assert [s.name for s in sources] == ["ble[disp-1]", "ble[disp-2]"]
    assert [id(s) for s in sources] == [id(a) for a in actuators]  # the same objects
    for item in sources:
        assert isinstance(item, ReadingSource)
        assert isinstance(item, Actuator)
        assert isinstance(item, Dispenser)
    assert actuators[1].handles("disp-2")


def test_build_ble_duplicate_address_raises() -> None:
    configs = [make_config(), make_config(device_id="disp-2", meter_id="water-2")]
    with pytest.raises(ValueError, match="duplicate address AA:BB:CC:00:00:01"):
        build_ble(configs)


def test_config_address_normalised_upper_case() -> None:
    assert make_config(address="aa:bb:cc:dd:ee:0f").address == "AA:BB:CC:DD:EE:0F"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"address": "AA:BB:CC:DD:EE"}, "address must be a Bluetooth address"),
        ({"connect_attempts": 0}, "greater than or equal to 1"),
        ({"connect_timeout_s": 0}, "greater than 0"),
        ({"device_id": ""}, "at least 1 character"),
        ({"auth_key_hex": "zz" * 16}, "auth_key_hex must be hexadecimal"),
        ({"auth_key_hex": "00" * 8}, "16 to 32 bytes"),
        ({"colour": "blue"}, "Extra inputs are not permitted"),
    ],
)
def test_config_invalid_rejected_with_fix(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_config(**overrides)


def test_config_frozen_and_key_not_in_repr() -> None:
    config = make_config(auth_key_hex=KEY_HEX)
    assert KEY_HEX not in repr(config)
    assert config.auth_key == bytes.fromhex(KEY_HEX)
    with pytest.raises(ValueError, match="frozen"):
        config.__setattr__("device_id", "x")
    assert BleDispenserConfig.model_json_schema()["additionalProperties"] is False
