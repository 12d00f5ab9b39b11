"""What the backend's ``tariff`` and ``account`` commands change: the overlay they produce.

Pure decisions on the running site, its account book and the current overlay (see
`gateway.flows.overlay`); the command handler stores the result in the command's transaction
and reloads the accounts. Every refusal is a `CommandRejectedError` with a stable reason.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ValidationError

from billing_engine.tariff import Tariff
from gateway.config import AccountConfig
from gateway.errors import CommandRejectedError
from gateway.flows.context import FlowContext
from gateway.flows.overlay import Overlay, derived_tariff_id
from gateway.northbound.commands import AccountCommand, TariffCommand


def tariff_overlay(ctx: FlowContext, command: TariffCommand, now: datetime) -> Overlay:
    """The overlay after a ``tariff`` command: a new version of a tariff for the whole site,
    a class or one account, effective from ``effective_at``.

    Raises:
        CommandRejectedError: an invalid tariff, a change in the past, an unknown target.
    """
    try:
        new = Tariff.model_validate(command.tariff)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in error["loc"])
        raise CommandRejectedError("invalid_tariff", f"{where}: {error['msg']}") from None
    if command.effective_at < now:
        raise CommandRejectedError(
            "effective_in_past", "readings already billed cannot be re-priced"
        )
    if any(v.effective_from < command.effective_at for v in new.versions):
        raise CommandRejectedError(
            "invalid_tariff", "every version must start at or after effective_at"
        )
    book = ctx.book
    base = book.engines.get(new.id)
    if base is None:
        raise CommandRejectedError("unknown_tariff", f"no tariff {new.id!r} on this site")
    old = base.tariff
    for name in ("currency", "unit", "timezone", "cycle"):
        if getattr(old, name) != getattr(new, name):
            raise CommandRejectedError("incompatible_tariff", f"{name} cannot change")
    kept = tuple(v for v in old.versions if v.effective_from < command.effective_at)
    overlay = ctx.overlay.copy()
    if command.scope == "site":
        merged_id = old.id
        targets: list[str] = []
    else:
        merged_id = derived_tariff_id(old.id, command.tariff_version)
        targets = [
            a.id
            for a in book.by_id.values()
            if a.config.tariff == old.id
            and (
                a.id == command.target
                if command.scope == "account"
                else a.config.class_name == command.target
            )
        ]
        if not targets:
            raise CommandRejectedError(
                "unknown_account" if command.scope == "account" else "unknown_class",
                f"no account on tariff {old.id} matches {command.scope} {command.target}",
            )
    doc = {
        **old.model_dump(mode="json"),
        "id": merged_id,
        "versions": [v.model_dump(mode="json") for v in (*kept, *new.versions)],
    }
    try:
        Tariff.model_validate(doc)
    except ValidationError as exc:
        raise CommandRejectedError("invalid_tariff", str(exc).splitlines()[0]) from None
    overlay.tariffs[merged_id] = doc
    for account_id in targets:
        config = book.by_id[account_id].config
        overlay.accounts[account_id] = {
            **config.model_dump(mode="json", by_alias=True),
            "tariff": merged_id,
        }
    return overlay


def account_overlay(ctx: FlowContext, command: AccountCommand) -> Overlay:
    """The overlay after an ``account`` command: an account created or changed.

    Raises:
        CommandRejectedError: an existing or unknown account, an ambiguous class, a meter in
            use by another account.
    """
    book = ctx.book
    overlay = ctx.overlay.copy()
    existing = book.by_id.get(command.account)
    if command.action == "create":
        if existing is not None:
            raise CommandRejectedError("account_exists", f"{command.account} exists")
        site = ctx.site
        candidates = [t for t in site.tariffs.values() if command.tariff_class in t.class_names]
        if len(candidates) != 1:
            raise CommandRejectedError(
                "ambiguous_class", f"{len(candidates)} tariffs price {command.tariff_class}"
            )
        if not command.meters:
            raise CommandRejectedError("malformed", "create needs at least one meter")
        policy = (
            command.tariff_class
            if command.tariff_class in site.config.policies
            else next(iter(site.config.policies))
        )
        config = AccountConfig.model_validate(
            {
                "id": command.account,
                "meter": command.meters[0],
                "actuator": command.devices[0] if command.devices else None,
                "tariff": candidates[0].id,
                "class": command.tariff_class,
                "policy": policy,
                "currency": command.currency,
            }
        )
    else:
        if existing is None:
            raise CommandRejectedError("unknown_account", f"no account {command.account!r}")
        changes: dict[str, Any] = {}
        if command.tariff_class is not None:
            changes["class"] = command.tariff_class
        if command.meters:
            changes["meter"] = command.meters[0]
        if command.devices is not None:
            changes["actuator"] = command.devices[0] if command.devices else None
        config = AccountConfig.model_validate(
            {**existing.config.model_dump(mode="json", by_alias=True), **changes}
        )
        policy_changes = dict(overlay.policies.get(command.account, {}))
        if command.low_balance_minor is not None:
            policy_changes["low_thresholds_minor"] = [command.low_balance_minor]
        if command.exempt is not None:
            policy_changes["exempt"] = command.exempt
        if policy_changes:
            overlay.policies[command.account] = policy_changes
    other = next(
        (a for a in book.by_id.values() if a.config.meter == config.meter and a.id != config.id),
        None,
    )
    if other is not None:
        raise CommandRejectedError("meter_in_use", f"{config.meter} bills {other.id}")
    overlay.accounts[config.id] = config.model_dump(mode="json", by_alias=True)
    return overlay
