"""``prepay status``: the questions an operator on the box asks first.

Is it billing? Is anything stuck (unbilled or held readings, messages waiting for the broker,
dropped telemetry)? Where does every account stand, and what happened lately? Everything is read
from the store, so it works with the daemon running (SQLite in WAL mode: a reader never blocks
the writer) or stopped, and without the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from billing_engine.instants import from_ms
from billing_engine.money import format_minor
from gateway.config import Site
from gateway.flows.accounts import Account, load_book
from gateway.flows.publish_only import stored_bases
from gateway.northbound.payloads import ReadingBilling, format_rfc3339
from gateway.startup import STATE_FILE, load_keys, open_store
from gateway.store import Store
from gateway.store.events import SUPPLY_SENT, Event
from gateway.store.journal import JournalState
from gateway.store.statements import StoreView, open_view
from gateway.store.timestamps import from_micros


@dataclass(frozen=True)
class AccountStatus:
    id: str
    meter: str
    currency: str
    balance_minor: int
    debt_minor: int
    mode: str
    supply: str  # what the policy wants
    actuator: str | None
    device_supply: str | None  # what the device last confirmed; None: never (or no actuator)
    device_pending: bool  # a change toward ``supply`` is sent and not confirmed yet
    last_reading_at: datetime | None

    @property
    def mismatch(self) -> bool:
        """The device is not (confirmed to be) where the policy wants it."""
        return self.actuator is not None and self.device_supply != self.supply


@dataclass(frozen=True)
class PublishOnlyStatus:
    """A meter of the site's ``publish_only:``: published, never billed."""

    meter: str
    unit: str  # the published register's unit (Wh, L, mL)
    published: int  # readings published so far
    last_read_at: datetime | None  # the latest reading published; None: none yet
    register_milli: int | None


@dataclass(frozen=True)
class SiteStatus:
    site: str
    store_path: str
    store_bytes: int
    journal: dict[str, int]  # rows per state
    held: dict[str, int]  # held rows per reason
    outbox_pending: dict[str, int]  # per message class
    outbox_dropped: dict[str, int]
    ledger_entries: int
    accounts: list[AccountStatus]
    recent_events: list[Event]
    publish_only: list[PublishOnlyStatus]

    @property
    def outbox_total(self) -> int:
        return sum(self.outbox_pending.values())


def collect(site: Site, *, events: int = 10) -> SiteStatus:
    """Read the site's store.

    Raises:
        KeyPermissionError: a private key file is readable by its group or others.
        FileNotFoundError: there is no store yet (the daemon never ran); nothing is created.
        OSError: a key file or the store cannot be read.
    """
    path = site.state_dir / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no store at {path}: the gateway has not run with this site yet")
    with open_store(site, load_keys(site)) as store:
        return _collect(site, store, events)


def _collect(site: Site, store: Store, events: int) -> SiteStatus:
    by_state, held = store.journal_counts()
    outbox = store.outbox_stats()
    head = store.chain_head()
    book, _ = load_book(site, store)
    path = site.state_dir / STATE_FILE
    with open_view(path) as view:
        accounts = [_account(account, view) for account in sorted(book.by_id.values(), key=_id)]
    return SiteStatus(
        site=site.config.site,
        store_path=str(path),
        store_bytes=path.stat().st_size,
        journal={state.value: count for state, count in by_state.items()},
        held=held,
        outbox_pending={c.value: n for c, n in outbox.pending.items() if n},
        outbox_dropped={c.value: n for c, n in outbox.dropped.items() if n},
        ledger_entries=0 if head is None else head.seq,
        accounts=accounts,
        recent_events=store.recent_events(events),
        publish_only=_publish_only(site, store),
    )


def _publish_only(site: Site, store: Store) -> list[PublishOnlyStatus]:
    bases = stored_bases(store.load_account_states())
    found = []
    for meter, unit in sorted(site.publish_only_units.items()):
        base = bases.get(meter)
        found.append(
            PublishOnlyStatus(
                meter=meter,
                unit=unit.value,
                published=0 if base is None else base.published,
                last_read_at=None if base is None else from_micros(base.read_at_us),
                register_milli=None if base is None else base.register_milli,
            )
        )
    return found


def _id(account: Account) -> str:
    return account.id


def _account(account: Account, view: StoreView) -> AccountStatus:
    actuator = account.config.actuator
    device = None if actuator is None else view.device_supply(actuator, account.id)
    return AccountStatus(
        id=account.id,
        meter=account.config.meter,
        currency=account.currency,
        balance_minor=account.billing.balance_minor,
        debt_minor=account.debt_minor,
        mode=account.policy_state.mode.value,
        supply=account.policy_state.supply.value,
        actuator=actuator,
        device_supply=(
            device.confirmed.supply if device is not None and device.confirmed else None
        ),
        device_pending=(
            device is not None and device.latest is not None and device.latest.kind == SUPPLY_SENT
        ),
        last_reading_at=(
            None if account.billing.last_ms is None else from_ms(account.billing.last_ms)
        ),
    )


def to_json(status: SiteStatus) -> dict[str, Any]:
    """The status as a JSON object (money in minor units, times in RFC 3339 UTC)."""
    return {
        "site": status.site,
        "store": {"path": status.store_path, "bytes": status.store_bytes},
        "journal": status.journal,
        "held": status.held,
        "outbox": {"pending": status.outbox_pending, "dropped": status.outbox_dropped},
        "ledger_entries": status.ledger_entries,
        "accounts": [
            {
                "account": a.id,
                "meter": a.meter,
                "balance_minor": a.balance_minor,
                "debt_minor": a.debt_minor,
                "currency": a.currency,
                "state": a.mode,
                "supply": a.supply,
                "actuator": a.actuator,
                "device_supply": a.device_supply,
                "device_pending": a.device_pending,
                "supply_mismatch": a.mismatch,
                "last_reading_at": _time(a.last_reading_at),
            }
            for a in status.accounts
        ],
        "publish_only": [
            {
                "meter": m.meter,
                "billing": ReadingBilling.NONE.value,
                "unit": m.unit,
                "published": m.published,
                "last_read_at": _time(m.last_read_at),
                "register": m.register_milli,
            }
            for m in status.publish_only
        ],
        "recent_events": [
            {"account": e.account_id, "event": e.kind, "detail": e.detail, "at": _time(e.at)}
            for e in status.recent_events
        ],
    }


def render(status: SiteStatus) -> str:
    """The status as text for a terminal."""
    journal = status.journal
    lines = [
        f"site {status.site}: {status.store_path} ({status.store_bytes / 1e6:.1f} MB)",
        f"journal: {count(sum(journal.values()), 'reading')}: "
        + ", ".join(f"{journal[s.value]:,} {s.value}" for s in JournalState),
    ]
    if status.held:
        lines.append("  held: " + ", ".join(f"{r} {n:,}" for r, n in status.held.items()))
    lines.append(
        f"outbox: {status.outbox_total:,} waiting for the broker"
        + _by_class(status.outbox_pending)
        + (f"; dropped{_by_class(status.outbox_dropped)}" if status.outbox_dropped else "")
    )
    lines.append(f"ledger: {count(status.ledger_entries, 'entry', 'entries')}")
    lines.append(f"accounts ({len(status.accounts)}):")
    width = max((len(a.id) for a in status.accounts), default=0)
    money = max(
        (len(format_minor(a.balance_minor, a.currency)) for a in status.accounts), default=0
    )
    for a in status.accounts:
        debt = f", debt {format_minor(a.debt_minor, a.currency)}" if a.debt_minor else ""
        balance = format_minor(a.balance_minor, a.currency)
        lines.append(
            f"  {a.id:<{width}}  {balance:>{money}}  {a.mode}{debt}, {_supply_text(a)};"
            f" {a.meter} last read {_time(a.last_reading_at) or 'never'}"
        )
    if status.publish_only:
        lines.append(f"publish-only meters, never billed ({len(status.publish_only)}):")
        lines.extend(
            f"  {m.meter}  {count(m.published, 'reading')} published;"
            + (
                f" last read {_time(m.last_read_at)}, register {m.register_milli:,} {m.unit}"
                if m.last_read_at is not None
                else " none yet"
            )
            for m in status.publish_only
        )
    if status.recent_events:
        lines.append(f"recent events ({len(status.recent_events)}):")
        for e in status.recent_events:
            detail = ", ".join(f"{k}={v}" for k, v in sorted(e.detail.items()))
            lines.append(f"  {_time(e.at)}  {e.account_id or '-'}  {e.kind}  {detail}")
    return "\n".join(lines)


def _supply_text(a: AccountStatus) -> str:
    """``supply wanted off, device on (pending), MISMATCH``: the wish and the device's word
    apart, so a relay that ignores its command is never shown as switched."""
    if a.actuator is None:
        return f"supply {a.supply} wanted (no actuator)"
    device = a.device_supply or "unknown"
    pending = " (change pending)" if a.device_pending else ""
    flag = ", MISMATCH" if a.mismatch else ""
    return f"supply wanted {a.supply}, {a.actuator} confirmed {device}{pending}{flag}"


def count(n: int, singular: str, plural: str | None = None) -> str:
    """``1 account``, ``2 accounts``, ``1,000 entries``: a number and its noun, agreeing."""
    return f"{n:,} {singular if n == 1 else plural or singular + 's'}"


def _by_class(counts: dict[str, int]) -> str:
    return f" ({', '.join(f'{c} {n:,}' for c, n in counts.items())})" if counts else ""


def _time(value: datetime | None) -> str | None:
    return None if value is None else format_rfc3339(value)
