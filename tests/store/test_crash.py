"""SIGKILL a writer mid-flight, repeatedly, and check that nothing was lost, split or doubled.

The writer (`crash_writer.py`) bills readings one transaction each. After every kill the
parent reopens the file and checks: the ledger verifies; each transaction is all-or-nothing
(entry, billed reading, outbox message and account state all there or all absent); every
commit the child reported is there; no key twice; the balance is the exact sum. The writer is
restarted from reading 0 each round, so every round also replays committed keys, which must
create nothing.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.messages import MessageClass
from gateway.store import EntryKind, Store, verify_ledger
from tests.store import crash_writer as writer

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 6
STOP = 100_000  # never reached in the killed rounds


def run_writer(db_path: Path, stop: int, kill_after_new: int | None) -> list[tuple[int, bool]]:
    """Run the writer; SIGKILL it once it reported ``kill_after_new`` new commits."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(Path(writer.__file__)), str(db_path), str(stop)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[tuple[int, bool]] = []
    new = 0
    try:
        for line in proc.stdout:
            i, created = line.split()
            lines.append((int(i), created == "1"))
            new += created == "1"
            if kill_after_new is not None and new >= kill_after_new:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.stdout.close()
        code = proc.wait()
    if kill_after_new is None:
        assert code == 0
    else:
        assert code == -signal.SIGKILL
    return lines


def check_consistent(db_path: Path, reported_committed: int) -> int:
    """Check every invariant; return the number of readings billed."""
    report = verify_ledger(db_path, writer.KEY)
    assert report.ok, report.problems
    with Store(db_path, ledger_key=writer.KEY) as store:
        entries = store.entries(limit=10 * STOP)
        assert entries[0].idempotency_key == "topup"
        deductions = entries[1:]
        n = len(deductions)
        assert n >= reported_committed, "a commit the writer reported is missing"
        # Keys are a gap-free prefix r0..r(n-1), each exactly once, in order.
        assert [e.idempotency_key for e in deductions] == [f"r{i}" for i in range(n)]
        assert all(e.kind is EntryKind.DEDUCTION for e in deductions)
        expected = writer.TOPUP_MINOR - sum(writer.deduction_minor(i) for i in range(n))
        assert store.balance(writer.ACCOUNT) == expected
        # Outbox: one message per entry, same keys, same order.
        messages = store.pending(10 * STOP)
        assert [m.payload.decode() for m in messages] == [f"r{i}" for i in range(n)]
        assert store.outbox_stats().pending[MessageClass.LEDGER] == n
        # Journal: every reading of a committed transaction billed, nothing half-done.
        assert store.unbilled(10) == []
        assert store.last_reading("m1") is not None or n == 0
        states = store.load_account_states()
        assert states.get(writer.ACCOUNT, {}).get("last") == (n - 1 if n else None)
    return n


@pytest.mark.crash
def test_store_sigkill_rounds_lose_nothing_double_nothing(tmp_path: Path) -> None:
    db_path = tmp_path / "crash.sqlite3"
    rng = random.Random(20250301)
    billed = 0
    for _ in range(ROUNDS):
        lines = run_writer(db_path, STOP, kill_after_new=rng.randint(20, 120))
        # Replayed readings (< billed) must never be created again.
        assert all(not created for i, created in lines if i < billed)
        reported = max((i + 1 for i, created in lines if created), default=billed)
        new_billed = check_consistent(db_path, reported)
        assert new_billed > billed
        billed = new_billed
    # Last round: run to a clean end a little past the killed rounds.
    lines = run_writer(db_path, billed + 10, kill_after_new=None)
    assert [i for i, created in lines if created] == list(range(billed, billed + 10))
    assert check_consistent(db_path, billed + 10) == billed + 10
