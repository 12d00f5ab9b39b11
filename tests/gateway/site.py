"""Build a real site for gateway tests: keys, the Beijing water tariff, a resident policy,
accounts (A1 on meter m1 with valve v1 unless told otherwise), and the devices they name: the
simulated Modbus meters at ``modbus_port``, or else a bus nobody answers, so that every site
written here passes ``prepay check-config`` and starts under ``prepay run``.

The site file itself is written by `bench.sites`, the one builder benchmarks and tests share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

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


def _unanswered_devices(directory: Path, accounts: list[dict[str, Any]]) -> dict[str, Any]:
    """The devices the accounts name, on a Modbus bus nobody answers (port 1: refused at once),
    polled once a day: a site that `prepay run` accepts (every account's meter and actuator is
    a device of the site, `gateway.site_checks`) and that never bills a reading by itself.
    A test that hands the gateway its own sources and actuators never builds them.

    Their profile is the Xintai valve's without its rated maximum, so that the meters keep the
    plausibility defaults a test expects (a profile's rating would become the meter's limit).
    """
    profile = yaml.safe_load((PROFILES / "water_xintai_valve.yaml").read_text())
    del profile["max_rate_per_h"]
    profile["name"] = "unanswered_valve"
    profiles = directory / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    (profiles / "unanswered_valve.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    devices = [
        {
            "device_id": acc.get("actuator") or f"reader-{acc['meter']}",
            "unit_id": unit,
            "profile": "unanswered_valve",
            "poll_interval_s": 86400,
            "meter_id": acc["meter"],
            "allow_unconfirmed_supply": True,
        }
        for unit, acc in enumerate(accounts, start=1)
    ]
    bus = {"name": "unanswered", "kind": "tcp", "host": "127.0.0.1", "port": 1}
    return {"profiles_dir": str(profiles), "modbus_buses": [{**bus, "devices": devices}]}


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
    else:
        default = [water_account("A1", "m1", actuator="v1")]
        doc["devices"] = _unanswered_devices(directory, accounts or default)
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
