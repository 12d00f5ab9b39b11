"""The cross-references of a site to its devices (`gateway.site_checks`), the key and state
directory checks of `gateway.startup.preflight`, and what a reload reports as changed
(`gateway.config.site_changes`), in process. The refusals as the operator sees them, from
``prepay check-config`` and ``prepay run``, are in test_check_config_and_run.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from billing_engine.base.errors import InvalidConfigError
from gateway.config import load_site, site_changes
from gateway.site_checks import reference_errors
from gateway.startup import preflight
from tests.gateway.site import PROFILES, ROOT, water_account, write_site

CODECS = ROOT / "configs" / "codecs"


def _line_of(site: Path, text: str, *, nth: int = 1) -> int:
    found = [i for i, line in enumerate(site.read_text().splitlines(), 1) if text in line]
    return found[nth - 1]


def _modbus_device(device_id: str, unit: int, meter: str, profile: str) -> dict[str, Any]:
    return {"device_id": device_id, "unit_id": unit, "profile": profile, "meter_id": meter}


def _site(tmp_path: Path, accounts: list[dict[str, Any]], devices: dict[str, Any]) -> Path:
    return write_site(
        tmp_path,
        mqtt_port=1883,
        accounts=accounts,
        extra={"devices": {"profiles_dir": str(PROFILES), "codecs_dir": str(CODECS), **devices}},
    )


def _bus(*devices: dict[str, Any], name: str = "bus0") -> dict[str, Any]:
    return {"name": name, "kind": "tcp", "host": "127.0.0.1", "port": 1, "devices": list(devices)}


def _errors(site: Path) -> list[str]:
    return [str(e) for e in reference_errors(load_site(site))]


def test_site_checks_meter_without_relay_cannot_cut(tmp_path: Path) -> None:
    # eastron_sdm120 has no supply register: it bills, it cannot cut.
    bus = _bus(_modbus_device("e1", 1, "m1", "eastron_sdm120"))
    site = _site(tmp_path, [water_account("A1", "m1", actuator="e1")], {"modbus_buses": [bus]})
    line = _line_of(site, "actuator: e1")
    assert _errors(site) == [
        f"{site}:{line}: accounts.0.actuator: device e1 cannot switch: its profile"
        " eastron_sdm120 has no relay or valve"
    ]


def test_site_checks_unconfirmed_valve_needs_the_operators_word(tmp_path: Path) -> None:
    # water_xintai_valve marks its valve register unconfirmed; without
    # allow_unconfirmed_supply the bus would never switch it.
    bus = _bus(_modbus_device("v1", 1, "m1", "water_xintai_valve"))
    site = _site(tmp_path, [water_account("A1", "m1", actuator="v1")], {"modbus_buses": [bus]})
    (error,) = _errors(site)
    assert error.startswith(f"{site}:{_line_of(site, 'actuator: v1')}: accounts.0.actuator: ")
    assert "set allow_unconfirmed_supply: true on device v1" in error


def test_site_checks_meter_read_by_two_devices_and_device_id_twice(tmp_path: Path) -> None:
    first = _bus(_modbus_device("e1", 1, "m1", "eastron_sdm120"))
    second = _bus(_modbus_device("e1", 1, "m1", "eastron_sdm120"), name="bus1")
    site = _site(tmp_path, [water_account("A1", "m1")], {"modbus_buses": [first, second]})
    meter_line = _line_of(site, "meter_id: m1", nth=2)
    device_line = _line_of(site, "device_id: e1", nth=2)
    assert _errors(site) == [
        f"{site}:{meter_line}: devices.modbus_buses.1.devices.0.meter_id: meter m1 is already"
        " read by the device at devices.modbus_buses.0.devices.0.meter_id; a meter is read by"
        " one device",
        f"{site}:{device_line}: devices.modbus_buses.1.devices.0.device_id: device id e1 is"
        " already used at devices.modbus_buses.0.devices.0.device_id; commands are routed by"
        " device id: give each device its own",
    ]


def _lns(*devices: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "lns0",
        "kind": "chirpstack",
        "broker": {"host": "127.0.0.1", "port": 1},
        "application_id": "app",
        "devices": list(devices),
    }


def test_site_checks_lorawan_codec_missing_or_unfit(tmp_path: Path) -> None:
    devices = _lns(
        {"dev_eui": "24e124136b000201", "codec": "milesight-em300-dj", "meter_id": "m1"},
        # The EM300-DI pulse counter has no open/close commands: it cannot drive a valve.
        {"dev_eui": "24e124136b000202", "codec": "milesight-em300-di", "valve_device_id": "v2"},
    )
    accounts = [water_account("A1", "m1")]
    site = _site(tmp_path, accounts, {"lns": [devices]})
    assert _errors(site) == [
        f"{site}:{_line_of(site, 'codec: milesight-em300-dj')}: devices.lns.0.devices.0.codec:"
        f" no codec 'milesight-em300-dj' in {CODECS} (axioma-qalcosonic-w1, milesight-em300-di,"
        " milesight-uc511)",
        f"{site}:{_line_of(site, 'valve_device_id: v2')}: devices.lns.0.devices.1"
        ".valve_device_id: codec milesight-em300-di has no open/close commands; it cannot drive"
        " a valve",
    ]


def test_site_checks_lorawan_valve_and_ble_dispenser_can_cut(tmp_path: Path) -> None:
    lns = _lns(
        {
            "dev_eui": "24e124460c000202",
            "codec": "milesight-uc511",
            "meter_id": "m1",
            "valve_device_id": "v1",
        }
    )
    dispenser = {"address": "AA:BB:CC:DD:EE:01", "device_id": "kiosk-1", "meter_id": "m2"}
    accounts = [water_account("A1", "m1", actuator="v1"), water_account("A2", "m2")]
    accounts[1]["actuator"] = "kiosk-1"
    site = _site(tmp_path, accounts, {"lns": [lns], "ble_dispensers": [dispenser]})
    assert _errors(site) == []


def test_site_checks_reload_checks_accounts_against_the_running_devices(
    tmp_path: Path,
) -> None:
    running = load_site(write_site(tmp_path / "running", mqtt_port=1883))
    # The new file moves A1 to a meter only a new device (ignored until restart) reads.
    new_file = write_site(tmp_path / "new", mqtt_port=1883, accounts=[water_account("A1", "m7")])
    new = load_site(new_file)
    assert reference_errors(new) == []  # on its own the new file is fine
    (error,) = [str(e) for e in reference_errors(new, running=running)]
    assert error.startswith(f"{new_file}:{_line_of(new_file, 'meter: m7')}: accounts.0.meter:")
    assert "the devices read m1" in error


def test_site_checks_preflight_reports_every_key_problem_at_its_line(tmp_path: Path) -> None:
    site = write_site(tmp_path, mqtt_port=1883)
    (tmp_path / "keys" / "gateway.pem").chmod(0o644)
    (tmp_path / "keys" / "operator.pub.pem").write_text("not a key\n")
    with pytest.raises(InvalidConfigError) as refused:
        preflight(site)
    gateway_pem = tmp_path / "keys" / "gateway.pem"
    assert [str(e) for e in refused.value.errors] == [
        f"{site}:{_line_of(site, 'gateway_private_key')}: keys.gateway_private_key:"
        f" {gateway_pem}: permissions 0644 are too open; the key must be readable by its owner"
        f" only (chmod 600 {gateway_pem})",
        f"{site}:{_line_of(site, 'operator_public_key')}: keys.operator_public_key:"
        f" {tmp_path / 'keys' / 'operator.pub.pem'}: neither PEM nor base64",
    ]
    assert not (tmp_path / "state").exists()


def test_site_checks_preflight_state_dir_that_is_a_file(tmp_path: Path) -> None:
    site = write_site(tmp_path, mqtt_port=1883)
    (tmp_path / "state").write_text("")  # where the directory should be
    with pytest.raises(InvalidConfigError) as refused:
        preflight(site)
    assert [str(e) for e in refused.value.errors] == [
        f"{site}:{_line_of(site, 'state_dir:')}: state_dir: {tmp_path / 'state'} is not a directory"
    ]


def test_site_checks_site_changes_names_what_a_reload_applies_and_what_waits(
    tmp_path: Path,
) -> None:
    old = load_site(write_site(tmp_path / "old", mqtt_port=1883))
    new_file = write_site(
        tmp_path / "new",
        mqtt_port=1884,
        accounts=[water_account("A1", "m1", actuator="v1"), water_account("A2", "m2")],
    )
    doc = yaml.safe_load(new_file.read_text())
    doc["policies"]["resident"]["restore_threshold_minor"] = 200
    doc["journal_retention_days"] = 30
    new_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    changes = site_changes(old, load_site(new_file))
    assert changes.applied == (
        "policies: changed resident",
        "accounts: added A2",
        "journal_retention_days: 400 -> 30",
    )
    # The second account brings a second device; the broker moved to another port.
    assert changes.need_restart == ("mqtt", "devices")


def test_site_checks_vending_cards_currency_tickets_and_double_billing(tmp_path: Path) -> None:
    # A1 bills meter m1 (read by a Modbus valve); the kiosk sells water on its own meter k1.
    # Card C-2 names an account the site lacks; the kiosk sells in HKD to a CNY account; it
    # takes tickets the site has no tickets: section for; and A2 bills the kiosk's meter too.
    bus = _bus(_modbus_device("v1", 1, "m1", "water_xintai_valve"))
    bus["devices"][0]["allow_unconfirmed_supply"] = True
    kiosk = {
        "address": "AA:BB:CC:00:01:01",
        "device_id": "kiosk-1",
        "meter_id": "k1",
        "vending": {
            "currency": "HKD",
            "price_per_litre_minor": 35,
            "cards": {"C-1": "A1", "C-2": "A9"},
            "ticket_product": "18.9L",
        },
    }
    accounts = [water_account("A1", "m1", actuator="v1"), water_account("A2", "k1")]
    site = _site(tmp_path, accounts, {"modbus_buses": [bus], "ble_dispensers": [kiosk]})
    errors = _errors(site)
    assert len(errors) == 4, errors
    assert f"{site}:{_line_of(site, 'C-1: A1')}: " in errors[0]
    assert "account A1 is in CNY; this dispenser sells in HKD" in errors[0]
    assert f"{site}:{_line_of(site, 'C-2: A9')}: " in errors[1]
    assert "card C-2 draws on account A9, which the site does not have" in errors[1]
    assert "tickets for 18.9L cannot be taken here: the site has no tickets: section" in errors[2]
    assert "account A2 bills this dispenser's meter k1" in errors[3]
