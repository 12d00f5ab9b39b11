"""Shared helpers for billing tests: load sample tariffs, bill with kernel and reference."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from billing_engine.engine import AccountState, BillingEngine, ReadingResult
from billing_engine.reference import RefAccount, ReferenceBiller, RefResult
from billing_engine.tariff import Tariff, load_tariff

TARIFFS = Path(__file__).resolve().parents[2] / "configs" / "tariffs"


def sample(name: str) -> Tariff:
    return load_tariff(TARIFFS / f"{name}.yaml")


def kernel_run(
    tariff: Tariff,
    class_name: str,
    readings: list[tuple[datetime, int]],
    *,
    opening_usage_milli: int = 0,
    balance_minor: int = 1_000_000,
) -> tuple[list[ReadingResult], AccountState]:
    account = AccountState(balance_minor, class_name, usage_milli=opening_usage_milli)
    results = BillingEngine(tariff).bill([account], [(0, at, reg) for at, reg in readings])
    return results, account


def reference_run(
    tariff: Tariff,
    class_name: str,
    readings: list[tuple[datetime, int]],
    *,
    opening_usage_milli: int = 0,
    balance_minor: int = 1_000_000,
) -> tuple[list[RefResult], RefAccount]:
    account = RefAccount(balance_minor, class_name, usage_milli=opening_usage_milli)
    biller = ReferenceBiller(tariff)
    return [biller.bill(account, at, reg) for at, reg in readings], account
