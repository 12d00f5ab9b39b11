"""Every transition of the state machine (prepaid-rules.md section 4), with hand values."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gateway.errors import CommandRejectedError
from gateway.policy.machine import (
    accept_emergency,
    cut_level_minor,
    next_wakeup,
    on_balance,
    on_tick,
    on_topup,
)
from gateway.policy.state import EventKind, PolicyMode, PolicyState
from tests.policy.support import T0, at, event, fresh, kinds, policy


def test_initial_above_low_level_is_active_with_all_alerts_armed() -> None:
    state = fresh(policy(), 6000)
    assert state.mode is PolicyMode.ACTIVE
    assert state.armed_thresholds_minor == (5000, 1000)
    assert state.supply_on
    assert next_wakeup(policy(), state, T0) is None


def test_initial_between_thresholds_is_low_with_lower_alert_armed() -> None:
    # 3000 is below 5000 (already passed, no alert) and above 1000 (armed).
    state = fresh(policy(), 3000)
    assert state.mode is PolicyMode.LOW
    assert state.armed_thresholds_minor == (1000,)


def test_initial_exhausted_asks_for_a_tick_now_which_starts_grace() -> None:
    pol = policy()
    state = fresh(pol, -200)
    assert next_wakeup(pol, state, T0) == T0
    decision = on_tick(pol, state, -200, T0)
    assert decision.state.mode is PolicyMode.GRACE
    assert decision.state.grace_deadline == at(3600)
    assert next_wakeup(pol, decision.state, T0) == at(3600)


def test_on_balance_active_to_low_alerts_once_per_crossing() -> None:
    pol = policy()
    state = fresh(pol, 6000)
    first = on_balance(pol, state, 4999, T0)  # 6000 -> 4999 crosses 5000
    assert first.state.mode is PolicyMode.LOW
    assert event(first, EventKind.LOW_BALANCE) == {"threshold_minor": 5000, "balance_minor": 4999}
    again = on_balance(pol, first.state, 4000, at(60))  # still below 5000: no second alert
    assert again.events == ()
    assert again.state.armed_thresholds_minor == (1000,)


def test_on_balance_exactly_at_threshold_does_not_alert() -> None:
    # "below" means < : 5000 is not below 5000.
    decision = on_balance(policy(), fresh(policy(), 6000), 5000, T0)
    assert decision.events == ()
    assert decision.state.mode is PolicyMode.ACTIVE


def test_on_balance_two_thresholds_in_one_step_alerts_both_highest_first() -> None:
    decision = on_balance(policy(), fresh(policy(), 6000), 900, T0)
    assert [dict(e.detail)["threshold_minor"] for e in decision.events] == [5000, 1000]
    assert decision.state.armed_thresholds_minor == ()


def test_on_topup_rearms_alert_and_it_fires_on_next_crossing() -> None:
    pol = policy()
    low = on_balance(pol, fresh(pol, 1200), 800, T0).state  # fired 1000
    assert low.armed_thresholds_minor == ()
    # 800 + 600 = 1400 >= 1000: re-armed; 1400 < 5000: that one stays disarmed.
    topped = on_topup(pol, low, 800, 600, 0, at(60))
    assert topped.state.armed_thresholds_minor == (1000,)
    assert topped.state.balance_minor == 1400
    again = on_balance(pol, topped.state, 999, at(120))
    assert event(again, EventKind.LOW_BALANCE)["threshold_minor"] == 1000


def test_on_balance_low_to_grace_then_tick_at_deadline_cuts() -> None:
    pol = policy()  # 1 h grace
    grace = on_balance(pol, fresh(pol, 300), -1, T0)  # -1 < 0: exhausted
    assert grace.state.mode is PolicyMode.GRACE
    assert event(grace, EventKind.GRACE_STARTED) == {"deadline": "2024-03-06T13:00:00+00:00"}
    assert grace.state.supply_on
    assert next_wakeup(pol, grace.state, at(10)) == at(3600)
    early = on_tick(pol, grace.state, -50, at(3599))
    assert early.state.mode is PolicyMode.GRACE
    assert early.events == ()
    cut = on_tick(pol, early.state, -80, at(3600))
    assert cut.state.mode is PolicyMode.CUTOFF
    assert kinds(cut) == ["cutoff"]
    assert event(cut, EventKind.CUTOFF) == {"reason": "grace_expired"}
    assert not cut.supply_on
    assert next_wakeup(pol, cut.state, at(3600)) is None


def test_on_balance_no_grace_cuts_at_once_for_credit_exhausted() -> None:
    pol = policy(grace_s=0)
    cut = on_balance(pol, fresh(pol, 100), -1, T0)
    assert cut.state.mode is PolicyMode.CUTOFF
    assert event(cut, EventKind.CUTOFF) == {"reason": "credit_exhausted"}
    assert not cut.supply_on


def test_on_balance_below_nonzero_disconnect_threshold_cuts() -> None:
    # Cut when balance < 200: 199 is exhausted although positive.
    pol = policy(disconnect_threshold_minor=200, restore_threshold_minor=700, grace_s=0)
    assert on_balance(pol, fresh(pol, 300), 200, T0).state.mode is PolicyMode.LOW
    assert on_balance(pol, fresh(pol, 300), 199, T0).state.mode is PolicyMode.CUTOFF


def test_on_topup_cutoff_just_above_cut_level_stays_cut() -> None:
    pol = policy(grace_s=0)
    cut = on_balance(pol, fresh(pol, 100), -100, T0).state
    # -100 + 400 = 300: above the cut level (0) but below restore (500): stays cut.
    topped = on_topup(pol, cut, -100, 400, 0, at(60))
    assert topped.state.mode is PolicyMode.CUTOFF
    assert not topped.supply_on
    assert EventKind.RESTORED not in [e.kind for e in topped.events]


def test_on_topup_cutoff_to_restore_threshold_restores() -> None:
    pol = policy(grace_s=0)
    cut = on_balance(pol, fresh(pol, 100), -100, T0).state
    # -100 is below the cut level: it moves to debt (+100 -> 0), then +500 = 500 >= 500.
    topped = on_topup(pol, cut, -100, 500, 0, at(60))
    assert topped.state.balance_minor == 500
    assert topped.state.mode is PolicyMode.LOW
    assert topped.supply_on
    assert kinds(topped) == ["debt_accrued", "restored"]
    assert event(topped, EventKind.RESTORED) == {"reason": "topup"}


def test_on_topup_in_grace_lifts_to_low_and_keeps_the_episode_deadline() -> None:
    pol = policy()
    grace = on_balance(pol, fresh(pol, 100), -100, T0).state  # deadline T0 + 1 h
    # -100 -> debt 100, balance 0 + 200 = 200: not exhausted, but below restore 500.
    topped = on_topup(pol, grace, -100, 200, 0, at(600))
    assert topped.state.mode is PolicyMode.LOW
    assert topped.state.grace_deadline == at(3600)
    # Back below 0 within the hour: grace resumes with the same deadline, no new grace.
    again = on_balance(pol, topped.state, -5, at(1200))
    assert again.state.mode is PolicyMode.GRACE
    assert again.state.grace_deadline == at(3600)
    assert again.events == ()


def test_on_balance_exhausted_again_after_grace_spent_cuts_at_once() -> None:
    pol = policy()
    grace = on_balance(pol, fresh(pol, 100), -100, T0).state
    topped = on_topup(pol, grace, -100, 200, 0, at(600)).state  # 200: below restore 500
    # The hour has passed; the episode never ended (never reached 500): no second grace.
    cut = on_balance(pol, topped, -1, at(7200))
    assert cut.state.mode is PolicyMode.CUTOFF
    assert event(cut, EventKind.CUTOFF) == {"reason": "grace_expired"}


def test_on_topup_to_restore_threshold_ends_episode_and_next_exhaustion_gets_grace() -> None:
    pol = policy()
    grace = on_balance(pol, fresh(pol, 100), -100, T0).state
    topped = on_topup(pol, grace, -100, 600, 0, at(600)).state  # 600 >= 500: episode over
    assert topped.grace_deadline is None
    again = on_balance(pol, topped, -1, at(7200))
    assert again.state.mode is PolicyMode.GRACE
    assert again.state.grace_deadline == at(7200 + 3600)


def test_on_balance_ec_offered_below_threshold_then_accept_low_to_emergency() -> None:
    # GB style: EC of 10.00 offered below 2.00, manual accept.
    pol = policy(emergency_credit_minor=1000, emergency_threshold_minor=200)
    low = on_balance(pol, fresh(pol, 900), 150, T0)
    assert low.state.mode is PolicyMode.LOW
    assert event(low, EventKind.EMERGENCY_CREDIT_OFFERED) == {"credit_minor": 1000}
    accepted = accept_emergency(pol, low.state, 150, at(60))
    assert accepted.state.mode is PolicyMode.EMERGENCY
    assert kinds(accepted) == ["emergency_credit_accepted"]
    # Cut level is now 0 - 1000 = -1000.
    assert cut_level_minor(pol, accepted.state) == -1000
    using = on_balance(pol, accepted.state, -999, at(120))
    assert using.state.mode is PolicyMode.EMERGENCY
    assert using.supply_on


def test_on_balance_ec_used_up_starts_grace_then_cuts() -> None:
    pol = policy(emergency_credit_minor=1000, emergency_threshold_minor=200)
    offered = on_balance(pol, fresh(pol, 900), 150, T0).state
    emergency = accept_emergency(pol, offered, 150, at(60)).state
    grace = on_balance(pol, emergency, -1001, at(120))  # -1001 < -1000
    assert grace.state.mode is PolicyMode.GRACE
    assert grace.state.grace_deadline == at(120 + 3600)
    cut = on_tick(pol, grace.state, -1100, at(120 + 3600))
    assert cut.state.mode is PolicyMode.CUTOFF
    assert not cut.supply_on


def test_accept_emergency_after_cutoff_restores_without_restore_threshold() -> None:
    pol = policy(grace_s=0, emergency_credit_minor=1000, min_dwell_s=60)
    cut = on_balance(pol, fresh(pol, 100), -40, T0)
    assert kinds(cut) == ["emergency_credit_offered", "cutoff"]
    # -40 >= -1000: EC lifts the account out of exhaustion; 60 s dwell has passed.
    back = accept_emergency(pol, cut.state, -40, at(60))
    assert back.state.mode is PolicyMode.EMERGENCY
    assert back.supply_on
    assert event(back, EventKind.RESTORED) == {"reason": "emergency_credit"}


def test_accept_emergency_not_covering_deficit_stays_cut() -> None:
    pol = policy(grace_s=0, emergency_credit_minor=1000)
    cut = on_balance(pol, fresh(pol, 100), -1500, T0).state
    still = accept_emergency(pol, cut, -1500, at(60))  # -1500 < -1000
    assert still.state.mode is PolicyMode.CUTOFF
    assert not still.supply_on
    assert kinds(still) == ["emergency_credit_accepted"]


def test_on_balance_ec_auto_accept_low_to_emergency_without_grace() -> None:
    pol = policy(emergency_credit_minor=1000, emergency_auto_accept=True)
    decision = on_balance(pol, fresh(pol, 100), -10, T0)
    assert kinds(decision) == ["emergency_credit_offered", "emergency_credit_accepted"]
    assert decision.state.mode is PolicyMode.EMERGENCY
    assert decision.state.grace_deadline is None


def test_accept_emergency_twice_is_a_no_op() -> None:
    pol = policy(emergency_credit_minor=1000)
    offered = on_balance(pol, fresh(pol, 100), -10, T0).state
    once = accept_emergency(pol, offered, -10, at(1)).state
    twice = accept_emergency(pol, once, -10, at(2))
    assert twice.state == once
    assert twice.events == ()


def test_accept_emergency_without_ec_or_above_threshold_is_rejected() -> None:
    with pytest.raises(CommandRejectedError) as none:
        accept_emergency(policy(), fresh(policy(), -10), -10, T0)
    assert none.value.reason == "no_emergency_credit"
    pol = policy(emergency_credit_minor=1000)
    with pytest.raises(CommandRejectedError) as early:
        accept_emergency(pol, fresh(pol, 300), 300, T0)
    assert early.value.reason == "emergency_credit_not_offered"


def test_on_topup_repays_ec_and_closes_the_ec_episode() -> None:
    pol = policy(emergency_credit_minor=1000, emergency_auto_accept=True)
    emergency = on_balance(pol, fresh(pol, 100), -600, T0).state
    # EC used = 600; +2000 repays it first: -600 + 2000 = 1400. Nothing below the cut level.
    topped = on_topup(pol, emergency, -600, 2000, 0, at(60))
    assert topped.ledger_ops == ()
    assert event(topped, EventKind.EMERGENCY_CREDIT_REPAID) == {
        "amount_minor": 600,
        "outstanding_minor": 0,
    }
    assert topped.state.balance_minor == 1400
    assert topped.state.mode is PolicyMode.LOW
    assert not topped.state.ec_accepted
    assert not topped.state.ec_offered
    # Offered again at the next exhaustion.
    again = on_balance(pol, topped.state, -1, at(120))
    assert "emergency_credit_offered" in kinds(again)


def test_on_topup_partial_ec_repayment_keeps_ec_accepted() -> None:
    pol = policy(emergency_credit_minor=1000, emergency_auto_accept=True)
    emergency = on_balance(pol, fresh(pol, 100), -600, T0).state
    topped = on_topup(pol, emergency, -600, 200, 0, at(60))  # -400: EC still in use
    assert event(topped, EventKind.EMERGENCY_CREDIT_REPAID) == {
        "amount_minor": 200,
        "outstanding_minor": 400,
    }
    assert topped.state.mode is PolicyMode.EMERGENCY
    assert topped.state.ec_accepted


def test_exempt_accrues_negative_balance_and_never_cuts() -> None:
    pol = policy(exempt=True, grace_s=0)
    state = fresh(pol, 1200)
    assert state.mode is PolicyMode.EXEMPT
    decision = on_balance(pol, state, -50_000, T0)
    assert decision.state.mode is PolicyMode.EXEMPT
    assert decision.supply_on
    assert [e.kind for e in decision.events] == [EventKind.LOW_BALANCE]  # 1000 crossed
    assert next_wakeup(pol, decision.state, T0) is None
    # At the top-up, the whole -50000 moves into debt: +50000 debt entry, balance 0 + 3000.
    topped = on_topup(pol, decision.state, -50_000, 3000, 0, at(60))
    assert [(op.kind.value, op.amount_minor) for op in topped.ledger_ops] == [("debt", 50_000)]
    assert topped.state.balance_minor == 3000


def test_exemption_granted_restores_and_revoked_starts_grace() -> None:
    normal = policy(grace_s=0)
    cut = on_balance(normal, fresh(normal, 100), -100, T0).state
    exempt = policy(grace_s=600, exempt=True)
    assert next_wakeup(exempt, cut, at(30)) == at(30)  # config changed: settle now
    granted = on_tick(exempt, cut, -100, at(30))
    assert granted.state.mode is PolicyMode.EXEMPT
    assert event(granted, EventKind.RESTORED) == {"reason": "exempt"}
    revoked_policy = policy(grace_s=600)
    revoked = on_tick(revoked_policy, granted.state, -100, at(60))
    assert revoked.state.mode is PolicyMode.GRACE
    assert revoked.state.grace_deadline == at(60 + 600)


def test_on_tick_with_nothing_due_changes_nothing() -> None:
    pol = policy()
    state = on_balance(pol, fresh(pol, 6000), 4000, T0).state
    decision = on_tick(pol, state, 4000, at(10))
    assert decision.state == state
    assert decision.events == ()


def test_on_balance_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        on_balance(policy(), fresh(policy(), 10), 5, T0.replace(tzinfo=None))


def test_policy_state_initial_exempt_is_exempt() -> None:
    assert PolicyState.initial(policy(exempt=True), -5).mode is PolicyMode.EXEMPT
    assert (
        next_wakeup(policy(exempt=True), PolicyState.initial(policy(exempt=True), -5), T0) is None
    )


def test_on_balance_grace_deadline_reported_exactly() -> None:
    pol = policy(grace_s=86_400 * 3)  # CN practice: 3 days
    grace = on_balance(pol, fresh(pol, 10), -1, T0)
    assert grace.state.grace_deadline == T0 + timedelta(days=3)
