"""Supply switching: minimum dwell time between switches, and backend overrides."""

from __future__ import annotations

import pytest

from gateway.errors import CommandRejectedError
from gateway.policy.machine import next_wakeup, on_balance, on_tick, on_topup, set_override
from gateway.policy.state import EventKind, PolicyMode, Supply
from tests.policy.support import T0, at, event, fresh, kinds, policy


def test_min_dwell_holds_restore_until_dwell_end_then_tick_restores() -> None:
    pol = policy(grace_s=0, min_dwell_s=300)
    cut = on_balance(pol, fresh(pol, 10), -10, T0).state  # switched off at T0
    assert cut.last_switch_at == T0
    # Top-up 60 s later to 1000: restore wanted, but not before T0 + 300 s.
    held = on_topup(pol, cut, -10, 1000, 0, at(60))
    assert held.state.mode is PolicyMode.LOW
    assert not held.supply_on
    assert "restored" not in kinds(held)
    assert next_wakeup(pol, held.state, at(60)) == at(300)
    assert on_tick(pol, held.state, 1000, at(299)).supply_on is False
    back = on_tick(pol, held.state, 1000, at(300))
    assert back.supply_on
    assert event(back, EventKind.RESTORED) == {"reason": "topup"}  # the reason is kept
    assert back.state.last_switch_at == at(300)
    assert next_wakeup(pol, back.state, at(300)) is None


def test_min_dwell_holds_cutoff_after_recent_restore() -> None:
    pol = policy(grace_s=0, min_dwell_s=300)
    cut = on_balance(pol, fresh(pol, 10), -10, T0).state
    restored = on_topup(pol, cut, -10, 1000, 0, at(400)).state  # dwell passed: on at 400
    assert restored.supply_on
    again = on_balance(pol, restored, -1, at(500))  # cut due, dwell until 700
    assert again.state.mode is PolicyMode.CUTOFF
    assert again.supply_on
    assert next_wakeup(pol, again.state, at(500)) == at(700)
    off = on_tick(pol, again.state, -1, at(700))
    assert not off.supply_on
    assert event(off, EventKind.CUTOFF) == {"reason": "credit_exhausted"}


def test_min_dwell_wish_reverting_during_hold_switches_nothing() -> None:
    pol = policy(grace_s=0, min_dwell_s=300)
    cut = on_balance(pol, fresh(pol, 10), -10, T0).state
    restored = on_topup(pol, cut, -10, 1000, 0, at(400)).state
    held = on_balance(pol, restored, -1, at(500)).state  # wants off, held
    back = on_topup(pol, held, -1, 2000, 0, at(550))  # wants on again: already on
    assert back.supply_on
    assert back.state.switch_reason is None
    assert next_wakeup(pol, back.state, at(550)) is None


def test_set_override_off_cuts_at_once_and_logs() -> None:
    pol = policy(min_dwell_s=300)
    state = fresh(pol, 6000)
    decision = set_override(pol, state, Supply.OFF, "leak reported", None, T0)
    assert kinds(decision) == ["override_applied", "cutoff"]
    assert event(decision, EventKind.OVERRIDE_APPLIED) == {
        "override": "off",
        "reason": "leak reported",
        "until": None,
    }
    assert event(decision, EventKind.CUTOFF) == {"reason": "override"}
    assert decision.state.mode is PolicyMode.ACTIVE  # the policy's own verdict is unchanged
    assert not decision.supply_on


def test_set_override_on_keeps_supply_through_exhaustion_and_clears_to_policy() -> None:
    pol = policy(grace_s=0)
    state = set_override(pol, fresh(pol, 100), True, "medical", None, T0).state
    exhausted = on_balance(pol, state, -500, at(60))
    assert exhausted.state.mode is PolicyMode.CUTOFF  # policy says cut ...
    assert exhausted.supply_on  # ... the override keeps it on
    assert "cutoff" not in kinds(exhausted)
    cleared = set_override(pol, exhausted.state, None, "case closed", None, at(120), -500)
    assert not cleared.supply_on
    assert event(cleared, EventKind.CUTOFF) == {"reason": "override_cleared"}
    assert event(cleared, EventKind.OVERRIDE_APPLIED)["override"] == "auto"
    assert cleared.state.override is None


def test_set_override_until_expires_on_tick() -> None:
    pol = policy(grace_s=0)
    cut = on_balance(pol, fresh(pol, 10), -10, T0).state
    on = set_override(pol, cut, Supply.ON, "visit", at(3600), at(60))
    assert event(on, EventKind.RESTORED) == {"reason": "override"}
    assert next_wakeup(pol, on.state, at(60)) == at(3600)
    expired = on_tick(pol, on.state, -10, at(3600))
    assert kinds(expired) == ["override_expired", "cutoff"]
    assert event(expired, EventKind.CUTOFF) == {"reason": "override_expired"}
    assert expired.state.override is None
    assert next_wakeup(pol, expired.state, at(3600)) is None


def test_set_override_until_in_the_past_is_rejected() -> None:
    with pytest.raises(CommandRejectedError) as err:
        set_override(policy(), fresh(policy(), 10), Supply.OFF, "x", T0, T0)
    assert err.value.reason == "override_until_past"


def test_set_override_same_as_policy_switches_nothing() -> None:
    decision = set_override(policy(), fresh(policy(), 6000), Supply.ON, "check", None, T0)
    assert kinds(decision) == ["override_applied"]
    assert decision.supply_on
