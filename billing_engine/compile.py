"""Compile a `Tariff` into the arrays the kernel reads.

Done once per tariff and time window (the engine widens the window when readings fall outside
it). The timeline is a sorted array of UTC milliseconds (`instants.py`) where the (version,
period, cycle, local day) tuple changes; the price tables are indexed
``[version, class, period]`` and ``[version, class, tier]``. Everything is int64 in the scales
of `money`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from numpy.typing import NDArray

from billing_engine import money
from billing_engine.instants import to_ms
from billing_engine.tariff import Tariff

Int64Array = NDArray[np.int64]
NO_LIMIT = money.INT64_MAX


@dataclass(frozen=True)
class CompiledTariff:
    """A tariff's kernel arrays for the window ``[window_start, window_end)`` (UTC ms)."""

    tariff: Tariff
    window_start: int
    window_end: int
    span_start: Int64Array
    span_version: Int64Array
    span_period: Int64Array
    span_cycle: Int64Array
    span_day: Int64Array
    price_micro: Int64Array  # [version, class, period]
    tier_limit_milli: Int64Array  # [version, class, tier], NO_LIMIT past the last limit
    tier_adder_micro: Int64Array  # [version, class, tier]
    standing_micro: Int64Array  # [version, class], per local day
    tax_bp: Int64Array  # [version]; 0 where prices include the tax
    acc_per_minor: int
    class_index: dict[str, int]
    period_names: tuple[str, ...]

    def covers(self, first_ms: int, last_ms: int) -> bool:
        return self.window_start <= first_ms and last_ms < self.window_end


def _price_tables(tariff: Tariff) -> tuple[Int64Array, ...]:
    classes = tariff.class_names
    periods = tariff.period_names
    n_tiers = max(len(v.classes[c].tiers) for v in tariff.versions for c in classes)
    shape = (len(tariff.versions), len(classes))
    price = np.zeros((*shape, len(periods)), dtype=np.int64)
    limit = np.full((*shape, n_tiers), NO_LIMIT, dtype=np.int64)
    adder = np.zeros((*shape, n_tiers), dtype=np.int64)
    standing = np.zeros(shape, dtype=np.int64)
    tax = np.zeros(len(tariff.versions), dtype=np.int64)
    for v, version in enumerate(tariff.versions):
        tax[v] = 0 if version.tax.included else version.tax.bp
        for c, name in enumerate(classes):
            prices = version.classes[name]
            standing[v, c] = money.to_scaled(prices.standing_charge_per_day, money.PRICE_SCALE, "")
            for p, period in enumerate(periods):
                if period in version.periods:
                    price[v, c, p] = money.to_scaled(
                        prices.price_for(period), money.PRICE_SCALE, "price"
                    )
            for k, tier in enumerate(prices.tiers):
                adder[v, c, k] = money.to_scaled(tier.adder, money.PRICE_SCALE, "adder")
                if tier.up_to is not None:
                    limit[v, c, k] = money.to_scaled(tier.up_to, money.QTY_SCALE, "up_to")
            # Tiers past this class's last one never apply: repeat its adder for safety.
            adder[v, c, len(prices.tiers) :] = adder[v, c, len(prices.tiers) - 1]
    return price, limit, adder, standing, tax


def compile_tariff(tariff: Tariff, start: datetime, end: datetime) -> CompiledTariff:
    """Build the kernel arrays for instants in ``[start, end)``; before the first version
    there is no span (the kernel reports STATUS_NO_TARIFF)."""
    start = max(start.astimezone(UTC), tariff.starts_at)
    end = end.astimezone(UTC)
    if end <= start:
        end = start + timedelta(days=1)
    period_index = {name: i for i, name in enumerate(tariff.period_names)}
    instants = [start, *tariff.boundaries(start, end)]
    rows: list[tuple[int, int, int, int, int]] = []
    for at in instants:
        attrs = tariff.attributes_at(at)
        if attrs is None:
            continue
        version, period, cycle, day = attrs
        key = (version, period_index[period], cycle, day)
        if rows and rows[-1][1:] == key:
            continue
        rows.append((to_ms(at), *key))
    table = np.array(rows, dtype=np.int64).reshape(-1, 5)
    price, limit, adder, standing, tax = _price_tables(tariff)
    return CompiledTariff(
        tariff=tariff,
        window_start=to_ms(start),
        window_end=to_ms(end),
        span_start=np.ascontiguousarray(table[:, 0]),
        span_version=np.ascontiguousarray(table[:, 1]),
        span_period=np.ascontiguousarray(table[:, 2]),
        span_cycle=np.ascontiguousarray(table[:, 3]),
        span_day=np.ascontiguousarray(table[:, 4]),
        price_micro=price,
        tier_limit_milli=limit,
        tier_adder_micro=adder,
        standing_micro=standing,
        tax_bp=tax,
        acc_per_minor=money.acc_per_minor(tariff.currency),
        class_index={name: i for i, name in enumerate(tariff.class_names)},
        period_names=tariff.period_names,
    )
