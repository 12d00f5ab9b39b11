"""The Numba billing kernel: a batch of readings against per-account states, in place.

Pure integer arithmetic over arrays; no Python objects in the loop. The tariff arrives as the
arrays `compile.py` builds once per tariff (a timeline of constant-price spans plus price and
tier tables), the accounts as one int64 row each (``STATE_*`` columns: 16 x 8 bytes = two cache
lines, so a reading touches one account row however the batch interleaves accounts). Instants
are UTC milliseconds (`instants.py`): two readings of an account in the same millisecond are
the same instant (a duplicate, or a conflict when the registers differ).

What a reading costs: the interval since the account's previous reading is cut at every
timeline boundary (TOU period, local midnight, cycle start, tariff version); the quantity is
split over the pieces pro rata by time, ``floor(dq * elapsed / span)`` cumulatively, so the
pieces sum to ``dq`` exactly. Each piece is priced at ``period price + tier adder`` across the
tiers it spans. The exact cycle cost (``acc`` units, 1e-9 major, plus tax) is kept, and the
deduction is ``round(cost after) - round(cost before)``, half-up, per cycle; so the deductions of
a cycle always sum to the rounded bill of the whole cycle, however the readings fall.

`reference.py` is the oracle this must agree with to the last unit; `money.py` has the scales
and the overflow argument. This module also runs as plain Python under ``NUMBA_DISABLE_JIT=1``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numba
import numpy as np

from billing_engine.layout import (
    FLAG_CYCLE_RESET,
    FLAG_DISCONNECT,
    FLAG_LOW,
    FLAG_SPLIT,
    FLAG_ZERO,
    MAX_CYCLE_USAGE_MILLI,
    MAX_READING_SPAN_MS,
    SPLIT_DIRECT_MAX_MS,
    STATE_BALANCE,
    STATE_CLASS,
    STATE_CYCLE,
    STATE_DISCONNECT,
    STATE_HINT,
    STATE_LAST_MS,
    STATE_LAST_REG,
    STATE_LOW,
    STATE_NET,
    STATE_STANDING_DAY,
    STATE_TAX,
    STATE_TAX_REM,
    STATE_USAGE,
    STATUS_BASELINE,
    STATUS_BILLED,
    STATUS_CONFLICT,
    STATUS_DUPLICATE,
    STATUS_LIMIT,
    STATUS_NO_TARIFF,
    STATUS_OUT_OF_ORDER,
    STATUS_OUTSIDE_WINDOW,
    STATUS_REGISTER_BACKWARDS,
    TAX_SCALE,
    UNSET,
)

F = TypeVar("F", bound=Callable[..., Any])


def _njit(signature: str) -> Callable[[F], F]:
    """The one JIT policy: eager, explicit int64 signature, cached on disk, no Python objects."""
    jit = numba.njit(signature, cache=True, nogil=True, error_model="numpy")
    return jit  # type: ignore[return-value]  # a Dispatcher is called like the function


@_njit("int64(int64, int64, int64)")
def _split(quantity: int, elapsed: int, span: int) -> int:
    """floor(quantity * elapsed / span) for 0 <= elapsed <= span <= MAX_READING_SPAN_MS and
    0 <= quantity <= MAX_CYCLE_USAGE_MILLI, without int64 overflow (the bounds: money.py)."""
    whole = quantity // span
    rest = quantity - whole * span
    if span <= SPLIT_DIRECT_MAX_MS:  # rest * elapsed < span**2 fits: the usual reading
        return whole * elapsed + (rest * elapsed) // span
    # A span of over 34 days in milliseconds: rest * elapsed may pass 2**63, so divide it by
    # span long-hand, elapsed (< 2**42) in three 20-bit digits, most significant first; each
    # partial remainder stays below span * 2**20 + rest * 2**20 < 2**63.
    quot = 0
    rem = 0
    shift = 40
    while shift >= 0:
        rem = rem * 1_048_576 + rest * ((elapsed >> shift) & 1_048_575)
        quot = quot * 1_048_576 + rem // span
        rem = rem % span
        shift -= 20
    return whole * elapsed + quot


@_njit("int64(int64, int64, int64)")
def _rounded(net: int, tax: int, acc_per_minor: int) -> int:
    # The tax remainder (< 1 acc) never changes the result: acc_per_minor is even, so the
    # half-way point is a whole acc value (proof in money.py's docstring and the tests).
    return (net + tax + acc_per_minor // 2) // acc_per_minor


@_njit("int64(int64[:], int64)")
def _find_span(starts: np.ndarray, at: int) -> int:
    """Index of the timeline span containing ``at`` (-1 before the first)."""
    lo = 0
    hi = starts.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if starts[mid] <= at:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@_njit("void(int64[:], int64, int64)")
def _add_cost(row: np.ndarray, cost: int, tax_bp: int) -> None:
    row[STATE_NET] += cost
    if tax_bp != 0:
        whole = cost // TAX_SCALE
        row[STATE_TAX] += whole * tax_bp
        rem = row[STATE_TAX_REM] + (cost - whole * TAX_SCALE) * tax_bp
        row[STATE_TAX] += rem // TAX_SCALE
        row[STATE_TAX_REM] = rem % TAX_SCALE


@_njit("void(int64[:], int64)")
def _start_cycle(row: np.ndarray, cycle: int) -> None:
    row[STATE_CYCLE] = cycle
    row[STATE_USAGE] = 0
    row[STATE_NET] = 0
    row[STATE_TAX] = 0
    row[STATE_TAX_REM] = 0


# The one entry point; `aot.py` exports it under this same signature.
BILL_BATCH_SIGNATURE = (
    "void(int64[:], int64[:], int64[:], int64[:], int64[:], int64,"
    " int64[:, :, :], int64[:, :, :], int64[:, :, :], int64[:, :], int64[:], int64,"
    " int64[:, :], int64[:], int64[:], int64[:],"
    " int64[:], int64[:], int64[:], int64[:])"
)


@_njit(BILL_BATCH_SIGNATURE)
def bill_batch(
    span_start: np.ndarray,
    span_version: np.ndarray,
    span_period: np.ndarray,
    span_cycle: np.ndarray,
    span_day: np.ndarray,
    window_end: int,
    price_micro: np.ndarray,
    tier_limit_milli: np.ndarray,
    tier_adder_micro: np.ndarray,
    standing_micro: np.ndarray,
    tax_bp: np.ndarray,
    acc_per_minor: int,
    state: np.ndarray,
    reading_account: np.ndarray,
    reading_ms: np.ndarray,
    reading_register: np.ndarray,
    out_deduction: np.ndarray,
    out_status: np.ndarray,
    out_flags: np.ndarray,
    out_balance: np.ndarray,
) -> None:
    """Bill ``reading_*`` in order against ``state`` (updated in place); fill ``out_*``."""
    n_spans = span_start.shape[0]
    n_tiers = tier_limit_milli.shape[2]
    for i in range(reading_account.shape[0]):
        row = state[reading_account[i]]
        at_ms = reading_ms[i]
        register = reading_register[i]
        balance_before = row[STATE_BALANCE]
        deduction = 0
        flags = 0
        out_deduction[i] = 0
        out_flags[i] = 0
        out_balance[i] = balance_before
        last_ms = row[STATE_LAST_MS]

        if at_ms >= window_end:
            out_status[i] = STATUS_OUTSIDE_WINDOW
            continue
        if last_ms == UNSET:
            span = _find_span(span_start, at_ms)
            if span < 0:
                out_status[i] = STATUS_NO_TARIFF
                continue
            row[STATE_LAST_MS] = at_ms
            row[STATE_LAST_REG] = register
            row[STATE_HINT] = span
            if row[STATE_CYCLE] == UNSET:
                row[STATE_CYCLE] = span_cycle[span]  # keeps an opening usage given for it
            elif row[STATE_CYCLE] != span_cycle[span]:
                _start_cycle(row, span_cycle[span])  # the old cycle's rounding is already paid
            before = _rounded(row[STATE_NET], row[STATE_TAX], acc_per_minor)
            if row[STATE_STANDING_DAY] == UNSET:
                row[STATE_STANDING_DAY] = span_day[span] - 1
            if row[STATE_STANDING_DAY] < span_day[span]:
                days = span_day[span] - row[STATE_STANDING_DAY]
                version = span_version[span]
                cost = days * standing_micro[version, row[STATE_CLASS]] * 1000
                _add_cost(row, cost, tax_bp[version])
                row[STATE_STANDING_DAY] = span_day[span]
            deduction += _rounded(row[STATE_NET], row[STATE_TAX], acc_per_minor) - before
            out_status[i] = STATUS_BASELINE
        elif at_ms < last_ms:
            out_status[i] = STATUS_OUT_OF_ORDER
            continue
        elif at_ms == last_ms:
            same = register == row[STATE_LAST_REG]
            out_status[i] = STATUS_DUPLICATE if same else STATUS_CONFLICT
            continue
        elif register < row[STATE_LAST_REG]:
            out_status[i] = STATUS_REGISTER_BACKWARDS
            continue
        else:
            quantity = register - row[STATE_LAST_REG]
            duration = at_ms - last_ms
            too_much = row[STATE_USAGE] + quantity > MAX_CYCLE_USAGE_MILLI
            if duration > MAX_READING_SPAN_MS or too_much:
                out_status[i] = STATUS_LIMIT
                continue
            span = row[STATE_HINT]
            if not (
                0 <= span < n_spans
                and span_start[span] <= last_ms
                and (span + 1 == n_spans or last_ms < span_start[span + 1])
            ):
                span = _find_span(span_start, last_ms)
                if span < 0:
                    out_status[i] = STATUS_OUTSIDE_WINDOW
                    continue
            klass = row[STATE_CLASS]
            before = _rounded(row[STATE_NET], row[STATE_TAX], acc_per_minor)
            allocated = 0
            spans = 0
            while True:
                piece_start = span_start[span] if span_start[span] > last_ms else last_ms
                piece_end = span_start[span + 1] if span + 1 < n_spans else window_end
                piece_end = min(piece_end, at_ms)
                if piece_end > piece_start:
                    spans += 1
                    if span_cycle[span] != row[STATE_CYCLE]:
                        after = _rounded(row[STATE_NET], row[STATE_TAX], acc_per_minor)
                        deduction += after - before
                        before = 0
                        _start_cycle(row, span_cycle[span])
                        flags |= FLAG_CYCLE_RESET
                    version = span_version[span]
                    bp = tax_bp[version]
                    if span_day[span] > row[STATE_STANDING_DAY]:
                        days = span_day[span] - row[STATE_STANDING_DAY]
                        _add_cost(row, days * standing_micro[version, klass] * 1000, bp)
                        row[STATE_STANDING_DAY] = span_day[span]
                    upto = _split(quantity, piece_end - last_ms, duration)
                    piece = upto - allocated
                    allocated = upto
                    if piece > 0:
                        price = price_micro[version, klass, span_period[span]]
                        used = row[STATE_USAGE]
                        end_usage = used + piece
                        cost = 0
                        lower = 0
                        for k in range(n_tiers):
                            upper = tier_limit_milli[version, klass, k]
                            lo = used if used > lower else lower
                            hi = end_usage if end_usage < upper else upper
                            if hi > lo:
                                cost += (hi - lo) * (price + tier_adder_micro[version, klass, k])
                            if upper >= end_usage:
                                break
                            lower = upper
                        row[STATE_USAGE] = end_usage
                        _add_cost(row, cost, bp)
                if piece_end >= at_ms:
                    break
                span += 1
            row[STATE_HINT] = span
            row[STATE_LAST_MS] = at_ms
            row[STATE_LAST_REG] = register
            deduction += _rounded(row[STATE_NET], row[STATE_TAX], acc_per_minor) - before
            if spans > 1:
                flags |= FLAG_SPLIT
            out_status[i] = STATUS_BILLED

        balance_after = balance_before - deduction
        row[STATE_BALANCE] = balance_after
        low = row[STATE_LOW]
        cut = row[STATE_DISCONNECT]
        if balance_before >= low > balance_after:
            flags |= FLAG_LOW
        if balance_before > 0 >= balance_after:
            flags |= FLAG_ZERO
        if balance_before >= cut > balance_after:
            flags |= FLAG_DISCONNECT
        out_deduction[i] = deduction
        out_flags[i] = flags
        out_balance[i] = balance_after
