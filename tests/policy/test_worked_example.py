"""The worked example of docs/prepaid-policy.md, step by step."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.policy.config import PolicyConfig
from gateway.policy.machine import accept_emergency, next_wakeup, on_balance, on_tick, on_topup
from gateway.policy.state import EventKind, LedgerOpKind, PolicyMode, PolicyState
from tests.policy.support import event, kinds

POLICY = PolicyConfig.model_validate(
    {
        "low_thresholds_minor": [500, 100],
        "disconnect_threshold_minor": 0,
        "restore_threshold_minor": 200,
        "grace_s": 1800,
        "emergency_credit_minor": 1000,
        "emergency_threshold_minor": 100,
        "debt_recovery_percent": 20,
        "min_dwell_s": 300,
        "timezone": "Europe/London",
        "friendly_windows": [
            {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "18:00", "end": "10:00"},
            {"days": ["sat", "sun", "holiday"], "start": "00:00", "end": "00:00"},
        ],
    }
)


def _wed(hour: int, minute: int = 0) -> datetime:
    return datetime(2024, 3, 6, hour, minute, tzinfo=UTC)


def test_worked_example_from_the_docs() -> None:
    s = PolicyState.initial(POLICY, 800)
    d = on_balance(POLICY, s, 450, _wed(9))
    assert (d.state.mode, kinds(d)) == (PolicyMode.LOW, ["low_balance"])
    d = on_balance(POLICY, d.state, 80, _wed(10))
    assert kinds(d) == ["low_balance", "emergency_credit_offered"]
    d = accept_emergency(POLICY, d.state, 80, _wed(10, 5))
    assert d.state.mode is PolicyMode.EMERGENCY
    d = on_balance(POLICY, d.state, -1000, _wed(12, 5))
    assert d.state.mode is PolicyMode.EMERGENCY
    d = on_balance(POLICY, d.state, -1010, _wed(12, 10))
    assert d.state.mode is PolicyMode.GRACE
    assert next_wakeup(POLICY, d.state, _wed(12, 10)) == _wed(12, 40)
    d = on_tick(POLICY, d.state, -1050, _wed(12, 40))
    assert event(d, EventKind.CUTOFF) == {"reason": "grace_expired"}
    d = on_topup(POLICY, d.state, -1050, 1000, 0, _wed(13))
    assert [(o.kind, o.amount_minor) for o in d.ledger_ops] == [(LedgerOpKind.DEBT, 50)]
    assert (d.state.balance_minor, d.state.mode, d.supply_on) == (0, PolicyMode.CUTOFF, False)
    d = on_topup(POLICY, d.state, 0, 2000, 50, _wed(13, 30))
    assert [(o.kind, o.amount_minor) for o in d.ledger_ops] == [(LedgerOpKind.DEBT_RECOVERY, -50)]
    assert event(d, EventKind.DEBT_RECOVERED) == {"amount_minor": 50, "debt_minor": 0}
    assert (d.state.balance_minor, d.state.mode, d.supply_on) == (1950, PolicyMode.ACTIVE, True)
    assert d.state.armed_thresholds_minor == (500, 100)
    assert not d.state.ec_accepted
    assert event(d, EventKind.RESTORED) == {"reason": "topup"}


def test_worked_example_friday_evening_defers_to_monday_midnight() -> None:
    s = on_balance(
        POLICY, PolicyState.initial(POLICY, 800), -1010, datetime(2024, 3, 8, 18, 0, tzinfo=UTC)
    )
    d = on_tick(POLICY, s.state, -1010, datetime(2024, 3, 8, 18, 30, tzinfo=UTC))
    assert d.state.mode is PolicyMode.CUTOFF_PENDING
    assert d.state.pending_until == datetime(2024, 3, 11, 0, 0, tzinfo=UTC)
