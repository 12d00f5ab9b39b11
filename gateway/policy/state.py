"""The policy's vocabulary and its per-account state: pure values, persisted flat.

`PolicyMode` is the account state published on ``account/{id}/state``; `EventKind` the events
a decision journals and publishes on ``account/{id}/event`` (the MQTT payload models derive
their wire ``Literal``s from these enums). `PolicyState` is what the store keeps per account
(`PolicyState.to_dict` / `PolicyState.from_dict`), and `Decision` what a policy step returns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from gateway.policy.config import PolicyConfig

STATE_SCHEMA = 1


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
    """What is journalled and published on ``account/{id}/event``.

    The policy's decisions emit all but two: ``topup_applied`` (the command handler, with the
    receipt) and ``alarm`` (the flows, with a machine-readable code: a held reading, a silent
    meter, a device that does not confirm).
    """

    LOW_BALANCE = "low_balance"
    GRACE_STARTED = "grace_started"
    EMERGENCY_CREDIT_OFFERED = "emergency_credit_offered"
    EMERGENCY_CREDIT_ACCEPTED = "emergency_credit_accepted"
    EMERGENCY_CREDIT_REPAID = "emergency_credit_repaid"
    CUTOFF_DEFERRED = "cutoff_deferred"
    CUTOFF = "cutoff"
    RESTORED = "restored"
    TOPUP_APPLIED = "topup_applied"
    DEBT_ACCRUED = "debt_accrued"
    DEBT_RECOVERED = "debt_recovered"
    OVERRIDE_APPLIED = "override_applied"
    OVERRIDE_EXPIRED = "override_expired"
    ALARM = "alarm"
    CREDIT_EXHAUSTED = "credit_exhausted"  # `CUTOFF` of an account with no actuator
    CREDIT_RESTORED = "credit_restored"  # `RESTORED` of an account with no actuator


WITHOUT_ACTUATOR = {
    EventKind.CUTOFF: EventKind.CREDIT_EXHAUSTED,
    EventKind.RESTORED: EventKind.CREDIT_RESTORED,
}
"""How a supply event is published for an account with no actuator: its credit ran out or
came back, and no device was switched."""


class LedgerOpKind(StrEnum):
    """Ledger entry kinds the policy asks for (the store's ``debt`` / ``debt_recovery``)."""

    DEBT = "debt"
    DEBT_RECOVERY = "debt_recovery"


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
        armed = sorted_thresholds(t for t in policy.low_thresholds_minor if balance_minor >= t)
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
            "grace_deadline": iso_utc(self.grace_deadline),
            "pending_until": iso_utc(self.pending_until),
            "ec_offered": int(self.ec_offered),
            "ec_accepted": int(self.ec_accepted),
            "ec_granted_minor": self.ec_granted_minor,
            "cut_reason": self.cut_reason,
            "supply": self.supply.value,
            "switch_reason": self.switch_reason,
            "last_switch_at": iso_utc(self.last_switch_at),
            "override": None if self.override is None else self.override.value,
            "override_reason": self.override_reason,
            "override_until": iso_utc(self.override_until),
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
            armed_thresholds_minor=sorted_thresholds(int(t) for t in armed.split(",") if t),
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


def check_now(now: datetime) -> None:
    """Refuse a naive ``now``: every policy step works on aware UTC datetimes.

    Raises:
        ValueError: ``now`` is naive.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"{now!r} is naive; pass an aware UTC datetime")


def sorted_thresholds(thresholds: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(thresholds, reverse=True))


def iso_utc(moment: datetime | None) -> str | None:
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
    check_now(moment)
    return moment.astimezone(UTC)
