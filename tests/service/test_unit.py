"""The systemd unit, ``systemd/prepay-gateway.service``: systemd accepts it as it ships.

``systemd-analyze verify`` parses it the way systemd would load it (unknown keys, bad values,
missing executables) without a running systemd, so this runs in a container too. Its
executables are checked to exist, so the unit is verified with the install prefix of the
operator guide (``/opt/prepay``) pointed at this environment; nothing else is changed.
"""

from __future__ import annotations

import grp
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "prepay-gateway.service"
INSTALLED = "/opt/prepay/bin/prepay"


def _settings(section: str) -> dict[str, list[str]]:
    """``KEY=VALUE`` lines of one section; a key given more than once keeps every value."""
    found: dict[str, list[str]] = {}
    current = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            current = line
        elif current == f"[{section}]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: run `make test`, which installs systemd")
    prepay = Path(sys.executable).parent / "prepay"
    assert INSTALLED in UNIT.read_text()
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED, str(prepay)))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    # It exits 0 on unknown keys and unparsable values too, and says so: no output at all.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_unit_is_notify_with_watchdog_and_its_groups_exist_without_bluez() -> None:
    service = _settings("Service")
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert int(service["WatchdogSec"][0]) > 0
    # This Debian 12 container has no bluez, like a box without BLE: a group it lacks would
    # make systemd refuse to start the unit (status 216/GROUP).
    for group in service["SupplementaryGroups"][0].split():
        grp.getgrnam(group)


def test_unit_writes_only_state_cache_and_keys_dirs() -> None:
    service = _settings("Service")
    assert service["ProtectSystem"] == ["strict"]
    # The store marker is written next to the ledger key (gateway/startup.py write_marker).
    assert service["ReadWritePaths"] == ["/etc/prepay/keys"]
    assert service["StateDirectory"] == ["prepay"]
    assert "XDG_CACHE_HOME=%C" in service["Environment"]
    assert service["CacheDirectory"] == ["prepay-gateway"]
