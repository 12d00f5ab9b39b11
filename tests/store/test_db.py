"""The file itself: settings, schema version, migrations, transactions, misuse."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from gateway.messages import MessageClass, Outgoing
from gateway.store import EntryKind, SchemaError, Store, StoreError, Transaction
from gateway.store import db as store_db
from tests.store.conftest import KEY, T0


def test_store_file_settings(store: Store, db_path: Path) -> None:
    assert store.schema_version == store_db.SCHEMA_VERSION
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == (
            store_db.SCHEMA_VERSION
        )
    finally:
        conn.close()


def test_store_newer_schema_refused(db_path: Path) -> None:
    Store(db_path, ledger_key=KEY).close()
    conn = sqlite3.connect(db_path)
    conn.execute("INSERT INTO schema_version (version, applied_at_us) VALUES (99, 0)")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError) as err:
        Store(db_path, ledger_key=KEY)
    assert (err.value.found, err.value.supported) == (99, store_db.SCHEMA_VERSION)


def test_migrate_applies_later_versions_forward(db_path: Path) -> None:
    Store(db_path, ledger_key=KEY).close()
    conn = store_db.connect(db_path)
    try:
        extra = ("CREATE TABLE extra (x INTEGER)",)
        following = store_db.SCHEMA_VERSION + 1
        assert store_db.migrate(conn, 0, (*store_db.MIGRATIONS, extra)) == following
        assert conn.execute("SELECT COUNT(*) FROM extra").fetchone()[0] == 0
        assert store_db.migrate(conn, 0, (*store_db.MIGRATIONS, extra)) == following
    finally:
        conn.close()


def test_failed_migration_leaves_previous_version(db_path: Path) -> None:
    Store(db_path, ledger_key=KEY).close()
    conn = store_db.connect(db_path)
    try:
        broken = ("CREATE TABLE half (x INTEGER)", "THIS IS NOT SQL")
        with pytest.raises(StoreError, match="migration failed"):
            store_db.migrate(conn, 0, (*store_db.MIGRATIONS, broken))
        assert store_db.schema_version(conn) == store_db.SCHEMA_VERSION
        assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'half'").fetchone() is None
    finally:
        conn.close()


def test_transaction_sqlite_error_wrapped_and_rolled_back(store: Store, db_path: Path) -> None:
    # The file refuses one kind of write (as a full disk or a broken file would): a trigger
    # added behind the store's back, so the error comes from SQLite itself.
    conn = sqlite3.connect(db_path)
    try:
        conn.execute(
            "CREATE TRIGGER refuse_events BEFORE INSERT ON events"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        conn.commit()
    finally:
        conn.close()

    def refused_write(tx: Transaction) -> None:
        tx.append_entry("a", EntryKind.TOPUP, 1, "EUR", "k", created_at=T0)
        tx.record_event("a", "topup", None, T0)

    with pytest.raises(StoreError), store.transaction() as tx:
        refused_write(tx)
    assert store.balance("a") == 0


def test_transaction_object_unusable_after_block(store: Store) -> None:
    with store.transaction() as tx:
        pass
    with pytest.raises(StoreError, match="ended"):
        tx.balance("a")


def test_closed_store_raises(db_path: Path) -> None:
    store = Store(db_path, ledger_key=KEY)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.pending(1)


def test_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        Store(tmp_path / "no" / "such" / "dir.sqlite3", ledger_key=KEY)


def test_concurrent_threads_serialised(store: Store) -> None:
    # Threads share one connection; the lock keeps each transaction whole.
    def work(name: str) -> None:
        for i in range(20):
            with store.transaction() as tx:
                tx.append_entry(name, EntryKind.TOPUP, 1, "EUR", f"k{i}", created_at=T0)
                tx.enqueue(Outgoing("t", f"{name}{i}".encode(), 1, False, MessageClass.LEDGER))

    threads = [threading.Thread(target=work, args=(f"acct{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [store.balance(f"acct{n}") for n in range(4)] == [20, 20, 20, 20]
    assert store.verify_ledger().ok
    assert store.outbox_stats().total_pending == 80


def test_second_store_on_same_file_sees_commits(db_path: Path, store: Store) -> None:
    with store.transaction() as tx:
        tx.append_entry("a", EntryKind.TOPUP, 5, "EUR", "k", created_at=T0)
    with Store(db_path, ledger_key=KEY) as other:
        assert other.balance("a") == 5


def test_a_version_1_file_is_migrated_to_allow_pruning_billed_readings_only(
    db_path: Path,
) -> None:
    conn = store_db.connect(db_path)
    try:
        assert store_db.migrate(conn, 0, store_db.MIGRATIONS[:1]) == 1  # a file from before
        conn.execute(
            "INSERT INTO readings (reading_id, meter_id, read_at_us, register_milli, source,"
            " quality, received_at_us, state) VALUES ('m@1', 'm', 1, 1, '', 'good', 1, 'billed'),"
            " ('m@2', 'm', 2, 2, '', 'good', 2, 'held')"
        )
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM readings WHERE reading_id = 'm@1'")
    finally:
        conn.close()
    with Store(db_path, ledger_key=KEY) as store:  # opening migrates the file forward
        assert store.schema_version == store_db.SCHEMA_VERSION
    conn = store_db.connect(db_path)
    try:
        conn.execute("DELETE FROM readings WHERE reading_id = 'm@1'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only until billed"):
            conn.execute("DELETE FROM readings WHERE reading_id = 'm@2'")
    finally:
        conn.close()
