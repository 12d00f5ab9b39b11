"""A paper water ticket presented at a dispenser: checked and redeemed, exactly once.

The redemption is the pickup point's (`gateway.flows.ticket_redemption.redeem_presented`): the
rules of `gateway.tickets.decisions.judge` (docs/tickets.md) and the ticket store's one
transaction, the code UNIQUE, so a ticket presented at two dispensers at the same instant is
redeemed by one and refused ``already_used`` at the other. What is the dispenser's own is kept
here: it reads a 16-digit code only (its Request frame carries 16 characters), so electronic
tickets are redeemed at the counter, and it shows a refusal as a `DenyReason`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from drivers.ports import DenyReason
from gateway.flows.ticket_redemption import redeem_presented
from gateway.store.tickets import Redemption, TicketStore
from gateway.tickets.codes import CodeError, parse_code
from gateway.tickets.reasons import Reason, Refusal
from gateway.tickets.settings import TicketSettings

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
    # Recorded by the code's series (an emergency code as emergency), as at the counter: the
    # statistics count a redemption under its kind.
    outcome = redeem_presented(
        store, settings, code, redemption_id=redemption_id, where=where, now=now, product=product
    )
    if outcome.refused is not None:
        refusal = outcome.refused
        return TicketRefused(_SHOWN.get(refusal.reason, DenyReason.OTHER), refusal)
    redeemed = outcome.redeemed or outcome.replayed
    if redeemed is None:  # the store answers one of the three
        raise ValueError("ticket store answered neither a redemption nor a refusal")
    return redeemed
