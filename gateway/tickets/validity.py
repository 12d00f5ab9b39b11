"""Validity periods: inclusive calendar days in the plant's time zone, and the one-month rules.

A ticket is valid from the start of ``valid_from`` to the end of ``valid_until``, both local
days of the site's ``tickets.timezone``: a ticket printed "valid until 2027-06" is valid to the
end of 30 June, wherever the box's clock says UTC midnight falls.

Two rules add one calendar month (`add_one_month`): an expired paper ticket may be extended once,
to one month after the day it is extended; an emergency ticket is valid for one month from the
day it is issued. A month from the 31st ends on the last day of a shorter month (31 January ->
28 or 29 February), never spilling into the month after.
"""

from __future__ import annotations

import calendar
from datetime import date, datetime
from zoneinfo import ZoneInfo

from gateway.tickets.reasons import Reason, Refusal


def local_day(now: datetime, timezone: str) -> date:
    """The calendar day ``now`` (aware) falls on in ``timezone``.

    Raises:
        ValueError: ``now`` is naive.
    """
    if now.tzinfo is None:
        raise ValueError("naive datetime: pass an aware datetime")
    return now.astimezone(ZoneInfo(timezone)).date()


def add_one_month(day: date) -> date:
    """The same day of the next month, or that month's last day when it is shorter."""
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def validity_refusal(valid_from: date, valid_until: date, today: date) -> Refusal | None:
    """Why a ticket valid ``valid_from``..``valid_until`` (inclusive) is not valid ``today``."""
    if today < valid_from:
        return Refusal(Reason.NOT_YET_VALID, f"valid from {valid_from.isoformat()}")
    if today > valid_until:
        return Refusal(Reason.EXPIRED, f"expired after {valid_until.isoformat()}")
    return None
