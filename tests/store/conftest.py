"""Fixtures for the store tests: a fresh store file per test and reading factories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.ports import Reading
from gateway.store import Store, Transaction

KEY = b"k" * 32
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def reading(meter_id: str = "m1", minute: int = 0, register_milli: int = 1000) -> Reading:
    """A reading of ``meter_id`` at ``T0 + minute`` minutes."""
    return Reading(
        meter_id=meter_id,
        read_at=T0 + timedelta(minutes=minute),
        register_milli=register_milli,
        source="test",
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.sqlite3"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store(db_path, ledger_key=KEY, max_outbox_messages=5) as opened:
        yield opened


class InjectedFailureError(Exception):
    """Raised inside a transaction to make it roll back."""


def abort_after(store: Store, action: Callable[[Transaction], object]) -> None:
    """Run ``action`` in a transaction, then fail it, so everything must roll back."""
    with pytest.raises(InjectedFailureError), store.transaction() as tx:
        run_then_fail(tx, action)


def run_then_fail(tx: Transaction, action: Callable[[Transaction], object]) -> None:
    action(tx)
    raise InjectedFailureError
