"""The 16-digit code and its Damm check digit: every single-digit error and every adjacent
transposition of sample codes is caught, exhaustively."""

from __future__ import annotations

import pytest

from gateway.tickets.codes import (
    CodeError,
    TicketCode,
    damm_digit,
    emergency_code,
    parse_code,
)
from gateway.tickets.reasons import Reason

SAMPLES = [
    "3301020000100008",  # worked by hand below and in docs/tickets.md
    TicketCode("330102", 0).text,
    TicketCode("330102", 899_999_999).text,
    TicketCode("000000", 123_456_789).text,
    TicketCode("909090", 909_090_909).text,  # every adjacent pair is 09 or 90: Luhn's blind spot
    TicketCode("420115", 12_345).text,
    emergency_code("330102", 7, 1).text,
]


def test_codes_check_digit_worked_by_hand() -> None:
    # Damm over 330102 000010000, row = running value, column = next digit:
    # 0-3->7, 7-3->5, 5-0->3, 3-1->7, 7-0->8, 8-2->3, 3-0->1, 1-0->7, 7-0->8, 8-0->9, 9-1->5,
    # 5-0->3, 3-0->1, 1-0->7, 7-0->8: the check digit is 8.
    assert TicketCode("330102", 10_000).text == "3301020000100008"
    # The published example of Damm's paper: 572 -> 4 (0-5->9, 9-7->7, 7-2->4).
    assert damm_digit("572") == 4
    assert damm_digit("5724") == 0


def test_codes_every_single_digit_error_is_caught() -> None:
    tried = 0
    for sample in SAMPLES:
        assert parse_code(sample).text == sample
        for position in range(16):
            for digit in "0123456789":
                if digit == sample[position]:
                    continue
                typo = sample[:position] + digit + sample[position + 1 :]
                with pytest.raises(CodeError) as err:
                    parse_code(typo)
                assert err.value.reason is Reason.BAD_CHECK_DIGIT
                tried += 1
    assert tried == len(SAMPLES) * 16 * 9


def test_codes_every_adjacent_transposition_is_caught() -> None:
    tried = 0
    for sample in SAMPLES:
        for position in range(15):
            a, b = sample[position], sample[position + 1]
            if a == b:
                continue  # swapping equal digits changes nothing
            swapped = sample[:position] + b + a + sample[position + 2 :]
            with pytest.raises(CodeError) as err:
                parse_code(swapped)
            assert err.value.reason is Reason.BAD_CHECK_DIGIT
            tried += 1
    assert tried > 60  # the samples were chosen to have many unequal neighbours


def test_codes_09_90_transposition_caught() -> None:
    code = TicketCode("330102", 90).text  # ...0000000090c
    assert code[13:15] == "90"
    with pytest.raises(CodeError):
        parse_code(code[:13] + "09" + code[15:])


@pytest.mark.parametrize(
    "text",
    ["", "330102000010000", "33010200001000080", "3301O20000100008", "٣٣٠١٠٢٠٠٠٠١٠٠٠٠٨"],
)
def test_codes_malformed_refused(text: str) -> None:
    with pytest.raises(CodeError) as err:
        parse_code(text)
    assert err.value.reason is Reason.MALFORMED


def test_codes_typed_with_separators_accepted() -> None:
    assert parse_code(" 3301 0200-0010 0008 ").text == "3301020000100008"
    assert parse_code("3301020000100008").grouped() == "3301 0200 0010 0008"


def test_codes_emergency_layout() -> None:
    # 9 + box 007 + ticket 00001 = serial 900700001
    code = emergency_code("330102", 7, 1)
    assert code.serial == 900_700_001
    assert code.is_emergency
    assert code.text.startswith("330102900700001")
    assert not TicketCode("330102", 899_999_999).is_emergency
    with pytest.raises(CodeError):
        emergency_code("330102", 1000, 1)
    with pytest.raises(CodeError):
        emergency_code("330102", 7, 100_000)
