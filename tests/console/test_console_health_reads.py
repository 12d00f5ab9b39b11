"""The console's health figures read from the store as it is (no daemon, no browser)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from gateway.console.reads import Reads
from gateway.store import EntryKind, Store

KEY = b"k" * 32
T0 = datetime(2026, 6, 1, tzinfo=UTC)


async def test_health_counts_ledger_entries_and_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "prepay.sqlite"
    with Store(path, ledger_key=KEY) as store:
        assert (await Reads(path, dict).health()).ledger_entries == 0  # an empty ledger
        for n in range(3):
            with store.transaction() as tx:
                tx.append_entry("a1", EntryKind.TOPUP, 500, "CNY", f"topup:{n}", created_at=T0)
        with store.transaction() as tx:  # a replayed top-up: no new entry
            tx.append_entry("a1", EntryKind.TOPUP, 500, "CNY", "topup:0", created_at=T0)
        health = await Reads(path, dict).health()
    assert health.ledger_entries == 3
    assert health.journal == {"unbilled": 0, "billed": 0, "held": 0}
