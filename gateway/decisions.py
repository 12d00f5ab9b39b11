"""The prepaid policy engine: pure functions from (policy, state, balance, now) to a `Decision`.

No I/O, no clock: ``now`` is always an aware UTC datetime passed in. Money is integer minor
units. The daemon calls `on_balance` after every deduction, `on_topup` after a top-up is
credited, `on_tick` when `next_wakeup` says so, and `accept_emergency` / `set_override` for
commands; it writes the returned ``ledger_ops``, journals and publishes the ``events``,
persists ``state.to_dict()`` in the same transaction, and drives the relay or valve to
``state.supply_on``.

States follow ``shared/domain/prepaid-rules.md`` section 4 and the MQTT ``account/{id}/state``
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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from gateway.errors import CommandRejectedError
from gateway.policy_config import WEEKDAYS, DayName, FriendlyWindow, PolicyConfig

__all__ = [
    "Decision",
    "EventKind",
    "LedgerOp",
    "LedgerOpKind",
    "PolicyConfig",
    "PolicyEvent",
    "PolicyMode",
    "PolicyState",
    "Supply",
    "accept_emergency",
    "cut_level_minor",
    "friendly_window_end",
    "next_wakeup",
    "on_balance",
    "on_tick",
    "on_topup",
    "set_override",
]

STATE_SCHEMA = 1
_MAX_WINDOW_CHAIN = 16  # touching windows merged into one deferral; every-day-24h never ends


class PolicyMode(StrEnum):
    """Account state, as published on ``account/{id}/state``."""

    ACTIVE = "active"
    LOW = "low"
    EMERGENCY = "emergency"
    GRACE = "grace"
    CUTOFF_PENDING = "cutoff_pending"
    CUTOFF = "cutoff"
    EXEMPT = "exempt"


class Supply(StrEnum):
    """Supply position (relay closed / valve open is ``on``); also a backend override."""

    ON = "on"
    OFF = "off"


class EventKind(StrEnum):
    """What a decision journals and publishes."""

    LOW_BALANCE = "low_balance"
    GRACE_STARTED = "grace_started"
    EMERGENCY_CREDIT_OFFERED = "emergency_credit_offered"
    EMERGENCY_CREDIT_ACCEPTED = "emergency_credit_accepted"
    EMERGENCY_CREDIT_REPAID = "emergency_credit_repaid"
    CUTOFF_DEFERRED = "cutoff_deferred"
    CUTOFF = "cutoff"
    RESTORED = "restored"
    DEBT_ACCRUED = "debt_accrued"
    DEBT_RECOVERED = "debt_recovered"
    OVERRIDE_APPLIED = "override_applied"
    OVERRIDE_EXPIRED = "override_expired"


class LedgerOpKind(StrEnum):
    """Ledger entry kinds the policy asks for (the store's ``debt`` / ``debt_recovery``)."""

    DEBT = "debt"
    DEBT_RECOVERY = "debt_recovery"


class _Cause(StrEnum):
    # Why the state is evaluated; also the reason given for a restore.
    READING = "reading"
    TOPUP = "topup"
    TICK = "tick"
    EMERGENCY_CREDIT = "emergency_credit"
    OVERRIDE = "override"


_EXHAUSTED_MODES = frozenset({PolicyMode.GRACE, PolicyMode.CUTOFF_PENDING, PolicyMode.CUTOFF})

Detail = Mapping[str, int | str | None]


@dataclass(frozen=True)
class PolicyEvent:
    """One event: ``kind`` plus a flat ``detail`` (``amount_minor`` where money moved)."""

    kind: EventKind
    detail: Detail = field(default_factory=dict)


@dataclass(frozen=True)
class LedgerOp:
    """A ledger entry to write. Both kinds add ``amount_minor`` to balance *and* to debt.

    ``debt`` is positive (a negative balance moved out into the debt register);
    ``debt_recovery`` is negative (part of a top-up repaying debt).
    """

    kind: LedgerOpKind
    amount_minor: int


@dataclass(frozen=True)
class PolicyState:
    """Runtime policy state of one account; persisted flat with `to_dict` / `from_dict`.

    Attributes:
        mode: the account state.
        armed_thresholds_minor: low thresholds that will alert on the next downward crossing.
        balance_minor: the balance last evaluated (the ledger stays the authority).
        grace_deadline: end of this episode's grace period; kept until the episode ends.
        pending_until: end of the friendly window a due cutoff waits for.
        ec_offered / ec_accepted / ec_granted_minor: emergency credit of this episode.
        cut_reason: why the account is in ``cutoff`` (credit_exhausted, grace_expired, ...).
        supply_on: where the relay or valve must be; may lag the wish by the dwell time.
        switch_reason: why the supply must change while the dwell time holds it back.
        last_switch_at: when ``supply_on`` last changed.
        override / override_reason / override_until: the backend's supply override.
    """

    mode: PolicyMode
    armed_thresholds_minor: tuple[int, ...]
    balance_minor: int
    grace_deadline: datetime | None = None
    pending_until: datetime | None = None
    ec_offered: bool = False
    ec_accepted: bool = False
    ec_granted_minor: int = 0
    cut_reason: str | None = None
    supply_on: bool = True
    switch_reason: str | None = None
    last_switch_at: datetime | None = None
    override: Supply | None = None
    override_reason: str | None = None
    override_until: datetime | None = None

    @classmethod
    def initial(cls, policy: PolicyConfig, balance_minor: int) -> PolicyState:
        """State of an account the store has no record of: supply on, alerts armed above.

        An account that starts exhausted is settled by the first `on_tick`, which
        `next_wakeup` asks for at once (grace then starts from that moment).
        """
        armed = _sorted(t for t in policy.low_thresholds_minor if balance_minor >= t)
        if policy.exempt:
            mode = PolicyMode.EXEMPT
        elif balance_minor < policy.low_level_minor:
            mode = PolicyMode.LOW
        else:
            mode = PolicyMode.ACTIVE
        return cls(mode=mode, armed_thresholds_minor=armed, balance_minor=balance_minor)

    @property
    def supply(self) -> Supply:
        return Supply.ON if self.supply_on else Supply.OFF

    def to_dict(self) -> dict[str, int | str | None]:
        """Flat JSON-safe record: ints, strings (ISO 8601 UTC times, enum values) and None."""
        return {
            "schema": STATE_SCHEMA,
            "mode": self.mode.value,
            "armed_thresholds_minor": ",".join(str(t) for t in self.armed_thresholds_minor),
            "balance_minor": self.balance_minor,
            "grace_deadline": _iso(self.grace_deadline),
            "pending_until": _iso(self.pending_until),
            "ec_offered": int(self.ec_offered),
            "ec_accepted": int(self.ec_accepted),
            "ec_granted_minor": self.ec_granted_minor,
            "cut_reason": self.cut_reason,
            "supply": self.supply.value,
            "switch_reason": self.switch_reason,
            "last_switch_at": _iso(self.last_switch_at),
            "override": None if self.override is None else self.override.value,
            "override_reason": self.override_reason,
            "override_until": _iso(self.override_until),
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, object]) -> PolicyState:
        """Inverse of `to_dict`.

        Raises:
            ValueError: a key is missing or holds a bad value, or the schema is unknown.
            TypeError: a key holds a value of the wrong JSON type.
        """
        if record.get("schema") != STATE_SCHEMA:
            raise ValueError(f"policy state schema {record.get('schema')!r} is not {STATE_SCHEMA}")
        armed = _get_str(record, "armed_thresholds_minor")
        override = _get_opt_str(record, "override")
        return cls(
            mode=PolicyMode(_get_str(record, "mode")),
            armed_thresholds_minor=_sorted(int(t) for t in armed.split(",") if t),
            balance_minor=_get_int(record, "balance_minor"),
            grace_deadline=_get_time(record, "grace_deadline"),
            pending_until=_get_time(record, "pending_until"),
            ec_offered=_get_flag(record, "ec_offered"),
            ec_accepted=_get_flag(record, "ec_accepted"),
            ec_granted_minor=_get_int(record, "ec_granted_minor"),
            cut_reason=_get_opt_str(record, "cut_reason"),
            supply_on=Supply(_get_str(record, "supply")) is Supply.ON,
            switch_reason=_get_opt_str(record, "switch_reason"),
            last_switch_at=_get_time(record, "last_switch_at"),
            override=None if override is None else Supply(override),
            override_reason=_get_opt_str(record, "override_reason"),
            override_until=_get_time(record, "override_until"),
        )


@dataclass(frozen=True)
class Decision:
    """A policy step's result: the new state, events to publish, ledger entries to write."""

    state: PolicyState
    events: tuple[PolicyEvent, ...] = ()
    ledger_ops: tuple[LedgerOp, ...] = ()

    @property
    def supply(self) -> Supply:
        """Where the supply device must be driven."""
        return self.state.supply

    @property
    def supply_on(self) -> bool:
        return self.state.supply_on


# --- public steps -------------------------------------------------------------------------


def on_balance(
    policy: PolicyConfig, state: PolicyState, balance_minor: int, now: datetime
) -> Decision:
    """Re-evaluate after a deduction (or any balance change that is not a top-up)."""
    _check_now(now)
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
    _check_now(now)
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
    armed = _sorted(
        {*state.armed_thresholds_minor, *(t for t in policy.low_thresholds_minor if after >= t)}
    )
    rearmed = replace(state, armed_thresholds_minor=armed)
    new = _evaluate(policy, rearmed, balance=after, now=now, cause=_Cause.TOPUP, events=events)
    return Decision(new, tuple(events), tuple(ops))


def on_tick(
    policy: PolicyConfig, state: PolicyState, balance_minor: int, now: datetime
) -> Decision:
    """Timers: grace expiry, friendly-window end, override expiry, dwell time passed."""
    _check_now(now)
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
    _check_now(now)
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
    _check_now(now)
    if isinstance(override, bool):
        override = Supply.ON if override else Supply.OFF
    if override is None:
        until = None
    elif until is not None:
        _check_now(until)
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
                "until": _iso(until),
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
    _check_now(now)
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


def friendly_window_end(policy: PolicyConfig, now: datetime) -> datetime | None:
    """End (UTC) of the friendly window open at ``now``, chained through touching windows.

    Windows are half-open ``[start, end)`` in local time. A Friday-night window running into
    a whole-weekend window and a Sunday-night window ends on Monday morning. None when no
    window is open.
    """
    end = _open_window_end(policy, now)
    if end is None:
        return None
    for _ in range(_MAX_WINDOW_CHAIN):
        later = _open_window_end(policy, end)
        if later is None:
            break
        end = later
    return end


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
    s = _with(state, balance_minor=balance)
    supply_reason: str | None = None

    fired = [t for t in s.armed_thresholds_minor if balance < t]
    events.extend(
        PolicyEvent(EventKind.LOW_BALANCE, {"threshold_minor": t, "balance_minor": balance})
        for t in fired
    )
    if fired:
        s = replace(s, armed_thresholds_minor=_sorted(set(s.armed_thresholds_minor) - set(fired)))

    if s.override is not None and s.override_until is not None and now >= s.override_until:
        events.append(PolicyEvent(EventKind.OVERRIDE_EXPIRED, {"override": s.override.value}))
        s = replace(s, override=None, override_reason=None, override_until=None)
        supply_reason = "override_expired"

    if policy.exempt:
        s = _with(s, mode=PolicyMode.EXEMPT, pending_until=None, cut_reason=None)
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
        s = _with(s, switch_reason=supply_reason)
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
        s = _with(s, grace_deadline=None)  # episode over: the next exhaustion gets grace
    elif s.mode is PolicyMode.CUTOFF and not (ec_just_accepted or cause is _Cause.EMERGENCY_CREDIT):
        return s  # hysteresis: stays cut until the restore threshold
    return _with(s, mode=_credit_mode(policy, s, balance), pending_until=None, cut_reason=None)


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
        events.append(PolicyEvent(EventKind.GRACE_STARTED, {"deadline": _iso(deadline)}))
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
                    {"reason": "friendly_window", "until": _iso(window_end)},
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
        return _with(s, switch_reason=None)
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


# --- friendly windows ---------------------------------------------------------------------


def _open_window_end(policy: PolicyConfig, at: datetime) -> datetime | None:
    """Latest end among the windows open at ``at`` (UTC), or None."""
    zone = ZoneInfo(policy.timezone)
    today = at.astimezone(zone).date()
    best: datetime | None = None
    for day in (today - timedelta(days=1), today):
        for window in policy.friendly_windows:
            if not _applies(policy, window, day):
                continue
            start, end = _window_bounds(window, day, zone)
            if start <= at < end and (best is None or end > best):
                best = end
    return best


def _applies(policy: PolicyConfig, window: FriendlyWindow, day: date) -> bool:
    if WEEKDAYS[day.weekday()] in window.days:
        return True
    return DayName.HOLIDAY in window.days and day in policy.friendly_holidays


def _window_bounds(window: FriendlyWindow, day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    # Local wall times; a time in the spring-forward gap reads with the pre-gap offset (fold=0).
    end_day = day if window.end > window.start else day + timedelta(days=1)
    start = datetime.combine(day, window.start, tzinfo=zone).astimezone(UTC)
    end = datetime.combine(end_day, window.end, tzinfo=zone).astimezone(UTC)
    return start, end


# --- helpers ------------------------------------------------------------------------------


def _check_now(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"{now!r} is naive; pass an aware UTC datetime")


def _with(s: PolicyState, **changes: object) -> PolicyState:
    """`replace` for the hot path, which runs several steps per reading.

    ``s`` itself when no field would change (most steps of a reading that moves only the
    balance); identity, not equality, so the result is the very value `replace` gives. Else a
    copy with the changes, made without `replace`, which reads every field and runs
    ``__init__`` again: PolicyState has no ``__post_init__`` to run, and the decisions tests
    hold `_with` to `replace`.

    Raises:
        TypeError: a name is not a field of `PolicyState`.
    """
    if not _STATE_FIELDS.issuperset(changes):
        unknown = sorted(set(changes) - _STATE_FIELDS)
        raise TypeError(f"PolicyState has no field {', '.join(unknown)}")
    for name, value in changes.items():
        if getattr(s, name) is not value:
            break
    else:
        return s
    copy = object.__new__(PolicyState)
    copy.__dict__.update(s.__dict__, **changes)  # the dict itself: frozen __setattr__ refuses
    return copy


_STATE_FIELDS = frozenset(f.name for f in fields(PolicyState))


def _sorted(thresholds: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(thresholds, reverse=True))


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def _get_int(record: Mapping[str, object], key: str) -> int:
    value = record.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"policy state {key!r} must be an integer, got {value!r}")
    return value


def _get_flag(record: Mapping[str, object], key: str) -> bool:
    value = _get_int(record, key)
    if value not in (0, 1):
        raise ValueError(f"policy state {key!r} must be 0 or 1, got {value!r}")
    return value == 1


def _get_str(record: Mapping[str, object], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise TypeError(f"policy state {key!r} must be a string, got {value!r}")
    return value


def _get_opt_str(record: Mapping[str, object], key: str) -> str | None:
    if key not in record:
        raise ValueError(f"policy state {key!r} is missing")
    value = record[key]
    return None if value is None else _get_str(record, key)


def _get_time(record: Mapping[str, object], key: str) -> datetime | None:
    text = _get_opt_str(record, key)
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    _check_now(moment)
    return moment.astimezone(UTC)
