"""Home Assistant MQTT discovery: the retained configs that make every account appear. Pure.

Device-based discovery (Home Assistant's MQTT integration, ``homeassistant/components/mqtt/
discovery.py``): one retained config per account at ``{prefix}/device/{object_id}/config``,
holding the device (``dev``), the origin (``o``) and its components (``cmps``), each reading
the gateway's own topics. An empty retained payload on the same topic removes the device.

Per account:

- ``balance``: a ``monetary`` sensor in the account's currency, from ``account/{id}/state``,
  divided by the currency's own minor-unit exponent (ISO 4217: fen for CNY, 0 for JPY);
- ``state``: an ``enum`` sensor of the policy state;
- ``meter``: an ``energy`` or ``water`` sensor, ``total_increasing`` (usable in the energy
  dashboard), from ``meter/{meter}/reading``'s cumulative ``register``;
- ``supply``: a read-only ``binary_sensor`` of what the relay or valve itself reported
  (``device/{id}/state``); control stays with signed commands: no ``command_topic``.

Availability follows the gateway's retained ``status`` (its Last Will says ``offline``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from billing_engine.tariff import RegisterUnit
from gateway.northbound.topics import SiteTopics
from gateway.policy.state import PolicyMode

DEFAULT_PREFIX: Final = "homeassistant"
_NOT_AN_ID: Final = re.compile(r"[^a-zA-Z0-9_-]")

# The register's unit as Home Assistant names it, the factor to it, and the device class.
_METER: Final[dict[RegisterUnit, tuple[str, int, str]]] = {
    RegisterUnit.WH: ("Wh", 1, "energy"),
    RegisterUnit.LITRE: ("L", 1, "water"),
    RegisterUnit.MILLILITRE: ("L", 1000, "water"),  # HA has no mL for water
}


def object_id(*parts: str) -> str:
    """An id Home Assistant accepts (``[a-zA-Z0-9_-]``): other characters become ``_``."""
    return _NOT_AN_ID.sub("_", "_".join(parts))


@dataclass(frozen=True, slots=True)
class AccountFacts:
    """What the configs say of one account."""

    account: str
    meter: str
    currency: str
    currency_exponent: int
    register_unit: RegisterUnit
    actuator: str | None


def _scaled(field: str, exponent: int) -> str:
    if exponent == 0:
        return f"{{{{ value_json.{field} }}}}"
    return f"{{{{ value_json.{field} / {10**exponent} }}}}"


def device_config(
    topics: SiteTopics, facts: AccountFacts, *, version: str
) -> tuple[str, dict[str, Any]]:
    """The object id and the discovery config of one account's device."""
    oid = object_id("prepay", topics.site, facts.account)
    unit, factor, meter_class = _METER[facts.register_unit]
    register = "{{ value_json.register }}" if factor == 1 else _scaled("register", 3)
    components: dict[str, Any] = {
        "balance": {
            "p": "sensor",
            "uniq_id": f"{oid}_balance",
            "name": "Balance",
            "stat_t": topics.account_state(facts.account),
            "val_tpl": _scaled("balance_minor", facts.currency_exponent),
            "dev_cla": "monetary",
            "unit_of_meas": facts.currency,
            "stat_cla": "total",
        },
        "state": {
            "p": "sensor",
            "uniq_id": f"{oid}_state",
            "name": "Prepaid state",
            "stat_t": topics.account_state(facts.account),
            "val_tpl": "{{ value_json.state }}",
            "dev_cla": "enum",
            "ops": [m.value for m in PolicyMode],
        },
        "meter": {
            "p": "sensor",
            "uniq_id": f"{oid}_meter",
            "name": "Meter",
            "stat_t": topics.meter_reading(facts.meter),
            "val_tpl": register,
            "dev_cla": meter_class,
            "unit_of_meas": unit,
            "stat_cla": "total_increasing",
        },
    }
    if facts.actuator is not None:
        components["supply"] = {
            "p": "binary_sensor",
            "uniq_id": f"{oid}_supply",
            "name": "Supply",
            "stat_t": topics.device_state(facts.actuator),
            # Left empty (unknown) until the device has reported: never the gateway's wish.
            "val_tpl": "{{ value_json.supply | default('') }}",
            "pl_on": "on",
            "pl_off": "off",
            "dev_cla": "power" if meter_class == "energy" else "opening",
        }
    config = {
        "dev": {
            "ids": [oid],
            "name": f"Account {facts.account}",
            "mf": "prepay-gateway",
            "mdl": "prepaid account",
        },
        "o": {"name": "prepay-gateway", "sw": version},
        "avty": [{"t": topics.status, "val_tpl": "{{ value_json.status }}"}],
        "cmps": components,
    }
    return oid, config


def config_topic(prefix: str, oid: str) -> str:
    return f"{prefix}/device/{oid}/config"
