"""Properties over random account histories: persistence, timers, alerts, hysteresis, money."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import CommandRejectedError
from gateway.policy.config import PolicyConfig
from gateway.policy.machine import (
    accept_emergency,
    cut_level_minor,
    next_wakeup,
    on_balance,
    on_tick,
    on_topup,
    set_override,
)
from gateway.policy.state import Decision, EventKind, PolicyMode, PolicyState, Supply
from tests.policy.support import T0, policy

NIGHT = {
    "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
    "start": "18:00",
    "end": "10:00",
}

POLICIES = [
    policy(),
    policy(grace_s=0),
    policy(emergency_credit_minor=1000, emergency_auto_accept=True, debt_recovery_percent=20),
    policy(emergency_credit_minor=800, emergency_threshold_minor=300, grace_s=600),
    policy(friendly_windows=[NIGHT], timezone="Europe/London", grace_s=900),
    policy(exempt=True, debt_recovery_percent=50),
    policy(grace_s=0, min_dwell_s=300, disconnect_threshold_minor=100, restore_threshold_minor=900),
]

Op = tuple[str, int]
ops_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.integers(0, 900)),
        st.tuples(st.just("topup"), st.integers(1, 2500)),
        st.tuples(st.just("tick"), st.integers(0, 0)),
        st.tuples(st.just("accept"), st.integers(0, 0)),
        st.tuples(st.just("override"), st.integers(0, 3)),
    ),
    max_size=40,
)


@dataclass
class Account:
    """What the daemon keeps: ledger balance and debt register, plus the policy state."""

    balance: int
    debt: int
    state: PolicyState


def _step(pol: PolicyConfig, acc: Account, op: Op, now: object) -> Decision | None:
    kind, value = op
    assert isinstance(now, type(T0))
    if kind == "read":
        acc.balance -= value
        return on_balance(pol, acc.state, acc.balance, now)
    if kind == "topup":
        before = acc.balance
        acc.balance += value
        decision = on_topup(pol, acc.state, before, value, acc.debt, now)
        for ledger_op in decision.ledger_ops:
            acc.balance += ledger_op.amount_minor
            acc.debt += ledger_op.amount_minor
        return decision
    if kind == "tick":
        return on_tick(pol, acc.state, acc.balance, now)
    if kind == "accept":
        try:
            return accept_emergency(pol, acc.state, acc.balance, now)
        except CommandRejectedError:
            return None
    choice = [None, Supply.ON, Supply.OFF, Supply.OFF][value]
    until = now + timedelta(hours=2) if value == 3 else None
    return set_override(pol, acc.state, choice, "test", until, now, acc.balance)


@given(
    pol=st.sampled_from(POLICIES),
    start=st.integers(-500, 6000),
    ops=ops_strategy,
    gaps=st.lists(st.integers(0, 4 * 3600), min_size=40, max_size=40),
)
def test_policy_random_history_keeps_every_invariant(
    pol: PolicyConfig, start: int, ops: list[Op], gaps: list[int]
) -> None:
    acc = Account(start, 0, PolicyState.initial(pol, start))
    now = T0
    # The daemon first settles a fresh state whose wakeup is due.
    if (due := next_wakeup(pol, acc.state, now)) is not None and due <= now:
        acc.state = on_tick(pol, acc.state, acc.balance, now).state
    armed = set(acc.state.armed_thresholds_minor)
    for op, gap in zip(ops, gaps, strict=False):
        now += timedelta(seconds=gap)
        # Like the daemon: run every wakeup that came due before this operation.
        for _ in range(10):
            due = next_wakeup(pol, acc.state, now)
            if due is None or due > now:
                break
            acc.state = on_tick(pol, acc.state, acc.balance, now).state
        else:
            raise AssertionError("next_wakeup stayed due after on_tick")
        before = acc.state
        decision = _step(pol, acc, op, now)
        if decision is None:
            continue
        acc.state = decision.state
        state = decision.state

        # Money: the policy's balance is the ledger's; the debt register never goes negative.
        assert state.balance_minor == acc.balance
        assert acc.debt >= 0

        # Timers: after any step the next wakeup is in the future (the daemon's loop ends),
        # and ticking again at the same instant is a no-op.
        wake = next_wakeup(pol, state, now)
        assert wake is None or wake > now
        again = on_tick(pol, state, acc.balance, now)
        assert again.events == ()
        assert again.state == state

        # Alerts: one per downward crossing, re-armed only by a top-up.
        if op[0] == "topup":
            armed |= {t for t in pol.low_thresholds_minor if acc.balance >= t}
        fired = [
            e.detail["threshold_minor"] for e in decision.events if e.kind is EventKind.LOW_BALANCE
        ]
        for threshold in fired:
            assert threshold in armed
            armed.discard(threshold)
        assert not {t for t in armed if acc.balance < t}
        assert set(state.armed_thresholds_minor) == armed

        # Supply: never cut an exempt account by policy, cut only when exhausted,
        # restore after a cut only at the restore threshold (or by emergency credit).
        for e in decision.events:
            if e.kind is EventKind.CUTOFF and e.detail["reason"] in (
                "credit_exhausted",
                "grace_expired",
                "window_ended",
            ):
                assert not pol.exempt
                assert state.mode is PolicyMode.CUTOFF
            if e.kind is EventKind.RESTORED and e.detail["reason"] == "topup":
                assert acc.balance >= pol.restore_threshold_minor
        if state.mode is PolicyMode.CUTOFF and before.mode is not PolicyMode.CUTOFF:
            assert acc.balance < cut_level_minor(pol, state)
        if pol.exempt:
            assert state.mode is PolicyMode.EXEMPT
        if state.override is None and state.supply_on != (state.mode is not PolicyMode.CUTOFF):
            assert pol.min_dwell_s > 0  # only the dwell time may hold the supply back


@given(
    deductions=st.lists(st.integers(1, 99), min_size=1, max_size=60),
    topups=st.lists(st.integers(1, 99), min_size=60, max_size=60),
)
def test_policy_alternating_small_deductions_and_topups_do_not_flap(
    deductions: list[int], topups: list[int]
) -> None:
    # Cut below 0, restore at 500: with steps under 100, supply may switch at most once off
    # and once on per 500 the balance climbs, so alternating tiny moves around 0 never flap.
    pol = policy(grace_s=0, restore_threshold_minor=500)
    balance, debt = 50, 0
    state = PolicyState.initial(pol, balance)
    now = T0
    switches = 0
    for cost, amount in zip(deductions, topups, strict=False):
        now += timedelta(minutes=1)
        balance -= cost
        decision = on_balance(pol, state, balance, now)
        state = decision.state
        switches += sum(e.kind in (EventKind.CUTOFF, EventKind.RESTORED) for e in decision.events)
        before = balance
        balance += amount
        decision = on_topup(pol, state, before, amount, debt, now)
        for ledger_op in decision.ledger_ops:
            balance += ledger_op.amount_minor
            debt += ledger_op.amount_minor
        state = decision.state
        switches += sum(e.kind in (EventKind.CUTOFF, EventKind.RESTORED) for e in decision.events)
    climbed = sum(topups[: len(deductions)])
    assert switches <= 1 + 2 * (climbed // 500)


times = st.datetimes(
    min_value=T0.replace(tzinfo=None) - timedelta(days=3650),
    max_value=T0.replace(tzinfo=None) + timedelta(days=3650),
).map(lambda d: d.replace(tzinfo=T0.tzinfo))
reasons = st.one_of(st.none(), st.text(max_size=20))

states = st.builds(
    PolicyState,
    mode=st.sampled_from(PolicyMode),
    armed_thresholds_minor=st.lists(st.integers(-(2**53), 2**53), unique=True).map(
        lambda ts: tuple(sorted(ts, reverse=True))
    ),
    balance_minor=st.integers(-(2**63), 2**63 - 1),
    grace_deadline=st.one_of(st.none(), times),
    pending_until=st.one_of(st.none(), times),
    ec_offered=st.booleans(),
    ec_accepted=st.booleans(),
    ec_granted_minor=st.integers(0, 10**9),
    cut_reason=reasons,
    supply_on=st.booleans(),
    switch_reason=reasons,
    last_switch_at=st.one_of(st.none(), times),
    override=st.one_of(st.none(), st.sampled_from(Supply)),
    override_reason=reasons,
    override_until=st.one_of(st.none(), times),
)


@given(state=states)
def test_policy_state_round_trips_through_dict_and_json_exactly(state: PolicyState) -> None:
    record = state.to_dict()
    assert all(isinstance(v, int | str) or v is None for v in record.values())
    assert not any(isinstance(v, bool) for v in record.values())
    assert PolicyState.from_dict(record) == state
    through_json = json.loads(json.dumps(record))
    assert through_json == record
    assert PolicyState.from_dict(through_json).to_dict() == record
