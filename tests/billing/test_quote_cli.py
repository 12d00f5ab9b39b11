"""`prepay tariff quote`: itemised bill, JSON contract and bad CSV input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main

ZJ = "configs/tariffs/zhejiang-residential-electricity.yaml"


def test_quote_cli_json_breakdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "r.csv"
    csv.write_text(
        "timestamp,register\n"
        "2026-05-10T21:00:00+08:00,1000\n"
        "2026-05-10T22:30:00+08:00,1006\n"
        "2026-05-10T23:00:00+08:00,1010\n"
    )
    status = main(
        [
            "tariff",
            "quote",
            "--tariff",
            ZJ,
            "--class",
            "resident_tou",
            "--readings",
            str(csv),
            "--json",
        ]
    )
    assert status == 0
    out = capsys.readouterr().out.strip().splitlines()
    doc = json.loads(out[-1])
    # 21:00-22:30 6 kWh split pro rata: 4 kWh peak (60 of 90 min) + 2 kWh valley; then 4 kWh
    # valley. Peak 4 x 0.568 = 2.272; valley 6 x 0.288 = 1.728; total 4.000 yuan = 400 fen.
    assert doc["total_minor"] == 400
    assert doc["currency"] == "CNY"
    lines = {(x["period"], x["tier"]): (x["quantity"], x["net"]) for x in doc["lines"]}
    assert lines == {("peak", 1): ("4", "2.272"), ("valley", 1): ("6", "1.728")}
    assert doc["estimated_split"] is True
    assert "TOTAL: 4.00 CNY" in "\n".join(out)


def test_quote_cli_opening_usage_golden(capsys: pytest.CaptureFixture[str]) -> None:
    # 4900 kWh used, 20 kWh across New Year: 10 x 0.838 + 10 x 0.538 = 13.76 yuan.
    status = main(
        [
            "tariff",
            "quote",
            "--tariff",
            ZJ,
            "--opening-usage",
            "4900",
            "--readings",
            "bench/data/new-year.csv",
            "--json",
        ]
    )
    assert status == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["total_minor"] == 1376


def test_quote_cli_bad_csv_rows_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text(
        "timestamp,register\n"
        "2026-05-10T21:00:00,1000\n"
        "2026-05-10T22:00:00+08:00,10.12345\n"
        "yesterday,5\n"
    )
    assert main(["tariff", "quote", "--tariff", ZJ, "--readings", str(csv)]) == 1
    err = capsys.readouterr().err
    assert f"{csv}:2: timestamp: needs a UTC offset" in err
    assert f"{csv}:3: register: register: 10.12345 has more than 3 decimals" in err
    assert f"{csv}:4: timestamp: 'yesterday' is not ISO 8601" in err


def test_quote_cli_unknown_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "tariff",
            "quote",
            "--tariff",
            ZJ,
            "--class",
            "hospital",
            "--readings",
            "bench/data/new-year.csv",
        ]
    )
    assert status == 1
    assert "unknown class 'hospital'" in capsys.readouterr().err
