"""The value types a codec and its decode hooks share: `DecodedValue`, `Values`, `Hook`.

Why a module of its own: `drivers.lorawan.codec` looks hooks up in `drivers.lorawan.hooks.HOOKS`
(to validate a codec's ``hook:`` and to run it), and the hooks need the types of what they take
and return. With the types here, the imports run one way (codec -> hooks -> codec_types) and
neither side needs an import inside a function.
"""

from __future__ import annotations

from collections.abc import Callable

DecodedValue = int | float | str | bool
"""One decoded value. Registers stay integers; only scaled display values become floats."""

Values = dict[str, DecodedValue]
"""Decoded values by field name."""

Hook = Callable[[bytes, int | None, Values], Values]
"""A decode hook: (payload, f_port, values decoded by the table) -> values to add or replace."""
