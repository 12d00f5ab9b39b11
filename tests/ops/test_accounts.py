"""``prepay account list|show|statement``: read from a real store, with and without the daemon.

The statement's store is written through the store's own API (`Store.transaction`), so that each
entry has the time a test can name; the list is read from a store a running daemon billed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.ports import Reading
from gateway.cli import main
from gateway.config import load_site
from gateway.startup import STATE_FILE, read_ledger_key
from gateway.store import EntryKind, Store
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import ROOT, water_account, write_site
from tests.support.gateways import offline_gateway, running, settled
from tests.support.waiting import eventually

T0 = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)


def _site_file(tmp_path: Path) -> Path:
    return write_site(
        tmp_path,
        mqtt_port=free_port(),  # nothing listens: every message stays in the outbox
        accounts=[
            water_account("A1", "m1", actuator="v1"),
            water_account("A2", "m2"),
            water_account("A3", "m3"),
        ],
    )


def _ledger(site_file: Path) -> Path:
    """A store holding a known ledger (see the comments for the running balance of A1)."""
    site = load_site(site_file)
    site.state_dir.mkdir(mode=0o700)
    key = read_ledger_key(site.resolve(site.config.keys.ledger_key_file))
    entries = [
        # account, at, kind, amount, ref            A1's balance after
        ("A1", T0 + timedelta(hours=9), EntryKind.TOPUP, 5_000, "t-1"),  # 50.00
        ("A1", T0 + timedelta(hours=10), EntryKind.DEDUCTION, -1_500, "r-1"),  # 35.00
        ("A2", T0 + timedelta(hours=24, minutes=30), EntryKind.TOPUP, 100, "t-2"),  # (A2's)
        ("A1", T0 + timedelta(hours=36), EntryKind.DEDUCTION, -250, "r-2"),  # 32.50
        ("A1", T0 + timedelta(hours=56), EntryKind.REFUND, -1_000, "f-1"),  # 22.50
    ]
    with Store(site.state_dir / STATE_FILE, ledger_key=key) as store:
        for account, at, kind, amount, ref in entries:
            with store.transaction() as tx:
                tx.append_entry(
                    account, kind, amount, "CNY", f"{kind}:{ref}", created_at=at, ref=ref
                )
                if kind is EntryKind.TOPUP and account == "A1":
                    tx.save_receipt(tx.next_receipt_seq(), ref, account, b"{}", b"signature")
    return site.state_dir / STATE_FILE


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_account_statement_full_history_golden(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site_file = _site_file(tmp_path)
    _ledger(site_file)
    code, out, _ = _run(["account", "statement", "A1", "-c", str(site_file), "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert (doc["account"], doc["currency"], doc["from"], doc["to"]) == ("A1", "CNY", None, None)
    assert (doc["opening_balance_minor"], doc["closing_balance_minor"]) == (0, 2_250)
    rows = [
        (e["seq"], e["kind"], e["amount_minor"], e["balance_after_minor"], e["reference"])
        for e in doc["entries"]
    ]
    # 0 + 5000 = 5000; - 1500 = 3500; (seq 3 is A2's) - 250 = 3250; - 1000 = 2250
    assert rows == [
        (1, "topup", 5_000, 5_000, "t-1"),
        (2, "deduction", -1_500, 3_500, "r-1"),
        (4, "deduction", -250, 3_250, "r-2"),
        (5, "refund", -1_000, 2_250, "f-1"),
    ]
    assert [e["receipt_seq"] for e in doc["entries"]] == [1, None, None, None]
    assert doc["entries"][0]["at"] == "2026-06-01T09:00:00.000Z"


def test_account_statement_one_day_opens_with_the_balance_before_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site_file = _site_file(tmp_path)
    _ledger(site_file)
    argv = ["account", "statement", "A1", "-c", str(site_file), "--from", "2026-06-02"]
    code, out, _ = _run([*argv, "--to", "2026-06-02", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    # 2026-06-02 (UTC) holds only A1's seq 4 at 12:00 (T0 + 36 h): 35.00 - 2.50 = 32.50
    assert [e["seq"] for e in doc["entries"]] == [4]
    assert (doc["opening_balance_minor"], doc["closing_balance_minor"]) == (3_500, 3_250)
    assert (doc["from"], doc["to"]) == ("2026-06-02T00:00:00.000Z", "2026-06-03T00:00:00.000Z")

    # The same day given as times with an offset: 08:00+08:00 is 00:00Z.
    code, out, _ = _run(
        [
            "account",
            "statement",
            "A1",
            "-c",
            str(site_file),
            "--json",
            "--from",
            "2026-06-02T08:00+08:00",
            "--to",
            "2026-06-03T08:00+08:00",
        ],
        capsys,
    )
    assert [e["seq"] for e in json.loads(out)["entries"]] == [4]

    code, out, _ = _run([*argv, "--to", "2026-06-02"], capsys)
    assert code == 0
    assert "opening balance 35.00 CNY" in out
    [row] = [line.split() for line in out.splitlines() if line.strip().startswith("4 ")]
    assert row == [
        "4",
        "2026-06-02T12:00:00.000Z",
        "deduction",
        "-2.50",
        "CNY",
        "32.50",
        "CNY",
        "r-2",
    ]
    assert "closing balance 32.50 CNY (1 entries)" in out


def test_account_statement_csv_to_file_and_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site_file = _site_file(tmp_path)
    _ledger(site_file)
    target = tmp_path / "a1.csv"
    code, out, _ = _run(
        ["account", "statement", "A1", "-c", str(site_file), "--csv", str(target)], capsys
    )
    assert code == 0
    assert out.strip() == f"{target}: 4 entries of account A1"
    rows = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"), newline="")))
    assert [r["seq"] for r in rows] == ["1", "2", "4", "5"]
    assert rows[0] == {
        "seq": "1",
        "time": "2026-06-01T09:00:00.000Z",
        "kind": "topup",
        "amount": "50.00",
        "amount_minor": "5000",
        "currency": "CNY",
        "balance_after": "50.00",
        "balance_after_minor": "5000",
        "reference": "t-1",
        "receipt_seq": "1",
    }
    assert (rows[-1]["amount"], rows[-1]["balance_after"]) == ("-10.00", "22.50")

    code, out, _ = _run(["account", "statement", "A1", "-c", str(site_file), "--csv", "-"], capsys)
    assert code == 0
    assert out == target.read_text(encoding="utf-8").replace("\n", "\r\n").replace("\r\r", "\r")


def test_account_statement_empty_period_and_account_without_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site_file = _site_file(tmp_path)
    _ledger(site_file)
    code, out, _ = _run(
        ["account", "statement", "A1", "-c", str(site_file), "--from", "2026-06-04", "--json"],
        capsys,
    )
    assert code == 0
    doc = json.loads(out)
    # after the last entry the balance stays 22.50: opening = closing, nothing in between
    assert (doc["entries"], doc["opening_balance_minor"], doc["closing_balance_minor"]) == (
        [],
        2_250,
        2_250,
    )
    code, out, _ = _run(["account", "statement", "A3", "-c", str(site_file)], capsys)
    assert code == 0
    assert "no entries in this period" in out
    assert "closing balance 0.00 CNY (0 entries)" in out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--from", "2026-13-01"], "--from 2026-13-01: not a date"),
        (["--to", "yesterday"], "--to yesterday: expected a date (2026-06-01)"),
        (["--from", "2026-06-01T08:00"], "a time needs its offset"),
        (["--from", "2026-06-03", "--to", "2026-06-02"], "is not after --from"),
        (["--json", "--csv", "-"], "--json and --csv - both want stdout"),
    ],
)
def test_account_statement_bad_options_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    site_file = _site_file(tmp_path)
    _ledger(site_file)
    code, out, err = _run(["account", "statement", "A1", "-c", str(site_file), *options], capsys)
    assert code == 2
    assert message in err
    assert out == ""


def test_account_unknown_account_and_missing_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site_file = _site_file(tmp_path)
    code, _, err = _run(["account", "list", "-c", str(site_file)], capsys)
    assert code == 1
    assert "the gateway has not run with this site yet" in err
    assert not (tmp_path / "state").exists()  # nothing created

    _ledger(site_file)
    for command in ("show", "statement"):
        code, out, err = _run(["account", command, "nobody", "-c", str(site_file)], capsys)
        assert code == 1
        assert err.strip() == "no account 'nobody' on this site (accounts: A1, A2, A3)"
        assert out == ""


def test_account_statement_to_a_closed_pipe_stops_without_a_traceback(tmp_path: Path) -> None:
    site_file = _site_file(tmp_path)
    _ledger(site_file)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away before the first line
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "account",
                "statement",
                "A1",
                "-c",
                str(site_file),
                "--csv",
                "-",
            ],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    # `gateway.cli.main` answers a closed pipe as a shell reports a process SIGPIPE ended.
    assert done.returncode == 128 + signal.SIGPIPE
    assert done.stderr == ""  # no traceback: the reader's choice is not an error


async def test_account_list_and_show_while_the_daemon_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site_file = _site_file(tmp_path)
    gateway, feed = offline_gateway(load_site(site_file), lambda: T0 + timedelta(hours=9))
    async with running(gateway):
        # Beijing water, tier 1 at 5.00 yuan/m3: a baseline, then +3 m3 = 15.00 yuan.
        await feed.put(Reading("m1", T0, 10_000), Reading("m1", T0 + timedelta(hours=1), 13_000))
        await eventually(lambda: settled(gateway), what="2 readings billed")
        code, out, _ = _run(["account", "list", "-c", str(site_file), "--json"], capsys)
        assert code == 0
        code, text, _ = _run(["account", "list", "-c", str(site_file)], capsys)
        assert code == 0
        code, shown, _ = _run(["account", "show", "A1", "-c", str(site_file), "--json"], capsys)
        assert code == 0
        journal = gateway.store.journal_counts()[0]
    doc = json.loads(out)
    assert doc["site"] == "test-site"
    a1, a2, a3 = doc["accounts"]
    assert (a1["account"], a1["balance_minor"], a1["debt_minor"]) == ("A1", -1_500, 0)
    assert a1["state"] in ("cutoff", "grace")
    # Credit exhausted: the policy wants the valve off. This gateway has no driver for v1, so
    # no device ever confirmed anything: the store says so, and that the change is pending.
    assert (a1["supply_wanted"], a1["supply_confirmed"], a1["supply_pending"]) == (
        "off",
        None,
        True,
    )
    assert a1["last_reading_at"] == "2026-06-01T01:00:00.000Z"
    assert a1["actuator"] == "v1"
    assert a1["ledger_entries"] >= 1
    assert (a2["account"], a2["balance_minor"], a2["last_reading_at"]) == ("A2", 0, None)
    assert (a2["actuator"], a2["supply_confirmed"], a2["supply_pending"]) == (None, None, False)
    assert a3["ledger_entries"] == 0
    assert sum(journal.values()) == 2

    a1_line = next(line for line in text.splitlines() if line.startswith("A1 "))
    assert a1_line.split()[:3] == ["A1", "-15.00", "CNY"]
    assert "never confirmed" in a1_line
    detail = json.loads(shown)
    assert detail["account"] == "A1"
    deductions = [e for e in detail["recent_entries"] if e["kind"] == "deduction"]
    assert [(e["amount_minor"], e["reference"]) for e in deductions] == [
        (-1_500, deductions[0]["reference"])
    ]
