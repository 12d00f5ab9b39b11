"""The judge, on facts given by hand: scope, product, plant, validity, extension, month
arithmetic. (The store's side of the same rules is in test_redemption.py.)"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from gateway.tickets.codes import TicketCode, emergency_code
from gateway.tickets.decisions import (
    BatchTerms,
    Box,
    EmergencyTerms,
    Facts,
    Terms,
    TicketKind,
    Use,
    judge,
    judge_conversion,
    judge_extension,
)
from gateway.tickets.electronic import ElectronicTicket
from gateway.tickets.reasons import Reason, Refusal
from gateway.tickets.scope import Scope
from gateway.tickets.validity import add_one_month, local_day

BOX = Box("330102", "hz-xihu-03", "hz", ("18.9L",))
PAPER = TicketCode("330102", 10_000)
BATCH = BatchTerms("B1", "18.9L", date(2026, 12, 1), date(2027, 6, 30), Scope(region="hz"))
IN_PERIOD = date(2027, 1, 15)


def _electronic(**changes: object) -> ElectronicTicket:
    fields: dict[str, object] = {
        "code": TicketCode("330102", 5_005).text,
        "product": "18.9L",
        "valid_from": date(2026, 12, 1),
        "valid_until": date(2027, 6, 30),
        "scope": Scope(depot="hz-xihu-03"),
        "kid": "0123456789abcdef",
    }
    fields.update(changes)
    return ElectronicTicket.model_validate(fields)


def _reason(outcome: Terms | Refusal) -> Reason | None:
    return outcome.reason if isinstance(outcome, Refusal) else None


def test_decisions_paper_in_its_batch_is_taken() -> None:
    terms = judge(PAPER, Facts(batch=BATCH), BOX, IN_PERIOD)
    assert isinstance(terms, Terms)
    assert (terms.kind, terms.product, terms.quantity) == (TicketKind.PAPER, "18.9L", 1)


@pytest.mark.parametrize(
    ("scope", "reason"),
    [
        (Scope(depot="hz-xihu-03"), None),
        (Scope(depot="hz-binjiang-01"), Reason.WRONG_SCOPE),
        (Scope(region="hz"), None),
        (Scope(region="nb"), Reason.WRONG_SCOPE),
    ],
)
def test_decisions_scope(scope: Scope, reason: Reason | None) -> None:
    assert _reason(judge(_electronic(scope=scope), Facts(), BOX, IN_PERIOD)) is reason


def test_decisions_product_not_handed_out_here_refused() -> None:
    assert _reason(judge(_electronic(product="11.3L"), Facts(), BOX, IN_PERIOD)) is (
        Reason.WRONG_PRODUCT
    )
    # The point asks for a product: a ticket for another is refused even if the box has both.
    two = Box("330102", "hz-xihu-03", "hz", ("18.9L", "11.3L"))
    assert _reason(judge(_electronic(), Facts(), two, IN_PERIOD, "11.3L")) is Reason.WRONG_PRODUCT
    assert _reason(judge(_electronic(), Facts(), two, IN_PERIOD, "18.9L")) is None


def test_decisions_another_plants_code_refused() -> None:
    other = TicketCode("420115", 10_000)
    assert _reason(judge(other, Facts(batch=BATCH), BOX, IN_PERIOD)) is Reason.WRONG_PLANT


@pytest.mark.parametrize(
    ("today", "reason"),
    [
        (date(2026, 11, 30), Reason.NOT_YET_VALID),
        (date(2026, 12, 1), None),  # first day
        (date(2027, 6, 30), None),  # last day
        (date(2027, 7, 1), Reason.EXPIRED),
    ],
)
def test_decisions_validity_days_inclusive(today: date, reason: Reason | None) -> None:
    assert _reason(judge(PAPER, Facts(batch=BATCH), BOX, today)) is reason
    assert _reason(judge(_electronic(), Facts(), BOX, today)) is reason


def test_decisions_extended_paper_valid_again_until_its_new_day() -> None:
    facts = Facts(batch=BATCH, extended_until=date(2027, 8, 10))
    assert _reason(judge(PAPER, facts, BOX, date(2027, 8, 10))) is None
    assert _reason(judge(PAPER, facts, BOX, date(2027, 8, 11))) is Reason.EXPIRED


def test_decisions_expired_paper_refusal_mentions_the_extension() -> None:
    refusal = judge(PAPER, Facts(batch=BATCH), BOX, date(2027, 7, 1))
    assert isinstance(refusal, Refusal)
    assert "extend" in refusal.detail


def test_decisions_extension_rules() -> None:
    # Expired on 30 June; extended on 10 July: valid to 10 August (one month from the day).
    terms = judge_extension(PAPER, Facts(batch=BATCH), BOX, date(2027, 7, 10))
    assert isinstance(terms, Terms)
    assert terms.valid_until == date(2027, 8, 10)
    still_valid = judge_extension(PAPER, Facts(batch=BATCH), BOX, date(2027, 6, 30))
    assert _reason(still_valid) is Reason.NOT_EXPIRED
    twice = Facts(batch=BATCH, extended_until=date(2027, 8, 10))
    assert _reason(judge_extension(PAPER, twice, BOX, date(2027, 9, 1))) is Reason.ALREADY_EXTENDED
    assert _reason(judge_extension(_electronic(), Facts(), BOX, date(2027, 7, 10))) is (
        Reason.NOT_PAPER
    )
    used = Facts(batch=BATCH, used_here=Use("b1", datetime(2027, 1, 2, tzinfo=UTC), ""))
    assert _reason(judge_extension(PAPER, used, BOX, date(2027, 7, 10))) is Reason.ALREADY_USED


def test_decisions_conversion_needs_a_valid_unused_paper_ticket() -> None:
    assert isinstance(judge_conversion(PAPER, Facts(batch=BATCH), BOX, IN_PERIOD), Terms)
    assert _reason(judge_conversion(PAPER, Facts(), BOX, IN_PERIOD)) is Reason.NOT_ISSUED
    voided = Facts(batch=BATCH, voided_at=datetime(2027, 1, 1, tzinfo=UTC))
    assert _reason(judge_conversion(PAPER, voided, BOX, IN_PERIOD)) is Reason.VOIDED
    expired = judge_conversion(PAPER, Facts(batch=BATCH), BOX, date(2027, 7, 1))
    assert _reason(expired) is Reason.EXPIRED


def test_decisions_voided_paper_refused_but_its_electronic_twin_taken() -> None:
    voided = Facts(batch=BATCH, voided_at=datetime(2027, 1, 1, tzinfo=UTC))
    assert _reason(judge(PAPER, voided, BOX, IN_PERIOD)) is Reason.VOIDED
    twin = _electronic(code=PAPER.text, scope=Scope(region="hz"))
    assert _reason(judge(twin, voided, BOX, IN_PERIOD)) is None


def test_decisions_used_here_and_elsewhere_say_when_and_where() -> None:
    at = datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC)
    here = judge(PAPER, Facts(batch=BATCH, used_here=Use("box1", at, "counter 2")), BOX, IN_PERIOD)
    assert isinstance(here, Refusal)
    assert here.reason is Reason.ALREADY_USED
    assert "box1 (counter 2) on 2027-01-02T03:04:05+00:00" in here.detail
    there = judge(PAPER, Facts(batch=BATCH, used_elsewhere=(Use("box9", at, ""),)), BOX, IN_PERIOD)
    assert _reason(there) is Reason.USED_ELSEWHERE


def test_decisions_emergency_ticket_only_if_issued_here() -> None:
    code = emergency_code("330102", 7, 3)
    assert _reason(judge(code, Facts(), BOX, IN_PERIOD)) is Reason.NOT_ISSUED
    issued = Facts(emergency=EmergencyTerms("18.9L", date(2027, 1, 10), date(2027, 2, 10)))
    assert _reason(judge(code, issued, BOX, IN_PERIOD)) is None
    assert _reason(judge(code, issued, BOX, date(2027, 2, 11))) is Reason.EXPIRED


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2027, 1, 31), date(2027, 2, 28)),  # a shorter month: its last day
        (date(2028, 1, 31), date(2028, 2, 29)),  # leap year
        (date(2026, 12, 15), date(2027, 1, 15)),  # year end
        (date(2027, 3, 31), date(2027, 4, 30)),
    ],
)
def test_decisions_one_month(day: date, expected: date) -> None:
    assert add_one_month(day) == expected


def test_decisions_local_day_is_the_plants() -> None:
    # 16:30 UTC on 30 June is 00:30 on 1 July in Shanghai (UTC+8): the ticket has expired there.
    late = datetime(2027, 6, 30, 16, 30, tzinfo=UTC)
    assert local_day(late, "Asia/Shanghai") == date(2027, 7, 1)
    assert local_day(late, "UTC") == date(2027, 6, 30)
