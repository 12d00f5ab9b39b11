"""Billing benchmark: the Numba kernel against the reference and a NumPy streaming read.

Run: ``prepay bench billing [--quick]``. In one process and on the same arrays it measures

- the kernel through `BillingEngine.bill_arrays` (the public batch path), best of three runs;
- the reference implementation on a sample of the same readings;
- a NumPy pass that only streams the input arrays once (the memory-bandwidth bound);
- the JIT compile time in a fresh subprocess with an empty Numba cache, and the load time with
  the cache warm (the cost every later start pays);
- the ahead-of-time build the daemon loads (`kernels.py`): its build time into an empty
  directory, its load time in a fresh subprocess, and its rate on the same arrays, which must
  give the JIT's deductions reading for reading.

Load: 100,000 accounts on the Zhejiang peak/valley tiered tariff, each reading every 15 minutes,
interleaved in time order as a gateway batch would be (10 million readings; ``--quick``: 1
million). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from billing_engine import kernels, layout
from billing_engine.engine import AccountState, BatchResult, BillingEngine
from billing_engine.instants import from_ms, to_ms
from billing_engine.money import format_minor
from billing_engine.reference import RefAccount, ReferenceBiller
from billing_engine.tariff import load_tariff

TARIFF = (
    Path(__file__).resolve().parents[1]
    / "configs"
    / "tariffs"
    / ("zhejiang-residential-electricity.yaml")
)
_IMPORT_KERNEL = (
    "import time; t = time.perf_counter(); import billing_engine.kernel; "
    "print(time.perf_counter() - t)"
)


def _progress(step: str) -> None:
    """One line on stderr per step: the run takes tens of seconds, and stdout keeps only the
    results (its last line is the JSON object)."""
    print(f"... {step}", file=sys.stderr, flush=True)


def _import_seconds(cache_dir: str | None) -> float:
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    out = subprocess.run(  # noqa: S603 - our own interpreter and a fixed snippet
        [sys.executable, "-c", _IMPORT_KERNEL], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def _time_aot_load(path: Path) -> float:
    snippet = (
        "import time, pathlib; t = time.perf_counter(); from billing_engine import kernels; "
        f"kernels.load_aot(pathlib.Path({str(path)!r})); print(time.perf_counter() - t)"
    )
    out = subprocess.run(  # noqa: S603 - our own interpreter and a fixed snippet
        [sys.executable, "-c", snippet], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def _best_of_three(
    engine: BillingEngine, state0: np.ndarray, arrays: tuple[np.ndarray, ...]
) -> tuple[float, BatchResult]:
    engine.bill_arrays(state0.copy(), *(a[:1000] for a in arrays))  # warm: window, first call
    best = float("inf")
    for _ in range(3):
        state = state0.copy()
        t = time.perf_counter()
        out = engine.bill_arrays(state, *arrays)
        best = min(best, time.perf_counter() - t)
    return best, out


def make_load(
    n_accounts: int, n_readings: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(account, at_ms, register, opening usage) for ``n_readings`` interleaved readings;
    ``at_ms`` in UTC milliseconds, the engine's time unit, with sub-second jitter."""
    rng = np.random.default_rng(seed)
    per_account = max(n_readings // n_accounts, 1)
    start = to_ms(datetime(2026, 6, 1, 18, 0, tzinfo=ZoneInfo("Asia/Shanghai")))
    jitter = rng.integers(0, 900_000, n_accounts)  # ms: each meter's place in the 15 minutes
    steps = np.arange(per_account, dtype=np.int64)
    account = np.tile(np.arange(n_accounts, dtype=np.int64), per_account)
    ts = (start + np.repeat(steps * 900_000, n_accounts) + np.tile(jitter, per_account)).astype(
        np.int64
    )
    usage = rng.integers(0, 400, (per_account, n_accounts)).astype(np.int64)  # Wh per 15 min
    register = np.cumsum(usage, axis=0).reshape(-1) + 1_000_000
    return (
        account[:n_readings],
        ts[:n_readings],
        register[:n_readings],
        rng.integers(0, 3_000_000, n_accounts),
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="prepay bench billing", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 million readings")
    parser.add_argument("--readings", type=int, default=None)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--reference-sample", type=int, default=None)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    n = args.readings or (1_000_000 if args.quick else 10_000_000)
    sample_n = args.reference_sample or (10_000 if args.quick else 30_000)

    _progress("timing the JIT compile in a fresh process with an empty Numba cache")
    with tempfile.TemporaryDirectory() as empty_cache:
        compile_s = _import_seconds(empty_cache)
    cached_load_s = _import_seconds(None)

    tariff = load_tariff(TARIFF)
    engine = BillingEngine(tariff)
    _progress(f"making {n:,} readings over {args.accounts:,} accounts")
    account, ts, register, opening = make_load(args.accounts, n, args.seed)
    accounts = [
        AccountState(10**9, "resident_tou", low_minor=5_000, usage_milli=int(u)) for u in opening
    ]
    state0 = engine.pack(accounts)

    _progress("billing them with the JIT kernel, best of three")
    kernel_s, out = _best_of_three(engine, state0, (account, ts, register))

    _progress("building the ahead-of-time kernel (Numba and a C compiler) and billing with it")
    with tempfile.TemporaryDirectory() as aot_dir:
        t = time.perf_counter()
        aot_path = kernels.build_aot(Path(aot_dir))
        aot_build_s = time.perf_counter() - t
        aot_load_s = _time_aot_load(aot_path)
        aot = kernels.Kernel(kernels.load_aot(aot_path), kernels.KernelMode.AOT, aot_path, "")
        aot_s, aot_out = _best_of_three(BillingEngine(tariff, aot), state0, (account, ts, register))
    aot_agrees = bool(
        np.array_equal(aot_out.deduction_minor, out.deduction_minor)
        and np.array_equal(aot_out.status, out.status)
        and np.array_equal(aot_out.flags, out.flags)
    )
    billed = int((out.status == layout.STATUS_BILLED).sum())
    total_minor = int(out.deduction_minor.sum())

    stream_s = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        checksum = int(account.sum()) + int(ts.sum()) + int(register.sum())
        stream_s = min(stream_s, time.perf_counter() - t)

    # Reference on a sample: the first readings of the first accounts, same order and values.
    sample_accounts = max(sample_n // max(n // args.accounts, 1), 1)
    mask = account < sample_accounts
    s_account, s_ts, s_reg = (
        account[mask][:sample_n],
        ts[mask][:sample_n],
        register[mask][:sample_n],
    )
    refs = [
        RefAccount(10**9, "resident_tou", usage_milli=int(u), low_minor=5_000)
        for u in opening[:sample_accounts]
    ]
    biller = ReferenceBiller(tariff)
    _progress(f"billing a sample of {len(s_ts):,} readings with the reference")
    stamps = [from_ms(int(x)) for x in s_ts]
    t = time.perf_counter()
    ref_deductions = [
        biller.bill(refs[int(a)], at, int(r)).deduction_minor
        for a, at, r in zip(s_account, stamps, s_reg, strict=True)
    ]
    reference_s = time.perf_counter() - t
    check_state = engine.pack(
        [
            AccountState(10**9, "resident_tou", low_minor=5_000, usage_milli=int(u))
            for u in opening[:sample_accounts]
        ]
    )
    check = engine.bill_arrays(check_state, s_account, s_ts, s_reg)
    agree = [int(x) for x in check.deduction_minor] == ref_deductions

    kernel_rate = n / kernel_s
    reference_rate = len(s_ts) / reference_s
    stream_rate = n / stream_s
    print(
        f"readings: {n:,} over {args.accounts:,} accounts ({billed:,} billed, "
        f"{format_minor(total_minor, 'CNY')} deducted; checksum {checksum % 1000})"
    )
    print(f"kernel:    {kernel_rate / 1e6:10.2f} M readings/s  ({kernel_s:.3f} s)")
    print(f"reference: {reference_rate / 1e3:10.2f} k readings/s  (sample of {len(s_ts):,})")
    print(f"stream:    {stream_rate / 1e6:10.2f} M readings/s  (NumPy read of the inputs)")
    print(f"compile:   {compile_s:.2f} s cold, {cached_load_s:.3f} s from the cache")
    print(
        f"aot:       {n / aot_s / 1e6:10.2f} M readings/s  ({aot_s:.3f} s; aot/jit"
        f" {kernel_s / aot_s:.2f}); built in {aot_build_s:.2f} s, loads in {aot_load_s:.3f} s;"
        f" same deductions, statuses and flags as the JIT: {aot_agrees}"
    )
    print(f"kernel agrees with reference on the sample: {agree}")
    result = {
        "readings": n,
        "accounts": args.accounts,
        "kernel_readings_per_s": round(kernel_rate),
        "reference_readings_per_s": round(reference_rate),
        "stream_readings_per_s": round(stream_rate),
        "kernel_vs_reference": round(kernel_rate / reference_rate, 1),
        "kernel_vs_stream": round(kernel_rate / stream_rate, 3),
        "compile_s": round(compile_s, 3),
        "cached_load_s": round(cached_load_s, 3),
        "reference_sample": len(s_ts),
        "agree": agree,
        "aot_readings_per_s": round(n / aot_s),
        "aot_vs_jit": round(kernel_s / aot_s, 2),
        "aot_build_s": round(aot_build_s, 2),
        "aot_load_s": round(aot_load_s, 3),
        "aot_agrees_with_jit": aot_agrees,
    }
    print(json.dumps(result))
    return 0 if agree and aot_agrees else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
