"""Backend commands: verify, apply exactly once, answer on ``cmd/{kind}/result``.

A command that cannot be verified (malformed, badly signed, expired, for another site) is
answered ``rejected`` and changes nothing; its id cannot be trusted, so nothing is recorded.
A verified command is applied in one transaction together with its recorded result, so the same
id later is answered ``duplicate`` with the first result (and the same receipt) and no effect.
Top-ups credit the ledger (key ``topup:<id>``), run the policy (debt recovery, restore) and yield
a receipt with the site's next sequence number, signed by the gateway's key.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from billing_engine.errors import PrepayError
from billing_engine.tariff import Tariff
from gateway.accounts import Account, AccountBook
from gateway.config import AccountConfig, Site
from gateway.decisions import on_balance, on_topup, set_override
from gateway.effects import Effects, apply_decision, enqueue_account_state, enqueue_event
from gateway.errors import CommandRejectedError
from gateway.northbound.commands import (
    AccountCommand,
    Command,
    ReceiptCommand,
    RefundCommand,
    SupplyCommand,
    TariffCommand,
    TopupCommand,
    canonical_json,
    command_id_of,
    make_receipt,
    parse_and_verify,
)
from gateway.northbound.topics import CommandKind, SiteTopics, result_payload
from gateway.overlay import OVERLAY_KEY, Overlay, apply_overlay, derived_tariff_id
from gateway.store import EntryKind, Store, Transaction

logger = logging.getLogger(__name__)


class CommandHandler:
    """Applies verified backend commands to the store and the account book."""

    def __init__(
        self,
        store: Store,
        book: Callable[[], AccountBook],
        topics: SiteTopics,
        clock: Callable[[], datetime],
        effects: Effects,
        state_lock: asyncio.Lock,
        *,
        backend_key: Ed25519PublicKey,
        gateway_key: Ed25519PrivateKey,
        site: Callable[[], Site],
        overlay: Callable[[], Overlay],
        on_overlay: Callable[[], None],
    ) -> None:
        self._store = store
        self._book = book
        self._topics = topics
        self._clock = clock
        self._effects = effects
        self._lock = state_lock
        self._backend_key = backend_key
        self._gateway_key = gateway_key
        self._site = site
        self._overlay = overlay
        self._on_overlay = on_overlay
        self._overlay_changed = False
        self.applied = 0
        self.rejected = 0
        self.duplicates = 0

    async def handle(self, kind: str, raw: bytes) -> None:
        """Entry point for every message on ``cmd/{kind}`` (the MQTT link's callback)."""
        now = self._clock()
        try:
            command = parse_and_verify(
                kind, raw, site_id=self._topics.site, backend_public_key=self._backend_key, now=now
            )
        except CommandRejectedError as exc:
            self.rejected += 1
            logger.warning("command %s on cmd/%s rejected: %s", command_id_of(raw), kind, exc)
            await asyncio.to_thread(self._answer_unverified, kind, command_id_of(raw), exc, now)
            self._effects.flush()
            return
        await self.apply(command, now)

    async def apply(self, command: Command, now: datetime) -> dict[str, Any]:
        """Apply a verified command (also used by the local ``prepay topup``); returns the
        result payload as a dict."""
        async with self._lock:
            self._overlay_changed = False
            try:
                result = await asyncio.to_thread(self._apply, command, now)
            except BaseException:
                # The transaction rolled back but the accounts in memory may have moved on:
                # reload them from the store before anything else uses them.
                self._effects.discard()
                await asyncio.to_thread(self._on_overlay)
                raise
            if self._overlay_changed:
                await asyncio.to_thread(self._on_overlay)
        self._effects.flush()
        return result

    def _answer_unverified(
        self, kind: str, command_id: str | None, exc: CommandRejectedError, now: datetime
    ) -> None:
        try:
            command_kind = CommandKind(kind)
        except ValueError:
            return  # not a topic we answer on
        payload = result_payload(
            command_id, command_kind, "rejected", now, reason=exc.reason, detail=exc.detail
        )
        out = self._topics.command_result_message(payload)
        with self._store.transaction() as tx:
            tx.enqueue(out.topic, out.payload, out.qos, out.retain, out.message_class)

    def _apply(self, command: Command, now: datetime) -> dict[str, Any]:
        kind = CommandKind(command.kind)
        with self._store.transaction() as tx:
            first = tx.command_result(command.id)
            if first is not None:
                self.duplicates += 1
                result = json.loads(first)
                if result.get("status") == "applied":
                    result["status"] = "duplicate"
                result["ts"] = now.isoformat().replace("+00:00", "Z")
                self._send(tx, kind, result)
                return dict(result)
            try:
                receipt = self._dispatch(tx, command, now)
            except CommandRejectedError as exc:
                self.rejected += 1
                payload = result_payload(
                    command.id, kind, "rejected", now, reason=exc.reason, detail=exc.detail
                )
            else:
                self.applied += 1
                payload = result_payload(command.id, kind, "applied", now, receipt=receipt)
            result = json.loads(payload.model_dump_json(exclude_none=True, by_alias=True))
            tx.record_command(command.id, kind.value, json.dumps(result, sort_keys=True))
            self._send(tx, kind, result)
            return dict(result)

    def _send(self, tx: Transaction, kind: CommandKind, result: dict[str, Any]) -> None:
        payload = result_payload(
            result.get("id"),
            kind,
            result["status"],
            self._clock(),
            reason=result.get("reason"),
            detail=result.get("detail"),
            receipt=result.get("receipt"),
        )
        out = self._topics.command_result_message(payload)
        tx.enqueue(out.topic, out.payload, out.qos, out.retain, out.message_class)

    def _account(self, account_id: str) -> Account:
        account = self._book().by_id.get(account_id)
        if account is None:
            raise CommandRejectedError("unknown_account", f"no account {account_id!r} here")
        return account

    def _dispatch(self, tx: Transaction, command: Command, now: datetime) -> dict[str, Any] | None:
        if isinstance(command, TopupCommand):
            return self._topup(tx, command, now)
        if isinstance(command, RefundCommand):
            self._refund(tx, command, now)
            return None
        if isinstance(command, ReceiptCommand):
            receipt = tx.receipt_for_topup(command.topup_id)
            if receipt is None:
                raise CommandRejectedError("unknown_topup", f"no top-up {command.topup_id!r}")
            return dict(json.loads(receipt.payload))
        if isinstance(command, SupplyCommand):
            self._supply(tx, command, now)
            return None
        if isinstance(command, TariffCommand):
            self._save_overlay(tx, self._tariff_overlay(command, now))
            return None
        self._save_overlay(tx, self._account_overlay(command))
        return None

    def _save_overlay(self, tx: Transaction, overlay: Overlay) -> None:
        try:
            apply_overlay(self._site(), overlay)  # everything must still load
        except (ValidationError, PrepayError, ValueError) as exc:
            raise CommandRejectedError("invalid_config", str(exc).splitlines()[0]) from None
        tx.save_account_state(OVERLAY_KEY, overlay.to_record())
        self._overlay_changed = True

    def _tariff_overlay(self, command: TariffCommand, now: datetime) -> Overlay:
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
        book = self._book()
        base = book.engines.get(new.id)
        if base is None:
            raise CommandRejectedError("unknown_tariff", f"no tariff {new.id!r} on this site")
        old = base.tariff
        for name in ("currency", "unit", "timezone", "cycle"):
            if getattr(old, name) != getattr(new, name):
                raise CommandRejectedError("incompatible_tariff", f"{name} cannot change")
        kept = tuple(v for v in old.versions if v.effective_from < command.effective_at)
        overlay = self._overlay().copy()
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

    def _account_overlay(self, command: AccountCommand) -> Overlay:
        book = self._book()
        overlay = self._overlay().copy()
        existing = book.by_id.get(command.account)
        if command.action == "create":
            if existing is not None:
                raise CommandRejectedError("account_exists", f"{command.account} exists")
            site = self._site()
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
            (
                a
                for a in book.by_id.values()
                if a.config.meter == config.meter and a.id != config.id
            ),
            None,
        )
        if other is not None:
            raise CommandRejectedError("meter_in_use", f"{config.meter} bills {other.id}")
        overlay.accounts[config.id] = config.model_dump(mode="json", by_alias=True)
        return overlay

    def _topup(self, tx: Transaction, command: TopupCommand, now: datetime) -> dict[str, Any]:
        account = self._account(command.account)
        if command.currency != account.currency:
            raise CommandRejectedError(
                "currency_mismatch", f"account {account.id} is in {account.currency}"
            )
        before = account.billing.balance_minor
        tx.append_entry(
            account.id,
            EntryKind.TOPUP,
            command.amount_minor,
            account.currency,
            f"topup:{command.id}",
            created_at=now,
            ref=command.id,
            detail={"payment_ref": command.payment_ref or ""},
        )
        account.billing.balance_minor += command.amount_minor
        decision = on_topup(
            account.policy,
            account.policy_state,
            before,
            command.amount_minor,
            account.debt_minor,
            now,
        )
        apply_decision(tx, self._topics, account, decision, now, self._effects, key_base=command.id)
        seq = tx.next_receipt_seq()
        receipt = make_receipt(
            seq,
            command,
            account.billing.balance_minor,
            applied_at=now,
            gateway_key=self._gateway_key,
        )
        signature = str(receipt["signature"]).encode()
        tx.save_receipt(seq, command.id, account.id, canonical_json(receipt), signature)
        enqueue_event(
            tx,
            self._topics,
            account,
            "topup_applied",
            now,
            amount_minor=command.amount_minor,
            receipt=receipt,
        )
        tx.save_account_state(account.id, account.to_record())
        enqueue_account_state(tx, self._topics, account, now)
        return receipt

    def _refund(self, tx: Transaction, command: RefundCommand, now: datetime) -> None:
        account = self._account(command.account)
        if command.currency != account.currency:
            raise CommandRejectedError(
                "currency_mismatch", f"account {account.id} is in {account.currency}"
            )
        if command.amount_minor > account.billing.balance_minor:
            raise CommandRejectedError(
                "insufficient_balance",
                f"refund {command.amount_minor} exceeds the balance "
                f"{account.billing.balance_minor}",
            )
        tx.append_entry(
            account.id,
            EntryKind.REFUND,
            -command.amount_minor,
            account.currency,
            f"refund:{command.id}",
            created_at=now,
            ref=command.id,
            detail={"reason": command.reason},
        )
        account.billing.balance_minor -= command.amount_minor
        decision = on_balance(
            account.policy, account.policy_state, account.billing.balance_minor, now
        )
        apply_decision(tx, self._topics, account, decision, now, self._effects, key_base=command.id)
        tx.save_account_state(account.id, account.to_record())
        enqueue_account_state(tx, self._topics, account, now)

    def _supply(self, tx: Transaction, command: SupplyCommand, now: datetime) -> None:
        account = next(
            (a for a in self._book().by_id.values() if a.config.actuator == command.device), None
        )
        if account is None:
            raise CommandRejectedError("unknown_device", f"no account is cut by {command.device}")
        override = None if command.override == "auto" else command.override == "on"
        decision = set_override(
            account.policy,
            account.policy_state,
            override,
            command.reason,
            command.until,
            now,
            account.billing.balance_minor,
        )
        apply_decision(tx, self._topics, account, decision, now, self._effects, key_base=command.id)
        tx.save_account_state(account.id, account.to_record())
        enqueue_account_state(tx, self._topics, account, now)
