"""Tamper evidence: verify_ledger names the seq and the kind of every edit, insert or delete.

Tampering is done the way an attacker with the file would: raw SQL on a separate connection,
after dropping the append-only triggers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store import ChainHead, EntryKind, ProblemKind, Store, StoreError, verify_ledger
from tests.store.conftest import KEY, T0

ENTRIES = 5


@pytest.fixture
def ledger_path(db_path: Path) -> Path:
    """A store file with entries 1..5: a top-up of 10000 then four deductions of -100."""
    with Store(db_path, ledger_key=KEY) as store, store.transaction() as tx:
        tx.append_entry("a", EntryKind.TOPUP, 10_000, "EUR", "t1", created_at=T0)
        for i in range(2, ENTRIES + 1):
            tx.append_entry("a", EntryKind.DEDUCTION, -100, "EUR", f"r{i}", created_at=T0)
    return db_path


@pytest.fixture
def raw(ledger_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(ledger_path, isolation_level=None)
    conn.execute("DROP TRIGGER ledger_no_update")
    conn.execute("DROP TRIGGER ledger_no_delete")
    yield conn
    conn.close()


def problems(path: Path) -> set[tuple[ProblemKind, int | None]]:
    return {(p.kind, p.seq) for p in verify_ledger(path, KEY).problems}


def test_verify_clean_ledger_ok(ledger_path: Path) -> None:
    report = verify_ledger(ledger_path, KEY)
    assert report.ok
    assert report.problems == ()
    assert report.entries_checked == ENTRIES
    assert report.head is not None
    assert report.head.seq == ENTRIES


def test_verify_empty_ledger_ok(db_path: Path) -> None:
    Store(db_path, ledger_key=KEY).close()
    report = verify_ledger(db_path, KEY)
    assert report.ok
    assert report.head is None


def test_verify_updated_amount_flags_that_row_and_balance(
    ledger_path: Path, raw: sqlite3.Connection
) -> None:
    raw.execute("UPDATE ledger SET amount_minor = -1 WHERE seq = 3")
    found = problems(ledger_path)
    assert (ProblemKind.MAC_MISMATCH, 3) in found
    assert (ProblemKind.BALANCE_MISMATCH, None) in found
    # One edit flags one row: the chain goes on from the stored MAC.
    assert {seq for kind, seq in found if kind is ProblemKind.MAC_MISMATCH} == {3}


def test_verify_updated_amount_and_cache_still_flags_mac(
    ledger_path: Path, raw: sqlite3.Connection
) -> None:
    # A careful attacker also fixes the cached balance; the MAC still gives it away.
    raw.execute("UPDATE ledger SET amount_minor = -1 WHERE seq = 3")
    raw.execute("UPDATE ledger_accounts SET balance_minor = balance_minor + 99")
    assert problems(ledger_path) == {(ProblemKind.MAC_MISMATCH, 3)}


def test_verify_edited_detail_flags_row(ledger_path: Path, raw: sqlite3.Connection) -> None:
    raw.execute("""UPDATE ledger SET detail_json = '{"note":"x"}' WHERE seq = 2""")
    assert problems(ledger_path) == {(ProblemKind.MAC_MISMATCH, 2)}


def test_verify_forged_row_appended(ledger_path: Path, raw: sqlite3.Connection) -> None:
    raw.execute(
        "INSERT INTO ledger (seq, account_id, kind, amount_minor, currency, idempotency_key,"
        " ref, detail_json, created_at_us, mac) VALUES (6, 'a', 'topup', 99999, 'EUR', 'forged',"
        " '', '{}', 0, zeroblob(32))"
    )
    raw.execute("UPDATE ledger_accounts SET balance_minor = balance_minor + 99999")
    found = problems(ledger_path)
    assert found == {(ProblemKind.MAC_MISMATCH, 6), (ProblemKind.AFTER_CHECKPOINT, 6)}


def test_verify_forged_row_with_copied_mac(ledger_path: Path, raw: sqlite3.Connection) -> None:
    # Copying a genuine MAC does not help: the MAC covers seq and content.
    raw.execute(
        "INSERT INTO ledger (seq, account_id, kind, amount_minor, currency, idempotency_key,"
        " ref, detail_json, created_at_us, mac) SELECT 6, account_id, kind, amount_minor,"
        " currency, 'copy', ref, detail_json, created_at_us, mac FROM ledger WHERE seq = 1"
    )
    found = problems(ledger_path)
    assert (ProblemKind.MAC_MISMATCH, 6) in found
    assert (ProblemKind.AFTER_CHECKPOINT, 6) in found


def test_verify_deleted_middle_row_gap_and_mac_break(
    ledger_path: Path, raw: sqlite3.Connection
) -> None:
    raw.execute("DELETE FROM ledger WHERE seq = 3")
    raw.execute("UPDATE ledger_accounts SET balance_minor = balance_minor + 100")
    found = problems(ledger_path)
    assert found == {(ProblemKind.SEQ_GAP, 3), (ProblemKind.MAC_MISMATCH, 4)}


def test_verify_deleted_first_row(ledger_path: Path, raw: sqlite3.Connection) -> None:
    raw.execute("DELETE FROM ledger WHERE seq = 1")
    found = problems(ledger_path)
    assert (ProblemKind.SEQ_GAP, 1) in found
    assert (ProblemKind.MAC_MISMATCH, 2) in found


def test_verify_deleted_last_row_caught_by_checkpoint(
    ledger_path: Path, raw: sqlite3.Connection
) -> None:
    raw.execute("DELETE FROM ledger WHERE seq = 5")
    raw.execute("UPDATE ledger_accounts SET balance_minor = balance_minor + 100, last_seq = 4")
    assert problems(ledger_path) == {(ProblemKind.TAIL_DELETED, 5)}


def test_verify_deleted_tail_with_rewound_checkpoint(
    ledger_path: Path, raw: sqlite3.Connection
) -> None:
    # The attacker also points the checkpoint at seq 4 (without the key, the tag is wrong).
    mac4 = raw.execute("SELECT hex(mac) FROM ledger WHERE seq = 4").fetchone()[0].lower()
    raw.execute("DELETE FROM ledger WHERE seq = 5")
    raw.execute(
        "UPDATE meta SET value = json_object('seq', 4, 'mac', ?, 'tag', json_extract(value,"
        " '$.tag')) WHERE key = 'ledger_head'",
        (mac4,),
    )
    raw.execute("UPDATE ledger_accounts SET balance_minor = balance_minor + 100")
    assert problems(ledger_path) == {(ProblemKind.CHECKPOINT_INVALID, 4)}


def test_verify_restored_older_copy_caught_by_published_head(db_path: Path, tmp_path: Path) -> None:
    # Rolling the whole file back to an older copy is consistent locally; the head the
    # gateway published upstream is what catches it.
    old_copy = tmp_path / "old.sqlite3"
    with Store(db_path, ledger_key=KEY) as store:
        with store.transaction() as tx:
            tx.append_entry("a", EntryKind.TOPUP, 100, "EUR", "t1", created_at=T0)
        source, target = sqlite3.connect(db_path), sqlite3.connect(old_copy)
        source.backup(target)
        source.close()
        target.close()
        with store.transaction() as tx:
            tx.append_entry("a", EntryKind.DEDUCTION, -50, "EUR", "r1", created_at=T0)
        published = store.chain_head()
    assert published is not None
    assert verify_ledger(db_path, KEY, expected_head=published).ok
    rolled_back = verify_ledger(old_copy, KEY, expected_head=published)
    assert rolled_back.ok is False
    assert {(p.kind, p.seq) for p in rolled_back.problems} == {
        (ProblemKind.EXPECTED_HEAD_MISSING, 2)
    }


def test_verify_wrong_key(ledger_path: Path) -> None:
    report = verify_ledger(ledger_path, b"w" * 32)
    kinds = {p.kind for p in report.problems}
    assert ProblemKind.WRONG_KEY in kinds
    assert report.kinds_at(1) == {ProblemKind.MAC_MISMATCH}
    assert ProblemKind.CHECKPOINT_INVALID in kinds


def test_verify_cached_balance_mismatch(ledger_path: Path, raw: sqlite3.Connection) -> None:
    raw.execute("UPDATE ledger_accounts SET balance_minor = 1")
    report = verify_ledger(ledger_path, KEY)
    assert [(p.kind, p.account_id) for p in report.problems] == [
        (ProblemKind.BALANCE_MISMATCH, "a")
    ]
    assert "9600" in report.problems[0].message  # 10000 - 4 * 100


def test_verify_via_store_matches_function(ledger_path: Path, raw: sqlite3.Connection) -> None:
    raw.execute("UPDATE ledger SET ref = 'x' WHERE seq = 4")
    with Store(ledger_path, ledger_key=KEY) as store:
        report = store.verify_ledger()
    assert {(p.kind, p.seq) for p in report.problems} == {(ProblemKind.MAC_MISMATCH, 4)}


def test_verify_expected_head_with_wrong_mac(ledger_path: Path) -> None:
    forged = ChainHead(seq=3, mac_hex="00" * 32, tag_hex="00" * 32)
    report = verify_ledger(ledger_path, KEY, expected_head=forged)
    assert {(p.kind, p.seq) for p in report.problems} == {(ProblemKind.EXPECTED_HEAD_MISSING, 3)}


def test_verify_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such"):
        verify_ledger(tmp_path / "absent.sqlite3", KEY)
