"""The YAML loader every operator file goes through (`billing_engine.base.yaml_lines`): whatever
a file holds, the answer is a value or ``FILE:LINE: field: message`` lines, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from billing_engine.base.errors import InvalidConfigError
from billing_engine.base.yaml_lines import MAX_FILE_BYTES, UnreadableFileError, parse_yaml
from billing_engine.tariff import load_tariff
from tests.gateway.site import ROOT


def _refused(tmp_path: Path, content: str | bytes) -> list[str]:
    path = tmp_path / "f.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(InvalidConfigError) as refused:
        parse_yaml(path)
    return [str(e).removeprefix(f"{path}:") for e in refused.value.errors]


def test_yaml_loader_duplicate_keys_refused_at_the_second(tmp_path: Path) -> None:
    text = "site: a\nx:\n  k: 1\n  j: {m: 1, m: 2}\n  k: 3\nsite: b\n"
    assert _refused(tmp_path, text) == [
        "4: x.j.m: given twice (first at line 4); the later one would silently win: keep one",
        "5: x.k: given twice (first at line 3); the later one would silently win: keep one",
        "6: site: given twice (first at line 1); the later one would silently win: keep one",
    ]


def test_yaml_loader_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("base: &b {a: 1, b: 2}\nuse:\n  <<: *b\n  a: 3\n")
    data, _ = parse_yaml(path)
    assert data["use"] == {"a": 3, "b": 2}


def test_yaml_loader_deep_nesting(tmp_path: Path) -> None:
    text = "ok: 1\ndeep: " + "[" * 20_000 + "]" * 20_000 + "\n"
    assert _refused(tmp_path, text) == [
        "2: <syntax>: nested deeper than 64 levels; no prepay file nests that deep"
    ]


def test_yaml_loader_not_utf8_names_line_and_column(tmp_path: Path) -> None:
    # "name: caf" is 9 bytes: the Latin-1 e-acute (0xe9) is the 10th.
    assert _refused(tmp_path, b"a: 1\nname: caf\xe9\n") == [
        "2: <file>: byte 0xe9 at column 10 is not UTF-8; save the file as UTF-8"
    ]


def test_yaml_loader_control_character(tmp_path: Path) -> None:
    assert _refused(tmp_path, "a: 1\nb: x\x07y\n") == [
        "2: <syntax>: character U+0007 is not allowed in YAML (special characters are not allowed)"
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("9" * 5000, "Exceeds the limit (4300 digits) for integer string conversion"),
        ("2024-13-45", "month must be in 1..12"),
    ],
)
def test_yaml_loader_scalar_its_constructor_cannot_build(
    tmp_path: Path, value: str, message: str
) -> None:
    (error,) = _refused(tmp_path, f"a: 1\nb: {value}\n")
    assert error.startswith(f"2: <syntax>: not a usable value: {message}")


def test_yaml_loader_too_large(tmp_path: Path) -> None:
    assert _refused(tmp_path, "#" * (MAX_FILE_BYTES + 1)) == [
        "1: <file>: larger than 16 MiB: not a configuration file"
    ]


def test_yaml_loader_unreadable_file_says_why(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError) as refused:
        parse_yaml(tmp_path / "missing.yaml")
    assert refused.value.reason == "No such file or directory"


def test_yaml_loader_tariff_with_a_key_twice(tmp_path: Path) -> None:
    source = ROOT / "configs" / "tariffs" / "beijing-residential-water.yaml"
    text = source.read_text()
    path = tmp_path / "tariff.yaml"
    path.write_text(text.replace("\nid:", "\nid: x\nid:", 1))
    line = next(i for i, row in enumerate(path.read_text().splitlines(), 1) if row == "id: x")
    with pytest.raises(InvalidConfigError) as refused:
        load_tariff(path)
    assert [str(e) for e in refused.value.errors] == [
        f"{path}:{line + 1}: id: given twice (first at line {line}); the later one would"
        " silently win: keep one"
    ]
