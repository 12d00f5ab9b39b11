"""``make demo``: what the gateway can do today, on the sample configs.

Checks every sample tariff, quotes three bills that the shared notes work out by hand, and runs
the quick billing benchmark.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.cli import main as prepay

ROOT = Path(__file__).resolve().parents[1]
TARIFFS = ROOT / "configs" / "tariffs"
DATA = ROOT / "bench" / "data"


def _step(title: str, argv: list[str]) -> None:
    print(f"\n=== {title}\n$ prepay {' '.join(argv)}", flush=True)
    status = prepay(argv)
    if status != 0:
        sys.exit(status)


def main() -> None:
    zj = str(TARIFFS / "zhejiang-residential-electricity.yaml")
    _step(
        "validate the sample tariffs",
        ["tariff", "check", *sorted(str(p) for p in TARIFFS.glob("*.yaml"))],
    )
    _step(
        "10 kWh 21:00-23:00 on peak/valley (hand: 5 x 0.568 + 5 x 0.288 = 4.28 yuan)",
        [
            "tariff",
            "quote",
            "--tariff",
            zj,
            "--class",
            "resident_tou",
            "--readings",
            str(DATA / "evening-peak-valley.csv"),
        ],
    )
    _step(
        "New Year inside one reading, 4900 kWh used (hand: 10 x 0.838 + 10 x 0.538 = 13.76)",
        [
            "tariff",
            "quote",
            "--tariff",
            zj,
            "--class",
            "resident",
            "--opening-usage",
            "4900",
            "--readings",
            str(DATA / "new-year.csv"),
            "--json",
        ],
    )
    _step("billing benchmark (quick)", ["bench", "billing", "--quick"])


if __name__ == "__main__":
    main()
