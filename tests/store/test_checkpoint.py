"""A head published earlier catches what the chain alone cannot: an older copy of the store, a
ledger cut back together with its checkpoint, emptied ledger tables, a ledger that diverged.

Each of those is a valid chain on its own (``verify`` says ok); against the newer head it
fails, and against its own head it passes. Through the store API, `verify_ledger` and the
operator's ``prepay ledger verify --expected-head / --checkpoint``. Also: the store's
incarnation (migration 5) and the signed checkpoint document.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.cli import main
from gateway.northbound.payloads import CheckpointPayload, encode_payload
from gateway.northbound.receipts import InvalidCheckpointError, make_checkpoint, verify_checkpoint
from gateway.northbound.signing import load_private_key
from gateway.ops.keys import init_keys
from gateway.startup import STATE_FILE
from gateway.store import (
    ChainHead,
    EntryKind,
    ProblemKind,
    Store,
    parse_head,
    verify_ledger,
)
from gateway.store import db as store_db
from gateway.store.ledger import GENESIS_MAC
from tests.store.conftest import T0

DOC = Path(__file__).parents[2] / "docs" / "mqtt-api.md"
GATEWAY_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))  # the docs' test key


class Site:
    """A state directory with a real store, and the ledger key file of ``prepay keys init``."""

    def __init__(self, root: Path) -> None:
        init_keys(root / "keys")
        self.key_file = root / "keys" / "ledger.key"
        self.key = bytes.fromhex(self.key_file.read_text().strip())
        self.state = root / "state"
        self.state.mkdir()
        self.path = self.state / STATE_FILE
        self.topups = 0

    def top_up(self, n: int) -> tuple[int, str]:
        """Append ``n`` top-ups (one transaction each); returns the head (seq, mac hex)."""
        with Store(self.path, ledger_key=self.key) as store:
            for _ in range(n):
                self.topups += 1
                with store.transaction() as tx:
                    tx.append_entry(
                        "A1", EntryKind.TOPUP, 100, "CNY", f"topup:{self.topups}", created_at=T0
                    )
            seq, mac = store.ledger_head()
            return seq, mac.hex()

    def copy_to(self, other: Path) -> Path:
        """A copy of the closed state directory, as a backup would take it."""
        shutil.copytree(self.state, other)
        return other

    def raw(self) -> sqlite3.Connection:
        """The file as a tamperer opens it: the append-only guards dropped first."""
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("DROP TRIGGER ledger_no_update")
        conn.execute("DROP TRIGGER ledger_no_delete")
        return conn

    def verify(self, *extra: str, state: Path | None = None) -> int:
        argv = ["ledger", "verify", "--state", str(state or self.state), "--key"]
        return main([*argv, str(self.key_file), *extra])


def head(seq: int, mac_hex: str) -> ChainHead:
    return ChainHead(seq=seq, mac_hex=mac_hex, tag_hex="")


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def test_checkpoint_older_copy_fails_against_newer_head_passes_against_its_own(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_seq, old_mac = site.top_up(3)
    old_state = site.copy_to(tmp_path / "old-state")
    new_seq, new_mac = site.top_up(2)
    assert (old_seq, new_seq) == (3, 5)
    old_file = old_state / STATE_FILE

    # On its own the older copy is a perfect ledger.
    assert verify_ledger(old_file, site.key).ok
    report = verify_ledger(old_file, site.key, head(new_seq, new_mac))
    assert [(p.kind, p.seq) for p in report.problems] == [(ProblemKind.EXPECTED_HEAD_MISSING, 5)]
    assert "ends at seq 3, before the expected head at seq 5" in report.problems[0].message
    assert verify_ledger(old_file, site.key, head(old_seq, old_mac)).ok
    assert verify_ledger(site.path, site.key, head(old_seq, old_mac)).ok  # newer holds older
    assert verify_ledger(site.path, site.key, head(new_seq, new_mac)).ok

    capsys.readouterr()
    assert site.verify("--expected-head", f"{new_seq}:{new_mac}", state=old_state) == 1
    assert "seq 5: expected_head_missing: the ledger ends at seq 3" in capsys.readouterr().err
    assert site.verify("--expected-head", f"{old_seq}:{old_mac}", state=old_state) == 0
    assert "holds the expected head at seq 3" in capsys.readouterr().out
    assert site.verify("--expected-head", f"{new_seq}:{new_mac}") == 0


def test_checkpoint_cut_back_with_old_checkpoint_restored_fails(site: Site, tmp_path: Path) -> None:
    old_seq, old_mac = site.top_up(3)
    conn = sqlite3.connect(site.path)
    old_checkpoint = conn.execute("SELECT value FROM meta WHERE key = 'ledger_head'").fetchone()[0]
    conn.close()
    new_seq, new_mac = site.top_up(3)
    raw = site.raw()
    raw.execute("DELETE FROM ledger_accounts")
    raw.execute("DELETE FROM ledger WHERE seq > ?", (old_seq,))
    raw.execute(
        "INSERT INTO ledger_accounts (account_id, currency, balance_minor, last_seq)"
        " VALUES ('A1', 'CNY', 300, 3)"
    )
    raw.execute("UPDATE meta SET value = ? WHERE key = 'ledger_head'", (old_checkpoint,))
    raw.close()

    assert verify_ledger(site.path, site.key).ok  # the tag was made by the key: it checks
    assert site.verify("--expected-head", f"{new_seq}:{new_mac}") == 1
    assert site.verify("--expected-head", f"{old_seq}:{old_mac}") == 0


def test_checkpoint_emptied_ledger_fails_against_any_published_head(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    seq, mac = site.top_up(4)
    raw = site.raw()
    raw.execute("DELETE FROM ledger_accounts")
    raw.execute("DELETE FROM ledger")
    raw.execute("DELETE FROM meta WHERE key = 'ledger_head'")
    raw.close()

    assert site.verify() == 0  # an empty ledger is a valid ledger
    capsys.readouterr()
    assert site.verify("--expected-head", f"{seq}:{mac}") == 1
    assert "the ledger ends at seq 0, before the expected head at seq 4" in capsys.readouterr().err
    assert site.verify("--expected-head", f"0:{GENESIS_MAC.hex()}") == 0  # its own head


def test_checkpoint_diverged_ledger_fails_at_the_same_seq(site: Site, tmp_path: Path) -> None:
    site.top_up(2)
    backup = site.copy_to(tmp_path / "backup")
    seq, mac = site.top_up(2)
    # Restore the backup, and let it run on: it reaches seq 4 again, with other entries.
    shutil.rmtree(site.state)
    shutil.copytree(backup, site.state)
    site.topups += 10
    again_seq, again_mac = site.top_up(2)
    assert again_seq == seq
    assert again_mac != mac

    report = verify_ledger(site.path, site.key, head(seq, mac))
    assert [(p.kind, p.seq) for p in report.problems] == [(ProblemKind.EXPECTED_HEAD_MISSING, 4)]
    assert "diverged" in report.problems[0].message
    assert verify_ledger(site.path, site.key, head(again_seq, again_mac)).ok


def test_checkpoint_file_checked_with_its_signature_and_store(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seq, mac = site.top_up(2)
    with Store(site.path, ledger_key=site.key) as store:
        incarnation = store.incarnation
    gateway_pub = tmp_path / "keys" / "gateway.pub.pem"
    gateway_key = load_private_key((tmp_path / "keys" / "gateway.pem").read_bytes())

    def saved(name: str, checkpoint: CheckpointPayload) -> str:
        path = tmp_path / name
        path.write_bytes(encode_payload(checkpoint))
        return str(path)

    good = make_checkpoint(
        "test-site", incarnation, seq, bytes.fromhex(mac), ts=T0, gateway_key=gateway_key
    )
    ahead = make_checkpoint(
        "test-site", incarnation, seq + 1, bytes(32), ts=T0, gateway_key=gateway_key
    )
    other_store = make_checkpoint(
        "test-site", "0123456789abcdef", seq, bytes.fromhex(mac), ts=T0, gateway_key=gateway_key
    )
    # Altered after signing (its time): the head is still right, the signature is not.
    forged = good.model_copy(update={"ts": T0.replace(year=2030)})

    capsys.readouterr()
    assert (
        site.verify("--checkpoint", saved("good.json", good), "--gateway-key", str(gateway_pub))
        == 0
    )
    assert site.verify("--checkpoint", saved("ahead.json", ahead)) == 1
    assert "expected_head_missing" in capsys.readouterr().err
    assert site.verify("--checkpoint", saved("other.json", other_store)) == 1
    assert "the checkpoint is of store 0123456789abcdef" in capsys.readouterr().err
    forged_file = saved("forged.json", forged)
    assert site.verify("--checkpoint", forged_file) == 0  # without the key: the head only
    assert site.verify("--checkpoint", forged_file, "--gateway-key", str(gateway_pub)) == 1
    assert "bad_signature" in capsys.readouterr().err


def test_checkpoint_cli_refuses_a_malformed_head(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    site.top_up(1)
    for bad in ("5", "x:00", f"1:{'0' * 10}", f"-1:{'0' * 64}", f"1:{'zz' * 32}"):
        assert site.verify(f"--expected-head={bad}") == 2, bad
        assert "--expected-head" in capsys.readouterr().err
    with pytest.raises(ValueError, match="64 hex digits"):
        parse_head("3:abcd")
    assert parse_head(f" 3:{'AB' * 32} ") == head(3, "ab" * 32)


def test_checkpoint_store_reads_head_and_mac_at(site: Site) -> None:
    with Store(site.path, ledger_key=site.key) as store:
        assert store.ledger_head() == (0, GENESIS_MAC)
        assert store.mac_at(0) == GENESIS_MAC
        assert store.mac_at(1) is None
        with store.transaction() as tx:
            tx.append_entry("A1", EntryKind.TOPUP, 5, "CNY", "t1", created_at=T0)
            tx.append_entry("A1", EntryKind.TOPUP, 6, "CNY", "t2", created_at=T0)
            assert tx.ledger_head()[0] == 2  # its own appends, before the commit
        entries = store.entries()
        assert store.ledger_head() == (2, entries[-1].mac)
        assert [store.mac_at(e.seq) for e in entries] == [e.mac for e in entries]
        assert store.mac_at(3) is None


def test_checkpoint_incarnation_made_once_per_store_and_kept(tmp_path: Path) -> None:
    key = b"k" * 32
    with Store(tmp_path / "a.sqlite", ledger_key=key) as a:
        first = a.incarnation
    with Store(tmp_path / "a.sqlite", ledger_key=key) as a:
        assert a.incarnation == first  # kept across reopening
    with Store(tmp_path / "b.sqlite", ledger_key=key) as b:
        assert b.incarnation != first
    assert re.fullmatch(r"[0-9a-f]{16}", first)


def test_checkpoint_migration_5_gives_an_existing_store_an_incarnation(tmp_path: Path) -> None:
    path = tmp_path / "v4.sqlite"
    conn = store_db.connect(path)
    assert store_db.migrate(conn, 0, store_db.MIGRATIONS[:4]) == 4
    conn.execute("INSERT INTO meta (key, value) VALUES ('kept', 'yes')")
    assert store_db.incarnation(conn) is None
    conn.close()
    with Store(path, ledger_key=b"k" * 32) as store:
        assert store.schema_version == store_db.SCHEMA_VERSION
        assert re.fullmatch(r"[0-9a-f]{16}", store.incarnation)
    assert verify_ledger(path, b"k" * 32).incarnation == store.incarnation


def test_checkpoint_document_signed_like_a_receipt() -> None:
    public = GATEWAY_KEY.public_key()
    checkpoint = make_checkpoint(
        "site-1", "3f9c2a71d04be815", 7, bytes(range(32)), ts=T0, gateway_key=GATEWAY_KEY
    )
    doc = json.loads(encode_payload(checkpoint))
    assert verify_checkpoint(doc, public) == checkpoint
    for field, value in (("seq", 8), ("mac", "00" * 32), ("incarnation", "0" * 16)):
        with pytest.raises(InvalidCheckpointError, match="bad_signature"):
            verify_checkpoint({**doc, field: value}, public)
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(InvalidCheckpointError, match="bad_signature"):
        verify_checkpoint(doc, other)
    with pytest.raises(InvalidCheckpointError, match="malformed"):
        verify_checkpoint({**doc, "seq": 1.5}, public)
    # The example in docs/mqtt-api.md is signed by the docs' test gateway key.
    example = re.search(r"<!-- example:CheckpointPayload -->\n```json\n(.*?)\n```", DOC.read_text())
    assert example is not None
    documented = json.loads(example.group(1))
    assert verify_checkpoint(documented, public).seq == documented["seq"]
