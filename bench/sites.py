"""Site files for benchmarks and tests: a key set and a ``site.yaml`` around given accounts.

The one builder of a runnable site: `bench.gateway` writes its 1,200-account site with it, the
gateway tests theirs (``tests/gateway/site.py`` adds their defaults). Not a benchmark itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gateway.ops.keys import init_keys

ROOT = Path(__file__).resolve().parents[1]
TARIFFS = ROOT / "configs" / "tariffs"
PROFILES = ROOT / "configs" / "devices"

RESIDENT_POLICY: dict[str, Any] = {
    "low_thresholds_minor": [500],
    "disconnect_threshold_minor": 0,
    "restore_threshold_minor": 100,
}

# Quick reconnects: a benchmark or a test restarts its broker and waits for the link.
FAST_MQTT: dict[str, Any] = {
    "backoff_initial_s": 0.1,
    "backoff_max_s": 0.5,
    "drain_deadline_s": 2.0,
}


def account(
    account_id: str,
    meter: str,
    *,
    tariff: str,
    class_name: str = "resident",
    policy: str = "resident",
    actuator: str | None = None,
) -> dict[str, Any]:
    """One entry of the site's ``accounts`` list."""
    entry: dict[str, Any] = {"id": account_id, "meter": meter}
    if actuator is not None:
        entry["actuator"] = actuator
    entry.update({"tariff": tariff, "class": class_name, "policy": policy})
    return entry


def write_site(
    directory: Path,
    *,
    site_id: str,
    mqtt_port: int,
    tariffs: list[Path],
    accounts: list[dict[str, Any]],
    policies: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a key set (``keys/``, with the backend's private key) and ``site.yaml`` into
    ``directory``; returns the site file.

    Args:
        site_id: the site's name (its topics live under ``prepay/{site_id}/``).
        mqtt_port: the broker on 127.0.0.1; reconnects are quick (`FAST_MQTT`).
        tariffs: tariff files, referenced by absolute path.
        accounts: the ``accounts`` list as the site file has it.
        policies: the ``policies`` map; one policy ``resident`` (`RESIDENT_POLICY`) if None.
        extra: top-level keys added or replaced last (``mqtt`` replaces the whole section).
    """
    init_keys(directory / "keys", with_backend=True)
    doc: dict[str, Any] = {
        "site": site_id,
        "state_dir": "state",
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, **FAST_MQTT},
        "keys": {
            "ledger_key_file": "keys/ledger.key",
            "gateway_private_key": "keys/gateway.pem",
            "backend_public_key": "keys/backend.pub.pem",
            "operator_public_key": "keys/operator.pub.pem",
        },
        "tariffs": [str(path) for path in tariffs],
        "policies": policies if policies is not None else {"resident": RESIDENT_POLICY},
        "accounts": accounts,
    }
    doc.update(extra or {})
    path = directory / "site.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
