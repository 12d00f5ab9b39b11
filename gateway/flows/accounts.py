"""The gateway's in-memory view of its accounts: config, billing state and policy state.

Loaded once from the site config and the store at start (and on SIGHUP); mutated only by the
pipeline and the command handler, both under the daemon's state lock, and persisted by them in
the same transaction as the ledger entries that changed it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from billing_engine.engine import AccountState, BillingEngine
from billing_engine.kernels import Kernel
from gateway.config import AccountConfig, Site
from gateway.flows.overlay import OVERLAY_KEY, Overlay, apply_overlay
from gateway.policy.config import PolicyConfig
from gateway.policy.quality import HoldWatch, MeterConfig, with_defaults
from gateway.policy.state import PolicyMode, PolicyState
from gateway.store import EntryKind, Store

logger = logging.getLogger(__name__)

OPENING_KEY = "opening"  # the ledger ref (and key prefix) of an account's opening balance

# Persisted as ``billing.<name>``; ``last_ms`` was ``last_ts`` in whole seconds before store
# schema 9, whose migration renames and scales it (`gateway.store.db`).
_BILLING_FIELDS = (
    "cycle_id", "usage_milli", "net_acc", "tax_acc", "tax_rem", "last_ms",
    "last_register_milli", "standing_day",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class PublishedState:
    """What the account's last retained ``state`` message said, and when it went out."""

    mode: PolicyMode
    debt_minor: int
    at: datetime


@dataclass
class Account:
    """One account at run time."""

    config: AccountConfig
    policy: PolicyConfig
    currency: str
    billing: AccountState
    policy_state: PolicyState
    debt_minor: int = (
        0  # the ledger's debt register, kept in step by `gateway.flows.effects.apply_decision`
    )
    meter: MeterConfig | None = None  # data-quality settings of the account's meter
    wraps: int = 0  # how often the meter's register rolled over (see `gateway.policy.quality`)
    watch: HoldWatch = field(default_factory=HoldWatch)  # held readings since the last billed
    published: PublishedState | None = None  # the last state message queued
    state_dirty: bool = False  # the balance moved since the last state message

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def balance_minor(self) -> int:
        return self.billing.balance_minor

    def to_record(self) -> dict[str, int | str | None]:
        """Flat record the store persists (exact integers)."""
        record: dict[str, int | str | None] = {
            "tariff": self.config.tariff,
            "class": self.billing.class_name,
            "balance_minor": self.billing.balance_minor,
            "meter.wraps": self.wraps,
            **self.watch.to_record(),
        }
        for name in _BILLING_FIELDS:
            record[f"billing.{name}"] = getattr(self.billing, name)
        for key, value in self.policy_state.to_dict().items():
            record[f"policy.{key}"] = value
        return record


def _billing_from(
    record: dict[str, Any] | None, config: AccountConfig, balance: int
) -> AccountState:
    state = AccountState(balance, config.class_name, usage_milli=config.opening_usage)
    if record is None:
        return state  # a new account: its first reading is its baseline
    # A tariff or class change keeps the meter's baseline and the cycle's usage: the new tariff
    # prices from the next reading on (a different cycle definition starts a new cycle).
    for name in _BILLING_FIELDS:
        key = f"billing.{name}"
        if key in record:
            setattr(state, name, record[key])
    return state


class AccountBook:
    """All accounts of the site, by id and by meter, and one engine per tariff."""

    def __init__(
        self,
        site: Site,
        records: dict[str, dict[str, Any]],
        balances: dict[str, int],
        debts: dict[str, int],
        *,
        kernel: Kernel | None = None,
    ) -> None:
        self.engines = {tid: BillingEngine(t, kernel) for tid, t in site.tariffs.items()}
        self.by_id: dict[str, Account] = {}
        self.by_meter: dict[str, Account] = {}
        self.by_actuator: dict[str, Account] = {}
        self._device_meters = site.device_meters
        meters = {m.id: m for m in site.config.meters}
        ratings = site.meter_ratings
        for config in site.config.accounts:
            policy = site.config.policies[config.policy]
            record = records.get(config.id)
            balance = balances.get(config.id, 0)
            billing = _billing_from(record, config, balance)
            if record is not None and record.get("balance_minor") != balance:
                logger.error(
                    "account %s: saved balance %s differs from the ledger's %d; the ledger wins",
                    config.id,
                    record.get("balance_minor"),
                    balance,
                )
            policy_record = {
                k.removeprefix("policy."): v
                for k, v in (record or {}).items()
                if k.startswith("policy.")
            }
            policy_state = (
                PolicyState.from_dict(policy_record)
                if policy_record
                else PolicyState.initial(policy, balance)
            )
            tariff = site.tariffs[config.tariff]
            account = Account(
                config,
                policy,
                config.currency or tariff.currency,
                billing,
                policy_state,
                debts.get(config.id, 0),
                # Plausibility is on for every meter: its own rate, else a default.
                with_defaults(
                    meters.get(config.meter), config.meter, tariff.unit, ratings.get(config.meter)
                ),
                int((record or {}).get("meter.wraps") or 0),
                HoldWatch.from_record(record or {}),
            )
            self.by_id[config.id] = account
            self.by_meter[config.meter] = account
            if config.actuator is not None:
                self.by_actuator[config.actuator] = account

    def engine_for(self, account: Account) -> BillingEngine:
        return self.engines[account.config.tariff]

    def of_device(self, device_id: str) -> Account | None:
        """The account whose meter or actuator ``device_id`` is, if any (by meter id, by
        actuator id, or by the id of the device that reads the meter)."""
        found = self.by_meter.get(device_id) or self.by_actuator.get(device_id)
        if found is None and (meter := self._device_meters.get(device_id)) is not None:
            found = self.by_meter.get(meter)
        return found


def load_book(
    site: Site, store: Store, kernel: Kernel | None = None
) -> tuple[AccountBook, Overlay]:
    """The account book of ``site`` with the backend's overlay merged in, from the store."""
    records = store.load_account_states()
    overlay = Overlay.from_record(records.pop(OVERLAY_KEY, None))
    effective = apply_overlay(site, overlay)
    ids = [a.id for a in effective.config.accounts]
    book = AccountBook(
        effective,
        records,
        {i: store.balance(i) for i in ids},
        {i: store.debt(i) for i in ids},
        kernel=kernel,
    )
    return book, overlay


def credit_opening_balances(site: Site, store: Store, now: datetime) -> list[str]:
    """Credit each new account's ``opening_balance_minor`` once; returns the accounts credited.

    New means the store holds nothing of it yet: no saved state, no ledger entry. The credit is
    an ``adjustment`` entry keyed ``opening:{account}``, so a second start (or a reload) finds
    it and adds nothing; an account that already has a history never gets one (an opening
    balance set later is a mistake to make as a top-up or an adjustment, not at a restart).
    It runs before the account book loads, so the account starts from it: an account opened
    in credit starts with supply on, one opened below its cut-off starts cut, with no on/off
    flap at the first start.
    """
    wanted = [a for a in site.config.accounts if a.opening_balance_minor != 0]
    if not wanted:
        return []
    records = store.load_account_states()
    fresh = [a for a in wanted if a.id not in records and not store.entries(a.id, limit=1)]
    if not fresh:
        return []
    with store.transaction() as tx:
        for account in fresh:
            currency = account.currency or site.tariffs[account.tariff].currency
            tx.append_entry(
                account.id,
                EntryKind.ADJUSTMENT,
                account.opening_balance_minor,
                currency,
                f"{OPENING_KEY}:{account.id}",
                created_at=now,
                ref=OPENING_KEY,
                detail={"reason": "opening balance from the site file"},
            )
    for account in fresh:
        logger.info(
            "account %s: opened with %d (opening_balance_minor)",
            account.id,
            account.opening_balance_minor,
        )
    return [a.id for a in fresh]
