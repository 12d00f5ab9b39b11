"""Test configuration: loads every fixture module under tests/fixtures as a plugin."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, settings

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}"
    for p in (Path(__file__).parent / "fixtures").glob("*.py")
    if p.stem != "__init__"
)

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci")
