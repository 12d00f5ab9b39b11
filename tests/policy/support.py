"""Shared policies, times and helpers for the policy-engine tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.policy.config import PolicyConfig
from gateway.policy.state import Decision, EventKind, PolicyState

# Wednesday 6 March 2024, noon UTC: no friendly window in the base policy.
T0 = datetime(2024, 3, 6, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """T0 plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


def policy(**changes: Any) -> PolicyConfig:
    """The base policy: alerts at 50.00 and 10.00, cut below 0, restore at 5.00, 1 h grace."""
    fields: dict[str, Any] = {
        "low_thresholds_minor": (5000, 1000),
        "disconnect_threshold_minor": 0,
        "restore_threshold_minor": 500,
        "grace_s": 3600,
        "debt_recovery_percent": 0,  # debt stays put unless a test says otherwise
    }
    fields.update(changes)
    return PolicyConfig.model_validate(fields)


def kinds(decision: Decision) -> list[str]:
    """The event kinds of a decision, in order."""
    return [e.kind.value for e in decision.events]


def event(decision: Decision, kind: EventKind) -> dict[str, int | str | None]:
    """The detail of the only event of ``kind``."""
    found = [dict(e.detail) for e in decision.events if e.kind is kind]
    assert len(found) == 1, kinds(decision)
    return found[0]


def fresh(pol: PolicyConfig, balance_minor: int) -> PolicyState:
    return PolicyState.initial(pol, balance_minor)
