"""Canonical JSON for stored details and MAC input: sorted keys, no spaces, no floats.

Floats are refused so that the same value always gives the same bytes (and so no float can
sneak into anything money-related); integers of any size round-trip exactly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

JsonValue: TypeAlias = "str | int | bool | Sequence[JsonValue] | Mapping[str, JsonValue] | None"
JsonObject: TypeAlias = Mapping[str, JsonValue]


def _check(value: object, where: str) -> None:
    # The walk builds no strings unless it finds something wrong: this runs for every stored
    # record on the billing path.
    if value is None or isinstance(value, str | int):  # bool is an int
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: JSON object keys must be str, got {key!r}")
            if item is not None and not isinstance(item, str | int):
                _check(item, f"{where}.{key}")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if item is not None and not isinstance(item, str | int):
                _check(item, f"{where}[{index}]")
        return
    raise TypeError(f"{where}: {type(value).__name__} is not allowed in stored JSON")


def dumps(value: JsonValue) -> str:
    """Canonical JSON text of ``value``.

    Raises:
        TypeError: a float, a non-str key or another non-JSON type is inside.
    """
    _check(value, "$")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def loads_object(text: str) -> dict[str, Any]:
    """Parse JSON text that must hold an object."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    return value
