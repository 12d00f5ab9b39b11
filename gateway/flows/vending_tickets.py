"""A paper water ticket presented at a dispenser: checked and redeemed, exactly once.

The rules are the pickup point's (`gateway.tickets.decisions.judge`, docs/tickets.md); the
redemption is the ticket store's (`gateway.store.tickets.TicketStore.redeem`: one transaction,
the code UNIQUE, so a ticket presented at two dispensers at the same instant is redeemed by one
and refused ``already_used`` at the other). A dispenser reads a 16-digit code only (its Request
frame carries 16 characters), so electronic tickets are redeemed at the counter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from drivers.ports import DenyReason
from gateway.store.tickets import (
    CodeFacts,
    CodeKey,
    Grant,
    Redemption,
    RedemptionRequest,
    TicketStore,
)
from gateway.tickets.codes import CodeError, parse_code
from gateway.tickets.decisions import (
    BatchTerms,
    Box,
    EmergencyTerms,
    Facts,
    TicketKind,
    Use,
    judge,
)
from gateway.tickets.reasons import Reason, Refusal
from gateway.tickets.scope import Scope
from gateway.tickets.settings import TicketSettings
from gateway.tickets.validity import local_day

# What the dispenser can show for each refusal of the ticket rules.
_SHOWN = {
    Reason.ALREADY_USED: DenyReason.TICKET_USED,
    Reason.USED_ELSEWHERE: DenyReason.TICKET_USED,
    Reason.EXPIRED: DenyReason.TICKET_EXPIRED,
    Reason.NOT_YET_VALID: DenyReason.TICKET_EXPIRED,
    Reason.WRONG_SCOPE: DenyReason.WRONG_SCOPE,
    Reason.WRONG_PLANT: DenyReason.WRONG_SCOPE,
    Reason.WRONG_PRODUCT: DenyReason.WRONG_SCOPE,
}


@dataclass(frozen=True, slots=True)
class TicketRefused:
    """The ticket rules said no: ``shown`` on the dispenser, ``refusal`` for the log."""

    shown: DenyReason
    refusal: Refusal


def facts_of(stored: CodeFacts) -> Facts:
    """The judge's view of what the store holds (the CLI's ``prepay ticket`` commands judge
    with it too)."""
    batch, emergency = stored.batch, stored.emergency

    def use(redemption: Redemption) -> Use:
        return Use(redemption.box_id, redemption.redeemed_at, redemption.where)

    return Facts(
        batch=None
        if batch is None
        else BatchTerms(
            batch.batch_id,
            batch.product,
            batch.valid_from,
            batch.valid_until,
            Scope.model_validate(batch.scope),
        ),
        voided_at=None if stored.void is None else stored.void.voided_at,
        extended_until=None if stored.extension is None else stored.extension.new_until,
        emergency=None
        if emergency is None
        else EmergencyTerms(emergency.product, emergency.issued_on, emergency.valid_until),
        used_here=None if stored.here is None else use(stored.here),
        used_elsewhere=tuple(use(r) for r in stored.elsewhere),
    )


def redeem_at_dispenser(
    store: TicketStore,
    settings: TicketSettings,
    text: str,
    *,
    product: str,
    redemption_id: str,
    where: str,
    now: datetime,
) -> Redemption | TicketRefused:
    """Check ``text`` and redeem it for ``product`` under ``redemption_id``.

    The same ``redemption_id`` again answers with the first redemption (a request retried after
    a crash between the redemption and the session journal).

    Raises:
        IdempotencyConflictError: ``redemption_id`` was used for another code.
        StoreError: the database failed (nothing was recorded).
    """
    try:
        code = parse_code(text)
    except CodeError as exc:
        return TicketRefused(DenyReason.OTHER, Refusal(exc.reason, str(exc)))
    box = Box.from_settings(settings)
    today = local_day(now, settings.timezone)

    def decide(stored: CodeFacts) -> Grant | Refusal:
        outcome = judge(code, facts_of(stored), box, today, product)
        return outcome if isinstance(outcome, Refusal) else Grant(outcome.product, outcome.quantity)

    request = RedemptionRequest(
        key=CodeKey(code.text, code.plant, code.serial),
        redemption_id=redemption_id,
        kind=TicketKind.PAPER.value,
        where=where,
    )
    outcome = store.redeem(request, decide)
    if outcome.refused is not None:
        refusal = outcome.refused
        return TicketRefused(_SHOWN.get(refusal.reason, DenyReason.OTHER), refusal)
    redeemed = outcome.redeemed or outcome.replayed
    if redeemed is None:  # the store answers one of the three
        raise ValueError("ticket store answered neither a redemption nor a refusal")
    return redeemed
