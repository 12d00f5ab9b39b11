"""The billing kernel's array layout and codes, shared by every implementation of it.

Kept apart from `kernel.py` so that the engine, the reference and the gateway can use the
layout without importing Numba: the gateway runs an ahead-of-time build of the kernel
(`kernels.py`) and must not pay for the JIT it does not use.
"""

from __future__ import annotations

# Account state columns (int64 each).
STATE_BALANCE = 0  # minor units, may be negative
STATE_CLASS = 1  # index into the tariff's classes
STATE_CYCLE = 2  # cycle id the accumulators below belong to; UNSET before the first reading
STATE_USAGE = 3  # quantity used in the cycle, milli-units (selects the tier)
STATE_NET = 4  # exact cost in the cycle before tax, acc units
STATE_TAX = 5  # tax in the cycle, whole acc units
STATE_TAX_REM = 6  # tax remainder, 1/10000 acc units (< 10000)
STATE_LAST_MS = 7  # UTC milliseconds of the last billed reading; UNSET before the first
STATE_LAST_REG = 8  # register of the last billed reading, milli-units
STATE_STANDING_DAY = 9  # last local day (ordinal) whose standing charge is paid; UNSET: none
STATE_LOW = 10  # low-balance threshold, minor units
STATE_DISCONNECT = 11  # disconnection threshold, minor units
STATE_HINT = 12  # timeline index of STATE_LAST_MS, a search hint (any value is safe)
STATE_WIDTH = 16

UNSET = -(2**63)

# Reading status.
STATUS_BILLED = 0
STATUS_BASELINE = 1  # first reading of the account: sets the register, charges no energy
STATUS_DUPLICATE = 2  # same millisecond and register as the last billed reading
STATUS_OUT_OF_ORDER = 3  # older than the last billed reading: ignored
STATUS_REGISTER_BACKWARDS = 4  # register below the last one: reported, not billed
STATUS_CONFLICT = 5  # same millisecond as the last reading but another register
STATUS_NO_TARIFF = 6  # before the first tariff version
STATUS_LIMIT = 7  # beyond the overflow-safe limits (cycle quantity or reading span)
STATUS_OUTSIDE_WINDOW = 8  # after the compiled timeline: the engine must recompile

# Flags (bits).
FLAG_LOW = 1  # balance went from >= low threshold to below it
FLAG_ZERO = 2  # balance went from > 0 to <= 0: credit exhausted
FLAG_DISCONNECT = 4  # balance went from >= disconnection threshold to below it
FLAG_SPLIT = 8  # the interval crossed a price/day boundary: the split is an estimate
FLAG_CYCLE_RESET = 16  # a billing cycle ended inside this reading

TAX_SCALE = 10_000
MAX_CYCLE_USAGE_MILLI = 2**35
MAX_READING_SPAN_MS = 3_000_000_000_000
SPLIT_DIRECT_MAX_MS = 3_000_000_000
