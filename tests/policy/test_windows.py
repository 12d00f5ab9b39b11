"""Friendly (non-disconnection) windows: a due cutoff waits, then cuts when the window ends."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from gateway.policy.machine import next_wakeup, on_balance, on_tick, on_topup
from gateway.policy.state import EventKind, PolicyMode
from gateway.policy.windows import friendly_window_end
from tests.policy.support import event, fresh, kinds, policy

NIGHT = {
    "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
    "start": "18:00",
    "end": "10:00",
}
WEEKEND = {"days": ["saturday", "Sunday"], "start": "00:00", "end": "00:00"}
HOLIDAY = {"days": ["holiday"], "start": "00:00", "end": "00:00"}


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def _windowed(tz: str, *windows: dict[str, Any], **changes: Any) -> Any:
    fields: dict[str, Any] = {"grace_s": 0, **changes}
    return policy(friendly_windows=list(windows), timezone=tz, **fields)


def test_on_balance_in_night_window_defers_then_tick_at_window_end_cuts() -> None:
    # Asia/Shanghai is UTC+8 with no DST. Wed 6 Mar 2024 20:00 local = 12:00Z.
    pol = _windowed("Asia/Shanghai", NIGHT)
    now = _utc(2024, 3, 6, 12, 0)
    deferred = on_balance(pol, fresh(pol, 100), -1, now)
    assert deferred.state.mode is PolicyMode.CUTOFF_PENDING
    assert deferred.supply_on
    # The window ends Thu 10:00 local = Thu 02:00Z.
    assert event(deferred, EventKind.CUTOFF_DEFERRED) == {
        "reason": "friendly_window",
        "until": "2024-03-07T02:00:00+00:00",
    }
    assert next_wakeup(pol, deferred.state, now) == _utc(2024, 3, 7, 2, 0)
    more = on_balance(pol, deferred.state, -300, _utc(2024, 3, 6, 20, 0))
    assert more.events == ()
    assert more.state.mode is PolicyMode.CUTOFF_PENDING
    cut = on_tick(pol, more.state, -300, _utc(2024, 3, 7, 2, 0))
    assert cut.state.mode is PolicyMode.CUTOFF
    assert event(cut, EventKind.CUTOFF) == {"reason": "window_ended"}
    assert not cut.supply_on


def test_on_balance_outside_window_cuts_at_once() -> None:
    pol = _windowed("Asia/Shanghai", NIGHT)
    # Wed 12:00 local = 04:00Z: outside 18:00-10:00.
    cut = on_balance(pol, fresh(pol, 100), -1, _utc(2024, 3, 6, 4, 0))
    assert cut.state.mode is PolicyMode.CUTOFF


def test_on_tick_grace_expiring_inside_window_becomes_cutoff_pending() -> None:
    pol = _windowed("UTC", NIGHT, grace_s=3600)
    grace = on_balance(pol, fresh(pol, 100), -1, _utc(2024, 3, 6, 17, 30)).state
    pending = on_tick(pol, grace, -40, _utc(2024, 3, 6, 18, 30))  # grace ended at 18:30
    assert pending.state.mode is PolicyMode.CUTOFF_PENDING
    assert pending.state.pending_until == _utc(2024, 3, 7, 10, 0)
    cut = on_tick(pol, pending.state, -90, _utc(2024, 3, 7, 10, 0))
    assert event(cut, EventKind.CUTOFF) == {"reason": "window_ended"}


def test_on_topup_in_window_above_cut_level_leaves_pending_without_restore_threshold() -> None:
    pol = _windowed("UTC", NIGHT)
    pending = on_balance(pol, fresh(pol, 100), -10, _utc(2024, 3, 6, 20, 0)).state
    # -10 -> debt, 0 + 100 = 100: not exhausted; supply never went off, so no restore needed.
    topped = on_topup(pol, pending, -10, 100, 0, _utc(2024, 3, 6, 21, 0))
    assert topped.state.mode is PolicyMode.LOW
    assert topped.state.pending_until is None
    assert "cutoff" not in kinds(topped)
    assert next_wakeup(pol, topped.state, _utc(2024, 3, 6, 21, 0)) is None


def test_friendly_window_end_chains_friday_night_weekend_and_sunday_night() -> None:
    pol = _windowed("UTC", NIGHT, WEEKEND)
    # Fri 8 Mar 19:00 -> night to Sat 10:00, inside Saturday, Sunday, Sunday night -> Mon 10:00.
    assert friendly_window_end(pol, _utc(2024, 3, 8, 19, 0)) == _utc(2024, 3, 11, 10, 0)
    # Sat noon too.
    assert friendly_window_end(pol, _utc(2024, 3, 9, 12, 0)) == _utc(2024, 3, 11, 10, 0)
    assert friendly_window_end(pol, _utc(2024, 3, 11, 10, 0)) is None


def test_on_balance_weekend_defers_to_monday_morning() -> None:
    pol = _windowed("UTC", NIGHT, WEEKEND)
    pending = on_balance(pol, fresh(pol, 10), -1, _utc(2024, 3, 9, 12, 0))
    assert pending.state.pending_until == _utc(2024, 3, 11, 10, 0)
    cut = on_tick(pol, pending.state, -1, _utc(2024, 3, 11, 10, 0))
    assert cut.state.mode is PolicyMode.CUTOFF


def test_on_balance_holiday_defers_to_next_day() -> None:
    pol = _windowed("UTC", HOLIDAY, friendly_holidays=[date(2024, 12, 25)])
    pending = on_balance(pol, fresh(pol, 10), -1, _utc(2024, 12, 25, 11, 0))
    assert pending.state.pending_until == _utc(2024, 12, 26, 0, 0)
    # The same time on an ordinary day cuts.
    assert on_balance(pol, fresh(pol, 10), -1, _utc(2024, 12, 24, 11, 0)).state.mode is (
        PolicyMode.CUTOFF
    )


def test_friendly_window_end_spring_forward_night_in_london() -> None:
    # Europe/London goes GMT -> BST at 01:00Z on Sun 31 Mar 2024.
    pol = _windowed("Europe/London", {"days": ["sat"], "start": "22:00", "end": "07:00"})
    # Sat 23:00 GMT = 23:00Z; the window ends Sun 07:00 BST = 06:00Z.
    assert friendly_window_end(pol, _utc(2024, 3, 30, 23, 0)) == _utc(2024, 3, 31, 6, 0)
    # Sun 06:30Z is 07:30 BST: closed.
    assert friendly_window_end(pol, _utc(2024, 3, 31, 6, 30)) is None


def test_friendly_window_end_fall_back_night_in_london() -> None:
    # BST -> GMT at 01:00Z on Sun 27 Oct 2024. Sat 22:00 BST = 21:00Z; Sun 07:00 GMT = 07:00Z.
    pol = _windowed("Europe/London", {"days": ["sat"], "start": "22:00", "end": "07:00"})
    assert friendly_window_end(pol, _utc(2024, 10, 26, 20, 59)) is None
    assert friendly_window_end(pol, _utc(2024, 10, 26, 21, 0)) == _utc(2024, 10, 27, 7, 0)


def test_on_balance_summer_evening_window_in_london_uses_bst() -> None:
    pol = _windowed("Europe/London", {"days": ["wed"], "start": "18:00", "end": "22:00"})
    # Wed 5 Jun 2024 17:30Z = 18:30 BST: inside; ends 22:00 BST = 21:00Z.
    pending = on_balance(pol, fresh(pol, 10), -1, _utc(2024, 6, 5, 17, 30))
    assert pending.state.pending_until == _utc(2024, 6, 5, 21, 0)
    # 16:30Z = 17:30 BST: before the window, cut.
    assert on_balance(pol, fresh(pol, 10), -1, _utc(2024, 6, 5, 16, 30)).state.mode is (
        PolicyMode.CUTOFF
    )


def test_friendly_window_end_every_day_all_day_is_bounded() -> None:
    pol = _windowed("UTC", {"days": list(NIGHT["days"]), "start": "00:00", "end": "00:00"})
    end = friendly_window_end(pol, _utc(2024, 3, 6, 12, 0))
    assert end is not None
    # Today's window ends Thu 7 Mar 00:00, plus 16 chained days: never cuts, but the
    # wakeup is finite (23 Mar), and at that wakeup the deferral is simply renewed.
    assert end == _utc(2024, 3, 23, 0, 0)


@pytest.mark.parametrize(
    ("when", "open_"),
    [((2024, 3, 6, 17, 59), False), ((2024, 3, 6, 18, 0), True), ((2024, 3, 7, 9, 59), True)],
)
def test_friendly_window_end_boundaries_half_open(
    when: tuple[int, int, int, int, int], open_: bool
) -> None:
    pol = _windowed("UTC", NIGHT)
    assert (friendly_window_end(pol, _utc(*when)) is not None) is open_
