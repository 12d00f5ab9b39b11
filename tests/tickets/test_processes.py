"""Redemptions from real processes: two racing for one ticket (exactly one wins), and kill -9
under load (every acknowledged redemption is in the store, none twice)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from gateway.ops import tickets
from tests.tickets import redeem_child
from tests.tickets.box import Box, batch_document, code, write_box

ROOT = Path(__file__).resolve().parents[2]
CHILD = str(Path(redeem_child.__file__))
NOW = datetime(2027, 1, 15, 2, 0, tzinfo=UTC)


def _box(tmp_path: Path) -> Box:
    box = write_box(tmp_path / "box")
    # Valid around the real clock: the children redeem "now".
    today = datetime.now(UTC).date()
    doc = batch_document(
        box,
        "B1",
        [(10_000, 100_000)],
        valid_from=date(today.year - 1, 1, 1),
        valid_until=date(today.year + 1, 12, 31),
    )
    with box.store() as store:
        tickets.import_batch(box.site(), store, json.dumps(doc).encode())
    return box


def _child(box: Box, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, CHILD, str(box.site_file), *args],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
    )


@pytest.mark.parametrize("attempt", range(3))
def test_processes_two_racing_for_one_ticket_exactly_one_wins(tmp_path: Path, attempt: int) -> None:
    box = _box(tmp_path)
    go = tmp_path / "go"
    racers = [_child(box, "race", code(10_000 + attempt), str(go)) for _ in range(2)]
    outcomes = []
    try:
        for proc in racers:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        go.touch()
        for proc in racers:
            assert proc.stdout is not None
            outcomes.append(json.loads(proc.stdout.readline()))
    finally:
        for proc in racers:
            assert proc.stdout is not None
            proc.stdout.close()
            assert proc.wait(timeout=60) == 0
    assert sorted(o["redeemed"] for o in outcomes) == [False, True]
    assert [o["reason"] for o in outcomes if not o["redeemed"]] == ["already_used"]


@pytest.mark.crash
def test_processes_kill_9_under_load_keeps_every_acknowledged_redemption(tmp_path: Path) -> None:
    box = _box(tmp_path)
    # Two pickup points on one store, redeeming overlapping codes: 10_000.. and 10_050..
    workers = {"p1": _child(box, "loop", "p1", "10000", "5000"),
               "p2": _child(box, "loop", "p2", "10050", "5000")}  # fmt: skip
    acknowledged: dict[str, str] = {}  # code -> request id
    doubles: list[str] = []
    try:
        stdout = workers["p1"].stdout
        assert stdout is not None
        for line in stdout:  # until p1 has had 150 acknowledged (p2 runs meanwhile)
            if line.startswith("DOUBLE"):
                doubles.append(line)
                continue
            found, request = line.split()
            acknowledged[found] = request
            if len(acknowledged) >= 150:
                break
    finally:
        for proc in workers.values():
            proc.send_signal(signal.SIGKILL)
    for name, proc in workers.items():
        assert proc.stdout is not None
        for line in proc.stdout:  # what each had printed before it died was acknowledged
            if line.startswith("DOUBLE"):
                doubles.append(line)
                continue
            found, request = line.split()
            assert found not in acknowledged or name == "p1", f"{found} acknowledged twice"
            acknowledged[found] = request
        proc.stdout.close()
        assert proc.wait(timeout=60) == -signal.SIGKILL

    assert doubles == []
    with box.store() as store:
        stored = {r.code: r.redemption_id for r in store.all_redemptions()}
    for found, request in acknowledged.items():
        assert stored.get(found) == request, f"acknowledged {found} ({request}) is not stored"
    with sqlite3.connect(box.site().store_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT code) FROM ticket_redemptions"
        ).fetchone()
    assert rows == distinct  # no ticket used twice
    assert rows >= len(acknowledged)
    # A restart goes on where it stopped: the same requests replay, nothing doubles.
    with box.store() as store:
        for found, request in list(acknowledged.items())[:20]:
            again = tickets.redeem(box.site(), store, found, now=NOW, redemption_id=request)
            assert again.replayed is not None
