"""Why a ticket is refused: one vocabulary for the judge, the CLI's exit messages and events."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    """A refusal, in the order the judge looks (the first that applies is the one given)."""

    MALFORMED = "malformed"  # not a ticket code nor an electronic ticket string
    BAD_CHECK_DIGIT = "bad_check_digit"  # a mistyped (or made-up) paper code
    WRONG_PLANT = "wrong_plant"  # a code of another plant
    UNKNOWN_KEY = "unknown_key"  # signed with a key this box does not trust
    BAD_SIGNATURE = "bad_signature"  # forged, or altered after signing
    NOT_ISSUED = "not_issued"  # a paper code outside every issued range, an unknown emergency code
    VOIDED = "voided"  # a paper ticket converted to an electronic one
    ALREADY_USED = "already_used"  # redeemed at this box before
    USED_ELSEWHERE = "used_elsewhere"  # redeemed at another box (learned from its event)
    WRONG_SCOPE = "wrong_scope"  # valid only in another region or at another depot
    WRONG_PRODUCT = "wrong_product"  # a ticket for a product not handed out here
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    NOT_EXPIRED = "not_expired"  # extension asked for a ticket that is still valid
    ALREADY_EXTENDED = "already_extended"  # the one extension was given before
    NOT_PAPER = "not_paper"  # extension or conversion asked for a ticket that is not paper


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused ticket: the reason, and a sentence for the operator (when, where, the fix)."""

    reason: Reason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"
