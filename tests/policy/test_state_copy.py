"""`changed`, the policy's fast copy of a state with changes, is `dataclasses.replace`."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import pytest

from gateway.policy.state import PolicyMode, PolicyState, Supply
from gateway.policy.state_copy import changed
from tests.policy.support import T0, at

STATE = PolicyState(
    mode=PolicyMode.GRACE,
    armed_thresholds_minor=(1000,),
    balance_minor=-5,
    grace_deadline=at(60),
    last_switch_at=T0,
)
NEW_VALUES: dict[str, Any] = {
    "mode": PolicyMode.CUTOFF,
    "armed_thresholds_minor": (5000, 1000),
    "balance_minor": 10**20,
    "grace_deadline": None,
    "pending_until": at(7),
    "ec_offered": True,
    "ec_accepted": True,
    "ec_granted_minor": 300,
    "cut_reason": "grace_expired",
    "supply_on": False,
    "switch_reason": "credit_exhausted",
    "last_switch_at": at(9),
    "override": Supply.OFF,
    "override_reason": "maintenance",
    "override_until": at(3600),
}


def test_new_values_cover_every_field() -> None:
    assert set(NEW_VALUES) == {f.name for f in fields(PolicyState)}


@pytest.mark.parametrize("name", sorted(NEW_VALUES))
def test_changed_one_change_equals_replace(name: str) -> None:
    copy = changed(STATE, **{name: NEW_VALUES[name]})
    assert copy == replace(STATE, **{name: NEW_VALUES[name]})
    assert repr(copy) == repr(replace(STATE, **{name: NEW_VALUES[name]}))
    assert copy is not STATE
    assert STATE.mode is PolicyMode.GRACE  # the original is untouched


def test_changed_all_changes_equals_replace_and_hashes_alike() -> None:
    copy = changed(STATE, **NEW_VALUES)
    assert copy == replace(STATE, **NEW_VALUES)
    assert hash(copy) == hash(replace(STATE, **NEW_VALUES))
    with pytest.raises(AttributeError):
        copy.balance_minor = 1  # type: ignore[misc]


def test_changed_nothing_changed_is_the_state_itself() -> None:
    assert changed(STATE, mode=STATE.mode, grace_deadline=STATE.grace_deadline) is STATE
    assert changed(STATE, pending_until=None, cut_reason=None, switch_reason=None) is STATE
    assert changed(STATE) is STATE


def test_changed_equal_but_not_identical_value_copies() -> None:
    copy = changed(STATE, grace_deadline=at(60).astimezone())
    assert copy is not STATE
    assert copy.grace_deadline is not STATE.grace_deadline


def test_changed_unknown_field_raises() -> None:
    with pytest.raises(TypeError, match="supply"):
        changed(STATE, supply=Supply.ON)


def test_policy_state_has_no_post_init_for_with_to_skip() -> None:
    assert not hasattr(PolicyState, "__post_init__")
