"""Meter data quality, decided before a reading is billed. Pure: no I/O, no clock.

Each case is handled explicitly, never silently:

- **rollover**: a register that wraps at ``rollover_at`` (e.g. a 5-digit kWh counter at 100000)
  is unwrapped (``raw + wraps x rollover_at``) and billed correctly; the wrap is reported.
- **meter replaced**: the operator records the swap as ``replaced_at`` on the meter (site file,
  then reload); the first reading at or after that instant becomes the new baseline instead of
  a "register went backwards" hold. The cycle's usage carries over.
- **register backwards** (no rollover, no replacement): the billing engine refuses it; the
  pipeline holds the reading and raises an alarm.
- **implausible jump**: more than ``max_rate_per_h`` since the last reading: held and alarmed,
  never billed (a corrupted frame or a wrong scale must not empty an account).
- **stale meter**: no reading for ``stale_after_s``: an alarm once, and a notice when it
  reports again (`stale_meters`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from billing_engine import money

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
    if meter.max_rate_per_h is not None and register > last_register_milli:
        hours = Decimal((read_at - last_read_at).total_seconds()) / 3600
        limit = meter.max_rate_per_h * money.QTY_SCALE * max(hours, Decimal(1) / 3600)
        if register - last_register_milli > limit:
            return Checked(Verdict.JUMP, register, wraps - (verdict is Verdict.ROLLOVER))
    return Checked(verdict, register, wraps)


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
