"""Redeeming a presented water ticket: the one path of the counter, the console and a dispenser.

What was presented is read (`present`: a typed or scanned 16-digit code, or a scanned
electronic ticket verified against the plant keys), judged over what the store holds of its
code (`gateway.tickets.decisions.judge` with `facts_of`, docs/tickets.md), and recorded by
`TicketStore.redeem`: one transaction, the code UNIQUE, idempotent by the redemption id, so a
ticket is redeemed exactly once whichever point presents it.

Its callers keep only what is theirs: ``prepay ticket redeem`` (`gateway.ops.tickets.redeem`)
checks its arguments and names a request without an id; the console's counter
(`gateway.console.tickets`) reads its own ticket store; a dispenser
(`gateway.flows.vending_tickets`) takes paper codes only and shows a refusal as a `DenyReason`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.store.tickets import (
    CodeFacts,
    CodeKey,
    Grant,
    RedeemOutcome,
    Redemption,
    RedemptionRequest,
    TicketStore,
)
from gateway.tickets import electronic
from gateway.tickets.codes import CodeError, parse_code
from gateway.tickets.decisions import (
    BatchTerms,
    Box,
    EmergencyTerms,
    Facts,
    Presented,
    Use,
    code_of,
    judge,
    kind_of,
)
from gateway.tickets.reasons import Refusal
from gateway.tickets.scope import Scope
from gateway.tickets.settings import TicketSettings
from gateway.tickets.validity import local_day


def present(text: str, keys: Mapping[str, Ed25519PublicKey]) -> Presented | Refusal:
    """A typed or scanned code, or a scanned electronic ticket verified against the plant
    ``keys`` (by key id); or why it is not a ticket at all."""
    if electronic.looks_electronic(text):
        return electronic.verify(text, keys)
    try:
        return parse_code(text)
    except CodeError as exc:
        return Refusal(exc.reason, str(exc))


def facts_of(stored: CodeFacts) -> Facts:
    """The judge's view of what the store holds about a code (``prepay ticket check``,
    ``convert`` and ``extend`` judge with it too)."""
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


def redeem_presented(
    store: TicketStore,
    settings: TicketSettings,
    presented: Presented,
    *,
    redemption_id: str,
    where: str,
    now: datetime,
    product: str | None = None,
) -> RedeemOutcome[Refusal]:
    """Judge ``presented`` at this box on ``now``'s local day (for ``product``, when the point
    asks for one) and record its redemption under ``redemption_id``, in one transaction.

    The store's outcome holds exactly one of ``redeemed``, ``replayed`` (this id was answered
    before: nothing changed) and ``refused`` (the judge's refusal: nothing changed). The
    redemption records how the ticket was presented (`kind_of`: paper, emergency, electronic).

    Raises:
        IdempotencyConflictError: ``redemption_id`` was used for another code.
        StoreError: the database failed (nothing was recorded).
    """
    box = Box.from_settings(settings)
    today = local_day(now, settings.timezone)

    def decide(stored: CodeFacts) -> Grant | Refusal:
        outcome = judge(presented, facts_of(stored), box, today, product)
        return outcome if isinstance(outcome, Refusal) else Grant(outcome.product, outcome.quantity)

    code = code_of(presented)
    request = RedemptionRequest(
        key=CodeKey(code.text, code.plant, code.serial),
        redemption_id=redemption_id,
        kind=kind_of(presented).value,
        where=where,
    )
    return store.redeem(request, decide)
