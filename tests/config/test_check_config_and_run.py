"""``prepay check-config`` and ``prepay run`` refuse the same broken site files with the same
``FILE:LINE: field: message`` lines (one code path, `gateway.startup.preflight`), and neither
prints a traceback whatever the file holds.

Both run as real processes. ``run`` must refuse before it reaches the broker: the site points
at a port nobody listens on, and a refusal is a prompt exit 1 with the lines, not a daemon.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.mosquitto import free_port
from tests.gateway.site import ROOT, water_account, write_site

pytestmark = pytest.mark.integration

PREPAY = str(ROOT / ".venv" / "bin" / "prepay")
# A refusal is prompt; a check that is missing would leave `prepay run` running until this.
TIMEOUT_S = 60


def _prepay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PREPAY, *args], capture_output=True, text=True, timeout=TIMEOUT_S, check=False, cwd=ROOT
    )


def _line_of(site: Path, text: str, *, nth: int = 1) -> int:
    """The 1-based line of the ``nth`` line of ``site`` that contains ``text``."""
    found = [i for i, line in enumerate(site.read_text().splitlines(), 1) if text in line]
    return found[nth - 1]


def _edit(site: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = yaml.safe_load(site.read_text())
    change(doc)
    site.write_text(yaml.safe_dump(doc, sort_keys=False, width=200))


@dataclass(frozen=True)
class Broken:
    """A broken site: the site file, and the start of the one line both commands must print
    (``FILE:LINE: field: `` and the gist of the message)."""

    site: Path
    expected: str


def _site(tmp_path: Path, **kwargs: Any) -> Path:
    return write_site(tmp_path, mqtt_port=free_port(), **kwargs)


def _unknown_actuator(tmp_path: Path) -> Broken:
    site = _site(tmp_path, accounts=[water_account("A1", "m1", actuator="v1")])
    site.write_text(site.read_text().replace("actuator: v1", "actuator: v9"))
    line = _line_of(site, "actuator: v9")
    return Broken(site, f"{site}:{line}: accounts.0.actuator: no device v9 in the site")


def _unknown_meter(tmp_path: Path) -> Broken:
    site = _site(tmp_path)
    site.write_text(site.read_text().replace("meter: m1", "meter: m9"))
    line = _line_of(site, "meter: m9")
    return Broken(site, f"{site}:{line}: accounts.0.meter: no device of the site reads meter m9")


def _shared_relay(tmp_path: Path) -> Broken:
    accounts = [water_account("A1", "m1", actuator="v1"), water_account("A2", "m2")]
    site = _site(tmp_path, accounts=accounts)

    def share(doc: dict[str, Any]) -> None:
        doc["accounts"][1]["actuator"] = "v1"  # A2's meter m2 is read by reader-m2

    _edit(site, share)
    line = _line_of(site, "actuator: v1", nth=2)
    return Broken(site, f"{site}:{line}: accounts.1.actuator: device v1 already cuts account A1")


def _misspelled_profile(tmp_path: Path) -> Broken:
    site = _site(tmp_path)
    site.write_text(site.read_text().replace("profile: unanswered_valve", "profile: unanswerd"))
    line = _line_of(site, "profile: unanswerd")
    field = "devices.modbus_buses.0.devices.0.profile"
    return Broken(site, f"{site}:{line}: {field}: no profile 'unanswerd'")


def _missing_backend_key(tmp_path: Path) -> Broken:
    site = _site(tmp_path)
    (tmp_path / "keys" / "backend.pub.pem").unlink()
    line = _line_of(site, "backend_public_key")
    return Broken(
        site,
        f"{site}:{line}: keys.backend_public_key: cannot read"
        f" {tmp_path / 'keys' / 'backend.pub.pem'}: No such file or directory",
    )


def _unwritable_state_dir(tmp_path: Path) -> Broken:
    # A file where the state directory's parent should be: unwritable for root as well.
    site = _site(tmp_path, extra={"state_dir": "site.yaml/state"})
    line = _line_of(site, "state_dir:")
    return Broken(site, f"{site}:{line}: state_dir: {site} is not a directory")


def _site_twice(tmp_path: Path) -> Broken:
    site = _site(tmp_path)
    site.write_text(site.read_text() + "site: another-site\n")
    line = _line_of(site, "site: another-site")
    return Broken(site, f"{site}:{line}: site: given twice (first at line 1)")


def _threshold_twice(tmp_path: Path) -> Broken:
    site = _site(tmp_path)
    text = site.read_text()
    first = "    disconnect_threshold_minor: 0\n"
    site.write_text(text.replace(first, first + "    disconnect_threshold_minor: -5000\n"))
    line = _line_of(site, "disconnect_threshold_minor: -5000")
    field = "policies.resident.disconnect_threshold_minor"
    return Broken(site, f"{site}:{line}: {field}: given twice (first at line {line - 1})")


def _deep_nesting(tmp_path: Path) -> Broken:
    site = _site(tmp_path)
    site.write_text(site.read_text() + "junk: " + "[" * 20_000 + "]" * 20_000 + "\n")
    line = _line_of(site, "junk:")
    return Broken(site, f"{site}:{line}: <syntax>: nested deeper than 64 levels")


def _not_utf8(tmp_path: Path) -> Broken:
    site = _site(tmp_path)
    line = _line_of(site, "site: test-site")
    site.write_bytes(site.read_bytes().replace(b"site: test-site", b"site: test-\xff-site"))
    return Broken(site, f"{site}:{line}: <file>: byte 0xff at column 12 is not UTF-8")


def _duplicate_account(tmp_path: Path) -> Broken:
    accounts = [water_account("A1", "m1", actuator="v1"), water_account("A1", "m2")]
    site = _site(tmp_path, accounts=accounts)
    line = _line_of(site, "id: A1", nth=2)
    return Broken(site, f"{site}:{line}: accounts.1.id: account A1 is defined twice")


def _unknown_policy(tmp_path: Path) -> Broken:
    site = _site(tmp_path)
    site.write_text(site.read_text().replace("policy: resident", "policy: residnet"))
    line = _line_of(site, "policy: residnet")
    return Broken(site, f"{site}:{line}: accounts.0.policy: unknown policy 'residnet'")


def _unknown_tariff(tmp_path: Path) -> Broken:
    site = _site(tmp_path)
    site.write_text(site.read_text().replace("tariff: beijing_", "tariff: bejing_"))
    line = _line_of(site, "tariff: bejing_")
    return Broken(site, f"{site}:{line}: accounts.0.tariff: unknown tariff 'bejing_")


def _unknown_class(tmp_path: Path) -> Broken:
    site = _site(tmp_path, accounts=[water_account("A1", "m1", class_name="hotel")])
    line = _line_of(site, "class: hotel")
    return Broken(
        site,
        f"{site}:{line}: accounts.0.class: tariff beijing_residential_water has no class 'hotel'",
    )


def _missing_tariff(tmp_path: Path) -> Broken:
    site = _site(tmp_path)
    site.write_text(site.read_text().replace("beijing-residential-water.yaml", "x.yaml"))
    line = _line_of(site, "x.yaml")
    return Broken(site, f"{site}:{line}: tariffs.0: cannot read ")


def _too_large(tmp_path: Path) -> Broken:
    site = _site(tmp_path)
    with site.open("a") as handle:
        handle.write(("# padding\n" * 1024 * 1024) * 2)  # 20 MiB of comments, over 16
    return Broken(site, f"{site}:1: <file>: larger than 16 MiB")


BROKEN = {
    "unknown_actuator": _unknown_actuator,
    "unknown_meter": _unknown_meter,
    "shared_relay": _shared_relay,
    "misspelled_profile": _misspelled_profile,
    "missing_backend_key": _missing_backend_key,
    "unwritable_state_dir": _unwritable_state_dir,
    "site_twice": _site_twice,
    "threshold_twice": _threshold_twice,
    "deep_nesting": _deep_nesting,
    "not_utf8": _not_utf8,
    "duplicate_account": _duplicate_account,
    "unknown_policy": _unknown_policy,
    "unknown_tariff": _unknown_tariff,
    "unknown_class": _unknown_class,
    "missing_tariff": _missing_tariff,
    "too_large": _too_large,
}


def _problem_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("refusing to start")]


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_check_config_and_run_refuse_with_the_same_line(tmp_path: Path, case: str) -> None:
    broken = BROKEN[case](tmp_path)

    checked = _prepay("check-config", "-c", str(broken.site))
    run = _prepay("run", "-c", str(broken.site))

    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in checked.stderr + run.stderr
    assert [line for line in checked.stderr.splitlines() if line.startswith(broken.expected)]
    assert run.stderr.startswith("refusing to start: the configuration is invalid\n")
    assert _problem_lines(run.stderr) == checked.stderr.splitlines()
    assert not (tmp_path / "state").exists()  # neither made the state directory


def test_check_config_creates_nothing_and_takes_no_lock(tmp_path: Path) -> None:
    site = _site(tmp_path)

    result = _prepay("check-config", "-c", str(site))

    assert result.returncode == 0, result.stderr
    assert f"{site}: ok (site test-site: 1 account" in result.stdout
    assert not (tmp_path / "state").exists()
