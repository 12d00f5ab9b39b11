"""The prepaid state machine: pure functions from (policy, state, balance, now) to a `Decision`.

No I/O, no clock: ``now`` is always an aware UTC datetime passed in. Money is integer minor
units. The daemon calls `on_balance` after every deduction, `on_topup` after a top-up is
credited, `on_tick` when `next_wakeup` says so, and `accept_emergency` / `set_override` for
commands; it writes the returned ``ledger_ops``, journals and publishes the ``events``,
persists ``state.to_dict()`` in the same transaction, and drives the relay or valve to
``state.supply_on``.

States follow the MQTT ``account/{id}/state``
names. The rules, in short (``docs/prepaid-policy.md`` has the diagram and a worked example):

* cut level = ``disconnect_threshold_minor`` minus the emergency credit, once accepted;
  *exhausted* means balance < cut level;
* on exhaustion: grace (once per episode), then cutoff; a cutoff due inside a friendly window
  waits (``cutoff_pending``) until the window, chained with any window touching it, ends;
* an *episode* ends only when the balance reaches ``restore_threshold_minor``: supply comes
  back then (hysteresis), and a new grace period becomes possible. Accepting emergency credit
  also restores, as long as it lifts the balance above the new cut level;
* ``exempt`` accounts are never cut; their negative balance becomes debt at the next top-up;
* a backend override wins over the policy until cleared or until its ``until``;
* two supply switches are at least ``min_dwell_s`` apart, except that an override switches at
  once.

Why one module of this size: the steps and their transitions are one state machine; the
vocabulary (`state`), the fast copy (`state_copy`) and the calendar (`windows`) live apart.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from enum import StrEnum

from gateway.errors import CommandRejectedError
from gateway.policy.config import PolicyConfig
from gateway.policy.state import (
    Decision,
    EventKind,
    LedgerOp,
    LedgerOpKind,
    PolicyEvent,
    PolicyMode,
    PolicyState,
    Supply,
    check_now,
    iso_utc,
    sorted_thresholds,
)
from gateway.policy.state_copy import changed
from gateway.policy.windows import friendly_window_end


class _Cause(StrEnum):
    # Why the state is evaluated; also the reason given for a restore.
    READING = "reading"
    TOPUP = "topup"
    TICK = "tick"
    EMERGENCY_CREDIT = "emergency_credit"
    OVERRIDE = "override"


_EXHAUSTED_MODES = frozenset({PolicyMode.GRACE, PolicyMode.CUTOFF_PENDING, PolicyMode.CUTOFF})


# --- public steps -------------------------------------------------------------------------


def on_balance(
    policy: PolicyConfig, state: PolicyState, balance_minor: int, now: datetime
) -> Decision:
    """Re-evaluate after a deduction (or any balance change that is not a top-up)."""
    check_now(now)
    events: list[PolicyEvent] = []
    new = _evaluate(
        policy, state, balance=balance_minor, now=now, cause=_Cause.READING, events=events
    )
    return Decision(new, tuple(events))


def on_topup(
    policy: PolicyConfig,
    state: PolicyState,
    balance_before_minor: int,
    amount_minor: int,
    debt_minor: int,
    now: datetime,
) -> Decision:
    """Apply a credited top-up: repay emergency credit, move old deficit to debt, recover debt.

    The top-up (already in the ledger) first covers the emergency credit used, which simply
    stays in the balance. The part of the negative balance below the cut level (use during
    grace, a friendly window, an exemption or an override) moves into the debt register, and
    ``debt_recovery_percent`` of the top-up (rounded down, capped at the debt and at what the
    top-up has left after the emergency credit) repays debt. Alerts at or below the resulting
    balance are re-armed; supply comes back only if that balance reaches the restore threshold.

    Args:
        balance_before_minor: the balance before the top-up was credited.
        amount_minor: the top-up, > 0.
        debt_minor: the debt register before the top-up, >= 0.

    Raises:
        ValueError: ``amount_minor`` <= 0 or ``debt_minor`` < 0.
    """
    check_now(now)
    if amount_minor <= 0:
        raise ValueError(f"top-up amount must be positive, got {amount_minor}")
    if debt_minor < 0:
        raise ValueError(f"debt register must not be negative, got {debt_minor}")
    before = balance_before_minor
    granted = state.ec_granted_minor if state.ec_accepted else 0
    cut_level = policy.disconnect_threshold_minor - granted
    ec_used = min(granted, max(0, policy.disconnect_threshold_minor - before))
    ec_repaid = min(amount_minor, ec_used)
    moved = max(0, min(0, cut_level) - before)
    recovered = min(
        amount_minor * policy.debt_recovery_percent // 100,
        debt_minor + moved,
        amount_minor - ec_repaid,
    )
    after = before + amount_minor + moved - recovered

    events: list[PolicyEvent] = []
    ops: list[LedgerOp] = []
    if ec_repaid:
        events.append(
            PolicyEvent(
                EventKind.EMERGENCY_CREDIT_REPAID,
                {"amount_minor": ec_repaid, "outstanding_minor": ec_used - ec_repaid},
            )
        )
    if moved:
        ops.append(LedgerOp(LedgerOpKind.DEBT, moved))
        events.append(PolicyEvent(EventKind.DEBT_ACCRUED, {"amount_minor": moved}))
    if recovered:
        ops.append(LedgerOp(LedgerOpKind.DEBT_RECOVERY, -recovered))
        events.append(
            PolicyEvent(
                EventKind.DEBT_RECOVERED,
                {"amount_minor": recovered, "debt_minor": debt_minor + moved - recovered},
            )
        )
    armed = sorted_thresholds(
        {*state.armed_thresholds_minor, *(t for t in policy.low_thresholds_minor if after >= t)}
    )
    rearmed = replace(state, armed_thresholds_minor=armed)
    new = _evaluate(policy, rearmed, balance=after, now=now, cause=_Cause.TOPUP, events=events)
    return Decision(new, tuple(events), tuple(ops))


def on_tick(
    policy: PolicyConfig, state: PolicyState, balance_minor: int, now: datetime
) -> Decision:
    """Timers: grace expiry, friendly-window end, override expiry, dwell time passed."""
    check_now(now)
    events: list[PolicyEvent] = []
    new = _evaluate(policy, state, balance=balance_minor, now=now, cause=_Cause.TICK, events=events)
    return Decision(new, tuple(events))


def accept_emergency(
    policy: PolicyConfig, state: PolicyState, balance_minor: int, now: datetime
) -> Decision:
    """The customer accepts the emergency credit on offer (IHD menu, meter button, app).

    Accepting again while it is accepted changes nothing (a retried command). If the credit
    lifts the balance above the new cut level, the exhaustion episode ends: supply comes back
    without waiting for the restore threshold, and a fresh grace period applies when the
    emergency credit runs out in turn.

    Raises:
        CommandRejectedError: ``no_emergency_credit`` (the policy has none, or the account is
            exempt) or ``emergency_credit_not_offered`` (balance not below the EC threshold).
    """
    check_now(now)
    if state.ec_accepted:
        return Decision(state)
    if policy.emergency_credit_minor == 0 or policy.exempt:
        raise CommandRejectedError("no_emergency_credit", "this account has no emergency credit")
    if balance_minor >= policy.emergency_offer_below_minor:
        raise CommandRejectedError(
            "emergency_credit_not_offered",
            f"balance {balance_minor} is not below {policy.emergency_offer_below_minor}",
        )
    events: list[PolicyEvent] = []
    if not state.ec_offered:
        events.append(_offer_event(policy))
    accepted = _accept(policy, state, events)
    if balance_minor >= cut_level_minor(policy, accepted):
        accepted = replace(accepted, grace_deadline=None, pending_until=None)
    new = _evaluate(
        policy,
        accepted,
        balance=balance_minor,
        now=now,
        cause=_Cause.EMERGENCY_CREDIT,
        events=events,
    )
    return Decision(new, tuple(events))


def set_override(
    policy: PolicyConfig,
    state: PolicyState,
    override: Supply | bool | None,
    reason: str,
    until: datetime | None,
    now: datetime,
    balance_minor: int | None = None,
) -> Decision:
    """Apply a backend supply override (``None`` hands control back to the policy).

    The override switches at once, whatever the dwell time; the policy keeps running
    underneath (mode, grace, debt) and takes over again when the override is cleared or
    ``until`` passes.

    Args:
        override: ``Supply.ON``/``True``, ``Supply.OFF``/``False``, or ``None`` (auto).
        reason: the operator's reason, journalled with the event.
        until: when the override ends by itself (aware UTC), or ``None`` for no end.
        balance_minor: the current balance; the last evaluated one if omitted.

    Raises:
        CommandRejectedError: ``override_until_past`` when ``until`` is not after ``now``.
    """
    check_now(now)
    if isinstance(override, bool):
        override = Supply.ON if override else Supply.OFF
    if override is None:
        until = None
    elif until is not None:
        check_now(until)
        if until <= now:
            raise CommandRejectedError(
                "override_until_past", f"until {until.isoformat()} is not after {now.isoformat()}"
            )
    events = [
        PolicyEvent(
            EventKind.OVERRIDE_APPLIED,
            {
                "override": "auto" if override is None else override.value,
                "reason": reason,
                "until": iso_utc(until),
            },
        )
    ]
    overridden = replace(state, override=override, override_reason=reason, override_until=until)
    if override is None:
        overridden = replace(overridden, override_reason=None)
    balance = state.balance_minor if balance_minor is None else balance_minor
    new = _evaluate(
        policy,
        overridden,
        balance=balance,
        now=now,
        cause=_Cause.OVERRIDE,
        events=events,
        before=state,
    )
    return Decision(new, tuple(events))


def next_wakeup(policy: PolicyConfig, state: PolicyState, now: datetime) -> datetime | None:
    """When `on_tick` must run next; ``now`` if something is due already, None if nothing.

    After ``on_tick(policy, state, state.balance_minor, now)`` the answer is always later than
    ``now`` or None, so a loop "tick while due" ends.
    """
    check_now(now)
    wakeups: list[datetime] = []
    if state.mode is PolicyMode.GRACE and state.grace_deadline is not None:
        wakeups.append(state.grace_deadline)
    if state.mode is PolicyMode.CUTOFF_PENDING and state.pending_until is not None:
        wakeups.append(state.pending_until)
    if state.override is not None and state.override_until is not None:
        wakeups.append(state.override_until)
    if _wanted_supply_on(state) != state.supply_on:
        wakeups.append(_dwell_end(policy, state) or now)
    due = min(wakeups, default=None)
    if due is not None and due <= now:
        return due
    # Unsettled state (fresh account, config reload): a tick now would change something.
    probe: list[PolicyEvent] = []
    if (
        _evaluate(
            policy, state, balance=state.balance_minor, now=now, cause=_Cause.TICK, events=probe
        )
        != state
        or probe
    ):
        return now
    return due


def cut_level_minor(policy: PolicyConfig, state: PolicyState) -> int:
    """Balance below which credit is exhausted: the disconnect threshold minus accepted EC."""
    granted = state.ec_granted_minor if state.ec_accepted else 0
    return policy.disconnect_threshold_minor - granted


# --- the state machine --------------------------------------------------------------------


def _evaluate(
    policy: PolicyConfig,
    state: PolicyState,
    *,
    balance: int,
    now: datetime,
    cause: _Cause,
    events: list[PolicyEvent],
    before: PolicyState | None = None,
) -> PolicyState:
    """One settling step; appends to ``events`` and returns the new state.

    ``before`` is the state the command started from when the caller already changed
    ``state`` (an override), so that the reason for a supply change is told right.
    """
    wanted_before = _wanted_supply_on(state if before is None else before)
    s = changed(state, balance_minor=balance)
    supply_reason: str | None = None

    fired = [t for t in s.armed_thresholds_minor if balance < t]
    events.extend(
        PolicyEvent(EventKind.LOW_BALANCE, {"threshold_minor": t, "balance_minor": balance})
        for t in fired
    )
    if fired:
        s = replace(
            s, armed_thresholds_minor=sorted_thresholds(set(s.armed_thresholds_minor) - set(fired))
        )

    if s.override is not None and s.override_until is not None and now >= s.override_until:
        events.append(PolicyEvent(EventKind.OVERRIDE_EXPIRED, {"override": s.override.value}))
        s = replace(s, override=None, override_reason=None, override_until=None)
        supply_reason = "override_expired"

    if policy.exempt:
        s = changed(s, mode=PolicyMode.EXEMPT, pending_until=None, cut_reason=None)
    else:
        s = _evaluate_credit(policy, s, balance=balance, now=now, cause=cause, events=events)

    wanted = _wanted_supply_on(s)
    if wanted != wanted_before:
        if cause is _Cause.OVERRIDE:
            supply_reason = "override" if s.override is not None else "override_cleared"
        elif supply_reason is None:
            if not wanted:
                supply_reason = s.cut_reason or "credit_exhausted"
            else:
                supply_reason = "exempt" if policy.exempt else cause.value
        s = changed(s, switch_reason=supply_reason)
    return _switch(policy, s, now, cause is _Cause.OVERRIDE and wanted != wanted_before, events)


def _evaluate_credit(
    policy: PolicyConfig,
    s: PolicyState,
    *,
    balance: int,
    now: datetime,
    cause: _Cause,
    events: list[PolicyEvent],
) -> PolicyState:
    """Emergency credit, exhaustion, grace, friendly windows and restore, for a normal account."""
    offer_below = policy.emergency_offer_below_minor
    ec_just_accepted = False
    if balance >= offer_below and (s.ec_offered or s.ec_accepted):
        s = replace(s, ec_offered=False, ec_accepted=False, ec_granted_minor=0)  # episode over
    if (
        policy.emergency_credit_minor > 0
        and balance < offer_below
        and not s.ec_offered
        and not s.ec_accepted
    ):
        events.append(_offer_event(policy))
        s = replace(s, ec_offered=True)
        if policy.emergency_auto_accept:
            s = _accept(policy, s, events)
            ec_just_accepted = True
            if balance >= cut_level_minor(policy, s):
                s = replace(s, grace_deadline=None, pending_until=None)

    if balance < cut_level_minor(policy, s):
        return _exhausted(policy, s, now, events)
    if balance >= policy.restore_threshold_minor:
        s = changed(s, grace_deadline=None)  # episode over: the next exhaustion gets grace
    elif s.mode is PolicyMode.CUTOFF and not (ec_just_accepted or cause is _Cause.EMERGENCY_CREDIT):
        return s  # hysteresis: stays cut until the restore threshold
    return changed(s, mode=_credit_mode(policy, s, balance), pending_until=None, cut_reason=None)


def _exhausted(
    policy: PolicyConfig, s: PolicyState, now: datetime, events: list[PolicyEvent]
) -> PolicyState:
    if s.mode is PolicyMode.CUTOFF:
        return s
    if (
        s.mode is PolicyMode.CUTOFF_PENDING
        and s.pending_until is not None
        and now < s.pending_until
    ):
        return s
    if s.grace_deadline is None and policy.grace_s > 0:
        deadline = now + timedelta(seconds=policy.grace_s)
        events.append(PolicyEvent(EventKind.GRACE_STARTED, {"deadline": iso_utc(deadline)}))
        return replace(s, mode=PolicyMode.GRACE, grace_deadline=deadline)
    if s.grace_deadline is not None and now < s.grace_deadline:
        return replace(s, mode=PolicyMode.GRACE)  # back below within this episode's grace
    if s.mode is PolicyMode.CUTOFF_PENDING:
        reason = "window_ended"
    elif s.grace_deadline is not None:
        reason = "grace_expired"
    else:
        reason = "credit_exhausted"
    window_end = friendly_window_end(policy, now)
    if window_end is not None:
        if s.mode is not PolicyMode.CUTOFF_PENDING or s.pending_until != window_end:
            events.append(
                PolicyEvent(
                    EventKind.CUTOFF_DEFERRED,
                    {"reason": "friendly_window", "until": iso_utc(window_end)},
                )
            )
        return replace(s, mode=PolicyMode.CUTOFF_PENDING, pending_until=window_end)
    return replace(s, mode=PolicyMode.CUTOFF, pending_until=None, cut_reason=reason)


def _credit_mode(policy: PolicyConfig, s: PolicyState, balance: int) -> PolicyMode:
    if s.ec_accepted and balance < policy.emergency_offer_below_minor:
        return PolicyMode.EMERGENCY
    if balance < policy.low_level_minor:
        return PolicyMode.LOW
    return PolicyMode.ACTIVE


def _switch(
    policy: PolicyConfig,
    s: PolicyState,
    now: datetime,
    immediate: bool,
    events: list[PolicyEvent],
) -> PolicyState:
    """Move ``supply_on`` toward the wish, unless the dwell time holds it back."""
    wanted = _wanted_supply_on(s)
    if wanted == s.supply_on:
        return changed(s, switch_reason=None)
    dwell_end = _dwell_end(policy, s)
    if not immediate and dwell_end is not None and now < dwell_end:
        return s
    reason = s.switch_reason or "policy"
    events.append(
        PolicyEvent(EventKind.RESTORED if wanted else EventKind.CUTOFF, {"reason": reason})
    )
    return replace(s, supply_on=wanted, last_switch_at=now, switch_reason=None)


def _wanted_supply_on(s: PolicyState) -> bool:
    if s.override is not None:
        return s.override is Supply.ON
    return s.mode is not PolicyMode.CUTOFF


def _dwell_end(policy: PolicyConfig, s: PolicyState) -> datetime | None:
    if s.last_switch_at is None or policy.min_dwell_s == 0:
        return None
    return s.last_switch_at + timedelta(seconds=policy.min_dwell_s)


def _offer_event(policy: PolicyConfig) -> PolicyEvent:
    return PolicyEvent(
        EventKind.EMERGENCY_CREDIT_OFFERED, {"credit_minor": policy.emergency_credit_minor}
    )


def _accept(policy: PolicyConfig, s: PolicyState, events: list[PolicyEvent]) -> PolicyState:
    events.append(
        PolicyEvent(
            EventKind.EMERGENCY_CREDIT_ACCEPTED, {"amount_minor": policy.emergency_credit_minor}
        )
    )
    return replace(
        s, ec_offered=True, ec_accepted=True, ec_granted_minor=policy.emergency_credit_minor
    )
