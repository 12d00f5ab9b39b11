"""Errors raised by the local store, under the common `PrepayError` root.

Each carries the identifiers an operator needs as attributes; none carries key material.
"""

from __future__ import annotations

from billing_engine.base.errors import PrepayError


class StoreError(PrepayError):
    """The local database failed or refused an operation (I/O error, locked, corrupt, misuse)."""


class SchemaError(StoreError):
    """The database file was written by a newer gateway; refusing to open it (no downgrades).

    Attributes:
        found: the schema version in the file.
        supported: the newest version this code knows.
    """

    def __init__(self, found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        super().__init__(
            f"database schema version {found} is newer than this gateway supports "
            f"({supported}); install a newer gateway or restore a matching backup"
        )


class LedgerKeyError(StoreError):
    """The ledger key is unusable or is not the key this ledger was created with."""


class IdempotencyConflictError(StoreError):
    """An idempotency key was reused with different parameters.

    Attributes:
        key: the reused key.
        reason: what differs, e.g. ``amount_minor 500 != 700``.
    """

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"idempotency key {key!r} reused with different parameters: {reason}")


class LedgerConflictError(IdempotencyConflictError):
    """A ledger entry key was reused for a different kind, amount or currency.

    Attributes:
        account_id: the account the key belongs to.
    """

    def __init__(self, account_id: str, key: str, reason: str) -> None:
        self.account_id = account_id
        super().__init__(key, f"account {account_id}: {reason}")


class CommandConflictError(IdempotencyConflictError):
    """A command id was reused for a different kind of command."""


class ReceiptConflictError(IdempotencyConflictError):
    """A top-up already has a different receipt (or the receipt seq is taken)."""


class InvalidEntryError(StoreError):
    """A ledger entry was refused before writing (wrong sign, wrong type, currency mismatch)."""


class JournalStateError(StoreError):
    """A journalled reading is not in a state that allows the transition asked for.

    Attributes:
        row_id: the journal row.
        state: its current state (or ``missing``).
    """

    def __init__(self, row_id: int, state: str, wanted: str) -> None:
        self.row_id = row_id
        self.state = state
        super().__init__(f"journal row {row_id} is {state}; cannot mark it {wanted}")


class JournalRowError(StoreError):
    """The journal refused one reading for what it holds (a register beyond int64, a value that
    breaks a CHECK): a fault of that row alone, not of the database.

    Raised out of the transaction, which then rolls back; the caller may journal the other
    readings of the batch without it.

    Attributes:
        reading_id: the refused reading.
        meter_id: its meter.
    """

    def __init__(self, reading_id: str, meter_id: str, cause: str) -> None:
        self.reading_id = reading_id
        self.meter_id = meter_id
        super().__init__(f"journal refused reading {reading_id} of meter {meter_id}: {cause}")
