"""The site's ``publish_only:`` list: a meter either bills an account or is published only, is
read by a device of the site in the unit its entry says, and is listed once; each refusal is a
``FILE:LINE: field: message`` line. ``prepay check-config`` (a real process) names the
publish-only meters of a good site and refuses a conflicting one; a reload applies a change.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from billing_engine.base.errors import InvalidConfigError
from gateway.config import load_site, site_changes
from gateway.site_checks import reference_errors
from tests.gateway.site import PROFILES, ROOT, water_account, write_site

PREPAY = str(ROOT / ".venv" / "bin" / "prepay")


def _line_of(site: Path, text: str, *, nth: int = 1) -> int:
    found = [i for i, line in enumerate(site.read_text().splitlines(), 1) if text in line]
    return found[nth - 1]


def _site(tmp_path: Path, publish_only: list[dict[str, Any]], *, port: int = 1883) -> Path:
    """A1 on m1 read by a water valve, and p1 read by an Eastron kWh meter (no account)."""
    devices = [
        {
            "device_id": "v1",
            "unit_id": 1,
            "profile": "water_xintai_valve",
            "meter_id": "m1",
            "allow_unconfirmed_supply": True,
        },
        {"device_id": "e1", "unit_id": 2, "profile": "eastron_sdm120", "meter_id": "p1"},
    ]
    bus = {"name": "bus0", "kind": "tcp", "host": "127.0.0.1", "port": 1, "devices": devices}
    return write_site(
        tmp_path,
        mqtt_port=port,
        accounts=[water_account("A1", "m1", actuator="v1")],
        extra={
            "devices": {"profiles_dir": str(PROFILES), "modbus_buses": [bus]},
            "publish_only": publish_only,
        },
    )


def _load_errors(site: Path) -> list[str]:
    with pytest.raises(InvalidConfigError) as caught:
        load_site(site)
    return [str(e) for e in caught.value.errors]


def test_publish_only_meter_billed_by_an_account_is_refused(tmp_path: Path) -> None:
    site = _site(tmp_path, [{"meter": "p1", "unit": "kWh"}, {"meter": "m1", "unit": "m3"}])
    line = _line_of(site, "meter: m1", nth=2)  # the first is A1's
    assert _load_errors(site) == [
        f"{site}:{line}: publish_only.1.meter: meter m1 bills account A1, so it cannot be"
        " publish-only (never billed); remove it here, or give the account another meter"
    ]


def test_publish_only_meter_listed_twice_is_refused(tmp_path: Path) -> None:
    site = _site(tmp_path, [{"meter": "p1", "unit": "kWh"}, {"meter": "p1", "unit": "kWh"}])
    line = _line_of(site, "meter: p1", nth=2)
    assert _load_errors(site) == [
        f"{site}:{line}: publish_only.1.meter: meter p1 is listed twice; list it once"
    ]


def test_publish_only_meter_needs_a_known_unit(tmp_path: Path) -> None:
    site = _site(tmp_path, [{"meter": "p1", "unit": "MWh"}])
    (error,) = _load_errors(site)
    assert error.startswith(f"{site}:{_line_of(site, 'unit: MWh')}: publish_only.0.unit: ")


def test_publish_only_meter_read_by_no_device_is_refused(tmp_path: Path) -> None:
    site = _site(tmp_path, [{"meter": "p7", "unit": "kWh"}])
    line = _line_of(site, "meter: p7")
    assert [str(e) for e in reference_errors(load_site(site))] == [
        f"{site}:{line}: publish_only.0.meter: no device of the site reads meter p7, so nothing"
        " would be published for it; the devices read m1, p1"
    ]


def test_publish_only_unit_other_than_the_profiles_is_refused(tmp_path: Path) -> None:
    # eastron_sdm120's energy register is in kWh: publishing it as m3 would mislead.
    site = _site(tmp_path, [{"meter": "p1", "unit": "m3"}])
    line = _line_of(site, "unit: m3")
    assert [str(e) for e in reference_errors(load_site(site))] == [
        f"{site}:{line}: publish_only.0.unit: meter p1 is read with profile eastron_sdm120,"
        " which gives its register in kWh; write unit: kWh"
    ]


def test_publish_only_check_config_names_the_meters_and_refuses_a_conflict(
    tmp_path: Path,
) -> None:
    good = _site(tmp_path / "good", [{"meter": "p1", "unit": "kWh"}])
    done = subprocess.run(
        [PREPAY, "check-config", "-c", str(good)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert "publish-only meters, published and never billed: p1 (kWh)\n" in done.stdout

    bad = _site(tmp_path / "bad", [{"meter": "m1", "unit": "m3"}])
    refused = subprocess.run(
        [PREPAY, "check-config", "-c", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    line = _line_of(bad, "meter: m1", nth=2)
    assert refused.returncode == 1
    assert f"{bad}:{line}: publish_only.0.meter: meter m1 bills account A1" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_publish_only_change_is_applied_by_a_reload(tmp_path: Path) -> None:
    old = load_site(_site(tmp_path / "old", []))
    new = load_site(_site(tmp_path / "new", [{"meter": "p1", "unit": "kWh"}]))
    changes = site_changes(old, new)
    assert "publish_only: added p1" in changes.applied
    assert "publish_only" not in changes.need_restart
