"""The reference implementation: plain Python, written to be read, exact by construction.

It prices readings straight from the `Tariff` model with `Fraction` arithmetic in major units and
rounds with the textbook rule, so it shares no arithmetic with the kernel; the kernel must agree
with it to the last minor unit (tests/billing). It also itemises every charge, which the
``prepay tariff quote`` breakdown uses.

The rules, in the order they apply to one reading:

1. The first reading of an account is its baseline: no energy is charged, the standing charge of
   its local day is.
2. A reading at or before the last one charges nothing (duplicate, out of order, conflict);
   a register below the last one is reported and not billed. Instants are floored to the
   millisecond first (`instants.py`): two readings in one millisecond are the same instant.
3. The interval since the last reading is cut at every change of version, TOU period, cycle and
   local day. The quantity is split over the pieces pro rata by time in milliseconds,
   cumulatively floored to the milli-unit, so the pieces add up to the quantity exactly.
4. A piece in a new cycle closes the old one (its rounded total stands) and starts from zero
   usage and zero cost. A piece in a new local day first pays that day's standing charge.
5. A piece costs, per tier it spans, ``quantity x (period price + tier adder)``, plus tax when
   prices exclude it.
6. The deduction is ``round(cycle cost after) - round(cycle cost before)``, each cycle rounded
   half-up to the minor unit.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

from billing_engine import instants, layout, money
from billing_engine.tariff import FLAT_PERIOD, Tariff


@dataclass
class RefAccount:
    """One account's state as the reference sees it."""

    balance_minor: int
    class_name: str
    cycle_id: int | None = None
    usage_milli: int = 0
    cost: Fraction = Fraction(0)  # exact cost of the current cycle, major units, with tax
    last_at: datetime | None = None
    last_register_milli: int = 0
    standing_day: int | None = None  # ordinal of the last local day whose charge is paid
    low_minor: int = 0
    disconnect_minor: int = 0


@dataclass(frozen=True)
class RefLine:
    """One itemised charge."""

    cycle_id: int
    kind: str  # "energy" or "standing"
    period: str
    tier: int  # 1-based; 0 for standing charges
    quantity_milli: int  # milli-units for energy, days for standing charges
    unit_price: Decimal  # major per unit (energy: period price + adder) or per day
    net: Fraction  # major units before tax
    tax: Fraction  # major units


@dataclass
class RefResult:
    """What one reading did."""

    status: int
    deduction_minor: int = 0
    flags: int = 0
    balance_minor: int = 0
    lines: list[RefLine] = field(default_factory=list)


def round_minor(cost: Fraction, exponent: int) -> int:
    """Round a non-negative major-unit amount half-up to the minor unit."""
    return math.floor(cost * Fraction(10**exponent) + Fraction(1, 2))


class ReferenceBiller:
    """Bills readings one at a time against `RefAccount`s under one tariff."""

    def __init__(self, tariff: Tariff) -> None:
        self.tariff = tariff
        self.exponent = money.currency_exponent(tariff.currency)

    def _tax_rate(self, version_index: int) -> Fraction:
        tax = self.tariff.versions[version_index].tax
        return Fraction(0) if tax.included else Fraction(tax.percent) / 100

    def _charge(self, account: RefAccount, line: RefLine, result: RefResult) -> None:
        account.cost += line.net + line.tax
        result.lines.append(line)

    def _pay_standing(
        self, account: RefAccount, version_index: int, day: int, result: RefResult
    ) -> None:
        if account.standing_day is None:
            account.standing_day = day - 1
        days = day - account.standing_day
        if days <= 0:
            return
        version = self.tariff.versions[version_index]
        per_day = version.classes[account.class_name].standing_charge_per_day
        net = Fraction(per_day) * days
        tax = net * self._tax_rate(version_index)
        account.standing_day = day
        if per_day:
            line = RefLine(account.cycle_id or 0, "standing", "", 0, days, per_day, net, tax)
            self._charge(account, line, result)

    def _start_cycle(self, account: RefAccount, cycle_id: int) -> None:
        account.cycle_id = cycle_id
        account.usage_milli = 0
        account.cost = Fraction(0)

    def _price_energy(
        self, account: RefAccount, version_index: int, period: str, quantity: int
    ) -> list[RefLine]:
        version = self.tariff.versions[version_index]
        prices = version.classes[account.class_name]
        base = prices.price_for(period)
        if isinstance(prices.energy, Decimal):
            period = FLAT_PERIOD  # one price all day: the TOU period is not worth itemising
        lines: list[RefLine] = []
        lower = 0
        used = account.usage_milli
        for number, tier in enumerate(prices.tiers, start=1):
            upper = None if tier.up_to is None else int(tier.up_to * money.QTY_SCALE)
            lo = max(used, lower)
            hi = used + quantity if upper is None else min(used + quantity, upper)
            if hi > lo:
                unit_price = base + tier.adder
                net = Fraction(hi - lo, money.QTY_SCALE) * Fraction(unit_price)
                tax = net * self._tax_rate(version_index)
                lines.append(
                    RefLine(
                        account.cycle_id or 0,
                        "energy",
                        period,
                        number,
                        hi - lo,
                        unit_price,
                        net,
                        tax,
                    )
                )
            if upper is None:
                break
            lower = upper
        return lines

    def bill(self, account: RefAccount, at: datetime, register_milli: int) -> RefResult:
        """Bill one reading; ``at`` is floored to the millisecond, as the engine does."""
        at = instants.floor_ms(at)
        before_balance = account.balance_minor
        result = RefResult(layout.STATUS_BILLED, balance_minor=before_balance)
        if account.last_at is None:
            attrs = self.tariff.attributes_at(at)
            if attrs is None:
                result.status = layout.STATUS_NO_TARIFF
                return result
            version_index, _period, cycle_id, day = attrs
            account.last_at, account.last_register_milli = at, register_milli
            if account.cycle_id is None:
                account.cycle_id = cycle_id
            elif account.cycle_id != cycle_id:
                self._start_cycle(account, cycle_id)
            before = round_minor(account.cost, self.exponent)
            self._pay_standing(account, version_index, day, result)
            result.status = layout.STATUS_BASELINE
            deduction = round_minor(account.cost, self.exponent) - before
        elif at < account.last_at:
            result.status = layout.STATUS_OUT_OF_ORDER
            return result
        elif at == account.last_at:
            same = register_milli == account.last_register_milli
            result.status = layout.STATUS_DUPLICATE if same else layout.STATUS_CONFLICT
            return result
        elif register_milli < account.last_register_milli:
            result.status = layout.STATUS_REGISTER_BACKWARDS
            return result
        else:
            quantity = register_milli - account.last_register_milli
            start = account.last_at
            span_ms = (at - start) // instants.ONE_MS
            if account.usage_milli + quantity > money.MAX_CYCLE_USAGE_MILLI or (
                span_ms > money.MAX_READING_SPAN_MS
            ):
                result.status = layout.STATUS_LIMIT
                return result
            cuts = [start, *self.tariff.boundaries(start, at), at]
            before = round_minor(account.cost, self.exponent)
            deduction = 0
            allocated = 0
            runs = 0  # maximal runs of equal (version, period, cycle, day): the kernel's spans
            previous: tuple[int, str, int, int] | None = None
            for piece_start, piece_end in itertools.pairwise(cuts):
                attrs = self.tariff.attributes_at(piece_start)
                if attrs is None:  # cannot happen after a baseline inside the tariff
                    raise AssertionError("reading interval starts before the tariff")
                version_index, period, cycle_id, day = attrs
                runs += attrs != previous
                previous = attrs
                if cycle_id != account.cycle_id:
                    deduction += round_minor(account.cost, self.exponent) - before
                    before = 0
                    self._start_cycle(account, cycle_id)
                    result.flags |= layout.FLAG_CYCLE_RESET
                self._pay_standing(account, version_index, day, result)
                elapsed_ms = (piece_end - start) // instants.ONE_MS
                upto = quantity * elapsed_ms // span_ms
                piece = upto - allocated
                allocated = upto
                if piece > 0:
                    for line in self._price_energy(account, version_index, period, piece):
                        self._charge(account, line, result)
                    account.usage_milli += piece
            account.last_at, account.last_register_milli = at, register_milli
            deduction += round_minor(account.cost, self.exponent) - before
            if runs > 1:
                result.flags |= layout.FLAG_SPLIT
        account.balance_minor -= deduction
        after = account.balance_minor
        if before_balance >= account.low_minor > after:
            result.flags |= layout.FLAG_LOW
        if before_balance > 0 >= after:
            result.flags |= layout.FLAG_ZERO
        if before_balance >= account.disconnect_minor > after:
            result.flags |= layout.FLAG_DISCONNECT
        result.deduction_minor = deduction
        result.balance_minor = after
        return result
