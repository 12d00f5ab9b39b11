"""Build a real site for gateway tests: keys, the Beijing water tariff, a resident policy,
accounts (A1 on meter m1 with valve v1 unless told otherwise), optionally a Modbus bus.

The site file itself is written by `bench.sites`, the one builder benchmarks and tests share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.sites import PROFILES, ROOT, TARIFFS, account
from bench.sites import write_site as write_site_file
from gateway.config import Site, load_site

__all__ = ["PROFILES", "ROOT", "load", "water_account", "write_site"]

WATER = "beijing_residential_water"


def water_account(
    account_id: str, meter: str, *, actuator: str | None = None, class_name: str = "resident"
) -> dict[str, Any]:
    """An account billed by the Beijing water tariff under the ``resident`` policy."""
    return account(account_id, meter, tariff=WATER, class_name=class_name, actuator=actuator)


def write_site(
    directory: Path,
    *,
    mqtt_port: int,
    modbus_port: int | None = None,
    accounts: list[dict[str, Any]] | None = None,
    policy: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``site.yaml`` (and a key set) into ``directory``; returns the file."""
    doc: dict[str, Any] = {
        "actuation": {"backoff_initial_s": 0.05, "backoff_max_s": 0.5, "io_timeout_s": 2.0}
    }
    if modbus_port is not None:
        valve = {
            "device_id": "v1",
            "unit_id": 1,
            "profile": "water_xintai_valve",
            "poll_interval_s": 0.1,
            "meter_id": "m1",
            "allow_unconfirmed_supply": True,
        }
        bus = {
            "name": "bus0",
            "kind": "tcp",
            "host": "127.0.0.1",
            "port": modbus_port,
            "timeout_s": 0.5,
            "devices": [valve],
        }
        doc["devices"] = {"profiles_dir": str(PROFILES), "modbus_buses": [bus]}
        # The simulated meters run up to 3,600 m3/h, far above the profile's rating.
        doc["meters"] = [{"id": m, "max_rate_per_h": 4000} for m in ("m1", "m2")]
    doc.update(extra or {})
    return write_site_file(
        directory,
        site_id="test-site",
        mqtt_port=mqtt_port,
        tariffs=[TARIFFS / "beijing-residential-water.yaml"],
        accounts=accounts or [water_account("A1", "m1", actuator="v1")],
        policies={"resident": policy} if policy is not None else None,
        extra=doc,
    )


def load(directory: Path, **kwargs: Any) -> Site:
    return load_site(write_site(directory, **kwargs))
