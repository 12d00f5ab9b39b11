"""`on_topup`: emergency credit repaid first, deficit moved to debt, a share recovers debt."""

from __future__ import annotations

import pytest

from gateway.policy.machine import on_balance, on_topup
from gateway.policy.state import EventKind, LedgerOpKind
from tests.policy.support import T0, at, event, fresh, kinds, policy


def _ops(decision: object) -> list[tuple[str, int]]:
    return [(op.kind.value, op.amount_minor) for op in decision.ledger_ops]  # type: ignore[attr-defined]


def test_on_topup_debt_recovery_share_of_topup_capped_at_debt() -> None:
    pol = policy(debt_recovery_percent=25)
    state = fresh(pol, 2000)
    # 25 % of 4000 = 1000, debt is 600: recover 600. Balance 2000 + 4000 - 600 = 5400.
    decision = on_topup(pol, state, 2000, 4000, 600, T0)
    assert _ops(decision) == [("debt_recovery", -600)]
    assert event(decision, EventKind.DEBT_RECOVERED) == {"amount_minor": 600, "debt_minor": 0}
    assert decision.state.balance_minor == 5400


def test_on_topup_debt_recovery_rounds_down() -> None:
    pol = policy(debt_recovery_percent=15)
    # 15 % of 999 = 149.85 -> 149 (the customer keeps the fraction).
    decision = on_topup(pol, fresh(pol, 0), 0, 999, 10_000, T0)
    assert _ops(decision) == [("debt_recovery", -149)]
    assert decision.state.balance_minor == 999 - 149


def test_on_topup_moves_grace_deficit_to_debt_then_recovers_share() -> None:
    pol = policy(debt_recovery_percent=10, emergency_credit_minor=1000, emergency_auto_accept=True)
    # EC accepted at 0; used down to -1000; grace use went on to -1300.
    state = on_balance(pol, fresh(pol, 100), -1300, T0).state
    # Top-up 5000: EC used 1000 repaid first (stays in balance); the 300 below the cut level
    # (-1000) moves to debt (+300); 10 % of 5000 = 500, capped at debt 200 + 300 = 500.
    # Balance: -1300 + 5000 + 300 - 500 = 3500. Debt: 200 + 300 - 500 = 0.
    decision = on_topup(pol, state, -1300, 5000, 200, at(60))
    assert _ops(decision) == [("debt", 300), ("debt_recovery", -500)]
    assert kinds(decision)[:3] == ["emergency_credit_repaid", "debt_accrued", "debt_recovered"]
    assert event(decision, EventKind.DEBT_RECOVERED) == {"amount_minor": 500, "debt_minor": 0}
    assert decision.state.balance_minor == 3500
    assert decision.supply_on


def test_on_topup_recovery_never_takes_what_ec_repayment_needs() -> None:
    pol = policy(debt_recovery_percent=50, emergency_credit_minor=1000, emergency_auto_accept=True)
    state = on_balance(pol, fresh(pol, 100), -800, T0).state
    # EC used 800; top-up 900 repays it, 100 left; 50 % of 900 = 450 capped at 100.
    decision = on_topup(pol, state, -800, 900, 5000, at(60))
    assert _ops(decision) == [("debt_recovery", -100)]
    assert decision.state.balance_minor == -800 + 900 - 100


def test_on_topup_below_ec_repayment_recovers_nothing() -> None:
    pol = policy(debt_recovery_percent=50, emergency_credit_minor=1000, emergency_auto_accept=True)
    state = on_balance(pol, fresh(pol, 100), -800, T0).state
    decision = on_topup(pol, state, -800, 300, 5000, at(60))
    assert decision.ledger_ops == ()
    assert decision.state.balance_minor == -500


def test_on_topup_overdraft_allowed_by_negative_disconnect_threshold_stays_in_balance() -> None:
    # Cut below -500 (built-in friendly credit). Balance -800 after grace: the 300 below the
    # cut level moves to debt; the -500 is repaid by the top-up directly.
    pol = policy(disconnect_threshold_minor=-500, restore_threshold_minor=0)
    state = on_balance(pol, fresh(pol, 100), -800, T0).state
    decision = on_topup(pol, state, -800, 1000, 0, at(60))
    assert _ops(decision) == [("debt", 300)]
    assert decision.state.balance_minor == -800 + 1000 + 300


def test_on_topup_ledger_ops_add_up_to_balance_and_debt() -> None:
    pol = policy(debt_recovery_percent=30)
    state = on_balance(pol, fresh(pol, 100), -700, T0).state
    decision = on_topup(pol, state, -700, 2000, 1000, at(60))
    # moved 700, recovered min(600, 1700, 2000) = 600.
    assert _ops(decision) == [("debt", 700), ("debt_recovery", -600)]
    moved = sum(op.amount_minor for op in decision.ledger_ops)
    assert decision.state.balance_minor == -700 + 2000 + moved  # 1400
    assert 1000 + moved == 1100  # the debt register after: sum of debt + debt_recovery entries
    assert decision.ledger_ops[0].kind is LedgerOpKind.DEBT


@pytest.mark.parametrize(("amount", "debt"), [(0, 0), (-5, 0), (100, -1)])
def test_on_topup_bad_amount_or_debt_is_refused(amount: int, debt: int) -> None:
    with pytest.raises(ValueError, match="must"):
        on_topup(policy(), fresh(policy(), 0), 0, amount, debt, T0)
