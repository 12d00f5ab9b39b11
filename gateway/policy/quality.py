"""Meter data quality, decided before a reading is billed. Pure: no I/O, no clock.

Each case is handled explicitly, never silently:

- **rollover**: a register that wraps at ``rollover_at`` (e.g. a 5-digit kWh counter at 100000)
  is unwrapped (``raw + wraps x rollover_at``) and billed correctly; the wrap is reported.
- **meter replaced**: the operator records the swap as ``replaced_at`` on the meter (site file,
  then reload); the first reading at or after that instant becomes the new baseline instead of
  a "register went backwards" hold. The cycle's usage carries over.
- **register backwards** (no rollover, no replacement): the billing engine refuses it; the
  pipeline holds the reading and raises an alarm.
- **implausible jump**: more than ``max_rate_per_h`` since the last billed reading: held and
  alarmed, never billed (a corrupted frame or a wrong scale must not empty an account). On by
  default: `with_defaults` gives every metered account a rate (the meter's device profile's
  rated maximum with headroom, else a per-unit default).
- **after a jump or a fall** (`HoldWatch`, `on_hold`, `on_billed`): readings that continue from
  the last billed register are billed as usual, and the held spike stays held, discarded.
  Readings that continue from the held level instead (plausible from it, not from the billed
  register) mean a reset, a swap or a changed scale: they stay held, and one
  ``meter_reset_or_swap`` alarm asks the operator to decide.
- **one alarm per condition**: a held reading raises its condition's alarm (``state: raised``)
  only when the condition starts for the meter, and the next billed reading clears it
  (``state: cleared``); the journal still marks every held reading with its reason.
- **stale meter**: no reading for ``stale_after_s``: an alarm once, and a notice when it
  reports again (`stale_meters`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from functools import lru_cache
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from billing_engine import instants, money
from billing_engine.tariff import Unit

_WRAP_HIGH = Decimal("0.9")  # a wrap is the last value in the top 10 % and the new in the bottom
_WRAP_LOW = Decimal("0.1")


class MeterConfig(BaseModel):
    """Data-quality settings of one meter (units: the meter's tariff unit, e.g. kWh, m3)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(min_length=1, max_length=64)]
    rollover_at: Annotated[Decimal, Field(gt=0)] | None = None
    max_rate_per_h: Annotated[Decimal, Field(gt=0)] | None = None
    stale_after_s: Annotated[int, Field(gt=0)] | None = None
    replaced_at: datetime | None = None

    @field_validator("replaced_at")
    @classmethod
    def aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("replaced_at needs a UTC offset")
        return value

    @property
    def rollover_milli(self) -> int | None:
        if self.rollover_at is None:
            return None
        return money.to_scaled(self.rollover_at, money.QTY_SCALE, "rollover_at")


#: ``max_rate_per_h`` of a meter whose ``meters:`` entry sets none and whose device profile
#: gives no rated maximum, by the tariff's unit. Each is above what any meter the gateway is
#: meant for can measure, so it never holds real use, yet a corrupted frame or a wrong scale
#: (usually thousands of times too much) is held:
#: - kWh: 100 kWh/h, above the largest direct-connected meters (3 x 230 V x 100 A = 69 kW);
#:   a CT-connected meter needs its own value;
#: - m3: 40 m3/h, above the overload flow Q4 of a DN50 water meter (Q3 25 m3/h x 1.25 =
#:   31.25 m3/h, ISO 4064-1); household meters (DN15..DN25) reach 3.1..7.9 m3/h;
#: - L: 4,000 L/h, above a DN15 meter's Q4 (3,125 L/h) billed in litres; a dispenser pours a
#:   few litres a minute.
DEFAULT_MAX_RATE_PER_H: Mapping[Unit, Decimal] = {
    Unit.KWH: Decimal(100),
    Unit.M3: Decimal(40),
    Unit.LITRE: Decimal(4000),
}

#: A device profile's rated maximum (Imax x Un x phases, Q4) is for the nominal supply: the
#: voltage may run 10..20 % above it and a reading's time is when the gateway polled, not
#: when the meter latched its register. The default from a profile is that rating x 1.25.
RATED_HEADROOM = Decimal("1.25")


@dataclass(frozen=True, slots=True)
class Rating:
    """A meter's rated maximum from its device profile: ``max_per_h`` in ``unit`` per hour."""

    max_per_h: Decimal
    unit: str  # the profile's billed-register unit ("kWh", "m3"); used only if it is the tariff's
    profile: str


def default_max_rate_per_h(unit: Unit, rating: Rating | None) -> Decimal:
    """The ``max_rate_per_h`` a meter gets when its ``meters:`` entry sets none."""
    if rating is not None and rating.unit == unit.value:
        return rating.max_per_h * RATED_HEADROOM
    return DEFAULT_MAX_RATE_PER_H[unit]


def with_defaults(
    meter: MeterConfig | None, meter_id: str, unit: Unit, rating: Rating | None
) -> MeterConfig:
    """``meter``'s settings (or empty ones) with ``max_rate_per_h`` filled in when unset."""
    if meter is not None and meter.max_rate_per_h is not None:
        return meter
    rate = default_max_rate_per_h(unit, rating)
    if meter is None:
        return MeterConfig(id=meter_id, max_rate_per_h=rate)
    return meter.model_copy(update={"max_rate_per_h": rate})


class Verdict(enum.StrEnum):
    """What to do with a reading."""

    BILL = "bill"
    ROLLOVER = "rollover"  # bill the unwrapped register; report the wrap
    REBASE = "rebase"  # a replaced meter's first reading: new baseline
    JUMP = "implausible_jump"  # hold and alarm


@dataclass(frozen=True, slots=True)
class Checked:
    """The verdict, the register to bill (unwrapped) and the wrap count after it."""

    verdict: Verdict
    register_milli: int
    wraps: int


def check(
    meter: MeterConfig | None,
    *,
    raw_milli: int,
    read_at: datetime,
    wraps: int,
    last_register_milli: int | None,
    last_read_at: datetime | None,
) -> Checked:
    """Classify one reading of a meter whose last billed register is ``last_register_milli``
    (unwrapped; None before the first reading) read at ``last_read_at``."""
    if meter is None or last_register_milli is None or last_read_at is None:
        return Checked(Verdict.BILL, raw_milli, wraps)
    if meter.replaced_at is not None and last_read_at < meter.replaced_at <= read_at:
        return Checked(Verdict.REBASE, raw_milli, 0)
    modulus = meter.rollover_milli
    register = raw_milli + wraps * modulus if modulus else raw_milli
    verdict = Verdict.BILL
    if modulus and register < last_register_milli:
        last_raw = last_register_milli - wraps * modulus
        if last_raw >= modulus * _WRAP_HIGH and raw_milli < modulus * _WRAP_LOW:
            wraps += 1
            register = raw_milli + wraps * modulus
            verdict = Verdict.ROLLOVER
    # A reading not after the last one (same millisecond or earlier) is the engine's to refuse
    # (duplicate, conflict, out of order); it bills nothing, so it is never a jump.
    later = later_ms(read_at, last_read_at)
    if later and not within_rate(meter, last_register_milli, last_read_at, register, read_at):
        return Checked(Verdict.JUMP, register, wraps - (verdict is Verdict.ROLLOVER))
    return Checked(verdict, register, wraps)


_MICROSECOND = timedelta(microseconds=1)
_SECOND_US = 1_000_000
_MICRO_MILLI_US_PER_H = 3_600_000_000 * 1_000  # us per hour x (millionths per milli-unit)


def later_ms(at: datetime, than: datetime) -> bool:
    """Whether ``at`` falls in a later millisecond than ``than`` (the engine's time unit)."""
    if at - than >= instants.ONE_MS:  # the usual case, without the conversions
        return True
    return at > than and instants.to_ms(at) > instants.to_ms(than)


@lru_cache(maxsize=256)
def _micro(rate_per_h: Decimal) -> int:
    """A rate in millionths of the unit per hour (rounded up), for exact integer checks."""
    return int((rate_per_h * 1_000_000).to_integral_value(ROUND_CEILING))


def within_rate(
    meter: MeterConfig, from_milli: int, from_at: datetime, register_milli: int, at: datetime
) -> bool:
    """True unless the register rose from ``from_milli`` (at ``from_at``) by more than
    ``max_rate_per_h`` allows by ``at`` (at least one second's worth); a fall is not judged."""
    if meter.max_rate_per_h is None or register_milli <= from_milli:
        return True
    rate = _micro(meter.max_rate_per_h)
    elapsed_us = max((at - from_at) // _MICROSECOND, _SECOND_US)
    # rise [milli-units] <= rate [units/h] x 1000 x elapsed [us] / 3.6e9 [us/h], in integers:
    return (register_milli - from_milli) * _MICRO_MILLI_US_PER_H <= rate * elapsed_us


JUMP = "implausible_jump"
BACKWARDS = "register_backwards"  # the billing engine's hold (`ReadingStatus.REGISTER_BACKWARDS`)
RESET_OR_SWAP = "meter_reset_or_swap"
RAISED = "raised"  # an alarm's state: the condition began
CLEARED = "cleared"  # ... and ended
#: holds whose register is a candidate new level of the meter (a reset, a swap, a new scale)
_LEVEL_HOLDS = frozenset({JUMP, BACKWARDS})


@dataclass(frozen=True, slots=True)
class Alarm:
    """An alarm to raise (or clear) on the meter's account.

    Attributes:
        code: the condition (a hold reason, or `RESET_OR_SWAP`).
        state: ``raised`` or ``cleared``.
        reading_id: the reading that raised or cleared it.
        message: what happened and what it means, for a person.
    """

    code: str
    state: str
    reading_id: str
    message: str

    @property
    def detail(self) -> dict[str, str]:
        """The alarm's ``detail`` object on ``account/{id}/event``."""
        return {"state": self.state, "reading_id": self.reading_id, "message": self.message}


@dataclass(frozen=True, slots=True)
class HoldWatch:
    """What a meter's held readings have shown since its last billed one (the default: none).

    Kept per account with its billing state, so a restart neither repeats nor loses an alarm.
    """

    conditions: tuple[str, ...] = ()  # hold reasons alarmed and not cleared, in raised order
    first: str = ""  # the first reading held since the last billed one
    held: int = 0  # readings held since the last billed one
    level_milli: int | None = None  # the last jump or fall held: where a new level would be
    level_at: datetime | None = None
    decision: bool = False  # `RESET_OR_SWAP` raised: the held readings continue from the level

    @property
    def active(self) -> bool:
        return self.held > 0

    def to_record(self) -> dict[str, int | str | None]:
        """Flat values for the account's stored state (see `from_record`); none while nothing
        is held, so the billing path saves no more than before."""
        if not self.active:
            return {}
        return {
            "hold.conditions": ",".join(self.conditions) or None,
            "hold.first": self.first or None,
            "hold.count": self.held,
            "hold.level_milli": self.level_milli,
            "hold.level_at": self.level_at.isoformat() if self.level_at is not None else None,
            "hold.decision": int(self.decision),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> HoldWatch:
        """The watch `to_record` stored; none for a record from before it existed."""
        held = record.get("hold.count")
        if not isinstance(held, int) or held <= 0:
            return cls()
        conditions = record.get("hold.conditions")
        level = record.get("hold.level_milli")
        level_at = record.get("hold.level_at")
        return cls(
            conditions=tuple(conditions.split(",")) if isinstance(conditions, str) else (),
            first=str(record.get("hold.first") or ""),
            held=held,
            level_milli=level if isinstance(level, int) else None,
            level_at=datetime.fromisoformat(level_at) if isinstance(level_at, str) else None,
            decision=bool(record.get("hold.decision")),
        )


def _units(milli: int) -> str:
    return str(Decimal(milli).scaleb(-3))


def _hold_message(reason: str, meter: MeterConfig | None, reading_id: str, register: int) -> str:
    if reason == JUMP and meter is not None and meter.max_rate_per_h is not None:
        return (
            f"reading {reading_id} held: register {_units(register)} rose faster "
            f"than max_rate_per_h {meter.max_rate_per_h} per hour since the last billed reading; "
            "held readings are never billed"
        )
    return f"reading {reading_id} held: {reason}"


def on_hold(
    meter: MeterConfig | None,
    watch: HoldWatch,
    *,
    reason: str,
    reading_id: str,
    register_milli: int,
    read_at: datetime,
    billed_milli: int,
) -> tuple[HoldWatch, list[Alarm]]:
    """A reading of the meter was held for ``reason``: the watch after it, and the alarms to
    raise (its condition's, if not raised yet; `RESET_OR_SWAP` once, when a jump or fall
    continues plausibly from the last one held, ``billed_milli`` being the register billed).
    """
    alarms: list[Alarm] = []
    level_milli, level_at, decision = watch.level_milli, watch.level_at, watch.decision
    if reason in _LEVEL_HOLDS:
        if (
            not decision
            and level_milli is not None
            and level_at is not None
            and read_at > level_at
            and register_milli >= level_milli
            and (
                meter is None or within_rate(meter, level_milli, level_at, register_milli, read_at)
            )
        ):
            decision = True
            alarms.append(
                Alarm(
                    RESET_OR_SWAP,
                    RAISED,
                    reading_id,
                    f"operator decision needed: reading {reading_id} continues "
                    f"from {_units(level_milli)} (the readings held since {watch.first}), not "
                    f"from the billed register {_units(billed_milli)}: the meter was reset, "
                    "swapped or rescaled. Its readings stay held until the operator sets "
                    "replaced_at for the meter (or they return to the billed register)",
                )
            )
        level_milli, level_at = register_milli, read_at
    conditions = watch.conditions
    if reason not in conditions:
        conditions = (*conditions, reason)
        message = _hold_message(reason, meter, reading_id, register_milli)
        alarms.append(Alarm(reason, RAISED, reading_id, message))
    after = HoldWatch(
        conditions, watch.first or reading_id, watch.held + 1, level_milli, level_at, decision
    )
    return after, alarms


def on_billed(watch: HoldWatch, reading_id: str) -> tuple[HoldWatch, list[Alarm]]:
    """A reading of the meter was billed (or became a new baseline): every raised condition
    clears, and what was held since ``watch.first`` stays held, discarded."""
    if not watch.active:
        return watch, []
    kept = (
        f"the {watch.held} reading(s) held since {watch.first} stay held, discarded, never billed"
    )
    alarms = [
        Alarm(
            code,
            CLEARED,
            reading_id,
            f"reading {reading_id} continues from the last billed register and is billed; {kept}"
            if code == JUMP
            else f"reading {reading_id} billed; {kept}",
        )
        for code in watch.conditions
    ]
    if watch.decision:
        alarms.append(
            Alarm(
                RESET_OR_SWAP,
                CLEARED,
                reading_id,
                f"reading {reading_id} billed; no decision needed any more; {kept}",
            )
        )
    return HoldWatch(), alarms


def accept_level(watch: HoldWatch, reason: str) -> list[Alarm]:
    """The operator accepted the new level of a meter whose held readings continue from it
    (`RESET_OR_SWAP` raised): the alarms that clear, every raised condition and the decision.

    The caller rebases the meter's billing at ``watch.level_milli`` and starts a fresh watch:
    readings from the level on are billed; those held before stay held, never billed (what the
    meter counted between the last billed register and the level is unknown).
    """
    level = _units(watch.level_milli or 0)
    message = (
        f"operator accepted the new level {level}: billing continues from it; the "
        f"{watch.held} reading(s) held since {watch.first} stay held, never billed ({reason})"
    )
    return [
        Alarm(code, CLEARED, watch.first, message) for code in (*watch.conditions, RESET_OR_SWAP)
    ]


def stale_meters(
    meters: dict[str, MeterConfig], last_seen: dict[str, datetime | None], now: datetime
) -> set[str]:
    """Meters with a ``stale_after_s`` whose last reading is older than that."""
    return {
        meter_id
        for meter_id, cfg in meters.items()
        if cfg.stale_after_s is not None
        and (seen := last_seen.get(meter_id)) is not None
        and (now - seen).total_seconds() > cfg.stale_after_s
    }
