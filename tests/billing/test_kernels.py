"""The ahead-of-time build of the kernel: same results, no Numba in the process, safe fallback.

test_properties holds both builds to the reference on random tariffs; these tests bill a golden
case with the AOT build, in process and in a process that must never load Numba, and check how
`kernels.select` chooses between the two.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from billing_engine import kernels
from billing_engine.engine import AccountState, BillingEngine
from gateway.cli import main
from tests.billing.helpers import TARIFFS, sample

ROOT = Path(__file__).resolve().parents[2]


CST = timezone(timedelta(hours=8))
OPENING_USAGE_MILLI = 2_700_000


def _golden_readings() -> list[tuple[datetime, int]]:
    # test_golden's tier crossing in 1,000 readings: 2,700 kWh used this year, then 100 kWh as
    # 1,000 readings of 100 Wh a minute apart on the flat tiered tariff.
    t0 = datetime(2026, 5, 10, 9, 0, tzinfo=CST)
    return [(t0 + timedelta(minutes=i), 10_000_000 + 100 * i) for i in range(1001)]


def test_aot_kernel_bills_a_golden_case(aot_kernel: kernels.Kernel) -> None:
    account = AccountState(10_000, "resident", usage_milli=OPENING_USAGE_MILLI)
    results = BillingEngine(sample("zhejiang-residential-electricity"), aot_kernel).bill(
        [account], [(0, at, reg) for at, reg in _golden_readings()]
    )
    # 60 kWh x 0.538 = 32.28 yuan (tier 1 up to 2,760 kWh) + 40 kWh x 0.588 = 23.52 yuan
    # (tier 2) = 55.80 yuan = 5,580 fen, however the 1,000 deductions round.
    assert sum(r.deduction_minor for r in results) == 5_580
    assert account.balance_minor == 10_000 - 5_580


def test_a_process_billing_with_the_aot_kernel_never_loads_numba(
    aot_kernel: kernels.Kernel,
) -> None:
    assert aot_kernel.path is not None
    readings = [(at.isoformat(), reg) for at, reg in _golden_readings()]
    script = f"""
import json, sys
from datetime import datetime
from pathlib import Path
from billing_engine import kernels
from billing_engine.engine import AccountState, BillingEngine
from billing_engine.tariff import load_tariff
kernel = kernels.select("aot", Path({str(aot_kernel.path.parent)!r}))
account = AccountState(10_000, "resident", usage_milli={OPENING_USAGE_MILLI})
tariff = load_tariff(Path({str(TARIFFS / "zhejiang-residential-electricity.yaml")!r}))
readings = [(0, datetime.fromisoformat(t), r) for t, r in {readings!r}]
BillingEngine(tariff, kernel).bill([account], readings)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("numba", "llvmlite"))
print(json.dumps({{"mode": kernel.mode, "balance": account.balance_minor, "loaded": loaded}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert json.loads(done.stdout) == {"mode": "aot", "balance": 10_000 - 5_580, "loaded": []}


def test_auto_falls_back_to_the_jit_when_the_build_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.delenv("NUMBA_DISABLE_JIT", raising=False)
    kernel = kernels.select("auto", tmp_path / "cache")
    assert kernel.mode is kernels.KernelMode.JIT
    assert "building the ahead-of-time kernel failed" in kernel.reason
    with pytest.raises(kernels.KernelUnavailableError, match="failed"):
        kernels.select("aot", tmp_path / "cache")


def test_an_unusable_cache_directory_falls_back_to_the_jit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NUMBA_DISABLE_JIT", raising=False)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    kernel = kernels.select("auto", blocker / "kernels")
    assert kernel.mode is kernels.KernelMode.JIT
    assert "cannot use" in kernel.reason


def test_a_damaged_module_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NUMBA_DISABLE_JIT", raising=False)
    path = kernels.aot_path(tmp_path)
    path.write_bytes(b"not an ELF file")
    with pytest.raises(kernels.KernelUnavailableError, match="loading"):
        kernels.select("aot", tmp_path)
    assert kernels.select("auto", tmp_path).mode is kernels.KernelMode.JIT


def test_jit_is_never_built_and_disable_jit_is_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert kernels.select("jit", tmp_path).mode is kernels.KernelMode.JIT
    monkeypatch.setenv("NUMBA_DISABLE_JIT", "1")
    assert kernels.select("auto", tmp_path).reason == "jit: NUMBA_DISABLE_JIT is set"
    assert list(tmp_path.iterdir()) == []


def test_the_module_name_follows_the_kernel_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = kernels.module_name()
    for name in ("kernel.py", "layout.py"):
        (tmp_path / name).write_bytes((ROOT / "billing_engine" / name).read_bytes())
    monkeypatch.setattr(kernels, "_PACKAGE_DIR", tmp_path)
    assert kernels.module_name() == before
    with (tmp_path / "kernel.py").open("a") as f:
        f.write("\n# an edit\n")
    assert kernels.module_name() != before


def test_cli_kernel_info_and_build(
    aot_kernel: kernels.Kernel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert aot_kernel.path is not None
    assert main(["kernel", "info", "--cache-dir", str(aot_kernel.path.parent)]) == 0
    assert f"{aot_kernel.path}: present" in capsys.readouterr().out
    assert main(["kernel", "info", "--cache-dir", str(tmp_path)]) == 1
    assert "not built" in capsys.readouterr().out

    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert main(["kernel", "build", "--cache-dir", str(tmp_path)]) == 1
    assert "building the ahead-of-time kernel failed" in capsys.readouterr().err
    assert not kernels.aot_path(tmp_path).exists()
