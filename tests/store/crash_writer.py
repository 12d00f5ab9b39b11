"""Child process for the crash test: bills readings as fast as it can until killed.

Usage: ``python crash_writer.py DB_PATH STOP``. For i = 0, 1, ... STOP-1 it runs one
transaction like the pipeline's: journal reading i, append its deduction (key ``r<i>``),
mark it billed, enqueue one LEDGER message whose payload is the key, and save the account
state ``{"last": i}``. Already-committed readings (after a restart) are skipped by the
idempotency keys, exactly as the pipeline would. After each commit it prints ``i created``.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drivers.ports import Reading
from gateway.messages import MessageClass, Outgoing
from gateway.store import EntryKind, Store

KEY = b"crash-test-ledger-key-32-bytes!!"
T0 = datetime(2025, 1, 1, tzinfo=UTC)
ACCOUNT = "acct-1"
TOPUP_MINOR = 1_000_000


def deduction_minor(i: int) -> int:
    """The charge of reading i (varied, so a lost or doubled entry changes the balance)."""
    return i % 7 + 1


def main() -> None:
    path, stop = Path(sys.argv[1]), int(sys.argv[2])
    with Store(path, ledger_key=KEY, max_outbox_messages=1_000_000) as store:
        with store.transaction() as tx:
            tx.append_entry(ACCOUNT, EntryKind.TOPUP, TOPUP_MINOR, "EUR", "topup", created_at=T0)
        for i in range(stop):
            reading = Reading("m1", T0 + timedelta(seconds=i), 1000 * i, source="crash")
            with store.transaction() as tx:
                (row_id,) = tx.journal_readings([reading], T0)
                entry, created = tx.append_entry(
                    ACCOUNT,
                    EntryKind.DEDUCTION,
                    -deduction_minor(i),
                    "EUR",
                    f"r{i}",
                    created_at=reading.read_at,
                    ref=reading.reading_id,
                )
                if created:
                    if row_id is None:
                        raise RuntimeError(f"reading {i} journalled without its deduction")
                    tx.mark_billed(row_id, "billed", deduction_minor(i), {"seq": entry.seq})
                    tx.enqueue(
                        Outgoing("site/ledger", f"r{i}".encode(), 1, False, MessageClass.LEDGER)
                    )
                    tx.save_account_state(ACCOUNT, {"last": i})
            sys.stdout.write(f"{i} {int(created)}\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
