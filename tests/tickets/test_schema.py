"""Schema version 6: a version-5 store gains the ticket tables and keeps what it held; what was
used stays used (no update, no delete)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.store import Store
from gateway.store import db as store_db
from gateway.store.tickets import CodeKey, Grant, RedemptionRequest, TicketStore

KEY = b"k" * 32


def test_schema_version_5_store_migrates_to_6_keeping_its_incarnation(tmp_path: Path) -> None:
    path = tmp_path / "v5.sqlite"
    conn = store_db.connect(path)
    assert store_db.migrate(conn, 0, store_db.MIGRATIONS[:5]) == 5
    incarnation = store_db.incarnation(conn)
    conn.close()
    with TicketStore(path, box_id="b1") as tickets:
        assert tickets.incarnation == incarnation
        assert tickets.batches() == []
    with Store(path, ledger_key=KEY) as store:
        assert store.schema_version == store_db.SCHEMA_VERSION
        assert store.incarnation == incarnation


def test_schema_redemptions_cannot_be_changed_or_removed(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with TicketStore(path, box_id="b1") as tickets:
        request = RedemptionRequest(
            CodeKey("3301020000100008", "330102", 10_000), "r1", "paper", ""
        )
        assert tickets.redeem(request, lambda _: Grant("18.9L", 1)).redeemed is not None
    conn = sqlite3.connect(path)
    try:
        for statement in (
            "UPDATE ticket_redemptions SET code = '0'",
            "DELETE FROM ticket_redemptions",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(statement)
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute(
                "INSERT INTO ticket_redemptions (code, redemption_id, kind, product, quantity,"
                " box_id, incarnation, where_text, redeemed_at_us)"
                " VALUES ('3301020000100008', 'r2', 'paper', '18.9L', 1, 'b2', 'x', '', 0)"
            )
    finally:
        conn.close()
