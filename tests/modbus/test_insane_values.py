"""A meter whose register holds a value no meter can hold (float32 3.4e38, NaN, +inf, a
negative total) is refused at decode, alarmed once, and costs its neighbours on the bus nothing.

Issue 9, item 2: 3.4e38 kWh became a 42-digit integer, the journal insert overflowed and no meter
on any bus was journalled while the value lasted.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from drivers.lorawan.codec import CodecSpec, decode_payload, register_milli
from drivers.modbus.client import ModbusBus
from drivers.modbus.config import DeviceProfile, RegisterSpec
from drivers.modbus.registers import (
    MILLI_MAX,
    DataType,
    ImplausibleRegisterError,
    encode_value,
    to_milli,
)
from drivers.ports import DriverEventKind, ImplausibleValueError, Reading
from firmware_sim.meter_model import SimMeter
from firmware_sim.modbus_meter import MeterSimulator
from tests.fixtures.modbus import (
    RecordingSink,
    bus_config,
    modbus_device,
    running,
    tcp_endpoint,
)
from tests.support.waiting import eventually

T0 = datetime(2026, 6, 1, tzinfo=UTC)
FLOAT32_MAX_ISH = 3.4e38
POLLS_PER_PHASE = 15  # of the healthy meter, per bad value


@dataclass
class RawEnergyMeter(SimMeter):
    """A `SimMeter` whose energy register can be forced to a raw float the profile's scale
    cannot turn into milli-units (the simulator otherwise serves ``energy_milli``)."""

    raw_energy: float | None = None

    def register_words(self, name: str, spec: RegisterSpec) -> list[int]:
        if name == "energy" and self.raw_energy is not None:
            return encode_value(self.raw_energy, spec.type, spec.word_order, spec.byte_order)
        return super().register_words(name, spec)


@pytest.fixture
def bad_meter(modbus_profiles: dict[str, DeviceProfile]) -> RawEnergyMeter:
    return RawEnergyMeter(
        1, modbus_profiles["eastron_sdm120"], energy_milli=1_000_000, raw_energy=FLOAT32_MAX_ISH
    )


@pytest.fixture
def good_meter(modbus_profiles: dict[str, DeviceProfile]) -> SimMeter:
    return SimMeter(2, modbus_profiles["eastron_sdm120"], energy_milli=2_500_000)


@pytest.fixture
async def bus(
    bad_meter: RawEnergyMeter, good_meter: SimMeter, modbus_profiles: dict[str, DeviceProfile]
) -> AsyncIterator[ModbusBus]:
    async with MeterSimulator.tcp([bad_meter, good_meter]) as sim:
        cfg = bus_config(
            "tcp0",
            tcp_endpoint(sim.port),
            [modbus_device("bad", 1, "eastron_sdm120"), modbus_device("good", 2, "eastron_sdm120")],
        )
        async with ModbusBus(cfg, modbus_profiles) as b:
            yield b


@pytest.mark.integration
async def test_insane_register_is_refused_alarmed_once_and_the_neighbour_keeps_reading(
    bus: ModbusBus, bad_meter: RawEnergyMeter, modbus_sink: RecordingSink
) -> None:
    good, bad = bus.stats("good"), bus.stats("bad")
    async with running(bus, sink=modbus_sink):
        for value in (FLOAT32_MAX_ISH, math.nan, math.inf, -1.0):
            bad_meter.raw_energy = value
            refused = bad.implausible_values
            polls, readings = good.polls, len(modbus_sink.readings_of("meter-good"))

            # The bad meter has been read with this value at least twice (so the one before
            # is gone from the wire), while the healthy one was polled a fixed number of times.
            def phase_done(r: int = refused, p: int = polls) -> bool:
                return bad.implausible_values >= r + 2 and good.polls >= p + POLLS_PER_PHASE

            await eventually(phase_done, what=f"polls with the bad meter at {value}")
            # Every poll of the healthy meter gave its reading: the bad one cost it nothing.
            polled = good.polls - polls
            delivered = len(modbus_sink.readings_of("meter-good")) - readings
            assert abs(delivered - polled) <= 1, (value, polled, delivered)  # 1 in flight
            assert good.failed_polls == 0
            assert modbus_sink.readings_of("meter-bad") == []
            assert "energy" in bad.last_error
        assert bad.online  # it answers: an insane value is not a dead device
        assert bad.failed_polls == bad.implausible_values >= bad.polls - 1  # 1 in flight
        bad_meter.raw_energy = None  # sane again: 1000 kWh
        first = (await modbus_sink.wait_readings("meter-bad", 1))[0]
    assert first.register_milli == 1_000_000
    alarms = modbus_sink.events_of("bad", DriverEventKind.FRAME_ERROR)
    assert [e.detail["state"] for e in alarms] == ["raised", "cleared"]  # once each, not per poll
    raised = alarms[0].detail
    assert (raised["condition"], raised["register"]) == ("implausible_value", "energy")
    assert "3.39999" in str(raised["value"])
    assert str(raised["message"]).startswith("bad: register energy holds 3.39999")
    assert modbus_sink.events_of("bad", DriverEventKind.OFFLINE) == []
    assert [e for e in modbus_sink.events if e.device_id == "good"] == []


@pytest.mark.integration
async def test_a_single_poll_of_an_insane_value_returns_no_reading(
    bus: ModbusBus, bad_meter: RawEnergyMeter, modbus_sink: RecordingSink
) -> None:
    assert await bus.poll_device("bad", modbus_sink) is None
    assert await bus.poll_device("bad", modbus_sink) is None
    stats = bus.stats("bad")
    assert (stats.polls, stats.failed_polls, stats.implausible_values) == (2, 2, 2)
    assert stats.consecutive_failures == 0  # the device answered both times
    assert len(modbus_sink.events_of("bad", DriverEventKind.FRAME_ERROR)) == 1
    assert modbus_sink.readings == []
    good = await bus.poll_device("good", modbus_sink)
    assert good is not None
    assert good.register_milli == 2_500_000


# ----------------------------------------------------------------- the checks, without a wire


@pytest.mark.parametrize(
    "value",
    [FLOAT32_MAX_ISH, -FLOAT32_MAX_ISH, math.nan, math.inf, -math.inf, 9.3e15, 2**63, 2**70],
)
def test_to_milli_refuses_what_int64_milli_units_cannot_hold(value: float) -> None:
    with pytest.raises(ImplausibleRegisterError) as caught:
        to_milli(value, Decimal(1000))
    assert caught.value.value is value


def test_to_milli_keeps_the_int64_edges() -> None:
    assert to_milli(MILLI_MAX, Decimal(1)) == MILLI_MAX
    assert to_milli(-(2**63), Decimal(1)) == -(2**63)
    assert to_milli(9.2e15, Decimal(1000)) == 9_200_000_000_000_000_000
    with pytest.raises(ImplausibleRegisterError):
        to_milli(MILLI_MAX, Decimal(2))
    with pytest.raises(ImplausibleRegisterError):
        to_milli(float(2**62), Decimal(2))  # exactly 2**63 after scaling: one too many


@pytest.mark.parametrize("register", [-1, 2**63, 2**64, math.nan, math.inf, 1.5, True])
def test_reading_refuses_a_register_the_journal_cannot_hold(register: object) -> None:
    with pytest.raises((ValueError, TypeError), match="register_milli"):
        Reading("m1", T0, register)  # type: ignore[arg-type]


def test_reading_keeps_the_largest_int64_register() -> None:
    assert Reading("m1", T0, 2**63 - 1).register_milli == 2**63 - 1


# The LoRaWAN codec scales its register the same way (kept here with the Modbus value checks).
def _pulse_codec(register: str) -> CodecSpec:
    return CodecSpec.model_validate(
        {
            "name": "pulse",
            "device": "test pulse counter",
            "source": "this test",
            "layout": "fixed",
            "length": 8,
            "fields": [
                {"name": "signed_total", "type": "i32", "offset": 0},
                {"name": "total", "type": "u32", "offset": 4},
            ],
            "register": {"field": register, "multiply": 1000},
        }
    )


def test_codec_register_beyond_int64_is_an_implausible_value() -> None:
    codec = _pulse_codec("total")
    values = decode_payload(codec, bytes(4) + b"\xff\xff\xff\xff", None).values
    assert register_milli(codec, values) == 0xFFFF_FFFF * 1000
    with pytest.raises(ImplausibleValueError) as caught:
        register_milli(codec, values, multiply=2**40, device_id="dev-1")
    assert (caught.value.device_id, caught.value.register) == ("dev-1", "total")


def test_codec_negative_register_is_an_implausible_value() -> None:
    codec = _pulse_codec("signed_total")
    values = decode_payload(codec, b"\xff\xff\xff\xff" + bytes(4), None).values
    with pytest.raises(ImplausibleValueError, match="signed_total holds -1"):
        register_milli(codec, values, device_id="dev-1")


def test_encode_value_serves_the_raw_floats_this_file_uses() -> None:
    # The simulator's words for float32 3.4e38, NaN and inf: what a real meter sends.
    assert encode_value(FLOAT32_MAX_ISH, DataType.FLOAT32) == [0x7F7F, 0xC99E]
    assert encode_value(math.inf, DataType.FLOAT32) == [0x7F80, 0x0000]
