"""The root of prepay-gateway's error tree.

It lives in the bottom layer so that every package (billing engine, drivers, gateway) raises the
same types; `gateway.errors` re-exports these and adds the gateway's own.
"""

from __future__ import annotations


class PrepayError(Exception):
    """Base class of every error prepay-gateway raises on purpose."""


class ConfigError(PrepayError):
    """An operator file is wrong. Printed as ``FILE:LINE: field: message``.

    Attributes:
        path: the file, as given by the operator.
        line: 1-based line of the offending node, or 0 when the file could not be parsed at all.
        field: dotted path of the field inside the document (``versions.0.classes.resident.tiers``).
        message: what is wrong and, where possible, how to fix it.
    """

    def __init__(self, path: str, line: int, field: str, message: str) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


class InvalidConfigError(PrepayError):
    """Several `ConfigError`s found in one pass, so the operator fixes them all at once."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
