"""Tariffs as operators write them: pydantic models, validation rules and calendar lookups.

A tariff file holds one tariff: its currency, unit, time zone and billing cycle, and a list of
effective-dated versions. Each version has a time-of-use calendar (periods by time of day, day
type and season) and, per customer class, a price per period, tier adders over the quantity
used in the current cycle, a daily standing charge, and a tax rate.

The price of a quantity is ``period price + adder of the tier it falls in`` (the URDB and
Zhejiang model: the TOU period and the cycle tier combine additively). A tariff without TOU
has one period, ``flat``, all day.

Calendar lookups here (which version, period, cycle and day an instant falls in, and where the
next change is) are shared by the compiler and the reference implementation.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Annotated, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from billing_engine import money
from billing_engine.base.yaml_lines import load_model

FLAT_PERIOD = "flat"
MINUTES_PER_DAY = 24 * 60
_NAME = r"^[a-z][a-z0-9_]*$"


class Unit(enum.StrEnum):
    """Billing units. Quantities are held in milli-units: Wh, litres, millilitres."""

    KWH = "kWh"
    M3 = "m3"
    LITRE = "L"


class RegisterUnit(enum.StrEnum):
    """The unit of a meter register: a milli-unit of the billing `Unit` (what readings carry)."""

    WH = "Wh"
    LITRE = "L"
    MILLILITRE = "mL"


#: The register unit of each billing unit (the fixed-point scale is 1/1000).
REGISTER_UNIT: dict[Unit, RegisterUnit] = {
    Unit.KWH: RegisterUnit.WH,
    Unit.M3: RegisterUnit.LITRE,
    Unit.LITRE: RegisterUnit.MILLILITRE,
}


class CycleReset(enum.StrEnum):
    """When the cumulative quantity that selects the tier starts again from zero."""

    MONTHLY = "monthly"
    ANNUAL = "annual"
    NEVER = "never"


class DayType(enum.StrEnum):
    """Kinds of day a TOU schedule can apply to."""

    WEEKDAY = "weekday"
    WEEKEND = "weekend"
    HOLIDAY = "holiday"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_price(value: Decimal) -> Decimal:
    if value < 0:
        raise ValueError(f"price {value} is negative; prices and adders must be >= 0")
    money.to_scaled(value, money.PRICE_SCALE, "price")
    if value * money.PRICE_SCALE > money.MAX_PRICE_MICRO:
        raise ValueError(f"price {value} is above the supported maximum of 100 per unit")
    return value


def _check_quantity(value: Decimal) -> Decimal:
    if value <= 0:
        raise ValueError(f"quantity {value} must be positive")
    money.to_scaled(value, money.QTY_SCALE, "quantity")
    return value


Price = Annotated[Decimal, AfterValidator(_check_price)]
Quantity = Annotated[Decimal, AfterValidator(_check_quantity)]
Name = Annotated[str, Field(pattern=_NAME)]


def _parse_hhmm(text: str) -> int:
    match = re.fullmatch(r"([01]\d|2[0-4]):([0-5]\d)", text)
    if match is None:
        raise ValueError(f"{text!r} is not a time of day; write HH:MM, 00:00 to 24:00")
    minutes = int(match.group(1)) * 60 + int(match.group(2))
    if minutes > MINUTES_PER_DAY:
        raise ValueError(f"{text!r} is after 24:00")
    return minutes


class Cycle(_Model):
    """The billing cycle; it starts at local 00:00 on ``start_day`` (of ``start_month``)."""

    reset: CycleReset
    start_month: Annotated[int, Field(ge=1, le=12)] = 1
    start_day: Annotated[int, Field(ge=1, le=28)] = 1

    def cycle_id(self, day: date) -> int:
        """A number that identifies the cycle ``day`` belongs to; it increases with time."""
        if self.reset is CycleReset.NEVER:
            return 0
        if self.reset is CycleReset.MONTHLY:
            months = day.year * 12 + day.month - 1
            return months if day.day >= self.start_day else months - 1
        started = (day.month, day.day) >= (self.start_month, self.start_day)
        return day.year if started else day.year - 1

    def is_cycle_start(self, day: date) -> bool:
        """True when a new cycle starts at 00:00 of ``day``."""
        return self.cycle_id(day) != self.cycle_id(day - timedelta(days=1))


class Window(_Model):
    """A time-of-day range (local wall time) in one period. ``end`` may be before ``start``
    for a range that crosses midnight, e.g. 22:00-08:00."""

    start: str
    end: str
    period: Name

    @field_validator("start", "end")
    @classmethod
    def hh_mm(cls, value: str) -> str:
        _parse_hhmm(value)
        return value

    def minutes(self) -> list[tuple[int, int]]:
        """Half-open minute ranges within one day, split at midnight."""
        start, end = _parse_hhmm(self.start) % MINUTES_PER_DAY, _parse_hhmm(self.end)
        if end == 0:
            end = MINUTES_PER_DAY
        if start < end:
            return [(start, end)]
        if start == end:
            return [(0, MINUTES_PER_DAY)] if start == 0 else [(start, MINUTES_PER_DAY), (0, end)]
        return [(start, MINUTES_PER_DAY), (0, end)]


ALL_MONTHS = tuple(range(1, 13))
ALL_DAY_TYPES = (DayType.WEEKDAY, DayType.WEEKEND, DayType.HOLIDAY)


class Schedule(_Model):
    """TOU windows for some months (a season) and some day types."""

    months: tuple[Annotated[int, Field(ge=1, le=12)], ...] = ALL_MONTHS
    day_types: tuple[DayType, ...] = ALL_DAY_TYPES
    windows: tuple[Window, ...]

    @field_validator("windows")
    @classmethod
    def windows_cover_the_day_once(cls, windows: tuple[Window, ...]) -> tuple[Window, ...]:
        if not windows:
            raise ValueError("give at least one window")
        covered = [""] * MINUTES_PER_DAY
        for window in windows:
            for lo, hi in window.minutes():
                for minute in range(lo, hi):
                    if covered[minute]:
                        raise ValueError(
                            f"window {window.start}-{window.end} ({window.period}) overlaps "
                            f"{covered[minute]} at {minute // 60:02d}:{minute % 60:02d}"
                        )
                    covered[minute] = f"{window.start}-{window.end} ({window.period})"
        if "" in covered:
            gap = covered.index("")
            raise ValueError(
                f"the windows leave {gap // 60:02d}:{gap % 60:02d} uncovered; "
                "every minute of the 24 h must be in exactly one window"
            )
        return windows

    @cached_property
    def boundaries(self) -> tuple[tuple[int, str], ...]:
        """(minute of day, period) at each change, starting with minute 0."""
        by_minute: dict[int, str] = {}
        for window in self.windows:
            for lo, _hi in window.minutes():
                by_minute[lo] = window.period
        ordered = sorted(by_minute.items())
        merged: list[tuple[int, str]] = []
        for minute, period in ordered:
            if not merged or merged[-1][1] != period:
                merged.append((minute, period))
        return tuple(merged)


class Tier(_Model):
    """One block. ``up_to`` is the cumulative cycle quantity where it ends (None: no end)."""

    up_to: Quantity | None = None
    adder: Price = Decimal(0)


class Tax(_Model):
    """A tax on energy and standing charges. ``included``: prices already contain it."""

    percent: Annotated[Decimal, Field(ge=0, le=100)] = Decimal(0)
    included: bool = True

    @field_validator("percent")
    @classmethod
    def basis_points(cls, value: Decimal) -> Decimal:
        money.to_scaled(value, 100, "tax percent")
        return value

    @property
    def bp(self) -> int:
        return money.to_scaled(self.percent, 100, "tax percent")


class ClassPrices(_Model):
    """Prices for one customer class in one version."""

    energy: Decimal | dict[Name, Decimal]  # one price for every period, or one per period
    tiers: tuple[Tier, ...] = (Tier(),)
    standing_charge_per_day: Decimal = Decimal(0)

    @field_validator("energy")
    @classmethod
    def energy_prices_valid(
        cls, energy: Decimal | dict[str, Decimal]
    ) -> Decimal | dict[str, Decimal]:
        if isinstance(energy, dict):
            for period, price in energy.items():
                try:
                    _check_price(price)
                except ValueError as exc:
                    raise ValueError(f"{period}: {exc}") from None
        else:
            _check_price(energy)
        return energy

    @field_validator("tiers")
    @classmethod
    def tier_limits_increase(cls, tiers: tuple[Tier, ...]) -> tuple[Tier, ...]:
        if not tiers:
            raise ValueError("give at least one tier")
        for i, tier in enumerate(tiers[:-1]):
            if tier.up_to is None:
                raise ValueError(f"tier {i + 1} has no up_to but is not the last tier")
            following = tiers[i + 1].up_to
            if following is not None and following <= tier.up_to:
                raise ValueError(
                    f"tier limits must increase: tier {i + 2} up_to {following} "
                    f"is not above tier {i + 1} up_to {tier.up_to}"
                )
        if tiers[-1].up_to is not None:
            raise ValueError("the last tier must have no up_to (it takes everything above)")
        return tiers

    @field_validator("standing_charge_per_day")
    @classmethod
    def standing_limit(cls, value: Decimal) -> Decimal:
        if value < 0:
            raise ValueError(f"standing charge {value} is negative")
        money.to_scaled(value, money.PRICE_SCALE, "standing charge")
        if value * money.PRICE_SCALE > money.MAX_STANDING_MICRO_PER_DAY:
            raise ValueError(f"standing charge {value} per day is above the maximum of 1000")
        return value

    def price_for(self, period: str) -> Decimal:
        return self.energy if isinstance(self.energy, Decimal) else self.energy[period]


class Version(_Model):
    """The tariff from ``effective_from`` until the next version's ``effective_from``."""

    effective_from: datetime
    source: str | None = None
    schedules: tuple[Schedule, ...] = ()
    weekend_days: tuple[Annotated[int, Field(ge=0, le=6)], ...] = (5, 6)  # Mon=0: Sat, Sun
    holidays: tuple[date, ...] = ()
    workdays: tuple[date, ...] = ()  # weekend days worked as weekdays (China's 调休)
    tax: Tax = Tax()
    classes: dict[Name, ClassPrices]

    @field_validator("effective_from")
    @classmethod
    def aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("effective_from needs a UTC offset, e.g. 2026-01-01T00:00:00+08:00")
        if value.microsecond % 1000:
            # The engine bills in whole milliseconds (`instants`): a version starting inside
            # one would be priced from a different instant by the kernel and the reference.
            raise ValueError(
                f"effective_from {value.isoformat()} is finer than a millisecond; "
                "give it to the millisecond at most, e.g. 2026-01-01T00:00:00.250+08:00"
            )
        return value

    @model_validator(mode="after")
    def schedules_cover_every_day_once(self) -> Self:
        if not self.classes:
            raise ValueError("give at least one class")
        if not self.schedules:
            return self
        seen: dict[tuple[int, DayType], int] = {}
        for i, schedule in enumerate(self.schedules):
            for month in schedule.months:
                for day_type in schedule.day_types:
                    if (month, day_type) in seen:
                        raise ValueError(
                            f"schedules {seen[(month, day_type)]} and {i} both cover "
                            f"month {month} {day_type.value} days; give each one once"
                        )
                    seen[(month, day_type)] = i
        missing = [
            f"{m}/{d.value}" for m in ALL_MONTHS for d in ALL_DAY_TYPES if (m, d) not in seen
        ]
        if missing:
            raise ValueError(
                f"no schedule covers month/day type {', '.join(missing[:6])}"
                f"{' ...' if len(missing) > 6 else ''}"
            )
        return self

    @model_validator(mode="after")
    def class_prices_match_periods(self) -> Self:
        periods = set(self.periods)
        for name, prices in self.classes.items():
            if isinstance(prices.energy, Decimal):
                continue
            unknown = set(prices.energy) - periods
            if unknown:
                raise ValueError(
                    f"class {name}: price for unknown period {sorted(unknown)}; "
                    f"the schedules define {sorted(periods)}"
                )
            missing = periods - set(prices.energy)
            if missing:
                raise ValueError(f"class {name}: no price for period {sorted(missing)}")
        return self

    @property
    def periods(self) -> tuple[str, ...]:
        """Period names in order of first use."""
        if not self.schedules:
            return (FLAT_PERIOD,)
        names: dict[str, None] = {}
        for schedule in self.schedules:
            for window in schedule.windows:
                names.setdefault(window.period, None)
        return tuple(names)

    def day_type(self, day: date) -> DayType:
        if day in self.holidays:
            return DayType.HOLIDAY
        if day in self.workdays:
            return DayType.WEEKDAY
        return DayType.WEEKEND if day.weekday() in self.weekend_days else DayType.WEEKDAY

    def day_boundaries(self, day: date) -> tuple[tuple[int, str], ...]:
        """(minute of day, period) changes on local ``day``; the first is at minute 0."""
        if not self.schedules:
            return ((0, FLAT_PERIOD),)
        day_type = self.day_type(day)
        for schedule in self.schedules:
            if day.month in schedule.months and day_type in schedule.day_types:
                return schedule.boundaries
        raise AssertionError("validated schedules cover every month and day type")


class Tariff(_Model):
    """One tariff file."""

    id: Name
    name: str
    currency: str
    unit: Unit
    timezone: str
    cycle: Cycle
    source: str | None = None
    versions: tuple[Version, ...]

    @field_validator("currency")
    @classmethod
    def known_currency(cls, value: str) -> str:
        money.currency_exponent(value)
        return value

    @field_validator("timezone")
    @classmethod
    def known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as Asia/Shanghai"
            ) from None
        return value

    @field_validator("versions")
    @classmethod
    def effective_dates_increase(cls, versions: tuple[Version, ...]) -> tuple[Version, ...]:
        if not versions:
            raise ValueError("give at least one version")
        for i in range(1, len(versions)):
            if versions[i].effective_from <= versions[i - 1].effective_from:
                raise ValueError(
                    f"version {i} (effective {versions[i].effective_from.isoformat()}) does not "
                    f"start after version {i - 1} ({versions[i - 1].effective_from.isoformat()}); "
                    "list versions in order, each effective after the one before"
                )
        return versions

    @model_validator(mode="after")
    def every_version_has_every_class(self) -> Self:
        classes = set(self.versions[0].classes)
        for i, version in enumerate(self.versions[1:], start=1):
            if set(version.classes) != classes:
                extra = sorted(set(version.classes) - classes)
                lost = sorted(classes - set(version.classes))
                raise ValueError(
                    f"version {i} changes the classes (added {extra}, removed {lost}); "
                    "every version must price the same classes"
                )
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(sorted(self.versions[0].classes))

    @property
    def period_names(self) -> tuple[str, ...]:
        names: dict[str, None] = {}
        for version in self.versions:
            for period in version.periods:
                names.setdefault(period, None)
        return tuple(names)

    @property
    def starts_at(self) -> datetime:
        return self.versions[0].effective_from.astimezone(UTC)

    def version_index_at(self, at: datetime) -> int:
        """Index of the version in effect at ``at``; -1 before the first."""
        index = -1
        for i, version in enumerate(self.versions):
            if version.effective_from <= at:
                index = i
        return index

    def versions_during(self, start: datetime, end: datetime) -> tuple[Version, ...]:
        """The versions in effect at some instant of ``[start, end)``."""
        first = max(self.version_index_at(start), 0)
        last = self.version_index_at(end - timedelta(microseconds=1))
        return self.versions[first : last + 1]

    def local(self, at: datetime) -> datetime:
        return at.astimezone(self.zone)

    def local_midnight(self, day: date) -> datetime:
        """The UTC instant of local 00:00 on ``day``."""
        return datetime.combine(day, time(0), tzinfo=self.zone).astimezone(UTC)

    def boundaries(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """Every instant in ``(start, end)`` where the version, period, cycle or day may change,
        in increasing order (UTC). Between two of them, all four are constant."""
        zone = self.zone
        candidates: set[datetime] = set()
        day = start.astimezone(zone).date()
        last = end.astimezone(zone).date()
        while day <= last:
            midnight = datetime.combine(day, time(0), tzinfo=zone)
            next_midnight = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
            candidates.add(midnight.astimezone(UTC))
            for version in self.versions_during(midnight, next_midnight):
                for minute, _period in version.day_boundaries(day)[1:]:
                    wall = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=zone)
                    candidates.add(wall.astimezone(UTC))
            day += timedelta(days=1)
        for version in self.versions:
            candidates.add(version.effective_from.astimezone(UTC))
        yield from sorted(t for t in candidates if start < t < end)

    def attributes_at(self, at: datetime) -> tuple[int, str, int, int] | None:
        """(version index, period, cycle id, local day ordinal) at ``at``; None before the
        first version."""
        index = self.version_index_at(at)
        if index < 0:
            return None
        version = self.versions[index]
        local = at.astimezone(self.zone)
        minute = local.hour * 60 + local.minute
        period = version.day_boundaries(local.date())[0][1]
        for start_minute, name in version.day_boundaries(local.date()):
            if start_minute <= minute:
                period = name
        return index, period, self.cycle.cycle_id(local.date()), local.date().toordinal()


def load_tariff(path: Path) -> Tariff:
    """Load and validate one tariff file.

    Raises:
        InvalidConfigError: with one ``FILE:LINE: field: message`` per problem.
    """
    return load_model(path, Tariff)
