"""Vending at a dispenser, decided: how much a customer may pour, and what a pour costs.

Pure functions of integers (no I/O, no clock, no store): the flow (`gateway.flows.vending`)
gives them the account's balance, what its other open sessions already hold, and the
dispenser's price, and writes what they answer.

**Price.** One price per dispenser, in minor units per *unit*: per litre (1 000 mL) or per
bucket (18 900 mL, the 5-gallon bottle of the tariff ``bottled_water_dispenser``).

**Charge of a pour** (`charge_minor`): ``ml * price / unit_ml`` rounded half-up to the minor
unit, in integers: ``(ml * price + unit_ml // 2) // unit_ml``. Half-up because the customer
sees the litres and the price on the machine: 2.5 fen is 3 fen, as a till would round it.
A full bucket costs exactly the bucket price; a bucket left half-full costs half of it,
rounded half-up (the customer pays for what flowed, never for what did not).

**Volume authorised** (`decide`): per litre, the largest volume whose charge the free credit
covers (the inverse of the rounding above, so the charge of a full pour never exceeds the
credit); per bucket, whole buckets only. Capped by the dispenser's per-session maximum.
Free credit = balance - the policy's disconnect threshold - what the account's open sessions
may still cost (their authorised charge): a card presented at two dispensers at once cannot
spend its credit twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from drivers.ports import DenyReason

ML_PER_LITRE: Final = 1_000
#: A 5-gallon bucket (bottle), as the bottled-water tariff counts it: 18.9 L.
BUCKET_ML: Final = 18_900


@dataclass(frozen=True, slots=True)
class Price:
    """A dispenser's price: ``minor`` per ``unit_ml`` millilitres (1 000 or `BUCKET_ML`)."""

    minor: int
    unit_ml: int

    @property
    def buckets(self) -> bool:
        """True when the dispenser sells whole buckets."""
        return self.unit_ml == BUCKET_ML


def per_litre(minor: int) -> Price:
    """A price per litre."""
    return Price(minor, ML_PER_LITRE)


def per_bucket(minor: int) -> Price:
    """A price per 18.9 L bucket."""
    return Price(minor, BUCKET_ML)


@dataclass(frozen=True, slots=True)
class Grant:
    """Pour at most ``max_ml``; the full pour costs ``max_charge_minor`` (held until settled)."""

    max_ml: int
    max_charge_minor: int


@dataclass(frozen=True, slots=True)
class Deny:
    """Refuse; the dispenser shows ``reason``."""

    reason: DenyReason


@dataclass(frozen=True, slots=True)
class Settlement:
    """What a reported pour is billed.

    Attributes:
        billed_ml: the volume billed: what the device reported, but never more than it was
            authorised (the customer never pays for a device that over-reports).
        charge_minor: the charge of ``billed_ml``.
        over_ml: how much the report exceeded the authorisation (0 normally; > 0 raises an
            alarm).
    """

    billed_ml: int
    charge_minor: int
    over_ml: int


def charge_minor(price: Price, ml: int) -> int:
    """The charge of ``ml`` at ``price``, rounded half-up to the minor unit.

    >>> charge_minor(per_litre(35), 2_500)  # 2.5 L x 35 = 87.5 -> 88
    88
    >>> charge_minor(per_bucket(600), 18_900)  # one full bucket
    600
    """
    if ml < 0:
        raise ValueError(f"a pour cannot be negative, got {ml} mL")
    return (ml * price.minor + price.unit_ml // 2) // price.unit_ml


def covered_ml(price: Price, credit_minor: int) -> int:
    """The largest volume whose `charge_minor` is at most ``credit_minor`` (0 when none).

    ``charge(ml) <= C`` <=> ``ml * p + h < (C + 1) * U`` (U the unit in mL, h = U // 2)
    <=> ``ml <= (C * U + U - h - 1) // p``.
    """
    if credit_minor <= 0:
        return 0
    unit = price.unit_ml
    return (credit_minor * unit + unit - unit // 2 - 1) // price.minor


def decide(
    price: Price,
    *,
    balance_minor: int,
    disconnect_threshold_minor: int,
    held_minor: int,
    max_ml: int,
    max_buckets: int,
) -> Grant | Deny:
    """What to answer a customer whose account has ``balance_minor``.

    Args:
        price: the dispenser's price.
        balance_minor: the account's balance now.
        disconnect_threshold_minor: the account policy's threshold: credit below it is not
            spent (the same floor the supply is cut at).
        held_minor: what the account's other open sessions may still cost.
        max_ml: the dispenser's per-session maximum (per-litre pricing).
        max_buckets: the dispenser's per-session maximum in buckets (bucket pricing).
    """
    free = balance_minor - disconnect_threshold_minor - held_minor
    if price.buckets:
        buckets = min(max(free, 0) // price.minor, max_buckets)
        ml = buckets * BUCKET_ML
    else:
        ml = min(covered_ml(price, free), max_ml)
    if ml <= 0:
        return Deny(DenyReason.NO_CREDIT)
    return Grant(ml, charge_minor(price, ml))


def settle(price: Price, authorised_ml: int, reported_ml: int) -> Settlement:
    """Bill a session the device reports ``reported_ml`` for (see `Settlement`)."""
    if reported_ml < 0:
        raise ValueError(f"a pour cannot be negative, got {reported_ml} mL")
    billed = min(reported_ml, authorised_ml)
    return Settlement(billed, charge_minor(price, billed), max(reported_ml - authorised_ml, 0))
