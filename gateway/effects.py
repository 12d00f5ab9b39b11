"""What a decision does: ledger operations, events and state messages in the open transaction,
and supply requests handed to actuation once the transaction has committed.

Used by the pipeline (after each billed reading) and the command handler (after top-ups,
overrides, ...), so both write the same messages the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from gateway.accounts import Account
from gateway.decisions import Decision
from gateway.northbound.topics import (
    AccountEventPayload,
    AccountStatePayload,
    ReceiptPayload,
    SiteTopics,
)
from gateway.store import EntryKind, Transaction

logger = logging.getLogger(__name__)


class Effects:
    """Collects supply requests during a transaction; `flush` hands them over after commit."""

    def __init__(self, request_supply: Callable[[str, bool, str], None], wake: asyncio.Event):
        self._request_supply = request_supply
        self._wake = wake
        self._pending: list[tuple[str, bool, str]] = []

    def supply(self, device_id: str, on: bool, reason: str) -> None:
        self._pending.append((device_id, on, reason))

    def discard(self) -> None:
        self._pending.clear()

    def flush(self) -> None:
        """Run in the event loop after the transaction committed."""
        pending, self._pending = self._pending, []
        for device_id, on, reason in pending:
            self._request_supply(device_id, on, reason)
        self._wake.set()


def enqueue_account_state(
    tx: Transaction, topics: SiteTopics, account: Account, now: datetime
) -> None:
    """Queue the account's retained ``state`` message now."""
    out = topics.account_state_message(
        AccountStatePayload(
            account=account.id,
            balance_minor=account.billing.balance_minor,
            currency=account.currency,
            state=account.policy_state.mode.value,
            debt_minor=account.debt_minor,
            ts=now,
        )
    )
    tx.enqueue(out.topic, out.payload, out.qos, out.retain, out.message_class)
    account.published = (account.policy_state.mode.value, account.debt_minor, now)


def publish_state_if_due(
    tx: Transaction, topics: SiteTopics, account: Account, now: datetime, every_s: float
) -> None:
    """Queue the ``state`` message when the mode or debt changed, or the balance changed and
    the last message is older than ``every_s``; otherwise leave the account marked dirty for
    `publish_dirty_states`. A busy meter then costs one retained message per interval, not one
    per reading, and the retained balance is never more than ``every_s`` behind."""
    last = account.published
    if (
        last is None
        or last[:2] != (account.policy_state.mode.value, account.debt_minor)
        or (now - last[2]).total_seconds() >= every_s
    ):
        enqueue_account_state(tx, topics, account, now)
        account.state_dirty = False
    else:
        account.state_dirty = True


def enqueue_event(
    tx: Transaction,
    topics: SiteTopics,
    account: Account,
    event: str,
    now: datetime,
    *,
    amount_minor: int | None = None,
    receipt: dict[str, Any] | None = None,
    alarm: str | None = None,
    detail: str | None = None,
) -> None:
    """Journal an account event and queue its message (one event id for both)."""
    record: dict[str, Any] = {"event": event, "balance_minor": account.billing.balance_minor}
    if amount_minor is not None:
        record["amount_minor"] = amount_minor
    if alarm is not None:
        record["alarm"] = alarm
    if detail is not None:
        record["detail"] = detail
    event_id = tx.record_event(account.id, event, record, now)
    out = topics.account_event_message(
        AccountEventPayload(
            event_id=f"{topics.site}-{event_id}",
            account=account.id,
            event=event,  # checked against the contract's event names by the payload model
            balance_minor=account.billing.balance_minor,
            currency=account.currency,
            amount_minor=amount_minor,
            receipt=ReceiptPayload.model_validate(receipt) if receipt is not None else None,
            alarm=alarm,
            detail=detail,
            ts=now,
        )
    )
    tx.enqueue(out.topic, out.payload, out.qos, out.retain, out.message_class)


_LEDGER_KINDS = {"debt": EntryKind.DEBT, "debt_recovery": EntryKind.DEBT_RECOVERY}


def apply_decision(
    tx: Transaction,
    topics: SiteTopics,
    account: Account,
    decision: Decision,
    now: datetime,
    effects: Effects,
    *,
    key_base: str = "",
) -> None:
    """Write a policy decision: ledger operations, events, new policy state, supply wish."""
    for i, op in enumerate(decision.ledger_ops):
        key = f"{op.kind}:{key_base or now.isoformat()}:{i}"
        tx.append_entry(
            account.id,
            _LEDGER_KINDS[op.kind],
            op.amount_minor,
            account.currency,
            key,
            created_at=now,
            ref=key_base,
        )
        account.billing.balance_minor += op.amount_minor
        account.debt_minor += op.amount_minor  # debt: +moved; debt_recovery: -recovered
    for event in decision.events:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(event.detail.items())) or None
        amount = event.detail.get("amount_minor")
        enqueue_event(
            tx,
            topics,
            account,
            event.kind,
            now,
            amount_minor=amount if isinstance(amount, int) else None,
            detail=detail,
        )
    previous = account.policy_state.supply_on
    account.policy_state = decision.state
    if account.config.actuator is not None and decision.state.supply_on != previous:
        reason = decision.events[-1].kind if decision.events else "policy"
        effects.supply(account.config.actuator, decision.state.supply_on, reason)
