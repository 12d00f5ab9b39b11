"""Stored receipts, read without the keys and without writing: ``prepay receipt print`` reads
them while the daemon runs.

The file is opened with ``mode=ro`` inside one deferred read transaction, as
`gateway.store.statements.open_view` does (in WAL mode a reader never blocks the writer).
A receipt is stored as the canonical JSON that was signed and its signature, so the signed
document is those fields plus ``signature``, byte for byte what the gateway issued.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.store import receipts
from gateway.store.receipts import Receipt
from gateway.store.statements import read_snapshot


class ReceiptReader:
    """Receipts of one snapshot of the store; obtained from `open_receipts`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def by_topup(self, topup_id: str) -> Receipt | None:
        """The receipt of top-up ``topup_id``, or None when it has none."""
        return receipts.receipt_for(self._conn, "topup", topup_id)

    def by_subject(self, kind: str, subject: str) -> Receipt | None:
        """The receipt of ``subject`` of ``kind`` (`gateway.store.receipts`), or None."""
        return receipts.receipt_for(self._conn, kind, subject)

    def by_seq(self, seq: int) -> Receipt | None:
        """The receipt numbered ``seq`` in this store, or None."""
        return receipts.receipt_by_seq(self._conn, seq)

    def latest(self) -> Receipt | None:
        """The newest receipt, or None when the store has issued none."""
        return receipts.latest_receipt(self._conn)


def signed_document(receipt: Receipt) -> dict[str, Any]:
    """The signed receipt as the gateway issued it: the stored fields plus ``signature``."""
    fields: dict[str, Any] = json.loads(receipt.payload)
    return {**fields, "signature": receipt.signature.decode("ascii")}


@contextmanager
def open_receipts(path: Path) -> Iterator[ReceiptReader]:
    """A read-only snapshot of the receipts in the store file at ``path``.

    Raises:
        StoreError: there is no such file, or it cannot be read as a store.
    """
    with read_snapshot(path) as conn:
        yield ReceiptReader(conn)
