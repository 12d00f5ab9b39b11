"""Property tests: the kernel equals the reference, and the billing invariants hold."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from billing_engine.engine import AccountState, BillingEngine, ReadingStatus
from billing_engine.instants import to_ms
from billing_engine.kernels import Kernel
from billing_engine.reference import RefAccount, ReferenceBiller
from billing_engine.tariff import Tariff
from tests.billing.strategies import reading_runs, tariffs


@given(tariff=tariffs(), data=st.data())
def test_kernel_equals_reference_on_random_tariffs(
    billing_kernel: Kernel | None, tariff: Tariff, data: st.DataObject
) -> None:
    # Both builds of the kernel: the JIT and the ahead-of-time module the daemon loads.
    start = tariff.starts_at
    runs = [data.draw(reading_runs(start)) for _ in range(data.draw(st.integers(1, 3)))]
    classes = tariff.class_names
    balances = [data.draw(st.integers(-10_000, 1_000_000)) for _ in runs]
    openings = [data.draw(st.integers(0, 3_000_000)) for _ in runs]
    # Interleave the accounts' readings in time order, as a gateway batch would.
    batch = sorted(
        ((at, i, reg) for i, run in enumerate(runs) for at, reg in run), key=lambda x: x[0]
    )
    accounts = [
        AccountState(
            balances[i],
            classes[i % len(classes)],
            low_minor=5_000,
            disconnect_minor=-1_000,
            usage_milli=openings[i],
        )
        for i in range(len(runs))
    ]
    results = BillingEngine(tariff, billing_kernel).bill(
        accounts, [(i, at, reg) for at, i, reg in batch]
    )

    ref_accounts = [
        RefAccount(
            balances[i],
            classes[i % len(classes)],
            usage_milli=openings[i],
            low_minor=5_000,
            disconnect_minor=-1_000,
        )
        for i in range(len(runs))
    ]
    biller = ReferenceBiller(tariff)
    for (at, i, reg), got in zip(batch, results, strict=True):
        want = biller.bill(ref_accounts[i], at, reg)
        assert (int(got.status), got.deduction_minor, int(got.crossing), got.balance_minor) == (
            want.status,
            want.deduction_minor,
            want.flags,
            want.balance_minor,
        ), (at, i, reg)
    for acc, ref in zip(accounts, ref_accounts, strict=True):
        assert acc.balance_minor == ref.balance_minor
        assert acc.usage_milli == ref.usage_milli


@given(tariff=tariffs(), data=st.data())
def test_grain_invariance_merging_readings_in_one_span(tariff: Tariff, data: st.DataObject) -> None:
    # Any reading whose interval stays in one span (same version, period, cycle and day) can be
    # merged with its neighbour without changing the total: the deductions of a cycle depend only
    # on the cumulative quantity per span.
    run = data.draw(reading_runs(tariff.starts_at, messy=False, max_len=30))
    # The engine's instant is the UTC millisecond: a later reading in the same millisecond is a
    # conflict whose consumption the next reading bills, so a run that ends on one has not
    # billed its last register yet (0, 0 at 1 s, 2 at 1 s + 1 us: 0 billed, 1 once the middle
    # reading is dropped). The invariant is about the instants the engine bills: the first
    # reading of each millisecond (the runs only move forward).
    run = [r for i, r in enumerate(run) if i == 0 or to_ms(r[0]) > to_ms(run[i - 1][0])]
    engine = BillingEngine(tariff)
    fine_account = AccountState(0, tariff.class_names[0])
    fine = engine.bill([fine_account], [(0, at, reg) for at, reg in run])
    # Drop every reading that sits strictly inside one span with both neighbours.
    keep = [run[0]]
    for prev, cur, nxt in zip(run, run[1:], run[2:], strict=False):
        same = tariff.attributes_at(prev[0]) == tariff.attributes_at(
            cur[0]
        ) == tariff.attributes_at(nxt[0]) and not list(tariff.boundaries(prev[0], nxt[0]))
        if not same or data.draw(st.booleans()):
            keep.append(cur)
    keep.append(run[-1])
    coarse_account = AccountState(0, tariff.class_names[0])
    coarse = engine.bill([coarse_account], [(0, at, reg) for at, reg in keep])
    assert sum(r.deduction_minor for r in fine) == sum(r.deduction_minor for r in coarse)
    assert fine_account.balance_minor == coarse_account.balance_minor


@given(tariff=tariffs(), data=st.data())
def test_balance_never_increases_through_deductions(tariff: Tariff, data: st.DataObject) -> None:
    run = data.draw(reading_runs(tariff.starts_at))
    account = AccountState(data.draw(st.integers(-100, 10**7)), tariff.class_names[-1])
    previous = account.balance_minor
    for result in BillingEngine(tariff).bill([account], [(0, at, reg) for at, reg in run]):
        assert result.deduction_minor >= 0
        assert result.balance_minor <= previous
        previous = result.balance_minor


@given(tariff=tariffs(), data=st.data())
def test_zero_usage_costs_only_the_standing_charge(tariff: Tariff, data: st.DataObject) -> None:
    # A register that never moves: the account pays the standing charge of each local day it was
    # supplied on (the day of the baseline and every day started since), nothing more.
    start = tariff.starts_at + timedelta(seconds=data.draw(st.integers(0, 100 * 86_400)))
    steps = data.draw(st.lists(st.integers(1, 3 * 86_400), min_size=1, max_size=12))
    times = [start]
    for step in steps:
        times.append(times[-1] + timedelta(seconds=step))
    account = AccountState(0, tariff.class_names[0])
    results = BillingEngine(tariff).bill([account], [(0, at, 123_456) for at in times])
    assert all(r.status in (ReadingStatus.BASELINE, ReadingStatus.BILLED) for r in results)
    ref = RefAccount(0, tariff.class_names[0])
    biller = ReferenceBiller(tariff)
    lines = [line for at in times for line in biller.bill(ref, at, 123_456).lines]
    assert all(line.kind == "standing" for line in lines)
    first_day = tariff.attributes_at(times[0])
    # The last reading pays for its day only if the interval reaches into it: a reading at
    # exactly 00:00 has not consumed any of the new day yet.
    last_day = tariff.attributes_at(times[-1] - timedelta(seconds=1))
    assert first_day is not None
    assert last_day is not None
    touched = last_day[3] - first_day[3] + 1
    charged = sum(line.quantity_milli for line in lines)
    # At most one charge per local day supplied; exactly one when every version charges one
    # (a version with no standing charge leaves its days unpriced, so no line).
    assert charged <= touched
    name = tariff.class_names[0]
    if all(v.classes[name].standing_charge_per_day > 0 for v in tariff.versions):
        assert charged == touched
    assert -account.balance_minor == sum(r.deduction_minor for r in results)
    if all(v.classes[tariff.class_names[0]].standing_charge_per_day == 0 for v in tariff.versions):
        assert account.balance_minor == 0
