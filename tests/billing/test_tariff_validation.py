"""Bad tariff files: each gets FILE:LINE: field: message and nothing is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from billing_engine.base.errors import InvalidConfigError
from billing_engine.tariff import load_tariff
from gateway.cli import main

GOOD = """\
id: t
name: T
currency: CNY
unit: kWh
timezone: Asia/Shanghai
cycle: {reset: annual}
versions:
  - effective_from: 2026-01-01T00:00:00+08:00
    schedules:
      - windows:
          - {start: "08:00", end: "22:00", period: peak}
          - {start: "22:00", end: "08:00", period: valley}
    classes:
      resident:
        energy: {peak: 0.568, valley: 0.288}
        tiers:
          - {up_to: 2760, adder: 0}
          - {up_to: 4800, adder: 0.05}
          - {adder: 0.3}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tariff.yaml"
    path.write_text(text)
    return path


def errors_for(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(InvalidConfigError) as info:
        load_tariff(path)
    return [str(e).replace(str(path), "F") for e in info.value.errors]


def test_tariff_good_file_loads(tmp_path: Path) -> None:
    tariff = load_tariff(write(tmp_path, GOOD))
    assert tariff.period_names == ("peak", "valley")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "energy: {peak: 0.568, valley: 0.288}",
            "energy: {peak: -0.568, valley: 0.288}",
            "F:15: versions.0.classes.resident.energy: peak: price -0.568 is negative",
        ),
        (
            "- {up_to: 4800, adder: 0.05}",
            "- {up_to: 2000, adder: 0.05}",
            "F:17: versions.0.classes.resident.tiers: tier limits must increase",
        ),
        (
            'end: "22:00", period: peak}',
            'end: "23:00", period: peak}',
            "F:11: versions.0.schedules.0.windows: window 22:00-08:00 (valley) overlaps",
        ),
        (
            'end: "22:00", period: peak}',
            'end: "21:00", period: peak}',
            "F:11: versions.0.schedules.0.windows: the windows leave 21:00 uncovered",
        ),
        (
            "timezone: Asia/Shanghai",
            "timezone: Asia/Shangai",
            "F:5: timezone: unknown time zone 'Asia/Shangai'",
        ),
        ("currency: CNY", "currency: RMB", "F:3: currency: unknown currency 'RMB'"),
        ("unit: kWh", "unit: MWh", "F:4: unit: Input should be 'kWh', 'm3' or 'L'"),
        (
            "energy: {peak: 0.568, valley: 0.288}",
            "energy: {peak: 0.568, shoulder: 0.288}",
            "F:8: versions.0: class resident: price for unknown period ['shoulder']",
        ),
        ("cycle: {reset: annual}", "cycle: {reset: weekly}", "F:6: cycle.reset: Input should be"),
        (
            "effective_from: 2026-01-01T00:00:00+08:00",
            "effective_from: 2026-01-01T00:00:00.000250+08:00",
            "F:8: versions.0.effective_from: is finer than a millisecond",
        ),
        (
            "      resident:",
            "      resident:\n        colour: red",
            "F:15: versions.0.classes.resident.colour: Extra inputs are not permitted",
        ),
    ],
)
def test_tariff_invalid_field_named_with_line(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in GOOD
    errors = errors_for(tmp_path, GOOD.replace(old, new))
    line_and_field, message = (
        expected.rsplit(": ", 1)
        if expected.count(": ") == 2
        else (": ".join(expected.split(": ")[:2]), expected.split(": ", 2)[2])
    )
    assert any(e.startswith(line_and_field + ": ") and message in e for e in errors), errors


def test_tariff_overlapping_effective_dates(tmp_path: Path) -> None:
    version = GOOD.split("versions:\n", 1)[1]
    text = GOOD + version.replace("2026-01-01", "2025-06-01")
    errors = errors_for(tmp_path, text)
    assert errors[0].startswith("F:8: versions: ")
    assert "does not start after version 0" in errors[0]


def test_tariff_unknown_class_across_versions(tmp_path: Path) -> None:
    version = GOOD.split("versions:\n", 1)[1]
    text = GOOD + version.replace("2026-01-01", "2027-01-01").replace("resident:", "enterprise:")
    errors = errors_for(tmp_path, text)
    assert (
        errors
        == [
            "F:1: <document>: version 1 changes the classes (added ['enterprise'], "
            "removed ['resident']); every version must price the same classes"
        ]
        or "changes the classes" in errors[0]
    )


def test_tariff_bad_yaml_syntax_names_line(tmp_path: Path) -> None:
    errors = errors_for(tmp_path, GOOD.replace("cycle: {reset: annual}", "cycle: {reset: annual"))
    assert errors[0].startswith("F:7: <syntax>:")


def test_tariff_price_with_too_many_decimals(tmp_path: Path) -> None:
    errors = errors_for(tmp_path, GOOD.replace("0.288}", "0.2881234}"))
    assert "more than 6 decimals" in errors[0]
    assert errors[0].startswith("F:15: versions.0.classes.resident.energy: valley: ")


def test_cli_tariff_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, GOOD)
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("currency: CNY", "currency: XXX"))
    assert main(["tariff", "check", str(good)]) == 0
    assert main(["tariff", "check", str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:3: currency: unknown currency 'XXX'" in err


def test_cli_tariff_check_sample_configs() -> None:
    samples = sorted(str(p) for p in Path("configs/tariffs").glob("*.yaml"))
    assert len(samples) >= 4
    assert main(["tariff", "check", *samples]) == 0
