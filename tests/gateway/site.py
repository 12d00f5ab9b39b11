"""Build a real site for gateway tests: keys, tariff, policy, accounts, a Modbus bus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gateway.config import Site, load_site
from gateway.keys import init_keys

ROOT = Path(__file__).resolve().parents[2]
TARIFFS = ROOT / "configs" / "tariffs"
PROFILES = ROOT / "configs" / "devices"


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
    init_keys(directory / "keys", with_backend=True)
    doc: dict[str, Any] = {
        "site": "test-site",
        "state_dir": "state",
        "mqtt": {
            "host": "127.0.0.1",
            "port": mqtt_port,
            "backoff_initial_s": 0.1,
            "backoff_max_s": 0.5,
            "drain_deadline_s": 2.0,
        },
        "keys": {
            "ledger_key_file": "keys/ledger.key",
            "gateway_private_key": "keys/gateway.pem",
            "backend_public_key": "keys/backend.pub.pem",
            "operator_public_key": "keys/operator.pub.pem",
        },
        "tariffs": [str(TARIFFS / "beijing-residential-water.yaml")],
        "policies": {
            "resident": policy
            or {
                "low_thresholds_minor": [500],
                "disconnect_threshold_minor": 0,
                "restore_threshold_minor": 100,
            }
        },
        "accounts": accounts
        or [
            {
                "id": "A1",
                "meter": "m1",
                "actuator": "v1",
                "tariff": "beijing_residential_water",
                "class": "resident",
                "policy": "resident",
            }
        ],
        "actuation": {"backoff_initial_s": 0.05, "backoff_max_s": 0.5, "io_timeout_s": 2.0},
    }
    if modbus_port is not None:
        doc["devices"] = {
            "profiles_dir": str(PROFILES),
            "modbus_buses": [
                {
                    "name": "bus0",
                    "kind": "tcp",
                    "host": "127.0.0.1",
                    "port": modbus_port,
                    "timeout_s": 0.5,
                    "devices": [
                        {
                            "device_id": "v1",
                            "unit_id": 1,
                            "profile": "water_xintai_valve",
                            "poll_interval_s": 0.1,
                            "meter_id": "m1",
                            "allow_unconfirmed_supply": True,
                        }
                    ],
                }
            ],
        }
    doc.update(extra or {})
    path = directory / "site.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def load(directory: Path, **kwargs: Any) -> Site:
    return load_site(write_site(directory, **kwargs))
