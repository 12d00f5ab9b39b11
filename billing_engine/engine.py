"""The billing engine's public API: account states in, deductions and crossed thresholds out.

`BillingEngine` owns one tariff, compiles it for the time window the readings need (widening it
when they move on) and runs the Numba kernel over arrays (the JIT or the ahead-of-time build:
`kernels.py`). Callers either hand it arrays (`bill_arrays`, what the benchmark and the
gateway's batch path use) or plain objects (`bill`), which it packs into arrays.

Instants are floored to whole UTC milliseconds (`instants.py`): the kernel's time unit. Two
readings of one meter in the same millisecond are the same instant (a duplicate or a conflict);
two polls in the same second are two readings, each billed as itself.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from numpy.typing import NDArray

from billing_engine import instants, kernels, layout
from billing_engine.compile import CompiledTariff, compile_tariff
from billing_engine.tariff import Tariff

Int64Array = NDArray[np.int64]
_WINDOW_MARGIN_BEFORE = timedelta(days=2)
_WINDOW_MARGIN_AFTER = timedelta(days=400)


class ReadingStatus(enum.IntEnum):
    """What the engine did with a reading (the kernel's ``STATUS_*``)."""

    BILLED = layout.STATUS_BILLED
    BASELINE = layout.STATUS_BASELINE
    DUPLICATE = layout.STATUS_DUPLICATE
    OUT_OF_ORDER = layout.STATUS_OUT_OF_ORDER
    REGISTER_BACKWARDS = layout.STATUS_REGISTER_BACKWARDS
    CONFLICT = layout.STATUS_CONFLICT
    NO_TARIFF = layout.STATUS_NO_TARIFF
    LIMIT = layout.STATUS_LIMIT
    OUTSIDE_WINDOW = layout.STATUS_OUTSIDE_WINDOW


class Crossing(enum.IntFlag):
    """Thresholds a reading crossed, and notes about how it was priced."""

    NONE = 0
    LOW = layout.FLAG_LOW
    ZERO = layout.FLAG_ZERO
    DISCONNECT = layout.FLAG_DISCONNECT
    SPLIT = layout.FLAG_SPLIT
    CYCLE_RESET = layout.FLAG_CYCLE_RESET


@dataclass
class AccountState:
    """One account's billing state: plain integers, persisted by the gateway as they are.

    ``cycle_id is None`` with a non-zero ``usage_milli`` is an opening usage for the cycle of the
    first reading (an account moved in mid-cycle with a known year-to-date total).
    ``last_ms`` is the instant of the last billed reading in UTC milliseconds (`instants`).
    """

    balance_minor: int
    class_name: str
    low_minor: int = 0
    disconnect_minor: int = 0
    cycle_id: int | None = None
    usage_milli: int = 0
    net_acc: int = 0
    tax_acc: int = 0
    tax_rem: int = 0
    last_ms: int | None = None
    last_register_milli: int = 0
    standing_day: int | None = None


@dataclass(frozen=True, slots=True)
class ReadingResult:
    """The outcome of one reading."""

    status: ReadingStatus
    deduction_minor: int
    crossing: Crossing
    balance_minor: int


@dataclass(frozen=True)
class BatchResult:
    """Per-reading outputs of `BillingEngine.bill_arrays` (same order as the input)."""

    deduction_minor: Int64Array
    status: Int64Array
    flags: Int64Array
    balance_minor: Int64Array


def _opt(value: int | None) -> int:
    return layout.UNSET if value is None else value


def _unopt(value: int) -> int | None:
    return None if value == layout.UNSET else int(value)


class BillingEngine:
    """Bills readings against accounts under one tariff."""

    def __init__(self, tariff: Tariff, kernel: kernels.Kernel | None = None) -> None:
        """``kernel``: the build to bill with; by default the process's (`kernels.active`)."""
        self.tariff = tariff
        self.kernel = kernel
        self._compiled: CompiledTariff | None = None

    def _kernel(self) -> kernels.Kernel:
        return self.kernel if self.kernel is not None else kernels.active()

    @property
    def compiled(self) -> CompiledTariff | None:
        return self._compiled

    def class_index(self, class_name: str) -> int:
        """Index of ``class_name`` in the state arrays.

        Raises:
            KeyError: the tariff has no such class.
        """
        names = self.tariff.class_names
        if class_name not in names:
            raise KeyError(f"tariff {self.tariff.id} has no class {class_name!r}; it has {names}")
        return names.index(class_name)

    def pack(self, accounts: Sequence[AccountState]) -> Int64Array:
        """Account states as the kernel's ``[n, STATE_WIDTH]`` int64 array."""
        state = np.zeros((len(accounts), layout.STATE_WIDTH), dtype=np.int64)
        for i, acc in enumerate(accounts):
            row = state[i]
            row[layout.STATE_BALANCE] = acc.balance_minor
            row[layout.STATE_CLASS] = self.class_index(acc.class_name)
            row[layout.STATE_CYCLE] = _opt(acc.cycle_id)
            row[layout.STATE_USAGE] = acc.usage_milli
            row[layout.STATE_NET] = acc.net_acc
            row[layout.STATE_TAX] = acc.tax_acc
            row[layout.STATE_TAX_REM] = acc.tax_rem
            row[layout.STATE_LAST_MS] = _opt(acc.last_ms)
            row[layout.STATE_LAST_REG] = acc.last_register_milli
            row[layout.STATE_STANDING_DAY] = _opt(acc.standing_day)
            row[layout.STATE_LOW] = acc.low_minor
            row[layout.STATE_DISCONNECT] = acc.disconnect_minor
            row[layout.STATE_HINT] = -1
        return state

    def unpack(self, state: Int64Array, accounts: Sequence[AccountState]) -> None:
        """Copy kernel rows back into ``accounts`` (same order as `pack`)."""
        names = self.tariff.class_names
        for i, acc in enumerate(accounts):
            row = state[i]
            acc.balance_minor = int(row[layout.STATE_BALANCE])
            acc.class_name = names[int(row[layout.STATE_CLASS])]
            acc.cycle_id = _unopt(row[layout.STATE_CYCLE])
            acc.usage_milli = int(row[layout.STATE_USAGE])
            acc.net_acc = int(row[layout.STATE_NET])
            acc.tax_acc = int(row[layout.STATE_TAX])
            acc.tax_rem = int(row[layout.STATE_TAX_REM])
            acc.last_ms = _unopt(row[layout.STATE_LAST_MS])
            acc.last_register_milli = int(row[layout.STATE_LAST_REG])
            acc.standing_day = _unopt(row[layout.STATE_STANDING_DAY])

    def ensure_window(self, first_ms: int, last_ms: int) -> CompiledTariff:
        """Compile (or widen) the timeline so it covers ``[first_ms, last_ms]`` (UTC ms)."""
        compiled = self._compiled
        if compiled is not None and compiled.covers(first_ms, last_ms):
            return compiled
        start = instants.from_ms(first_ms) - _WINDOW_MARGIN_BEFORE
        end = instants.from_ms(last_ms) + _WINDOW_MARGIN_AFTER
        if compiled is not None:
            start = min(start, instants.from_ms(compiled.window_start))
            end = max(end, instants.from_ms(compiled.window_end))
        self._compiled = compile_tariff(self.tariff, start, end)
        return self._compiled

    def bill_arrays(
        self,
        state: Int64Array,
        account: Int64Array,
        at_ms: Int64Array,
        register_milli: Int64Array,
    ) -> BatchResult:
        """Bill readings (parallel arrays, in order; ``at_ms`` in UTC milliseconds) against
        ``state`` (updated in place)."""
        n = account.shape[0]
        if n:
            known = state[:, layout.STATE_LAST_MS]
            known = known[known != layout.UNSET]
            first = int(min(at_ms.min(), known.min())) if known.size else int(at_ms.min())
            compiled = self.ensure_window(first, int(at_ms.max()))
        else:
            compiled = self.ensure_window(0, 0)
        out = BatchResult(
            np.zeros(n, dtype=np.int64),
            np.zeros(n, dtype=np.int64),
            np.zeros(n, dtype=np.int64),
            np.zeros(n, dtype=np.int64),
        )
        self._kernel().bill_batch(
            compiled.span_start,
            compiled.span_version,
            compiled.span_period,
            compiled.span_cycle,
            compiled.span_day,
            compiled.window_end,
            compiled.price_micro,
            compiled.tier_limit_milli,
            compiled.tier_adder_micro,
            compiled.standing_micro,
            compiled.tax_bp,
            compiled.acc_per_minor,
            state,
            np.ascontiguousarray(account, dtype=np.int64),
            np.ascontiguousarray(at_ms, dtype=np.int64),
            np.ascontiguousarray(register_milli, dtype=np.int64),
            out.deduction_minor,
            out.status,
            out.flags,
            out.balance_minor,
        )
        return out

    def bill(
        self,
        accounts: Sequence[AccountState],
        readings: Sequence[tuple[int, datetime, int]],
    ) -> list[ReadingResult]:
        """Bill ``(account index, read_at, register_milli)`` readings; updates ``accounts``."""
        state = self.pack(accounts)
        account = np.array([r[0] for r in readings], dtype=np.int64)
        at_ms = np.array([instants.to_ms(r[1]) for r in readings], dtype=np.int64)
        register = np.array([r[2] for r in readings], dtype=np.int64)
        out = self.bill_arrays(state, account, at_ms, register)
        self.unpack(state, accounts)
        return [
            ReadingResult(
                ReadingStatus(int(out.status[i])),
                int(out.deduction_minor[i]),
                Crossing(int(out.flags[i])),
                int(out.balance_minor[i]),
            )
            for i in range(len(readings))
        ]
