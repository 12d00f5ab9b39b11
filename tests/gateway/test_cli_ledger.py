"""`prepay ledger verify`: clean ledger ok; an edited row is named by its sequence number."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.ops.keys import init_keys
from gateway.startup import STATE_FILE
from gateway.store import EntryKind, Store

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def test_cli_ledger_verify_clean_then_tampered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init_keys(tmp_path / "keys")
    key_file = tmp_path / "keys" / "ledger.key"
    key = bytes.fromhex(key_file.read_text().strip())
    state = tmp_path / "state"
    state.mkdir()
    with Store(state / STATE_FILE, ledger_key=key) as store:
        for i in range(5):
            with store.transaction() as tx:
                tx.append_entry("A1", EntryKind.TOPUP, 100 + i, "CNY", f"t{i}", created_at=T0)
    argv = ["ledger", "verify", "--state", str(state), "--key", str(key_file)]
    assert main(argv) == 0
    assert "ledger ok: 5 entries" in capsys.readouterr().out

    conn = sqlite3.connect(state / STATE_FILE)
    triggers = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")]
    for name in triggers:  # a tamperer drops the append-only guards first
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("UPDATE ledger SET amount_minor = 9999 WHERE seq = 3")
    conn.commit()
    conn.close()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "seq 3: mac_mismatch" in err
