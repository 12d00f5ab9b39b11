"""The demo's story: told from the messages of the run, and a run of the demo that tells it.

`test_demo_tells_the_story_of_its_run` runs ``python -m bench.demo --site-only`` as
``make demo`` does, less the tariff checks and the benchmark: its own mosquitto, simulator and
gateway, about 35 s on an idle machine.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.demo_story import (
    ELECTRONIC_CODE,
    FAULT_EFFECTS,
    PAPER_CODE,
    STORY_ACCOUNT,
    STORY_DEVICE,
    STORY_TOPUP_MINOR,
    TOPUP_MINOR,
    FaultWatch,
    ReceiptCheck,
    Seen,
    story_complete,
    tell_kiosk_story,
    tell_story,
)
from firmware_sim.scenario import FaultAction

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _ts(seconds: float) -> str:
    return (START + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def _event(seconds: float, event: str, balance_minor: int, **more: Any) -> Seen:
    doc = {"account": STORY_ACCOUNT, "event": event, "balance_minor": balance_minor, **more}
    return Seen(f"prepay/demo-site/account/{STORY_ACCOUNT}/event", {**doc, "ts": _ts(seconds)})


def _device(seconds: float, supply: str, confirmation: str = "confirmed") -> Seen:
    doc = {"device": STORY_DEVICE, "supply": supply, "confirmation": confirmation}
    return Seen(f"prepay/demo-site/device/{STORY_DEVICE}/state", {**doc, "ts": _ts(seconds)})


def _topup(seconds: float, amount_minor: int, balance_minor: int, seq: int) -> Seen:
    receipt = {"receipt_seq": seq}
    return _event(
        seconds, "topup_applied", balance_minor, amount_minor=amount_minor, receipt=receipt
    )


def _whole_story() -> list[Seen]:
    return [
        _event(1.0, "cutoff", -86, detail={"reason": "credit_exhausted"}),  # no credit at start
        _device(1.1, "off"),
        _topup(7.0, STORY_TOPUP_MINOR, 514, 1),
        _event(7.0, "restored", 514, detail={"reason": "topup"}),
        _device(7.2, "on"),
        _event(9.0, "low_balance", 432, detail={"threshold_minor": 500}),
        _event(21.0, "cutoff", -84, detail={"reason": "credit_exhausted"}),
        _device(21.1, "off", "pending"),
        _device(21.2, "off"),
        # the gateway may publish the restore before the top-up that caused it
        _event(21.5, "restored", 4916, detail={"reason": "topup"}),
        _topup(21.5, TOPUP_MINOR, 4916, 9),
        _device(21.7, "on"),
    ]


def test_story_tells_each_step_with_its_time_from_the_start() -> None:
    lines = tell_story(_whole_story(), [], START)
    assert lines[1:8] == [
        "  +  7.00 s  top-up of 6.00 CNY applied (receipt #1), balance 5.14 CNY",
        "  +  9.00 s  low balance: 4.32 CNY, below the 5.00 CNY alert",
        "  + 21.00 s  cutoff (credit_exhausted), balance -0.84 CNY",
        "  + 21.20 s  cutoff confirmed on the device: flat-101-elec reads back off",
        "  + 21.50 s  top-up of 50.00 CNY applied (receipt #9), balance 49.16 CNY",
        "  + 21.50 s  restored (topup), balance 49.16 CNY",
        "  + 21.70 s  restore confirmed on the device: flat-101-elec reads back on",
    ]
    assert story_complete(lines)


def test_story_says_what_did_not_happen() -> None:
    # No low balance: the cutoff at 21 s does not follow one, so nothing after it is told.
    seen = [s for s in _whole_story() if s.doc.get("event") != "low_balance"]
    lines = tell_story(seen, [], START)
    assert lines[1:3] == [
        "  +  7.00 s  top-up of 6.00 CNY applied (receipt #1), balance 5.14 CNY",
        "  NOT SEEN  low balance",
    ]
    assert all(line.startswith("  NOT SEEN") for line in lines[3:8])
    assert not story_complete(lines)


def test_story_cutoff_confirmed_only_by_the_device_reading_back() -> None:
    # The cutoff's wish (pending) is not the device's confirmation.
    seen = [s for s in _whole_story() if s.doc.get("ts") != _ts(21.2)]
    lines = tell_story(seen, [], START)
    assert lines[4] == "  NOT SEEN  cutoff confirmed on the device"


SESSION_TOPIC = "prepay/demo-site/dispenser/kiosk-1/session"


def _session(seconds: float, status: str, kind: str, session_id: int, **more: Any) -> Seen:
    doc = {"dispenser": "kiosk-1", "status": status, "identity_kind": kind, **more}
    return Seen(SESSION_TOPIC, {**doc, "session_id": session_id, "ts": _ts(seconds)})


def _redeemed(seconds: float, code: str, kind: str, where: str) -> Seen:
    doc = {"event": "ticket_redeemed", "code": code, "kind": kind, "box": "demo-site"}
    topic = f"prepay/tickets/330102/{code}/redeemed/demo-site"
    return Seen(topic, {**doc, "where": where, "at": _ts(seconds)})


def _kiosk_story() -> list[Seen]:
    batch = {"kind": "ticket_batch", "status": "applied", "ts": _ts(7.4)}
    card = {"account": "A-201-W", "currency": "CNY"}
    return [
        Seen("prepay/demo-site/cmd/ticket_batch/result", batch),
        _session(7.5, "authorised", "card", 1, authorised_ml=20_000, balance_minor=5_000, **card),
        # 2.5 L at 0.35 CNY a litre: 0.875 CNY, 88 fen; 5000 - 88 = 4912
        _session(
            7.7,
            "settled",
            "card",
            1,
            poured_ml=2_500,
            charge_minor=88,
            balance_minor=4_912,
            **card,
        ),
        # the ticket's redemption may arrive before its session's authorisation
        _redeemed(7.88, PAPER_CODE, "paper", "dispenser kiosk-1 session 2"),
        _session(7.9, "authorised", "ticket", 2, authorised_ml=18_900),
        _session(8.1, "settled", "ticket", 2, poured_ml=18_900),
        _redeemed(8.2, ELECTRONIC_CODE, "electronic", "counter 1"),
        _topup(21.5, TOPUP_MINOR, 4916, 9),
    ]


def test_kiosk_story_tells_sessions_redemptions_and_the_receipt() -> None:
    receipt = ReceiptCheck(Path(".demo/receipt-9.pdf"), 9, verified=True)
    lines = tell_kiosk_story(_kiosk_story(), START, receipt)
    assert lines[1:] == [
        "  +  7.40 s  ticket batch B-DEMO-1 applied (cmd/ticket_batch, the plant's signature "
        "inside the backend's): 500 paper tickets, serials 10000-10499",
        "  +  7.50 s  CARD-0001 at kiosk-1: session 1 authorised for A-201-W, up to 20.000 L "
        "(balance 50.00 CNY)",
        "  +  7.70 s  session 1 settled: 2.500 L poured, 0.88 CNY charged to A-201-W, "
        "balance 49.12 CNY",
        "  +  7.90 s  paper ticket 3301020000100008 at kiosk-1: session 2 authorised, 18.900 L",
        "  +  7.88 s  paper ticket 3301020000100008 redeemed at box demo-site "
        "(dispenser kiosk-1 session 2), published to the plant's boxes",
        "  +  8.10 s  session 2 settled: 18.900 L poured, no money (the ticket paid)",
        "  +  8.20 s  electronic ticket 3301020005000004 redeemed at box demo-site (counter 1), "
        "published to the plant's boxes",
        "  receipt #9 (the top-up of 50.00 CNY to A-101-E) written to .demo/receipt-9.pdf; "
        "prepay receipt verify: good, with the gateway's public key",
    ]
    assert story_complete(lines)


def test_kiosk_story_says_what_did_not_happen() -> None:
    # No batch: the paper ticket's session and redemption are not told (the card's are).
    seen = [s for s in _kiosk_story() if not s.topic.endswith("/result")]
    lines = tell_kiosk_story(seen, START, ReceiptCheck(None, problem="no CJK font"))
    assert [line for line in lines if "NOT SEEN" in line] == [
        "  NOT SEEN  ticket batch applied",
        "  NOT SEEN  paper ticket session authorised",
        "  NOT SEEN  paper ticket redeemed at the dispenser",
        "  NOT SEEN  paper ticket session settled",
        "  NOT SEEN  receipt PDF written and verified (no CJK font)",
    ]
    assert "session 1 settled: 2.500 L poured" in lines[3]
    assert not story_complete(lines)


def test_kiosk_story_ticket_redeemed_at_the_counter_is_not_the_dispenser_step() -> None:
    # The paper ticket redeemed at a counter, not by the kiosk's session.
    seen = [
        _redeemed(7.88, PAPER_CODE, "paper", "counter 2") if s.is_redeemed(PAPER_CODE) else s
        for s in _kiosk_story()
    ]
    lines = tell_kiosk_story(seen, START, ReceiptCheck(Path("r.pdf"), 9, verified=True))
    assert "  NOT SEEN  paper ticket redeemed at the dispenser" in lines


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_tells_the_story_of_its_run(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "bench.demo", "--site-only", "--workdir", str(work)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    story = run.stdout[run.stdout.index("=== the story of the run") :]
    assert "NOT SEEN" not in story
    steps = [
        "top-up of 6.00 CNY applied",
        "low balance: ",
        "cutoff (credit_exhausted)",
        "cutoff confirmed on the device: flat-101-elec reads back off",
        "top-up of 50.00 CNY applied",
        "restored (topup)",
        "restore confirmed on the device: flat-101-elec reads back on",
    ]
    places = [story.index(text) for text in steps]
    assert places == sorted(places)
    for answer in [
        "flat-102-water crc x9: device_offline on A-102-W",
        "device_online on A-102-W",
        "flat-101-water exception x9: device_offline on A-101-W",
        "device_online on A-101-W",
        "shop-1-elec meter_swap: register_backwards on S-1-E",
        "meter_reset_or_swap on S-1-E",
        "lora-valve-202 counter_reset: device_counter_reset on A-202-W",
    ]:
        assert answer in story
    # the water kiosk, in order: 2.5 L at 0.35 CNY a litre is 0.875 CNY, 88 fen rounded
    # half-up; the paper ticket pours its bucket, 18.9 L, for no money
    kiosk = [
        "ticket batch B-DEMO-1 applied",
        "CARD-0001 at kiosk-1: session 1 authorised for A-201-W",
        "session 1 settled: 2.500 L poured, 0.88 CNY charged to A-201-W",
        "paper ticket 3301020000100008 at kiosk-1: session 2 authorised, 18.900 L",
        "paper ticket 3301020000100008 redeemed at box demo-site (dispenser kiosk-1 session 2)",
        "session 2 settled: 18.900 L poured, no money (the ticket paid)",
        "electronic ticket 3301020005000004 redeemed at box demo-site (counter 1)",
        "prepay receipt verify: good",
    ]
    told = [story.index(text) for text in kiosk]
    assert told == sorted(told)
    receipts = list(work.glob("receipt-*.pdf"))
    assert len(receipts) == 1
    assert f"written to {receipts[0]}" in story
    # its own broker, on the port the run's site file names
    site = yaml.safe_load((work / "demo-site.yaml").read_text())
    listener = (work / "mosquitto.conf").read_text().split("\n")[0]
    assert listener == f"listener {site['mqtt']['port']} 127.0.0.1"
    assert "ledger ok" in run.stdout


def _alarm(seconds: float, account: str, code: str) -> Seen:
    doc = {"account": account, "event": "alarm", "alarm": code, "ts": _ts(seconds)}
    return Seen(f"prepay/demo-site/account/{account}/event", doc)


def test_fault_answered_only_by_alarms_after_it_in_order() -> None:
    fault = FaultAction(device="kiosk-1", fault="drop_links")
    watch = FaultWatch(fault, 26.0, "K-1-W", FAULT_EFFECTS["drop_links"])
    after = START + timedelta(seconds=26)
    seen = [
        _alarm(2.0, "K-1-W", "device_online"),  # the first connection, before the fault
        _alarm(26.3, "K-1-W", "device_offline"),
        _alarm(26.2, "A-101-W", "device_online"),  # another account's
    ]
    assert not watch.look(seen, after)
    lines = tell_story([], [watch], START)
    assert lines[-1] == (
        "  + 26.00 s  kiosk-1 drop_links: device_offline on K-1-W + 26.30 s; NOT SEEN device_online"
    )
    assert not story_complete(lines)
    assert watch.look([*seen, _alarm(28.5, "K-1-W", "device_online")], after)
    assert tell_story([], [watch], START)[-1].endswith("device_online on K-1-W + 28.50 s")
