"""``prepay supply on|off|auto DEVICE``: a supply override signed with the operator's key.

The same path as a backend ``supply`` command (`gateway.northbound.commands.SupplyCommand`):
signed here, dropped in the spool (`gateway.flows.spool`), verified and applied by the running
daemon like any command (journalled, published, answered once), as ``prepay topup`` does. The
override holds until ``auto`` hands the supply back to the policy.

Applying the command is not the device moving. The daemon commits the override, then drives the
relay or valve and reads it back; only a read-back that matches is journalled as
``supply_confirmed``. So after the result, this module watches the store (read-only) for that
confirmation, and says "requested, not yet confirmed" when it has not come within the wait:
never that the supply is off because it was asked to be.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.config import Site
from gateway.northbound.payloads import CommandKind, format_rfc3339
from gateway.ops.accounts import book_of
from gateway.ops.operator_commands import submit_signed
from gateway.ops.topup import wait_for_result
from gateway.startup import STATE_FILE
from gateway.store.events import SUPPLY_CONFIRMED
from gateway.store.statements import SupplyEvent, open_view

Override = Literal["on", "off", "auto"]

_POLL_S = 0.2
_MAX_REASON = 500  # `gateway.northbound.commands.Text`


class SupplyError(ValueError):
    """The override cannot be made as asked (unknown device, no reason)."""


@dataclass(frozen=True)
class QueuedOverride:
    """A signed override dropped in the spool, and where things stood before it."""

    command_id: str
    device: str
    account: str
    override: Override
    expires_at: str
    #: the newest event id before the command: a confirmation must come after it
    events_before: int
    #: where the policy wanted the supply before the command (None: no store yet)
    wanted_before: str | None


@dataclass(frozen=True)
class Outcome:
    """What became of an override: the daemon's result, and what the device confirmed."""

    queued: QueuedOverride
    #: the daemon's result (``cmd/supply/result``); None: not applied within the wait
    result: dict[str, Any] | None
    supply_wanted: str | None
    #: the device's newest confirmation, whenever it was
    last_confirmed: SupplyEvent | None
    #: the device confirmed ``supply_wanted`` (after this command, when the command changed it)
    confirmed: bool

    @property
    def status(self) -> str:
        """``applied``, ``rejected`` (by the daemon), or ``queued`` (not applied yet)."""
        if self.result is None:
            return "queued"
        return "applied" if self.result.get("status") in ("applied", "duplicate") else "rejected"


def queue_override(
    site: Site, device: str, override: Override, reason: str, operator_key: Path
) -> QueuedOverride:
    """Sign an override of ``device`` and drop it in the spool.

    Raises:
        SupplyError: no account is cut by ``device``, or ``reason`` is empty or too long.
        KeyPermissionError: the operator's key file is readable by its group or others.
        OSError: the key file cannot be read, or the spool cannot be written.
        StoreError: the store exists but cannot be read.
    """
    reason = reason.strip()
    if not 1 <= len(reason) <= _MAX_REASON:
        raise SupplyError(f"--reason: say why, in 1 to {_MAX_REASON} characters")
    account, events_before, wanted_before = _where_it_stands(site, device)
    fields = {"device": device, "override": override, "reason": f"operator: {reason}"}
    command = submit_signed(site, CommandKind.SUPPLY, fields, operator_key)
    return QueuedOverride(
        command["id"],
        device,
        account,
        override,
        command["expires_at"],
        events_before,
        wanted_before,
    )


def _where_it_stands(site: Site, device: str) -> tuple[str, int, str | None]:
    """The account ``device`` cuts, the newest event id and the supply the policy wants."""
    path = site.state_dir / STATE_FILE
    if not path.is_file():  # the daemon never ran: the site file alone says which account
        accounts = {a.actuator: a.id for a in site.config.accounts if a.actuator}
        if device not in accounts:
            raise SupplyError(unknown_device_message(device, accounts))
        return accounts[device], 0, None
    with open_view(path) as view:
        book = book_of(site, view)  # the site with the backend's changes, as the daemon runs it
        account = book.by_actuator.get(device)
        if account is None:
            raise SupplyError(
                unknown_device_message(device, {d: a.id for d, a in book.by_actuator.items()})
            )
        return account.id, view.last_event_id(), account.policy_state.supply.value


def unknown_device_message(device: str, supply_devices: dict[str, str]) -> str:
    known = ", ".join(sorted(supply_devices)) or "none"
    return f"no account is cut by device {device!r} (supply devices on this site: {known})"


def await_outcome(site: Site, queued: QueuedOverride, timeout_s: float) -> Outcome:
    """Wait up to ``timeout_s`` for the daemon's result, then for the device's confirmation.

    Raises:
        StoreError: the store cannot be read.
    """
    deadline = time.monotonic() + timeout_s
    result = wait_for_result(site, queued.command_id, timeout_s)
    if result is None or result.get("status") not in ("applied", "duplicate"):
        return Outcome(queued, result, None, None, confirmed=False)
    while True:
        outcome = _observe(site, queued, result)
        if outcome.confirmed or time.monotonic() >= deadline:
            return outcome
        time.sleep(_POLL_S)


def _observe(site: Site, queued: QueuedOverride, result: dict[str, Any]) -> Outcome:
    with open_view(site.state_dir / STATE_FILE) as view:
        account = book_of(site, view).by_id[queued.account]
        wanted = account.policy_state.supply.value
        device = view.device_supply(queued.device, queued.account)
    latest = device.latest
    changed = queued.wanted_before is None or wanted != queued.wanted_before
    confirmed = (
        latest is not None
        and latest.kind == SUPPLY_CONFIRMED
        and latest.supply == wanted
        and (not changed or latest.event_id > queued.events_before)
    )
    return Outcome(queued, result, wanted, device.confirmed, confirmed=confirmed)


def to_json(outcome: Outcome) -> dict[str, Any]:
    """The outcome as one JSON object."""
    queued, result = outcome.queued, outcome.result or {}
    last = outcome.last_confirmed
    return {
        "command_id": queued.command_id,
        "device": queued.device,
        "account": queued.account,
        "override": queued.override,
        "status": outcome.status,
        "reason": result.get("reason"),
        "detail": result.get("detail"),
        "supply_wanted": outcome.supply_wanted,
        "confirmed": outcome.confirmed,
        "supply_confirmed": None if last is None else last.supply,
        "supply_confirmed_at": None if last is None else format_rfc3339(last.at),
        "expires_at": queued.expires_at,
    }


def render(outcome: Outcome) -> str:
    """One line: what the device confirmed, or that it has not (yet)."""
    queued = outcome.queued
    where = f"{queued.device} (account {queued.account})"
    if outcome.result is None:
        return (
            f"override {queued.override} at {where} queued as {queued.command_id}: the gateway"
            f" has not applied it yet (is it running?); it stays queued until {queued.expires_at}"
        )
    if outcome.status == "rejected":
        result = outcome.result
        detail = f": {result['detail']}" if result.get("detail") else ""
        return f"override {queued.override} at {where} rejected: {result.get('reason')}{detail}"
    wanted = outcome.supply_wanted
    what = "override cleared, the policy wants" if queued.override == "auto" else "supply"
    last = outcome.last_confirmed
    if outcome.confirmed and last is not None:
        return f"{what} {wanted} at {where}: confirmed by the device at {format_rfc3339(last.at)}"
    before = (
        f"; it last confirmed {last.supply} at {format_rfc3339(last.at)}"
        if last is not None
        else "; it has never confirmed a state"
    )
    return f"{what} {wanted} at {where}: requested, not yet confirmed by the device{before}"
