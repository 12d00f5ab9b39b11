"""`PolicyConfig` validation: the cross-field rules and the YAML-friendly parsing."""

from __future__ import annotations

from datetime import time
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.policy.config import DayName, PolicyConfig
from tests.policy.support import policy


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"restore_threshold_minor": 0}, "restore_threshold_minor"),
        ({"restore_threshold_minor": -1}, "must be above"),
        ({"low_thresholds_minor": (1000, 0)}, "not above disconnect"),
        ({"low_thresholds_minor": (1000, 1000)}, "twice"),
        ({"low_thresholds_minor": ()}, "at least 1"),
        ({"emergency_threshold_minor": -1}, "emergency_threshold_minor"),
        ({"timezone": "Mars/Olympus"}, "IANA"),
        ({"debt_recovery_percent": 101}, "less than or equal to 100"),
        ({"grace_s": -1}, "greater than or equal to 0"),
        ({"grace_s": 1.5}, "valid integer"),
        ({"unknown": 1}, "Extra inputs"),
        ({"friendly_windows": [{"days": ["mon"], "start": "7:00", "end": "09:00"}]}, "HH:MM"),
        ({"friendly_windows": [{"days": ["funday"], "start": "07:00", "end": "09:00"}]}, "days"),
        ({"friendly_windows": [{"days": [], "start": "07:00", "end": "09:00"}]}, "days"),
    ],
)
def test_policy_config_invalid_is_refused_with_the_field(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        policy(**changes)


def test_policy_config_windows_accept_names_and_yaml_base60_times() -> None:
    # PyYAML reads an unquoted 22:00 as 1320 (base 60); it means 22:00.
    pol = policy(friendly_windows=[{"days": ["Monday", "HOLIDAY"], "start": 1320, "end": "06:30"}])
    window = pol.friendly_windows[0]
    assert window.days == (DayName.MON, DayName.HOLIDAY)
    assert (window.start, window.end) == (time(22, 0), time(6, 30))


def test_policy_config_defaults_and_derived_levels() -> None:
    pol = PolicyConfig(low_thresholds_minor=(1000, 5000), restore_threshold_minor=100)
    assert pol.disconnect_threshold_minor == 0
    assert pol.low_level_minor == 5000
    assert pol.emergency_offer_below_minor == 0
    assert policy(emergency_threshold_minor=200).emergency_offer_below_minor == 200
    with pytest.raises(ValidationError, match="frozen"):
        pol.grace_s = 5  # type: ignore[misc]
