"""May this ticket be redeemed here, now? The judge, over facts the store has gathered.

The caller gathers, in one store transaction, what the box knows of the code (`Facts`: the
batch that issued it, a void, an extension, an emergency issue, redemptions here and at other
boxes) and asks `judge`; a ``None`` answer lets the same transaction record the redemption.
Extension and conversion are judged the same way (`judge_extension`, `judge_conversion`).

The checks, in order (the first that fails is the reason given):

1. the plant (a code of another plant is never valid here);
2. issue: a paper code must lie in an issued range, an emergency code must have been issued at
   this box (an electronic ticket was verified before: its signature is its issue);
3. void: a paper ticket converted to an electronic one is refused as paper;
4. use: redeemed here before (when and where), or at another box;
5. scope (region or depot), 6. product, 7. validity (with a paper ticket's extension).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

from gateway.tickets.codes import TicketCode
from gateway.tickets.electronic import ElectronicTicket
from gateway.tickets.reasons import Reason, Refusal
from gateway.tickets.scope import Scope
from gateway.tickets.settings import TicketSettings
from gateway.tickets.validity import add_one_month, validity_refusal


class TicketKind(StrEnum):
    """How a ticket was presented (stored with each redemption)."""

    PAPER = "paper"
    ELECTRONIC = "electronic"
    EMERGENCY = "emergency"


@dataclass(frozen=True, slots=True)
class Box:
    """This box, as the judge sees it."""

    plant_code: str
    depot: str
    region: str
    products: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: TicketSettings) -> Box:
        return cls(settings.plant_code, settings.depot, settings.region, settings.products)


@dataclass(frozen=True, slots=True)
class Terms:
    """What a ticket entitles to, whatever its kind. ``scope`` None: this box only (an
    emergency ticket)."""

    code: TicketCode
    kind: TicketKind
    product: str
    quantity: int
    valid_from: date
    valid_until: date
    scope: Scope | None


@dataclass(frozen=True, slots=True)
class BatchTerms:
    """The terms a batch gives each of its paper codes."""

    batch_id: str
    product: str
    valid_from: date
    valid_until: date
    scope: Scope


@dataclass(frozen=True, slots=True)
class EmergencyTerms:
    """An emergency ticket issued at this box."""

    product: str
    issued_on: date
    valid_until: date


@dataclass(frozen=True, slots=True)
class Use:
    """A redemption the box knows of."""

    box_id: str
    at: datetime
    where: str

    def describe(self) -> str:
        place = f" ({self.where})" if self.where else ""
        return f"at box {self.box_id}{place} on {self.at.isoformat(timespec='seconds')}"


@dataclass(frozen=True, slots=True)
class Facts:
    """What the store holds about one code."""

    batch: BatchTerms | None = None
    voided_at: datetime | None = None
    extended_until: date | None = None
    emergency: EmergencyTerms | None = None
    used_here: Use | None = None
    used_elsewhere: tuple[Use, ...] = ()


#: A presented ticket: a typed or scanned code, or a verified electronic ticket.
Presented = TicketCode | ElectronicTicket


def code_of(presented: Presented) -> TicketCode:
    return presented.ticket_code if isinstance(presented, ElectronicTicket) else presented


def kind_of(presented: Presented) -> TicketKind:
    if isinstance(presented, ElectronicTicket):
        return TicketKind.ELECTRONIC
    return TicketKind.EMERGENCY if presented.is_emergency else TicketKind.PAPER


def terms_of(presented: Presented, facts: Facts) -> Terms | Refusal:
    """The ticket's terms, or `Reason.NOT_ISSUED` when nothing issued this code."""
    code, kind = code_of(presented), kind_of(presented)
    if isinstance(presented, ElectronicTicket):
        return Terms(
            code,
            kind,
            presented.product,
            presented.qty,
            presented.valid_from,
            presented.valid_until,
            presented.scope,
        )
    if kind is TicketKind.EMERGENCY:
        if facts.emergency is None:
            return Refusal(
                Reason.NOT_ISSUED, f"{code}: no emergency ticket of this number was issued here"
            )
        e = facts.emergency
        return Terms(code, kind, e.product, 1, e.issued_on, e.valid_until, None)
    if facts.batch is None:
        return Refusal(
            Reason.NOT_ISSUED,
            f"{code}: not in any issued range (counterfeit, or its batch not yet imported)",
        )
    b = facts.batch
    until = max(b.valid_until, facts.extended_until or b.valid_until)
    return Terms(code, kind, b.product, 1, b.valid_from, until, b.scope)


def _standing(presented: Presented, facts: Facts, box: Box) -> Terms | Refusal:
    """Checks 1-5: plant, issue, void, use, scope."""
    code = code_of(presented)
    if code.plant != box.plant_code:
        return Refusal(
            Reason.WRONG_PLANT, f"plant {code.plant}; this box takes plant {box.plant_code}"
        )
    terms = terms_of(presented, facts)
    if isinstance(terms, Refusal):
        return terms
    if terms.kind is not TicketKind.ELECTRONIC and facts.voided_at is not None:
        return Refusal(
            Reason.VOIDED,
            f"{code}: the paper ticket was converted to an electronic one on"
            f" {facts.voided_at.isoformat(timespec='seconds')}; present the electronic ticket",
        )
    if facts.used_here is not None:
        return Refusal(Reason.ALREADY_USED, f"{code}: redeemed {facts.used_here.describe()}")
    if facts.used_elsewhere:
        return Refusal(
            Reason.USED_ELSEWHERE, f"{code}: redeemed {facts.used_elsewhere[0].describe()}"
        )
    if terms.scope is not None and not terms.scope.admits(depot=box.depot, region=box.region):
        return Refusal(
            Reason.WRONG_SCOPE,
            f"{code}: valid in {terms.scope}; this box is depot {box.depot} in region {box.region}",
        )
    return terms


def judge(
    presented: Presented, facts: Facts, box: Box, today: date, product: str | None = None
) -> Terms | Refusal:
    """May ``presented`` be redeemed at ``box`` on ``today`` (for ``product``, when the point
    asks for one)? Returns the ticket's terms when it may."""
    terms = _standing(presented, facts, box)
    if isinstance(terms, Refusal):
        return terms
    if terms.product not in box.products or (product is not None and terms.product != product):
        wanted = product if product is not None else "/".join(box.products)
        return Refusal(
            Reason.WRONG_PRODUCT, f"{terms.code}: a ticket for {terms.product}, not {wanted}"
        )
    refusal = validity_refusal(terms.valid_from, terms.valid_until, today)
    extendable = terms.kind is TicketKind.PAPER and facts.extended_until is None
    if refusal is not None and refusal.reason is Reason.EXPIRED and extendable:
        hint = "; a paper ticket may be extended once by one month (prepay ticket extend)"
        return Refusal(Reason.EXPIRED, f"{terms.code}: {refusal.detail}{hint}")
    if refusal is not None:
        return Refusal(refusal.reason, f"{terms.code}: {refusal.detail}")
    return terms


def judge_extension(presented: Presented, facts: Facts, box: Box, today: date) -> Terms | Refusal:
    """May this paper ticket be extended today? Returns its terms with the new last day."""
    if kind_of(presented) is not TicketKind.PAPER:
        return Refusal(Reason.NOT_PAPER, f"{code_of(presented)}: only paper tickets are extended")
    terms = _standing(presented, facts, box)
    if isinstance(terms, Refusal):
        return terms
    if facts.extended_until is not None:
        return Refusal(
            Reason.ALREADY_EXTENDED,
            f"{terms.code}: already extended once, to {facts.extended_until.isoformat()}",
        )
    if today <= terms.valid_until:
        return Refusal(
            Reason.NOT_EXPIRED, f"{terms.code}: still valid until {terms.valid_until.isoformat()}"
        )
    return Terms(
        terms.code,
        terms.kind,
        terms.product,
        terms.quantity,
        terms.valid_from,
        add_one_month(today),
        terms.scope,
    )


def judge_conversion(presented: Presented, facts: Facts, box: Box, today: date) -> Terms | Refusal:
    """May this paper ticket be exchanged 1:1 for an electronic one today? It must be one that
    could be redeemed here now (any product of the plant)."""
    if kind_of(presented) is not TicketKind.PAPER:
        return Refusal(Reason.NOT_PAPER, f"{code_of(presented)}: only paper tickets are converted")
    terms = _standing(presented, facts, box)
    if isinstance(terms, Refusal):
        return terms
    refusal = validity_refusal(terms.valid_from, terms.valid_until, today)
    if refusal is not None:
        return Refusal(refusal.reason, f"{terms.code}: {refusal.detail}")
    return terms
