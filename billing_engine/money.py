"""Fixed-point scales for money and quantities, and exact decimal parsing.

Nothing here ever holds a float. Every amount is an ``int`` in one of these scales:

====================  =========================  ======================================
name                  unit                       example
====================  =========================  ======================================
``*_milli``           1/1000 of the tariff unit  Wh for kWh, litres for m3, mL for L
``*_micro``           1e-6 major per tariff unit 0.538 yuan/kWh -> 538_000
``*_acc``             1e-9 major (milli x micro) 1 kWh at 0.538 -> 538_000_000
``*_minor``           the currency's minor unit  fen for CNY: 55.80 yuan -> 5580
``*_bp``              basis point (1e-4)         13 % VAT -> 1300
====================  =========================  ======================================

A quantity in milli-units times a price in micro-units is an exact cost in ``acc`` units
(1e-9 major). The cost of a billing cycle is accumulated exactly in ``acc`` and rounded once,
half-up, to the minor unit: ``minor = (acc + D // 2) // D`` with ``D = 10 ** (9 - exponent)``.

Overflow (int64, the kernel's type, max 9.22e18): the limits below bound one cycle's cost by
``MAX_CYCLE_USAGE_MILLI * MAX_PRICE_MICRO`` = 3.44e18 acc before tax, at most doubled by a 100 %
tax, plus standing charges (< 4e16 acc over a century): < 7e18 < 2**63 - 1. The limits are
generous for a prepaid account: 34 GWh (or 34 million m3) in one cycle, 100 major units per
unit, 1000 major units per day of standing charge. `tests/billing/test_overflow.py` checks the
arithmetic and runs the kernel at the limits against the big-integer reference.

Time is in milliseconds (`instants`). The one product of a duration is the pro-rata split
``floor(quantity x elapsed / span)``, with ``elapsed <= span <= MAX_READING_SPAN_MS`` (3e12 ms,
about 95 years, < 2**42) and ``quantity <= MAX_CYCLE_USAGE_MILLI`` (2**35). The kernel takes
``whole = quantity // span`` (``whole x elapsed <= quantity``) and multiplies only the remainder
``rest < span``, ``rest <= quantity``: up to ``SPLIT_DIRECT_MAX_MS`` (3e9 ms, 34 days)
``rest x elapsed < span**2 <= 9e18 < 2**63 - 1`` directly; above it the kernel divides
``rest x elapsed`` by ``span`` long-hand, ``elapsed`` in 20-bit digits, each step below
``span x 2**20 + rest x 2**20 < 2**62 + 2**55``. Instants themselves (1.8e12 ms today) are far
from the limit, and nothing else multiplies a time.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import NewType

MinorUnits = NewType("MinorUnits", int)

QTY_SCALE = 1_000
PRICE_SCALE = 1_000_000
ACC_PER_MAJOR = QTY_SCALE * PRICE_SCALE  # 1e9: cost accumulator units per major unit
TAX_SCALE = 10_000  # basis points

MAX_PRICE_MICRO = 100 * PRICE_SCALE  # period price + tier adder, per unit
MAX_STANDING_MICRO_PER_DAY = 1_000 * PRICE_SCALE
MAX_TAX_BP = TAX_SCALE  # 100 %
MAX_CYCLE_USAGE_MILLI = 2**35  # 3.4e10 milli-units: 34 GWh or 34 million m3 in one cycle
MAX_READING_SPAN_MS = 3_000_000_000_000  # ~95 years, < 2**42: the long-hand split's bound
SPLIT_DIRECT_MAX_MS = 3_000_000_000  # ~34 days: (remainder x span) < 2**63 multiplied directly
INT64_MAX = 2**63 - 1

# ISO 4217 minor-unit exponents for the currencies a site is likely to bill in. A currency not
# listed here is rejected rather than guessed: getting the exponent wrong is a 100x billing error.
CURRENCY_EXPONENTS: dict[str, int] = {
    "CNY": 2, "HKD": 2, "TWD": 2, "MOP": 2, "USD": 2, "EUR": 2, "GBP": 2, "CHF": 2,
    "INR": 2, "PKR": 2, "BDT": 2, "LKR": 2, "NPR": 2, "IDR": 2, "PHP": 2, "THB": 2,
    "MYR": 2, "SGD": 2, "AUD": 2, "NZD": 2, "CAD": 2, "MXN": 2, "BRL": 2, "ZAR": 2,
    "KES": 2, "TZS": 2, "NGN": 2, "GHS": 2, "ZMW": 2, "MWK": 2, "ETB": 2, "EGP": 2,
    "MAD": 2, "TRY": 2, "PLN": 2, "SEK": 2, "NOK": 2, "DKK": 2, "CZK": 2, "HUF": 2,
    "JPY": 0, "KRW": 0, "VND": 0, "UGX": 0, "RWF": 0, "XOF": 0, "XAF": 0, "CLP": 0,
    "KWD": 3, "BHD": 3, "OMR": 3, "JOD": 3, "TND": 3, "LYD": 3, "IQD": 3,
}  # fmt: skip


def currency_exponent(code: str) -> int:
    """Minor-unit exponent of an ISO 4217 currency.

    Raises:
        ValueError: the currency is unknown.
    """
    try:
        return CURRENCY_EXPONENTS[code]
    except KeyError:
        known = ", ".join(sorted(CURRENCY_EXPONENTS))
        raise ValueError(f"unknown currency {code!r}; use an ISO 4217 code: {known}") from None


def acc_per_minor(code: str) -> int:
    """How many ``acc`` units (1e-9 major) make one minor unit of ``code``."""
    return int(10 ** (9 - currency_exponent(code)))


def to_scaled(value: Decimal | int | str, scale: int, what: str) -> int:
    """Convert a decimal value to an integer count of ``1/scale`` units, exactly.

    Raises:
        ValueError: the value is not a finite number or has more decimals than ``scale`` holds.
    """
    try:
        dec = Decimal(value) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise ValueError(f"{what}: {value!r} is not a number") from None
    if not dec.is_finite():
        raise ValueError(f"{what}: {value!r} is not a finite number")
    scaled = dec * scale
    if scaled != scaled.to_integral_value():
        decimals = len(str(scale)) - 1
        raise ValueError(f"{what}: {value} has more than {decimals} decimals")
    return int(scaled)


def round_half_up_div(numerator: int, denominator: int) -> int:
    """``round(numerator / denominator)`` with halves rounded up, for non-negative numerators."""
    return (numerator + denominator // 2) // denominator


def format_minor(amount_minor: int, currency: str) -> str:
    """``5580, "CNY"`` -> ``"55.80 CNY"`` (exact)."""
    exp = currency_exponent(currency)
    sign = "-" if amount_minor < 0 else ""
    whole, frac = divmod(abs(amount_minor), 10**exp)
    body = f"{whole}.{frac:0{exp}d}" if exp else str(whole)
    return f"{sign}{body} {currency}"


def format_scaled(value: int, scale: int) -> str:
    """An integer in ``1/scale`` units as an exact decimal string, trailing zeros trimmed."""
    text = str(Decimal(value) / Decimal(scale))
    if "E" in text or "e" in text:
        text = format(Decimal(value) / Decimal(scale), "f")
    return text
