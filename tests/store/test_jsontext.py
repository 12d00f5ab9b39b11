"""Canonical JSON text: `dumps_flat` is `dumps` for flat records, and stricter."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.store import jsontext

flat_values = st.none() | st.integers() | st.text()


@given(st.dictionaries(st.text(), flat_values))
def test_dumps_flat_same_text_as_dumps(record: dict[str, int | str | None]) -> None:
    assert jsontext.dumps_flat(record, "r") == jsontext.dumps(record)


def test_dumps_flat_any_mapping() -> None:
    record: Mapping[str, int | str | None] = MappingProxyType({"b": 1, "a": "é"})
    assert jsontext.dumps_flat(record, "r") == '{"a":"é","b":1}'


@pytest.mark.parametrize("bad", [0.5, True, False, [1], {"k": 1}, b"x"])
def test_dumps_flat_refuses_floats_bools_and_nesting(bad: object) -> None:
    with pytest.raises(TypeError, match=r"^r field 'x' must be int, str or None"):
        jsontext.dumps_flat({"ok": 1, "x": bad}, "r")  # type: ignore[dict-item]


def test_dumps_flat_refuses_non_str_key() -> None:
    with pytest.raises(TypeError, match="keys must be str"):
        jsontext.dumps_flat({1: 1}, "r")  # type: ignore[dict-item]


def test_dumps_still_refuses_floats_inside() -> None:
    with pytest.raises(TypeError, match=r"\$\.a\[1\]: float"):
        jsontext.dumps({"a": [1, 0.5]})
