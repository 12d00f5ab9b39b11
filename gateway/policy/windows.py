"""The friendly-window calendar: when a due cutoff must wait (nights, weekends, holidays).

Windows are half-open ``[start, end)`` in the policy's local time zone; touching windows chain
into one deferral. Pure: ``now`` is passed in.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.policy.config import WEEKDAYS, DayName, FriendlyWindow, PolicyConfig

_MAX_WINDOW_CHAIN = 16  # touching windows merged into one deferral; every-day-24h never ends


def friendly_window_end(policy: PolicyConfig, now: datetime) -> datetime | None:
    """End (UTC) of the friendly window open at ``now``, chained through touching windows.

    Windows are half-open ``[start, end)`` in local time. A Friday-night window running into
    a whole-weekend window and a Sunday-night window ends on Monday morning. None when no
    window is open.
    """
    end = _open_window_end(policy, now)
    if end is None:
        return None
    for _ in range(_MAX_WINDOW_CHAIN):
        later = _open_window_end(policy, end)
        if later is None:
            break
        end = later
    return end


def _open_window_end(policy: PolicyConfig, at: datetime) -> datetime | None:
    """Latest end among the windows open at ``at`` (UTC), or None."""
    zone = ZoneInfo(policy.timezone)
    today = at.astimezone(zone).date()
    best: datetime | None = None
    for day in (today - timedelta(days=1), today):
        for window in policy.friendly_windows:
            if not _applies(policy, window, day):
                continue
            start, end = _window_bounds(window, day, zone)
            if start <= at < end and (best is None or end > best):
                best = end
    return best


def _applies(policy: PolicyConfig, window: FriendlyWindow, day: date) -> bool:
    if WEEKDAYS[day.weekday()] in window.days:
        return True
    return DayName.HOLIDAY in window.days and day in policy.friendly_holidays


def _window_bounds(window: FriendlyWindow, day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    # Local wall times; a time in the spring-forward gap reads with the pre-gap offset (fold=0).
    end_day = day if window.end > window.start else day + timedelta(days=1)
    start = datetime.combine(day, window.start, tzinfo=zone).astimezone(UTC)
    end = datetime.combine(end_day, window.end, tzinfo=zone).astimezone(UTC)
    return start, end
