"""The gateway's errors, under the common root in `billing_engine.base.errors`."""

from __future__ import annotations

from billing_engine.base.errors import ConfigError, InvalidConfigError, PrepayError

__all__ = ["CommandRejectedError", "ConfigError", "InvalidConfigError", "PrepayError"]


class CommandRejectedError(PrepayError):
    """A backend command was refused; ``reason`` is a stable machine-readable code.

    Attributes:
        reason: one of malformed, bad_signature, expired, not_yet_valid, wrong_site,
            unknown_account, non_positive_amount, currency_mismatch, duplicate_conflict, ...
        detail: a human sentence for the operator.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)
