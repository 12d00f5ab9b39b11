"""`build_modbus`: the Modbus buses of a site, as reading sources and actuators."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from drivers.modbus.client import build_buses
from drivers.modbus.config import ModbusBusConfig
from drivers.modbus.profiles import load_profiles
from drivers.ports import Actuator, Clock, ReadingSource, utc_now


def build_modbus(
    buses: Sequence[ModbusBusConfig], profiles_dir: Path, *, clock: Clock = utc_now
) -> tuple[list[ReadingSource], list[Actuator]]:
    """Build the reading sources and actuators for the site's ``modbus_buses``.

    Every bus is a `ReadingSource`; a bus is also an `Actuator` when at least one of its devices
    has a usable relay or valve.

    Raises:
        InvalidConfigError: a referenced profile is missing or invalid.
    """
    names = [dev.profile for bus in buses for dev in bus.devices]
    profiles = load_profiles(profiles_dir, names)
    built = build_buses(buses, profiles, clock)
    sources: list[ReadingSource] = list(built)
    actuators: list[Actuator] = [
        bus for bus in built if any(bus.handles(d.device_id) for d in bus.config.devices)
    ]
    return sources, actuators
