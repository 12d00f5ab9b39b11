"""The 16-digit ticket code, shared by paper, electronic and emergency tickets.

Layout, left to right::

    PPPPPP SSSSSSSSS C
    plant  serial    Damm check digit over the 15 digits before it

- **plant** (6 digits): the issuing plant's code.
- **serial** (9 digits): ``000000000``-``899999999`` are the plant's own paper and electronic
  tickets; ``9BBBNNNNN`` are emergency tickets issued by box number ``BBB`` (its ``NNNNN``-th),
  so two boxes never make the same emergency code and no plant range can hold one.
- **check digit**: Damm's algorithm (H. Michael Damm, 2004) over the first 15 digits.

Why Damm: it catches **every single-digit error and every adjacent transposition** with one
check digit. Luhn (the card scheme) misses the transposition 09 <-> 90; ISO 7064 MOD 97-10
catches all of these too but needs two check digits, which would leave 8 serial digits instead
of 9; Verhoeff catches them with one digit but needs three tables (a dihedral group, a
permutation and an inverse) where Damm needs one. Damm's table is a quasigroup of order 10
whose diagonal is 0 and that is *weakly totally anti-symmetric*; the running value over the
whole code, check digit included, is 0 exactly when the code is intact.

Written here rather than taken from python-stdnum (``stdnum.damm``, which has the same table):
the algorithm is one table and a loop, and the package is not otherwise needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from gateway.tickets.reasons import Reason

PLANT_DIGITS: Final = 6
SERIAL_DIGITS: Final = 9
CODE_DIGITS: Final = PLANT_DIGITS + SERIAL_DIGITS + 1

#: Serials from here up are emergency tickets (``9`` + box number + sequence).
EMERGENCY_SERIAL_FLOOR: Final = 900_000_000
MAX_PLANT_SERIAL: Final = EMERGENCY_SERIAL_FLOOR - 1
EMERGENCY_SEQ_DIGITS: Final = 5
MAX_EMERGENCY_SEQ: Final = 10**EMERGENCY_SEQ_DIGITS - 1
MAX_BOX_NUMBER: Final = 999

# Damm's operation table: row = running value, column = next digit (Damm 2004, the table also
# printed in the Wikipedia article "Damm algorithm").
_DAMM: Final = (
    (0, 3, 1, 7, 5, 9, 8, 6, 4, 2),
    (7, 0, 9, 2, 1, 5, 4, 8, 6, 3),
    (4, 2, 0, 6, 8, 7, 1, 3, 5, 9),
    (1, 7, 5, 0, 9, 8, 3, 4, 2, 6),
    (6, 1, 2, 3, 0, 4, 5, 9, 7, 8),
    (3, 6, 7, 4, 2, 0, 9, 5, 8, 1),
    (5, 8, 6, 9, 7, 2, 0, 1, 3, 4),
    (8, 9, 4, 5, 3, 6, 2, 0, 1, 7),
    (9, 4, 3, 8, 6, 1, 7, 2, 0, 5),
    (2, 5, 8, 1, 4, 3, 6, 7, 9, 0),
)

# What a person may type between digit groups ("3301 0200 0001 0005", "330102-000010005-...").
_SEPARATORS: Final = str.maketrans("", "", " -")


class CodeError(ValueError):
    """A string that is not a valid ticket code.

    Attributes:
        reason: `Reason.MALFORMED` or `Reason.BAD_CHECK_DIGIT`.
    """

    def __init__(self, reason: Reason, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def damm_digit(digits: str) -> int:
    """The running Damm value over ``digits``: the check digit to append, or 0 for a whole code
    that is intact."""
    interim = 0
    for char in digits:
        interim = _DAMM[interim][ord(char) - 48]
    return interim


def _all_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


@dataclass(frozen=True, slots=True)
class TicketCode:
    """A ticket code, parsed: its plant and serial (the check digit is derived)."""

    plant: str
    serial: int

    def __post_init__(self) -> None:
        if len(self.plant) != PLANT_DIGITS or not _all_digits(self.plant):
            raise CodeError(Reason.MALFORMED, f"plant code {self.plant!r} is not 6 digits")
        if not 0 <= self.serial < 10**SERIAL_DIGITS:
            raise CodeError(Reason.MALFORMED, f"serial {self.serial} is not 9 digits")

    @property
    def text(self) -> str:
        """The 16 digits."""
        body = f"{self.plant}{self.serial:0{SERIAL_DIGITS}d}"
        return f"{body}{damm_digit(body)}"

    @property
    def is_emergency(self) -> bool:
        return self.serial >= EMERGENCY_SERIAL_FLOOR

    def grouped(self) -> str:
        """The code in groups of four, as printed on a ticket: ``3301 0200 0001 0005``."""
        text = self.text
        return " ".join(text[i : i + 4] for i in range(0, CODE_DIGITS, 4))

    def __str__(self) -> str:
        return self.text


def parse_code(text: str) -> TicketCode:
    """Read a typed or scanned code (spaces and dashes between digits are ignored).

    Raises:
        CodeError: not 16 digits (`Reason.MALFORMED`), or the check digit does not match
            (`Reason.BAD_CHECK_DIGIT`: a mistyped digit, two digits swapped, or a made-up code).
    """
    digits = text.strip().translate(_SEPARATORS)
    if len(digits) != CODE_DIGITS or not _all_digits(digits):
        raise CodeError(Reason.MALFORMED, f"{text!r} is not a {CODE_DIGITS}-digit ticket code")
    if damm_digit(digits) != 0:
        raise CodeError(
            Reason.BAD_CHECK_DIGIT,
            f"{digits}: the check digit does not match (a digit mistyped or two swapped?)",
        )
    return TicketCode(digits[:PLANT_DIGITS], int(digits[PLANT_DIGITS:-1]))


def emergency_code(plant: str, box_number: int, seq: int) -> TicketCode:
    """The code of a box's ``seq``-th emergency ticket (``seq`` from 1).

    Raises:
        CodeError: the box number or sequence is out of its digits.
    """
    if not 0 <= box_number <= MAX_BOX_NUMBER:
        raise CodeError(Reason.MALFORMED, f"box number {box_number} is not 0-{MAX_BOX_NUMBER}")
    if not 1 <= seq <= MAX_EMERGENCY_SEQ:
        raise CodeError(Reason.MALFORMED, f"emergency ticket number {seq} is not 1-99999")
    serial = EMERGENCY_SERIAL_FLOOR + box_number * 10**EMERGENCY_SEQ_DIGITS + seq
    return TicketCode(plant, serial)
