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

from gateway.accounts import Account, AccountBook
from gateway.decisions import on_balance, on_topup, set_override
from gateway.effects import Effects, apply_decision, enqueue_account_state, enqueue_event
from gateway.errors import CommandRejectedError
from gateway.northbound.commands import (
    Command,
    ReceiptCommand,
    RefundCommand,
    SupplyCommand,
    TopupCommand,
    canonical_json,
    command_id_of,
    make_receipt,
    parse_and_verify,
)
from gateway.northbound.topics import CommandKind, SiteTopics, result_payload
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
    ) -> None:
        self._store = store
        self._book = book
        self._topics = topics
        self._clock = clock
        self._effects = effects
        self._lock = state_lock
        self._backend_key = backend_key
        self._gateway_key = gateway_key
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
            try:
                result = await asyncio.to_thread(self._apply, command, now)
            except BaseException:
                self._effects.discard()
                raise
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
        raise CommandRejectedError(
            "not_supported", f"{command.kind} commands are not applied by this version yet"
        )

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
