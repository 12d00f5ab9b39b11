"""The prepaid policy of an account class, as written in the site YAML (pydantic, frozen).

Names follow the GBCS/SMETS2 data items where one exists (Low Credit Threshold, Disablement
Threshold, Emergency Credit Limit/Threshold, Non-Disablement Calendar + Special Days, Debt
Recovery per Payment). Money is integer minor units; durations are whole seconds; local times
are ``"HH:MM"`` in the policy's ``timezone``. The state machine that reads this model is
`gateway.policy.machine`; ``docs/prepaid-policy.md`` explains each setting with a worked example.
"""

from __future__ import annotations

from datetime import date, time
from enum import StrEnum
from typing import Annotated, Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

__all__ = ["DayName", "FriendlyWindow", "PolicyConfig"]


class DayName(StrEnum):
    """A day a friendly window applies to: a weekday, or any date in ``friendly_holidays``."""

    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"
    HOLIDAY = "holiday"


WEEKDAYS: tuple[DayName, ...] = tuple(DayName)[:7]  # index = date.weekday()


def _day_name(value: Any) -> Any:
    # "Monday", "MON" and "mon" all mean DayName.MON; anything else is left to the enum's error.
    if isinstance(value, str):
        lowered = value.strip().lower()
        return lowered if lowered == DayName.HOLIDAY else lowered[:3]
    return value


def _local_time(value: Any) -> Any:
    # YAML 1.1 (PyYAML) reads an unquoted 22:00 as the base-60 integer 1320; take it back.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 24 * 60:
        return time(value // 60, value % 60)
    if isinstance(value, str):
        hours, sep, minutes = value.partition(":")
        if not (sep and len(hours) == 2 and len(minutes) == 2 and (hours + minutes).isdigit()):
            raise ValueError(f'{value!r} is not a local time; write it as "HH:MM"')
        return time(int(hours), int(minutes))
    return value


LocalTime = Annotated[time, BeforeValidator(_local_time)]
Minor = Annotated[int, Field(strict=True)]
NonNegative = Annotated[int, Field(strict=True, ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FriendlyWindow(_Model):
    """A non-disconnection period: a due cutoff waits until it ends.

    The window opens at ``start`` on each listed day and closes at ``end``, on the same day if
    ``end`` is later than ``start``, else on the next day (``"18:00"``-``"10:00"`` covers the
    night). ``start == end`` means the whole 24 hours from ``start``. Times are local to the
    policy's timezone.
    """

    days: Annotated[tuple[Annotated[DayName, BeforeValidator(_day_name)], ...], Field(min_length=1)]
    start: LocalTime
    end: LocalTime


class PolicyConfig(_Model):
    """Thresholds, grace, emergency credit, friendly windows and debt recovery of a class."""

    low_thresholds_minor: Annotated[tuple[Minor, ...], Field(min_length=1)]
    disconnect_threshold_minor: Minor = 0
    restore_threshold_minor: Minor
    grace_s: NonNegative = 0
    emergency_credit_minor: NonNegative = 0
    emergency_threshold_minor: Minor | None = None  # EC offered below this; None: disconnect
    emergency_auto_accept: bool = False
    friendly_windows: tuple[FriendlyWindow, ...] = ()
    friendly_holidays: tuple[date, ...] = ()
    timezone: str = "UTC"
    exempt: bool = False
    debt_recovery_percent: Annotated[int, Field(strict=True, ge=0, le=100)] = 100
    min_dwell_s: NonNegative = 0

    @model_validator(mode="after")
    def restore_above_disconnect(self) -> Self:
        if self.restore_threshold_minor <= self.disconnect_threshold_minor:
            raise ValueError(
                f"restore_threshold_minor ({self.restore_threshold_minor}) must be above "
                f"disconnect_threshold_minor ({self.disconnect_threshold_minor}) so that supply "
                "cannot flap; raise it by at least the smallest top-up you expect"
            )
        return self

    @model_validator(mode="after")
    def low_thresholds_above_disconnect(self) -> Self:
        if len(set(self.low_thresholds_minor)) != len(self.low_thresholds_minor):
            raise ValueError("low_thresholds_minor lists a value twice; list each once")
        below = [t for t in self.low_thresholds_minor if t <= self.disconnect_threshold_minor]
        if below:
            raise ValueError(
                f"low_thresholds_minor {below} are not above disconnect_threshold_minor "
                f"({self.disconnect_threshold_minor}); a low-credit alert must come before the "
                "cutoff, so raise them or drop them"
            )
        return self

    @model_validator(mode="after")
    def emergency_threshold_at_or_above_disconnect(self) -> Self:
        if (
            self.emergency_threshold_minor is not None
            and self.emergency_threshold_minor < self.disconnect_threshold_minor
        ):
            raise ValueError(
                f"emergency_threshold_minor ({self.emergency_threshold_minor}) is below "
                f"disconnect_threshold_minor ({self.disconnect_threshold_minor}); emergency "
                "credit must be offered before or when credit runs out, so raise it or omit it"
            )
        return self

    @model_validator(mode="after")
    def timezone_known(self) -> Self:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"timezone {self.timezone!r} is not an IANA zone name; write e.g. "
                "'Europe/London' or 'Asia/Shanghai'"
            ) from exc
        return self

    @property
    def emergency_offer_below_minor(self) -> int:
        """Balance below which emergency credit is offered (GBCS Emergency Credit Threshold)."""
        if self.emergency_threshold_minor is None:
            return self.disconnect_threshold_minor
        return self.emergency_threshold_minor

    @property
    def low_level_minor(self) -> int:
        """Balance below which the account is ``low``: the highest low threshold."""
        return max(self.low_thresholds_minor)
