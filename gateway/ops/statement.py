"""``prepay account statement``: an account's ledger history for a period, as text, JSON or CSV.

Each line is one ledger entry: its seq, when it was made (ledger time), its kind, the amount
(credit positive, debit negative), the balance after it, its reference (the command id of a
top-up or refund, the reading id of a deduction) and, for a top-up, the seq of its signed
receipt. The opening balance is the balance before the first line; the closing balance the
balance after the last. Read from one read-only snapshot of the store, like
`gateway.ops.accounts`.

Periods are given as dates or times. A date is a UTC day: ``--from 2026-06-01`` starts at
00:00Z that day, ``--to 2026-06-30`` ends at the end of that day. A time must carry its offset
(``2026-06-01T08:00+08:00``); ``--to`` then ends just before it.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import IO, Any

from billing_engine.money import format_minor
from gateway.config import Site
from gateway.northbound.payloads import format_rfc3339
from gateway.ops.accounts import (
    UnknownAccountError,
    book_of,
    line_json,
    render_lines,
    unknown_account_message,
)
from gateway.startup import STATE_FILE
from gateway.store.statements import StatementLine, open_view

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

#: The CSV columns, in order. ``amount`` and the balances are decimal strings in the major unit
#: (``-15.00``) for a spreadsheet; the ``*_minor`` columns are the exact integers.
CSV_COLUMNS = (
    "seq",
    "time",
    "kind",
    "amount",
    "amount_minor",
    "currency",
    "balance_after",
    "balance_after_minor",
    "reference",
    "receipt_seq",
)


__all__ = ["CSV_COLUMNS", "Period", "PeriodError", "Statement", "UnknownAccountError"]


class PeriodError(ValueError):
    """A ``--from``/``--to`` value that is not a date or a time with an offset, or a period
    that ends before it starts."""


@dataclass(frozen=True)
class Period:
    """``[start, end)`` in UTC; None is open-ended."""

    start: datetime | None
    end: datetime | None


@dataclass(frozen=True)
class Statement:
    """An account's entries in a period, with the balances around them."""

    account: str
    currency: str
    period: Period
    opening_minor: int
    closing_minor: int
    lines: list[StatementLine]


def parse_period(start: str | None, end: str | None) -> Period:
    """``--from`` and ``--to`` as a period.

    Raises:
        PeriodError: a value is neither ``YYYY-MM-DD`` nor an ISO 8601 time with an offset,
            or the period ends before it starts.
    """
    period = Period(
        None if start is None else _instant(start, "--from", end_of_day=False),
        None if end is None else _instant(end, "--to", end_of_day=True),
    )
    if period.start is not None and period.end is not None and period.end <= period.start:
        raise PeriodError(f"--to {end} is not after --from {start}: the period is empty")
    return period


def _instant(text: str, option: str, *, end_of_day: bool) -> datetime:
    value = text.strip()
    if _DATE.match(value):
        try:
            day = date.fromisoformat(value)
        except ValueError as exc:
            raise PeriodError(f"{option} {text}: not a date ({exc})") from None
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return start + timedelta(days=1) if end_of_day else start
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise PeriodError(
            f"{option} {text}: expected a date (2026-06-01) or a time with its offset"
            " (2026-06-01T08:00+08:00)"
        ) from None
    if at.tzinfo is None or at.utcoffset() is None:
        raise PeriodError(
            f"{option} {text}: a time needs its offset (Z, +08:00): which time zone is meant?"
        )
    return at.astimezone(UTC)


def build(site: Site, account_id: str, period: Period) -> Statement:
    """The statement of ``account_id`` for ``period``.

    Raises:
        UnknownAccountError: no such account.
        StoreError: there is no store yet, or it cannot be read.
    """
    with open_view(site.state_dir / STATE_FILE) as view:
        book = book_of(site, view)
        account = book.by_id.get(account_id)
        if account is None:
            raise UnknownAccountError(unknown_account_message(account_id, book.by_id))
        lines = view.statement(account_id, period.start, period.end)
        if lines:
            opening = lines[0].balance_before_minor
            closing = lines[-1].balance_after_minor
        else:
            # Nothing in the period: the balance stands where the entries before it left it
            # (with no start, nothing is before it: an account without entries holds 0).
            before = [] if period.start is None else view.statement(account_id, None, period.start)
            opening = closing = before[-1].balance_after_minor if before else 0
    return Statement(account.id, account.currency, period, opening, closing, lines)


def to_json(statement: Statement) -> dict[str, Any]:
    """The statement as one JSON object (money in minor units, times RFC 3339 UTC)."""
    return {
        "account": statement.account,
        "currency": statement.currency,
        "from": _time(statement.period.start),
        "to": _time(statement.period.end),
        "opening_balance_minor": statement.opening_minor,
        "closing_balance_minor": statement.closing_minor,
        "entries": [line_json(line) for line in statement.lines],
    }


def render(statement: Statement) -> str:
    """The statement as text for a terminal."""
    cur = statement.currency
    period = (
        f"from {_time(statement.period.start) or 'the first entry'}"
        f" to {_time(statement.period.end) or 'now'}"
    )
    lines = [
        f"account {statement.account}, {period}",
        f"opening balance {format_minor(statement.opening_minor, cur)}",
    ]
    if statement.lines:
        lines.extend(f"  {row}" for row in render_lines(statement.lines))
    else:
        lines.append("  no entries in this period")
    lines.append(
        f"closing balance {format_minor(statement.closing_minor, cur)}"
        f" ({len(statement.lines)} entries)"
    )
    return "\n".join(lines)


def write_csv(statement: Statement, out: IO[str]) -> None:
    """One header row (`CSV_COLUMNS`), then one row per entry (RFC 4180, ``\\r\\n`` rows)."""
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for line in statement.lines:
        writer.writerow(
            (
                line.seq,
                format_rfc3339(line.at),
                line.kind.value,
                _major(line.amount_minor, line.currency),
                line.amount_minor,
                line.currency,
                _major(line.balance_after_minor, line.currency),
                line.balance_after_minor,
                line.ref,
                "" if line.receipt_seq is None else line.receipt_seq,
            )
        )


def _major(amount_minor: int, currency: str) -> str:
    # The number of `format_minor` ("-15.00 CNY" -> "-15.00"): one formatting of money.
    return format_minor(amount_minor, currency).rsplit(" ", 1)[0]


def _time(value: datetime | None) -> str | None:
    return None if value is None else format_rfc3339(value)
