"""Device profiles: loading ``configs/devices/<name>.yaml`` and turning one into a read plan.

A profile names the billed register (``energy``), optional extra registers, the relay or
valve (``supply``) and the meter's rated maximum (``max_rate_per_h``, which the gateway's
plausibility check uses when the site sets none for the meter). Loading goes through
`billing_engine.base.yaml_lines.load_model`, so every error names file, line and field, and a
bad file loads nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from billing_engine.base.errors import ConfigError, InvalidConfigError
from billing_engine.base.yaml_lines import load_model
from drivers.modbus.config import DeviceProfile, RegisterSpec
from drivers.modbus.registers import ReadBlock, RegisterSpan, plan_reads, register_count

ENERGY = "energy"


def load_profile(path: Path) -> DeviceProfile:
    """Load one profile file.

    Raises:
        InvalidConfigError: unreadable file, bad YAML, or an invalid profile.
    """
    return load_model(path, DeviceProfile)


def load_profiles(profiles_dir: Path, names: Iterable[str]) -> dict[str, DeviceProfile]:
    """Load the named profiles (``<profiles_dir>/<name>.yaml``); all of them or none.

    Raises:
        InvalidConfigError: a profile is missing or invalid (every problem is listed).
    """
    loaded: dict[str, DeviceProfile] = {}
    errors: list[ConfigError] = []
    for name in sorted(set(names)):
        path = profiles_dir / f"{name}.yaml"
        if not path.is_file():
            errors.append(
                ConfigError(str(path), 0, "profile", f"no profile {name!r} in {profiles_dir}")
            )
            continue
        try:
            loaded[name] = load_profile(path)
        except InvalidConfigError as exc:
            errors.extend(exc.errors)
    if errors:
        raise InvalidConfigError(errors)
    return loaded


def profile_registers(profile: DeviceProfile) -> dict[str, RegisterSpec]:
    """All registers a poll reads, the billed one under the name ``energy``."""
    return {ENERGY: profile.energy, **profile.registers}


def profile_plan(profile: DeviceProfile) -> list[ReadBlock]:
    """The coalesced read requests one poll of a device with ``profile`` sends."""
    spans = [
        RegisterSpan(name, spec.table, spec.address, register_count(spec.type))
        for name, spec in profile_registers(profile).items()
    ]
    return plan_reads(spans, max_count=profile.max_read_registers, max_gap=profile.max_gap)
