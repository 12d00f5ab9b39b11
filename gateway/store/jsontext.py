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


# One encoder for every call: `json.dumps` with options builds a new one each time, which
# costs as much as encoding a small record. Encoding keeps no state, so threads may share it.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dumps(value: JsonValue) -> str:
    """Canonical JSON text of ``value``.

    Raises:
        TypeError: a float, a non-str key or another non-JSON type is inside.
    """
    _check(value, "$")
    return _CANONICAL.encode(value)


def dumps_flat(record: Mapping[str, int | str | None], where: str) -> str:
    """Canonical JSON text of a flat record whose values are int, str or None.

    Stricter than `dumps` (bools are refused too) and cheaper: no walk in the usual case.

    Raises:
        TypeError: a key is not a str, or a value is not an int, a str or None; the message
            starts with ``where``.
    """
    # Exact types first (a C-level pass over the record); subclasses such as a StrEnum value
    # and every mistake take the slow path, which accepts the one and names the other.
    if not (
        _PLAIN_TYPES.issuperset(map(type, record.values())) and _STR.issuperset(map(type, record))
    ):
        _check_flat(record, where)
    return _CANONICAL.encode(record if isinstance(record, dict) else dict(record))


_PLAIN_TYPES = frozenset({int, str, type(None)})
_STR = frozenset({str})


def _check_flat(record: Mapping[str, int | str | None], where: str) -> None:
    for name, value in record.items():
        if not isinstance(name, str):
            raise TypeError(f"{where}: JSON object keys must be str, got {name!r}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | str)):
            raise TypeError(
                f"{where} field {name!r} must be int, str or None, got {type(value).__name__}"
            )


def loads_object(text: str) -> dict[str, Any]:
    """Parse JSON text that must hold an object."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    return value
