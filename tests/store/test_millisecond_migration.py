"""Store schema 10: saved billing states move from whole seconds to milliseconds (issue 12).

A file written before millisecond billing holds ``billing.last_ts`` in UTC seconds; opening it
migrates every account record to ``billing.last_ms`` (x 1000) in one transaction, keeping the
record canonical, and leaves records without the key alone.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.store import Store, jsontext
from gateway.store import db as store_db
from tests.store.conftest import KEY

# What the previous release saved for an account billed at 2026-05-10T01:00:00Z (1778374800 s).
OLD_RECORD: dict[str, int | str | None] = {
    "tariff": "zhejiang_residential_electricity",
    "class": "resident",
    "balance_minor": 9_946,
    "meter.wraps": 0,
    "billing.cycle_id": 2026,
    "billing.usage_milli": 1_000,
    "billing.net_acc": 538_000_000,
    "billing.tax_acc": 0,
    "billing.tax_rem": 0,
    "billing.last_ts": 1_778_374_800,
    "billing.last_register_milli": 1_001_000,
    "billing.standing_day": 739_746,
    "hold.first": None,
    "hold.level_at": "2026-05-10T01:00:00.250000+00:00",
    "policy.mode": "normal",
}
NEVER_BILLED: dict[str, int | str | None] = {
    **OLD_RECORD,
    "billing.last_ts": None,
    "billing.cycle_id": None,
}
CURSOR = {"seq": 41}  # a flow's cursor shares the table and has no billing state


def _previous_version() -> int:
    return store_db.MIGRATIONS.index(store_db._V10)  # the version before the step under test


def _old_file(path: Path) -> None:
    """A store file as the release before millisecond billing left it."""
    conn = store_db.connect(path)
    try:
        previous = _previous_version()
        assert store_db.migrate(conn, 0, store_db.MIGRATIONS[:previous]) == previous
        conn.executemany(
            "INSERT INTO account_state (account_id, state_json, updated_at_us) VALUES (?, ?, 1)",
            [
                ("A1", jsontext.dumps_flat(OLD_RECORD, "A1")),
                ("A2", jsontext.dumps_flat(NEVER_BILLED, "A2")),
                ("ticket_feed", jsontext.dumps_flat(CURSOR, "cursor")),
            ],
        )
    finally:
        conn.close()


def _stored_text(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT account_id, state_json FROM account_state"))
    finally:
        conn.close()


def test_migration_10_last_billed_second_becomes_millisecond_canonically(db_path: Path) -> None:
    _old_file(db_path)
    with Store(db_path, ledger_key=KEY) as store:  # opening migrates the file forward
        assert store.schema_version == store_db.SCHEMA_VERSION
        records = store.load_account_states()
    expected_a1 = {k: v for k, v in OLD_RECORD.items() if k != "billing.last_ts"}
    expected_a1["billing.last_ms"] = 1_778_374_800_000  # 1778374800 s x 1000
    expected_a2 = {k: v for k, v in NEVER_BILLED.items() if k != "billing.last_ts"}
    expected_a2["billing.last_ms"] = None
    assert records == {"A1": expected_a1, "A2": expected_a2, "ticket_feed": CURSOR}
    # Byte for byte what the gateway itself writes: sorted keys, no spaces.
    assert _stored_text(db_path) == {
        "A1": jsontext.dumps_flat(expected_a1, "A1"),
        "A2": jsontext.dumps_flat(expected_a2, "A2"),
        "ticket_feed": jsontext.dumps_flat(CURSOR, "cursor"),
    }


def test_migration_10_runs_once(db_path: Path) -> None:
    # A migrated file opened again is not scaled again (its key is last_ms now).
    _old_file(db_path)
    Store(db_path, ledger_key=KEY).close()
    with Store(db_path, ledger_key=KEY) as store:
        records = store.load_account_states()
    assert records["A1"]["billing.last_ms"] == 1_778_374_800_000
