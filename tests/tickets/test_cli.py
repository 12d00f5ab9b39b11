"""``prepay ticket ...`` end to end through the command line (the real parser and store)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from gateway.cli import main
from gateway.tickets.codes import TicketCode
from tests.tickets.box import DEPOT, PLANT, Box, code, write_box

TODAY = datetime.now(UTC).date()
FROM, UNTIL = TODAY - timedelta(days=40), TODAY + timedelta(days=200)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    status, out, _ = _run(capsys, *argv, "--json")
    return status, json.loads(out)


@pytest.fixture
def box(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Box:
    box = write_box(tmp_path / "box")
    batch = tmp_path / "batch.json"
    status, _out, err = _run(
        capsys, "ticket", "make", "batch", "--key", str(box.plant_key), "--batch", "B1",
        "--plant", PLANT, "--product", "18.9L", "--face-minor", "2000", "--currency", "CNY",
        "--from", FROM.isoformat(), "--until", UNTIL.isoformat(), "--region", "hz",
        "--range", "10000:100", "--out", str(batch),
    )  # fmt: skip
    assert status == 0, err
    status, doc = _json(capsys, "ticket", "import-batch", "-c", str(box.site_file), str(batch))
    assert status == 0
    assert doc == {
        "status": "imported",
        "batch": "B1",
        "product": "18.9L",
        "codes": 100,
        "ranges": 1,
        "until": UNTIL.isoformat(),
    }
    return box


def test_cli_redeem_once_then_replay_then_refuse(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    site = str(box.site_file)
    status, first = _json(
        capsys, "ticket", "redeem", "-c", site, code(10_001), "--where", "counter 2", "--id", "s1"
    )
    assert status == 0
    assert (first["status"], first["code"], first["kind"]) == ("redeemed", code(10_001), "paper")
    assert (first["box"], first["where"], first["redemption_id"]) == (
        "depot3-box1",
        "counter 2",
        "s1",
    )
    status, replay = _json(capsys, "ticket", "redeem", "-c", site, code(10_001), "--id", "s1")
    assert status == 0
    assert replay["status"] == "replayed"
    assert replay["at"] == first["at"]
    status, out, err = _run(capsys, "ticket", "redeem", "-c", site, code(10_001))
    assert status == 1
    assert out == ""
    assert err.startswith("refused: already_used: ")
    assert "(counter 2)" in err


def test_cli_check_changes_nothing(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    site = str(box.site_file)
    for _ in range(2):
        status, doc = _json(capsys, "ticket", "check", "-c", site, code(10_002))
        assert status == 0
        assert doc["status"] == "valid"
        assert doc["until"] == UNTIL.isoformat()
    status, stats = _json(capsys, "ticket", "stats", "-c", site)
    assert status == 0
    assert stats["products"]["18.9L"]["paper_used"] == 0  # type: ignore[index]
    status, doc = _json(capsys, "ticket", "check", "-c", site, code(10_200))
    assert status == 1
    assert doc["reason"] == "not_issued"


def test_cli_electronic_ticket_made_and_redeemed(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = _run(
        capsys, "ticket", "make", "electronic", "--key", str(box.plant_key),
        "--code", code(500), "--product", "18.9L", "--from", FROM.isoformat(),
        "--until", UNTIL.isoformat(), "--depot", DEPOT,
    )  # fmt: skip
    assert status == 0, err
    ticket = out.strip()
    assert ticket.startswith("PT1.")
    status, doc = _json(capsys, "ticket", "redeem", "-c", str(box.site_file), ticket)
    assert (status, doc["kind"], doc["code"]) == (0, "electronic", code(500))
    forged = ticket[:-4] + ("AAAA" if not ticket.endswith("AAAA") else "BBBB")
    status, doc = _json(capsys, "ticket", "redeem", "-c", str(box.site_file), forged)
    assert (status, doc["reason"]) == (1, "bad_signature")


def test_cli_convert_extend_emergency(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    site = str(box.site_file)
    status, doc = _json(capsys, "ticket", "convert", "-c", site, code(10_003))
    assert status == 0
    assert doc["code"] == code(10_003)
    status, again = _json(capsys, "ticket", "redeem", "-c", site, code(10_003))
    assert (status, again["reason"]) == (1, "voided")
    status, used = _json(capsys, "ticket", "redeem", "-c", site, str(doc["ticket"]))
    assert (status, used["status"]) == (0, "redeemed")
    status, ext = _json(capsys, "ticket", "extend", "-c", site, code(10_004))
    assert (status, ext["reason"]) == (1, "not_expired")
    codes = []
    for _ in range(2):  # the box's cap is 2 a day
        status, issued = _json(
            capsys, "ticket", "issue-emergency", "-c", site, "--product", "18.9L"
        )
        assert status == 0
        assert issued["emergency"] is True
        codes.append(issued["code"])
    assert codes == [TicketCode(PLANT, 900_700_001).text, TicketCode(PLANT, 900_700_002).text]
    status, _out, err = _run(capsys, "ticket", "issue-emergency", "-c", site, "--product", "18.9L")
    assert status == 1
    assert "cap of 2 emergency tickets per day is reached" in err
    status, stats = _json(capsys, "ticket", "stats", "-c", site)
    counts = stats["products"]["18.9L"]  # type: ignore[index]
    assert (counts["paper_converted"], counts["electronic_used"], counts["emergency_issued"]) == (
        1,
        1,
        2,
    )


def test_cli_stats_text_shows_the_restock_alert(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    box = write_box(tmp_path, settings={"paper_restock_level": 50})
    status, out, _ = _run(capsys, "ticket", "stats", "-c", str(box.site_file))
    assert status == 0
    assert "paper stock at depot hz-xihu-03: 0 (restock below 50)  RESTOCK" in out


def test_cli_import_batch_refuses_forged_and_unreadable(
    box: Box, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = str(box.site_file)
    forged = tmp_path / "forged.json"
    status, _, err = _run(
        capsys, "ticket", "make", "batch", "--key", str(box.stranger_key), "--batch", "B9",
        "--plant", PLANT, "--product", "18.9L", "--face-minor", "2000", "--currency", "CNY",
        "--from", FROM.isoformat(), "--until", UNTIL.isoformat(), "--region", "hz",
        "--range", "50000:10", "--out", str(forged),
    )  # fmt: skip
    assert status == 0, err
    status, _, err = _run(capsys, "ticket", "import-batch", "-c", site, str(forged))
    assert status == 1
    assert err.startswith(f"{forged}: signed with key ")
    status, _out, err = _run(capsys, "ticket", "import-batch", "-c", site, str(tmp_path / "none"))
    assert status == 1
    assert "cannot read" in err


def test_cli_bad_site_section_named_by_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    box = write_box(tmp_path, settings={"emergency_cap_per_day": 5, "emergency_box_number": None})
    status, _, err = _run(capsys, "ticket", "stats", "-c", str(box.site_file))
    assert status == 1
    text = box.site_file.read_text()
    # A rule across fields is reported at the section's mapping: the line after "tickets:".
    line = text.splitlines().index("tickets:") + 2
    assert err.startswith(f"{box.site_file}:{line}: tickets: emergency_cap_per_day > 0 needs")
    assert "emergency_box_number" in err
    doc = yaml.safe_load(text)
    del doc["tickets"]
    box.site_file.write_text(yaml.safe_dump(doc))
    status, _out, err = _run(capsys, "ticket", "stats", "-c", str(box.site_file))
    assert status == 1
    assert (
        err.strip()
        == f"{box.site_file}:1: tickets: the site has no tickets section (docs/tickets.md)"
    )


def test_cli_without_a_store_says_so_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    box = write_box(tmp_path)
    store = box.site().store_path
    store.unlink()
    status, _out, err = _run(capsys, "ticket", "redeem", "-c", str(box.site_file), code(10_001))
    assert status == 1
    assert err.startswith(f"no store at {store}")
    assert not store.exists()


def test_cli_make_code_and_bad_code(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _run(capsys, "ticket", "make", "code", "--plant", PLANT, "--serial", "10000")
    assert (status, out.strip()) == (0, "3301020000100008")
    status, out, err = _run(capsys, "ticket", "make", "code", "--plant", "33", "--serial", "1")
    assert status == 2
    assert "not 6 digits" in err


@pytest.mark.parametrize(
    "command",
    ["redeem", "check", "stats", "issue-emergency", "convert", "extend", "import-batch", "make"],
)
def test_cli_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["ticket", command, "--help"])
    assert done.value.code == 0
    assert "usage: prepay ticket" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("option", "value"), [("--from", "2027-13-01"), ("--range", "10000-100"), ("--range", "x:1")]
)
def test_cli_make_batch_arguments_checked(
    option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = {
        "--key": str(tmp_path / "plant.pem"), "--batch": "B1", "--plant": PLANT,
        "--product": "18.9L", "--face-minor": "2000", "--currency": "CNY",
        "--from": "2027-01-01", "--until": "2027-06-30", "--region": "hz", "--range": "1:1",
    }  # fmt: skip
    argv[option] = value
    with pytest.raises(SystemExit) as done:
        main(["ticket", "make", "batch", *(x for pair in argv.items() for x in pair)])
    assert done.value.code == 2
    assert value in capsys.readouterr().err
