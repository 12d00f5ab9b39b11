"""The gateway's local store: one SQLite file (WAL) holding the reading journal, the prepaid
ledger, the outbox, command results and receipts, events and per-account runtime state.

Start at `Store` and `Store.transaction`.
"""

from __future__ import annotations

from gateway.store.account_records import AccountRecord
from gateway.store.errors import (
    CommandConflictError,
    IdempotencyConflictError,
    InvalidEntryError,
    JournalRowError,
    JournalStateError,
    LedgerConflictError,
    LedgerKeyError,
    ReceiptConflictError,
    SchemaError,
    StoreError,
)
from gateway.store.events import Event
from gateway.store.journal import JournalRow, JournalState
from gateway.store.ledger import (
    ChainHead,
    EntryKind,
    LedgerEntry,
    LedgerProblem,
    LedgerReport,
    ProblemKind,
    parse_head,
)
from gateway.store.outbox import NOT_QUEUED, OutboxStats
from gateway.store.receipts import Receipt
from gateway.store.transaction import Store, Transaction, verify_ledger

__all__ = [
    "NOT_QUEUED",
    "AccountRecord",
    "ChainHead",
    "CommandConflictError",
    "EntryKind",
    "Event",
    "IdempotencyConflictError",
    "InvalidEntryError",
    "JournalRow",
    "JournalRowError",
    "JournalState",
    "JournalStateError",
    "LedgerConflictError",
    "LedgerEntry",
    "LedgerKeyError",
    "LedgerProblem",
    "LedgerReport",
    "OutboxStats",
    "ProblemKind",
    "Receipt",
    "ReceiptConflictError",
    "SchemaError",
    "Store",
    "StoreError",
    "Transaction",
    "parse_head",
    "verify_ledger",
]
