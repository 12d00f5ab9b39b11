"""Hypothesis strategies: random but valid tariffs and reading sequences."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from billing_engine.tariff import Tariff

ZONES = ["Asia/Shanghai", "Europe/London", "America/New_York", "UTC"]
CURRENCIES = ["CNY", "JPY", "KWD"]
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


def _price(max_major: int = 5) -> st.SearchStrategy[Decimal]:
    return st.integers(0, max_major * 1_000_000).map(lambda v: Decimal(v) / 1_000_000)


@st.composite
def windows(draw: st.DrawFn, periods: list[str]) -> list[dict[str, str]]:
    cuts = sorted(draw(st.sets(st.integers(0, 95), min_size=1, max_size=4)))
    cuts = [c * 15 for c in cuts]
    result = []
    for i, start in enumerate(cuts):
        end = cuts[(i + 1) % len(cuts)]
        fmt = lambda m: f"{m // 60:02d}:{m % 60:02d}"  # noqa: E731
        result.append(
            {"start": fmt(start), "end": fmt(end), "period": draw(st.sampled_from(periods))}
        )
    if len(cuts) == 1:
        result = [{"start": fmt(cuts[0]), "end": fmt(cuts[0]), "period": result[0]["period"]}]
    return result


@st.composite
def tariffs(draw: st.DrawFn) -> Tariff:
    n_versions = draw(st.integers(1, 3))
    offsets = sorted(draw(st.sets(st.integers(0, 500), min_size=n_versions, max_size=n_versions)))
    periods = ["p0", "p1", "p2"][: draw(st.integers(1, 3))]
    classes = ["a", "b"][: draw(st.integers(1, 2))]
    versions: list[dict[str, Any]] = []
    for off in offsets:
        use_tou = draw(st.booleans())
        version: dict[str, Any] = {
            "effective_from": (
                EPOCH + timedelta(days=off, hours=draw(st.integers(0, 23)))
            ).isoformat(),
            "tax": {
                "percent": Decimal(draw(st.integers(0, 2500))) / 100,
                "included": draw(st.booleans()),
            },
            "holidays": [
                date(2025, 1, 1) + timedelta(days=draw(st.integers(0, 700)))
                for _ in range(draw(st.integers(0, 3)))
            ],
            "classes": {},
        }
        if use_tou:
            split = draw(st.integers(2, 12))
            version["schedules"] = [
                {"months": list(range(1, split)), "windows": draw(windows(periods))},
                {
                    "months": list(range(split, 13)),
                    "day_types": ["weekday"],
                    "windows": draw(windows(periods)),
                },
                {
                    "months": list(range(split, 13)),
                    "day_types": ["weekend", "holiday"],
                    "windows": draw(windows(periods)),
                },
            ]
            used = {w["period"] for s in version["schedules"] for w in s["windows"]}
        else:
            used = {"flat"}
        for name in classes:
            limits = sorted(draw(st.sets(st.integers(1, 5000), max_size=3)))
            tiers = [{"up_to": Decimal(x), "adder": draw(_price(2))} for x in limits]
            tiers.append({"adder": draw(_price(2))})
            energy: Any = (
                {p: draw(_price()) for p in sorted(used)}
                if draw(st.booleans()) or len(used) > 1
                else draw(_price())
            )
            if isinstance(energy, dict) and used == {"flat"}:
                energy = energy["flat"]
            version["classes"][name] = {
                "energy": energy,
                "tiers": tiers,
                "standing_charge_per_day": draw(st.sampled_from([Decimal(0), draw(_price(3))])),
            }
        versions.append(version)
    reset = draw(st.sampled_from(["monthly", "annual", "never"]))
    cycle: dict[str, Any] = {"reset": reset}
    if reset != "never":
        cycle["start_day"] = draw(st.integers(1, 28))
    if reset == "annual":
        cycle["start_month"] = draw(st.integers(1, 12))
    return Tariff.model_validate(
        {
            "id": "random",
            "name": "random",
            "currency": draw(st.sampled_from(CURRENCIES)),
            "unit": "kWh",
            "timezone": draw(st.sampled_from(ZONES)),
            "cycle": cycle,
            "versions": versions,
        }
    )


# Steps between readings. 4,000,000 s (46 days) passes the kernel's direct split (34 days in
# ms) into its long-hand one; the sub-second polls are what millisecond billing is for.
STEPS_S = [1, 59, 900, 3_600, 40_000, 90_000, 2_700_000, 4_000_000]
POLLS_US = [1, 999, 1_000, 1_001, 100_000, 400_000, 999_999, 1_500_250]


@st.composite
def reading_runs(
    draw: st.DrawFn, start: datetime, *, messy: bool = True, max_len: int = 25
) -> list[tuple[datetime, int]]:
    """Readings of one meter: mostly increasing, at whole seconds or not, with sub-second
    polls, and optional duplicates, same-millisecond conflicts and backward steps."""
    at = start + timedelta(
        seconds=draw(st.integers(-86_400, 200 * 86_400)),
        microseconds=draw(st.one_of(st.just(0), st.integers(0, 999_999))),
    )
    register = draw(st.integers(0, 10_000_000))
    out = [(at, register)]
    for _ in range(draw(st.integers(1, max_len))):
        kinds = ["step"] * 6 + ["poll"] * 2
        kind = draw(st.sampled_from(kinds + (["dup", "same_ms", "back", "old"] if messy else [])))
        if kind == "step":
            at += timedelta(seconds=draw(st.sampled_from(STEPS_S)))
            register += draw(st.integers(0, 60_000))
        elif kind == "poll":
            at += timedelta(microseconds=draw(st.sampled_from(POLLS_US)))
            register += draw(st.integers(0, 500))
        elif kind == "same_ms":
            # Within a millisecond of the last reading: the same instant (a duplicate or a
            # conflict) unless it crosses into the next millisecond. It moves nothing on.
            nudge = timedelta(microseconds=draw(st.integers(0, 999)))
            out.append((at + nudge, register + draw(st.integers(0, 3))))
            continue
        elif kind == "back":
            at += timedelta(seconds=60)
            out.append((at, max(register - draw(st.integers(1, 500)), 0)))
            continue
        elif kind == "old":
            out.append((at - timedelta(seconds=30), register))
            continue
        out.append((at, register))
    return out
