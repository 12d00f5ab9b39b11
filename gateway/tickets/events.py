"""A redemption as an event between boxes: what one box publishes and another imports.

Every redemption names the box, the store's incarnation (a store started anew is another
history) and the instant, so that a box that learns of it can refuse the ticket, and a box that
had redeemed the same ticket while both were offline can tell (a conflict, both kept)::

    {"event": "ticket_redeemed", "code": "3301020000100008", "redemption_id": "r-7f3a",
     "kind": "paper", "product": "18.9L", "qty": 1, "box": "depot-3-box-1",
     "incarnation": "3f9c2a71d04be815", "where": "counter 2", "at": "2026-12-01T08:30:00.000Z"}
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from gateway.tickets.decisions import TicketKind
from gateway.tickets.settings import Place, Product


class RedemptionEvent(BaseModel):
    """One redemption, as published and imported."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: Literal["ticket_redeemed"] = "ticket_redeemed"
    code: Annotated[str, Field(pattern=r"^[0-9]{16}$")]
    redemption_id: Annotated[str, Field(min_length=1, max_length=128)]  # ops.MAX_REDEMPTION_ID
    kind: TicketKind
    product: Product
    qty: Annotated[int, Field(ge=1)]
    box: Place
    incarnation: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    where: Annotated[str, Field(max_length=200)] = ""  # ops.MAX_WHERE
    at: AwareDatetime

    @property
    def redeemed_at(self) -> datetime:
        return self.at
