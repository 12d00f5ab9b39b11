"""Quote a bill: readings from a CSV file priced under one tariff and class, itemised.

The total comes from the engine (the kernel, exactly what a prepaid account would have been
charged); the itemised lines come from the reference implementation. The two are computed
independently and must agree, so a quote is also a self-check.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from billing_engine import money
from billing_engine.base.errors import ConfigError, InvalidConfigError
from billing_engine.engine import AccountState, BillingEngine, Crossing, ReadingStatus
from billing_engine.reference import RefAccount, ReferenceBiller, round_minor
from billing_engine.tariff import Tariff


def exact_decimal(value: Fraction) -> Decimal:
    """A fraction whose denominator divides a power of ten, as an exact `Decimal`."""
    digits = 0
    while (value * 10**digits).denominator != 1:
        digits += 1
        if digits > 30:
            raise ValueError(f"{value} is not a finite decimal")
    return Decimal((value * 10**digits).numerator).scaleb(-digits)


def load_readings_csv(path: Path) -> list[tuple[datetime, int]]:
    """Read ``timestamp,register`` rows (ISO 8601 with offset; register in tariff units).

    Raises:
        InvalidConfigError: one error per bad row, naming file, line and column.
    """
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidConfigError([ConfigError(name, 0, "<file>", exc.strerror or "")]) from exc
    readings: list[tuple[datetime, int]] = []
    errors: list[ConfigError] = []
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or row[0].strip().startswith("#"):
            continue
        if number == 1 and row[0].strip().lower() == "timestamp":
            continue
        if len(row) != 2:
            errors.append(ConfigError(name, number, "<row>", "expected timestamp,register"))
            continue
        try:
            at = datetime.fromisoformat(row[0].strip())
        except ValueError:
            errors.append(ConfigError(name, number, "timestamp", f"{row[0]!r} is not ISO 8601"))
            continue
        if at.tzinfo is None:
            errors.append(ConfigError(name, number, "timestamp", "needs a UTC offset, e.g. +08:00"))
            continue
        try:
            register = money.to_scaled(row[1].strip(), money.QTY_SCALE, "register")
        except ValueError as exc:
            errors.append(ConfigError(name, number, "register", str(exc)))
            continue
        if register < 0:
            errors.append(ConfigError(name, number, "register", "must not be negative"))
            continue
        readings.append((at.astimezone(UTC), register))
    if errors:
        raise InvalidConfigError(errors)
    if not readings:
        raise InvalidConfigError([ConfigError(name, 0, "<file>", "no readings")])
    return readings


@dataclass
class QuoteLine:
    """Charges of one kind, period, tier and unit price within one cycle."""

    cycle_id: int
    kind: str
    period: str
    tier: int
    unit_price: Decimal
    quantity_milli: int = 0
    net: Fraction = Fraction(0)
    tax: Fraction = Fraction(0)


@dataclass
class Quote:
    """An itemised bill."""

    tariff: Tariff
    class_name: str
    total_minor: int
    quantity_milli: int
    first: datetime
    last: datetime
    lines: list[QuoteLine]
    tax_minor: int
    statuses: dict[str, int] = field(default_factory=dict)
    estimated: bool = False

    def to_json(self) -> dict[str, Any]:
        cur = self.tariff.currency
        return {
            "tariff": self.tariff.id,
            "class": self.class_name,
            "currency": cur,
            "unit": self.tariff.unit.value,
            "from": self.first.isoformat().replace("+00:00", "Z"),
            "to": self.last.isoformat().replace("+00:00", "Z"),
            "quantity": money.format_scaled(self.quantity_milli, money.QTY_SCALE),
            "total_minor": self.total_minor,
            "tax_minor": self.tax_minor,
            "tax_included": self.tariff.versions[-1].tax.included,
            "estimated_split": self.estimated,
            "readings": self.statuses,
            "lines": [
                {
                    "cycle": line.cycle_id,
                    "kind": line.kind,
                    "period": line.period or None,
                    "tier": line.tier or None,
                    "quantity": (
                        money.format_scaled(line.quantity_milli, money.QTY_SCALE)
                        if line.kind == "energy"
                        else str(line.quantity_milli)
                    ),
                    "unit_price": str(line.unit_price),
                    "net": str(exact_decimal(line.net)),
                    "tax": str(exact_decimal(line.tax)),
                }
                for line in self.lines
            ],
        }

    def render(self) -> str:
        cur = self.tariff.currency
        unit = self.tariff.unit.value
        out = [
            f"{self.tariff.name} [{self.tariff.id}], class {self.class_name}",
            f"{self.first.astimezone(self.tariff.zone).isoformat()} -> "
            f"{self.last.astimezone(self.tariff.zone).isoformat()}: "
            f"{money.format_scaled(self.quantity_milli, money.QTY_SCALE)} {unit}",
            "",
            f"{'cycle':>8} {'item':<22} {'quantity':>14} {'price':>10} {'amount':>16}",
        ]
        for line in self.lines:
            if line.kind == "energy":
                item = f"{line.period} tier {line.tier}"
                qty = f"{money.format_scaled(line.quantity_milli, money.QTY_SCALE)} {unit}"
            else:
                item = "standing charge"
                qty = f"{line.quantity_milli} day"
            amount = exact_decimal(line.net + line.tax)
            out.append(
                f"{line.cycle_id:>8} {item:<22} {qty:>14} {line.unit_price!s:>10} {amount!s:>16}"
            )
        tax = self.tariff.versions[-1].tax
        label = "of which tax" if tax.included else "tax"
        out += [
            "",
            f"{label} ({tax.percent}%): {money.format_minor(self.tax_minor, cur)}",
            f"TOTAL: {money.format_minor(self.total_minor, cur)}",
        ]
        if self.estimated:
            out.append("note: some readings spanned a price boundary and were split pro rata")
        skipped = {k: v for k, v in self.statuses.items() if k not in {"billed", "baseline"}}
        if skipped:
            out.append(f"note: readings not billed: {skipped}")
        return "\n".join(out)


def quote(
    tariff: Tariff,
    class_name: str,
    readings: list[tuple[datetime, int]],
    opening_usage_milli: int = 0,
) -> Quote:
    """Price ``readings`` (the first is the baseline) for one account of ``class_name``.

    Raises:
        KeyError: unknown class.
        AssertionError: kernel and reference disagree (a bug; never expected).
    """
    engine = BillingEngine(tariff)
    account = AccountState(0, class_name, usage_milli=opening_usage_milli)
    results = engine.bill([account], [(0, at, reg) for at, reg in readings])
    total = sum(r.deduction_minor for r in results)

    ref = RefAccount(0, class_name, usage_milli=opening_usage_milli)
    biller = ReferenceBiller(tariff)
    grouped: dict[tuple[int, str, str, int, Decimal], QuoteLine] = {}
    statuses: dict[str, int] = defaultdict(int)
    ref_total = 0
    for at, reg in readings:
        result = biller.bill(ref, at, reg)
        ref_total += result.deduction_minor
        statuses[ReadingStatus(result.status).name.lower()] += 1
        for line in result.lines:
            key = (line.cycle_id, line.kind, line.period, line.tier, line.unit_price)
            item = grouped.setdefault(key, QuoteLine(*key))
            item.quantity_milli += line.quantity_milli
            item.net += line.net
            item.tax += line.tax
    if ref_total != total:
        raise AssertionError(f"kernel total {total} != reference total {ref_total}")
    lines = list(grouped.values())
    exponent = money.currency_exponent(tariff.currency)
    tax_exact = sum((line.tax for line in lines), Fraction(0))
    last_tax = tariff.versions[-1].tax
    if last_tax.included and last_tax.percent:
        rate = Fraction(last_tax.percent) / 100
        tax_exact = sum((line.net for line in lines), Fraction(0)) * rate / (1 + rate)
    billed = [r for r in results if r.status in (ReadingStatus.BILLED, ReadingStatus.BASELINE)]
    quantity = 0
    last_reg: int | None = None
    for (_at, reg), r in zip(readings, results, strict=True):
        if r.status is ReadingStatus.BILLED and last_reg is not None:
            quantity += reg - last_reg
        if r.status in (ReadingStatus.BILLED, ReadingStatus.BASELINE):
            last_reg = reg
    return Quote(
        tariff=tariff,
        class_name=class_name,
        total_minor=total,
        quantity_milli=quantity,
        first=readings[0][0],
        last=readings[-1][0],
        lines=sorted(lines, key=lambda x: (x.cycle_id, x.kind, x.period, x.tier)),
        tax_minor=round_minor(tax_exact, exponent),
        statuses=dict(statuses),
        estimated=any(r.crossing & Crossing.SPLIT for r in billed),
    )
