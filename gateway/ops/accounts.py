"""``prepay account list|show``: where every account stands, read from the store.

One read-only snapshot of the store (`gateway.store.statements`): it works with the daemon
running (never blocking it, never writing) or stopped, and without the network. The accounts
are the site file's with the backend's overlay merged in, as the daemon runs them.

Supply has two sides, and both are shown: ``supply_wanted`` is where the policy (or an
override) wants the relay or valve; ``supply_confirmed`` is what the device itself last
reported on a read-back (journalled as ``supply_confirmed``), with its time. They differ while
a change is on its way, or when a device does not confirm (see ``supply_pending``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from billing_engine.instants import from_ms
from billing_engine.money import format_minor
from gateway.config import Site
from gateway.flows.accounts import Account, AccountBook
from gateway.flows.overlay import OVERLAY_KEY, Overlay, apply_overlay
from gateway.northbound.payloads import format_rfc3339
from gateway.startup import STATE_FILE
from gateway.store.events import SUPPLY_SENT
from gateway.store.statements import StatementLine, StoreView, open_view


class UnknownAccountError(LookupError):
    """No account of that id on the site (nor created by the backend)."""


@dataclass(frozen=True)
class AccountSummary:
    """One account as an operator sees it. Money in minor units of ``currency``."""

    id: str
    meter: str
    actuator: str | None
    tariff: str
    class_name: str
    policy: str
    currency: str
    balance_minor: int
    debt_minor: int
    mode: str
    supply_wanted: str
    override: str | None
    override_reason: str | None
    override_until: datetime | None
    supply_confirmed: str | None
    supply_confirmed_at: datetime | None
    supply_pending: bool
    last_reading_at: datetime | None
    entries: int


@dataclass(frozen=True)
class AccountDetail:
    """`AccountSummary` plus the newest ledger entries, for ``prepay account show``."""

    summary: AccountSummary
    recent: list[StatementLine]


def book_of(site: Site, view: StoreView) -> AccountBook:
    """The account book as the daemon has it: the site with the overlay, and the stored
    billing and policy states (as `gateway.flows.accounts.load_book`, from a read-only view)."""
    records = view.account_states()
    overlay = Overlay.from_record(records.pop(OVERLAY_KEY, None))
    return AccountBook(apply_overlay(site, overlay), records, view.balances(), view.debts())


def _summary(account: Account, view: StoreView) -> AccountSummary:
    config = account.config
    policy = account.policy_state
    wanted = policy.supply.value
    confirmed = None
    pending = False
    if config.actuator is not None:
        device = view.device_supply(config.actuator, account.id)
        confirmed = device.confirmed
        # Pending: a change was sent after the last confirmation, or the device never
        # confirmed where the policy wants it.
        pending = (
            confirmed is None
            or confirmed.supply != wanted
            or (device.latest is not None and device.latest.kind == SUPPLY_SENT)
        )
    billed_at = None if account.billing.last_ms is None else from_ms(account.billing.last_ms)
    journalled_at = view.last_read_at(config.meter)
    # The journal keeps readings for its retention period; the billing state keeps the last
    # billed reading's time for ever.
    last = max((t for t in (journalled_at, billed_at) if t is not None), default=None)
    return AccountSummary(
        id=account.id,
        meter=config.meter,
        actuator=config.actuator,
        tariff=config.tariff,
        class_name=config.class_name,
        policy=config.policy,
        currency=account.currency,
        balance_minor=account.billing.balance_minor,
        debt_minor=account.debt_minor,
        mode=policy.mode.value,
        supply_wanted=wanted,
        override=None if policy.override is None else policy.override.value,
        override_reason=policy.override_reason,
        override_until=policy.override_until,
        supply_confirmed=None if confirmed is None else confirmed.supply,
        supply_confirmed_at=None if confirmed is None else confirmed.at,
        supply_pending=pending,
        last_reading_at=last,
        entries=view.entry_count(account.id),
    )


def collect(site: Site) -> list[AccountSummary]:
    """Every account of the site, by id.

    Raises:
        StoreError: there is no store yet (nothing is created), or it cannot be read.
    """
    with open_view(site.state_dir / STATE_FILE) as view:
        book = book_of(site, view)
        return [_summary(book.by_id[i], view) for i in sorted(book.by_id)]


def detail(site: Site, account_id: str, *, recent: int = 5) -> AccountDetail:
    """One account, with its ``recent`` newest ledger entries.

    Raises:
        UnknownAccountError: no such account.
        StoreError: there is no store yet, or it cannot be read.
    """
    with open_view(site.state_dir / STATE_FILE) as view:
        book = book_of(site, view)
        account = book.by_id.get(account_id)
        if account is None:
            raise UnknownAccountError(unknown_account_message(account_id, book.by_id))
        lines = view.statement(account_id)
        return AccountDetail(_summary(account, view), lines[-recent:] if recent > 0 else [])


def unknown_account_message(account_id: str, known: Sequence[str] | dict[str, Any]) -> str:
    ids = sorted(known)
    shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
    return f"no account {account_id!r} on this site (accounts: {shown or 'none'})"


def summary_json(a: AccountSummary) -> dict[str, Any]:
    """One account as a JSON object (money in minor units, times RFC 3339 UTC or null)."""
    return {
        "account": a.id,
        "meter": a.meter,
        "actuator": a.actuator,
        "tariff": a.tariff,
        "class": a.class_name,
        "policy": a.policy,
        "currency": a.currency,
        "balance_minor": a.balance_minor,
        "debt_minor": a.debt_minor,
        "state": a.mode,
        "supply_wanted": a.supply_wanted,
        "override": a.override,
        "override_reason": a.override_reason,
        "override_until": _time(a.override_until),
        "supply_confirmed": a.supply_confirmed,
        "supply_confirmed_at": _time(a.supply_confirmed_at),
        "supply_pending": a.supply_pending,
        "last_reading_at": _time(a.last_reading_at),
        "ledger_entries": a.entries,
    }


def line_json(line: StatementLine) -> dict[str, Any]:
    """One ledger entry as a JSON object (the statement's line)."""
    return {
        "seq": line.seq,
        "at": format_rfc3339(line.at),
        "kind": line.kind.value,
        "amount_minor": line.amount_minor,
        "currency": line.currency,
        "balance_after_minor": line.balance_after_minor,
        "reference": line.ref,
        "receipt_seq": line.receipt_seq,
    }


def render_list(site: Site, accounts: Sequence[AccountSummary]) -> str:
    """The accounts as an aligned table for a terminal."""
    header = ("ACCOUNT", "BALANCE", "DEBT", "STATE", "SUPPLY", "CONFIRMED", "LAST READING")
    rows = [
        (
            a.id,
            format_minor(a.balance_minor, a.currency),
            format_minor(a.debt_minor, a.currency) if a.debt_minor else "-",
            a.mode,
            a.supply_wanted + (f" (override {a.override})" if a.override else ""),
            _confirmed_text(a),
            _time(a.last_reading_at) or "never",
        )
        for a in accounts
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    right = {1, 2}  # money columns
    lines = [f"site {site.config.site}: {len(accounts)} accounts"]
    for row in (header, *rows):
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def render_detail(found: AccountDetail) -> str:
    """One account, field by field, then its newest entries."""
    a = found.summary
    override = (
        f"{a.override} ({a.override_reason or 'no reason given'}"
        + (f", until {_time(a.override_until)}" if a.override_until else "")
        + ")"
        if a.override
        else "none (the policy decides)"
    )
    fields = [
        ("account", a.id),
        ("meter", a.meter),
        ("supply device", a.actuator or "none"),
        ("tariff", f"{a.tariff}, class {a.class_name}"),
        ("policy", a.policy),
        ("balance", format_minor(a.balance_minor, a.currency)),
        ("debt", format_minor(a.debt_minor, a.currency)),
        ("state", a.mode),
        ("supply wanted", a.supply_wanted),
        ("override", override),
        ("supply confirmed", _confirmed_text(a)),
        ("last reading", _time(a.last_reading_at) or "never"),
        ("ledger entries", str(a.entries)),
    ]
    width = max(len(name) for name, _ in fields)
    lines = [f"{name + ':':<{width + 1}} {value}" for name, value in fields]
    if found.recent:
        lines.append(f"newest {len(found.recent)} entries:")
        lines.extend(f"  {row}" for row in render_lines(found.recent))
    return "\n".join(lines)


def render_lines(lines: Sequence[StatementLine]) -> list[str]:
    """Ledger entries as an aligned table (money right-aligned), header first."""
    header = ("SEQ", "TIME", "KIND", "AMOUNT", "BALANCE AFTER", "REFERENCE")
    rows = [
        (
            str(line.seq),
            format_rfc3339(line.at),
            line.kind.value,
            format_minor(line.amount_minor, line.currency),
            format_minor(line.balance_after_minor, line.currency),
            line.ref + (f" (receipt {line.receipt_seq})" if line.receipt_seq is not None else ""),
        )
        for line in lines
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    right = {0, 3, 4}  # seq and money
    return [
        "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in (header, *rows)
    ]


def _confirmed_text(a: AccountSummary) -> str:
    if a.actuator is None:
        return "-"
    if a.supply_confirmed is None:
        return "never confirmed"
    text = f"{a.supply_confirmed} at {_time(a.supply_confirmed_at)}"
    return f"{text}, change pending" if a.supply_pending else text


def _time(value: datetime | None) -> str | None:
    return None if value is None else format_rfc3339(value)
