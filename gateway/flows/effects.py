"""What a decision does: ledger operations, events and state messages in the open transaction,
and supply wishes collected for actuation (`gateway.flows.supply_wishes`), handed over once the
transaction has committed.

Used by the pipeline (after each billed reading), the command handler (after top-ups,
overrides, ...), the device journal and the policy clock, so all of them write the same
messages the same way. Every message goes to the outbox through ``tx.enqueue``, in the
transaction of the change it reports.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime

from gateway.flows.accounts import Account, PublishedState
from gateway.flows.context import FlowContext
from gateway.northbound.payloads import (
    AccountEventPayload,
    AccountStatePayload,
    ReceiptPayload,
)
from gateway.northbound.topics import SiteTopics
from gateway.policy.state import WITHOUT_ACTUATOR, Decision, EventKind, LedgerOpKind
from gateway.store import EntryKind, Transaction
from gateway.store.jsontext import JsonValue

logger = logging.getLogger(__name__)


def enqueue_account_state(
    tx: Transaction, topics: SiteTopics, account: Account, now: datetime
) -> None:
    """Queue the account's retained ``state`` message now."""
    mode = account.policy_state.mode
    tx.enqueue(
        topics.account_state_message(
            AccountStatePayload(
                account=account.id,
                balance_minor=account.billing.balance_minor,
                currency=account.currency,
                state=mode,
                debt_minor=account.debt_minor,
                ts=now,
            )
        )
    )
    account.published = PublishedState(mode, account.debt_minor, now)
    account.state_dirty = False


def publish_state_if_due(
    tx: Transaction, topics: SiteTopics, account: Account, now: datetime, every_s: float
) -> None:
    """Queue the ``state`` message when the mode or debt changed, or the balance changed and
    the last message is older than ``every_s``; otherwise leave the account marked dirty for
    `state_due`. A busy meter then costs one retained message per interval, not one per
    reading, and the retained balance is never more than ``every_s`` behind."""
    last = account.published
    if (
        last is None
        or last.mode is not account.policy_state.mode
        or last.debt_minor != account.debt_minor
        or (now - last.at).total_seconds() >= every_s
    ):
        enqueue_account_state(tx, topics, account, now)
    else:
        account.state_dirty = True


def state_due(account: Account, now: datetime, every_s: float) -> bool:
    """True when the account's balance moved since its last ``state`` message and that
    message is at least ``every_s`` old (`publish_state_if_due` left it waiting)."""
    last = account.published
    return account.state_dirty and last is not None and (now - last.at).total_seconds() >= every_s


def enqueue_event(
    tx: Transaction,
    topics: SiteTopics,
    account: Account,
    event: EventKind,
    now: datetime,
    *,
    amount_minor: int | None = None,
    receipt: ReceiptPayload | None = None,
    alarm: str | None = None,
    detail: Mapping[str, str | int | bool | None] | None = None,
) -> None:
    """Journal an account event and queue its message (one event id for both).

    The published ``event_id`` is ``{site}-{incarnation}-{n}``: ``n`` restarts at 1 in a store
    started anew, the store's incarnation does not repeat, so the id stays unique per site.
    """
    record: dict[str, JsonValue] = {
        "event": event.value,
        "balance_minor": account.billing.balance_minor,
    }
    if amount_minor is not None:
        record["amount_minor"] = amount_minor
    if alarm is not None:
        record["alarm"] = alarm
    if detail is not None:
        detail = dict(detail)
        record["detail"] = detail
    event_id = tx.record_event(account.id, event.value, record, now)
    tx.enqueue(
        topics.account_event_message(
            AccountEventPayload(
                event_id=f"{topics.site}-{tx.incarnation}-{event_id}",
                account=account.id,
                event=event,
                balance_minor=account.billing.balance_minor,
                currency=account.currency,
                amount_minor=amount_minor,
                receipt=receipt,
                alarm=alarm,
                detail=detail,
                ts=now,
            )
        )
    )


def enqueue_alarm(
    tx: Transaction,
    topics: SiteTopics,
    account: Account,
    alarm: str,
    detail: Mapping[str, str | int | bool | None],
    now: datetime,
) -> None:
    """Journal and publish an ``alarm`` event with its machine-readable code."""
    enqueue_event(tx, topics, account, EventKind.ALARM, now, alarm=alarm, detail=detail)


_LEDGER_KINDS = {
    LedgerOpKind.DEBT: EntryKind.DEBT,
    LedgerOpKind.DEBT_RECOVERY: EntryKind.DEBT_RECOVERY,
}


def apply_decision(
    tx: Transaction,
    ctx: FlowContext,
    account: Account,
    decision: Decision,
    now: datetime,
    *,
    key_base: str = "",
) -> None:
    """Write a policy decision: ledger operations, events, new policy state, supply wish."""
    apply_ledger_ops(tx, account, decision, now, key_base=key_base)
    apply_events_and_supply(tx, ctx, account, decision, now)


def apply_ledger_ops(
    tx: Transaction, account: Account, decision: Decision, now: datetime, *, key_base: str = ""
) -> None:
    """The money half of `apply_decision` (a top-up writes its own event between the two
    halves: ``topup_applied`` comes before the ``restored`` it caused)."""
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


def apply_events_and_supply(
    tx: Transaction, ctx: FlowContext, account: Account, decision: Decision, now: datetime
) -> None:
    """The rest of `apply_decision`: events, the new policy state, the supply wish.

    An account with no actuator has no supply to cut: its ``cutoff`` / ``restored`` are
    published as ``credit_exhausted`` / ``credit_restored``, so no event claims a switch that
    no device made.
    """
    switches = account.config.actuator is not None
    for event in decision.events:
        amount = event.detail.get("amount_minor")
        kind = event.kind if switches else WITHOUT_ACTUATOR.get(event.kind, event.kind)
        enqueue_event(
            tx,
            ctx.topics,
            account,
            kind,
            now,
            amount_minor=amount if isinstance(amount, int) else None,
            detail=dict(event.detail) or None,
        )
    previous = account.policy_state.supply_on
    account.policy_state = decision.state
    if account.config.actuator is not None and decision.state.supply_on != previous:
        reason = decision.events[-1].kind.value if decision.events else "policy"
        logger.info(
            "account %s: supply %s wanted at %s (%s), balance %d %s",
            account.id,
            "on" if decision.state.supply_on else "off",
            account.config.actuator,
            reason,
            account.billing.balance_minor,
            account.currency,
        )
        ctx.wishes.supply(account.config.actuator, decision.state.supply_on, reason)
