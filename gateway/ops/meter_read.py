"""``prepay meter read DEVICE``: one live read of a Modbus device, for commissioning.

The read goes through the gateway's own driver (`drivers.modbus.client.ModbusBus`, the same
request plan, decoding and retries the daemon polls with), on a bus of its own holding only
this device: every register the device's profile defines, decoded to integer milli-units and
shown in the profile's unit, plus the relay or valve state read back when the profile has a
usable one. Nothing is journalled or billed. See `gateway.ops.bus_access` for when a bus the
daemon polls may be used.

pymodbus loads inside `read_meter` only: the CLI imports this module for every command.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from drivers.modbus.profiles import load_profiles, profile_registers
from drivers.ports import DriverError, DriverEvent, Reading
from gateway.config import Site
from gateway.northbound.payloads import format_rfc3339
from gateway.ops.bus_access import ModbusTarget, endpoint

if TYPE_CHECKING:  # the client module loads pymodbus
    from drivers.modbus.client import DeviceStats


class MeterReadError(RuntimeError):
    """The device did not give a usable answer; the message says what happened instead."""


@dataclass(frozen=True)
class RegisterValue:
    """One decoded register of the profile."""

    name: str
    table: str
    address: int
    type: str
    value_milli: int
    scale: Decimal
    unit: str
    description: str

    @property
    def value(self) -> str:
        """The value in ``unit``, exact: milli-units / 1000 as a decimal string."""
        return format(Decimal(self.value_milli).scaleb(-3), "f")

    @property
    def raw(self) -> str:
        """The register's value before the profile's scale (milli-units = raw x scale): what
        a vendor's manual lists, e.g. a status code. Exact for integer registers; a float
        register's as rounded to the milli-unit."""
        return format((Decimal(self.value_milli) / self.scale).normalize(), "f")


@dataclass(frozen=True)
class MeterRead:
    """What one read of a device gave."""

    device: str
    meter: str
    bus: str
    endpoint: str
    unit_id: int
    profile: str
    read_at: datetime
    registers: list[RegisterValue]
    #: the relay or valve read back: "on", "off", "unknown"; None when the profile has none
    supply: str | None
    #: why the supply could not be read back, when it could not
    supply_error: str | None


class _Discard:
    """The sink of a read nobody bills: the reading is kept by the bus's stats anyway."""

    async def put(self, reading: Reading) -> None:
        pass

    async def event(self, event: DriverEvent) -> None:
        pass


async def read_meter(site: Site, target: ModbusTarget) -> MeterRead:
    """Read every register of ``target``'s profile once.

    Raises:
        InvalidConfigError: the device's profile is missing or invalid.
        MeterReadError: no answer, an exception reply, a garbled reply, or an impossible value.
    """
    # pymodbus and pyserial load here, not when the CLI starts.
    from drivers.modbus.client import ModbusBus  # noqa: PLC0415

    device = target.device
    profiles = load_profiles(site.resolve(site.config.devices.profiles_dir), [device.profile])
    profile = profiles[device.profile]
    # A bus of this one device: the others on the line are not the question.
    bus_config = target.bus.model_copy(update={"devices": [device]})
    async with ModbusBus(bus_config, profiles) as bus:
        reading = await bus.poll_device(device.device_id, _Discard())
        stats = bus.stats(device.device_id)
        if reading is None:
            raise MeterReadError(explain_failure(target, stats))
        supply: str | None = None
        supply_error: str | None = None
        if bus.handles(device.device_id):
            try:
                supply = (await bus.read_supply(device.device_id)).value
            except DriverError as exc:
                supply_error = str(exc)
        elif profile.supply is not None:
            supply_error = (
                f"profile {profile.name}: its supply register is marked {profile.supply.status};"
                " not read (allow_unconfirmed_supply is off)"
            )
    registers = [
        RegisterValue(
            name=name,
            table=spec.table.value,
            address=spec.address,
            type=spec.type.value,
            value_milli=stats.values_milli[name],
            scale=spec.scale,
            unit=spec.unit,
            description=spec.description,
        )
        for name, spec in profile_registers(profile).items()
    ]
    return MeterRead(
        device=device.device_id,
        meter=device.meter_id,
        bus=target.bus.name,
        endpoint=endpoint(target.bus),
        unit_id=device.unit_id,
        profile=profile.name,
        read_at=reading.read_at.astimezone(UTC),
        registers=registers,
        supply=supply,
        supply_error=supply_error,
    )


def explain_failure(target: ModbusTarget, stats: DeviceStats) -> str:
    """One line saying what the failed read met, from the driver's counters."""
    bus, device = target.bus, target.device
    where = f"{device.device_id} (unit {device.unit_id} on bus {bus.name}, {endpoint(bus)})"
    detail = stats.last_error
    if stats.implausible_values:
        return f"{where} answered with a value no meter can hold: {detail}"
    if stats.rejections:
        return (
            f"{where} answered with a Modbus exception ({detail}): a Modbus device, but not"
            f" one with profile {device.profile}'s registers at that unit id"
        )
    if stats.frame_errors:
        return (
            f"{where} answered with bytes that are no Modbus reply ({detail}): a wrong baud"
            " rate or parity, or not a Modbus device"
        )
    if "cannot connect" in detail or "not connected" in detail:
        return (
            f"cannot connect to bus {bus.name} ({endpoint(bus)}): not reachable, or busy (a"
            " device that takes one connection at a time, a serial port in use)"
        )
    return (
        f"{where} did not answer ({detail}, {bus.retries} retries): check its unit id,"
        " wiring, serial settings and power"
    )


def to_json(read: MeterRead) -> dict[str, Any]:
    """The read as one JSON object (values exact: integer milli-units and a decimal string)."""
    return {
        "device": read.device,
        "meter": read.meter,
        "bus": read.bus,
        "endpoint": read.endpoint,
        "unit_id": read.unit_id,
        "profile": read.profile,
        "read_at": format_rfc3339(read.read_at),
        "registers": [
            {
                "name": r.name,
                "table": r.table,
                "address": r.address,
                "type": r.type,
                "value_milli": r.value_milli,
                "value": r.value,
                "unit": r.unit,
                "raw": r.raw,
                "description": r.description,
            }
            for r in read.registers
        ],
        "supply": read.supply,
        "supply_error": read.supply_error,
    }


def render(read: MeterRead) -> str:
    """The read as text: one line per register, value right-aligned with its unit."""
    lines = [
        f"{read.device} (meter {read.meter}): unit {read.unit_id} on bus {read.bus}"
        f" ({read.endpoint}), profile {read.profile}, read {format_rfc3339(read.read_at)}"
    ]
    name_w = max((len(r.name) for r in read.registers), default=0)
    value_w = max((len(r.value) for r in read.registers), default=0)
    unit_w = max((len(r.unit) for r in read.registers), default=0)
    for r in read.registers:
        where = f"{r.table} {r.address:#06x} {r.type} raw {r.raw}"
        about = f"  {r.description}" if r.description else ""
        lines.append(
            f"  {r.name:<{name_w}}  {r.value:>{value_w}} {r.unit:<{unit_w}}  {where}{about}"
        )
    if read.supply is not None:
        lines.append(f"  supply: {read.supply} (read back)")
    if read.supply_error is not None:
        lines.append(f"  supply: not read: {read.supply_error}")
    return "\n".join(lines)
