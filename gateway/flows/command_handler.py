"""Backend commands: verify, apply exactly once, answer on ``cmd/{kind}/result``.

A command that cannot be verified (malformed, badly signed, expired, for another site) is
answered ``rejected`` and changes nothing; its id cannot be trusted, so nothing is recorded.
A verified command is applied in one transaction together with its recorded result, so the same
id later is answered ``duplicate`` with the first result (and the same receipt) and no effect.
Top-ups credit the ledger (key ``topup:<id>``), run the policy (debt recovery, restore) and yield
a receipt with the site's next sequence number, signed by the gateway's key.

What the ``tariff`` and ``account`` commands change is decided in
`gateway.flows.overlay_commands`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from billing_engine.base.errors import PrepayError
from billing_engine.instants import to_ms
from gateway.errors import CommandRejectedError
from gateway.flows.accounts import Account
from gateway.flows.context import FlowContext
from gateway.flows.effects import (
    apply_decision,
    apply_events_and_supply,
    apply_ledger_ops,
    enqueue_account_state,
    enqueue_alarm,
    enqueue_event,
)
from gateway.flows.overlay import OVERLAY_KEY, Overlay, apply_overlay
from gateway.flows.overlay_commands import account_overlay, tariff_overlay
from gateway.flows.ticket_feed import BatchImport
from gateway.northbound.commands import (
    Command,
    InvoiceCommand,
    MeterCommand,
    ReceiptCommand,
    RefundCommand,
    SupplyCommand,
    TariffCommand,
    TicketBatchCommand,
    TopupCommand,
    command_digest,
    command_id_of,
    parse_and_verify,
)
from gateway.northbound.payloads import (
    CommandKind,
    CommandResultPayload,
    InvoiceDetailsPayload,
    InvoiceRequestPayload,
    InvoiceStatePayload,
    InvoiceStatus,
    ReceiptPayload,
    ResultStatus,
    encode_payload,
)
from gateway.northbound.receipts import (
    AnyReceiptPayload,
    make_checkpoint,
    make_receipt,
    receipt_model,
)
from gateway.northbound.signing import canonical_json
from gateway.policy import quality
from gateway.policy.machine import on_balance, on_topup, set_override
from gateway.policy.state import EventKind
from gateway.store import EntryKind, Transaction
from gateway.store.invoices import (
    FAILED,
    ISSUED,
    REQUESTED,
    Invoice,
    InvoiceConflictError,
    InvoiceDetails,
    invoice_id_of,
)
from gateway.store.tickets import BatchConflictError
from gateway.tickets.batches import BatchError

logger = logging.getLogger(__name__)

_INT64_MAX = 2**63 - 1  # SQLite INTEGER: the ledger's amounts and balances
_REJECT_LOG_EVERY_S = 10.0


class _RejectionLog:
    """Logs refused commands at a bounded rate: a flood of bad commands costs one line per
    interval (with how many were refused meanwhile), not one line each."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._next_at = 0.0
        self._suppressed = 0

    def rejected(self, command_id: str | None, kind: str, exc: CommandRejectedError) -> None:
        now = self._clock()
        if now < self._next_at:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more refused since the last line)" if self._suppressed else ""
        logger.warning("command %s on cmd/%s rejected: %s%s", command_id, kind, exc, more)
        self._suppressed = 0
        self._next_at = now + _REJECT_LOG_EVERY_S


class CommandHandler:
    """Applies verified backend commands to the store and the account book."""

    def __init__(
        self,
        ctx: FlowContext,
        *,
        backend_key: Ed25519PublicKey,
        gateway_key: Ed25519PrivateKey,
        ticket_batches: BatchImport | None = None,
    ) -> None:
        self._ctx = ctx
        self._ticket_batches = ticket_batches
        self._batch_refusals: dict[str, CommandRejectedError] = {}
        self._backend_key = backend_key
        self._gateway_key = gateway_key
        self._overlay_changed = False
        self._rejections = _RejectionLog(time.monotonic)
        self.applied = 0
        self.rejected = 0
        self.duplicates = 0

    async def handle(self, kind: str, raw: bytes, *, retained: bool = False) -> None:
        """Entry point for every message on ``cmd/{kind}`` (the MQTT link's callback).

        A retained command is refused: the broker would hand it to every future connection,
        so it would be replayed at each restart of the gateway.
        """
        ctx = self._ctx
        now = ctx.clock()
        try:
            command = self._verify(kind, raw, retained=retained, now=now)
        except CommandRejectedError as exc:
            self.rejected += 1
            command_id = command_id_of(raw, ctx.site.config.commands.max_payload_bytes)
            self._rejections.rejected(command_id, kind, exc)
            await asyncio.to_thread(self._answer_unverified, kind, command_id, exc, now)
            ctx.wishes.flush()
            return
        await self.apply(command, now)

    def _verify(self, kind: str, raw: bytes, *, retained: bool, now: datetime) -> Command:
        if retained:
            raise CommandRejectedError(
                "retained", "commands must be published with the retain flag off"
            )
        return parse_and_verify(
            kind,
            raw,
            site_id=self._ctx.topics.site,
            backend_public_key=self._backend_key,
            now=now,
            limits=self._ctx.site.config.commands,
        )

    async def apply(self, command: Command, now: datetime) -> CommandResultPayload:
        """Apply a verified command (also used by the local ``prepay topup``); returns the
        result as it was published."""
        ctx = self._ctx
        async with ctx.lock:
            self._overlay_changed = False
            try:
                if isinstance(command, TicketBatchCommand):
                    await asyncio.to_thread(self._import_batch, command)
                result = await asyncio.to_thread(self._apply, command, now)
            except BaseException as exc:
                # The transaction rolled back but the accounts in memory may have moved on:
                # reload them from the store before anything else uses them.
                ctx.wishes.discard()
                await asyncio.to_thread(ctx.reload)
                if not isinstance(exc, Exception):
                    raise  # cancellation: the command is resent by the backend, unanswered
                # Every command gets exactly one answer, a bug or a full disk included: the
                # effect rolled back, so say so (not recorded: a resend may then succeed).
                logger.exception(
                    "command %s (%s) failed; answered internal_error", command.id, command.kind
                )
                self.rejected += 1
                result = CommandResultPayload(
                    id=command.id,
                    kind=CommandKind(command.kind),
                    status=ResultStatus.REJECTED,
                    reason="internal_error",
                    detail=f"{type(exc).__name__}; nothing was changed",
                    ts=now,
                )
                await asyncio.to_thread(self._answer, result)
            if self._overlay_changed:
                await asyncio.to_thread(ctx.reload)
        ctx.wishes.flush()
        return result

    def _import_batch(self, command: TicketBatchCommand) -> None:
        """``cmd/ticket_batch``, before its transaction: the ticket tables are written through
        their own connection (one writer at a time), so the import runs first, and the command's
        result is recorded after it. An id already answered is not imported again (a resend, or
        the same id with other content: `_apply` answers those from the record); a refusal is
        kept for `_dispatch` to answer."""
        if self._ctx.store.command_result(command.id) is not None:
            return
        if self._ticket_batches is None:
            self._batch_refusals[command.id] = CommandRejectedError(
                "not_supported", "this site takes no water tickets (no tickets: section)"
            )
            return
        # The document as sent, signature included (canonical_json leaves the signature out).
        raw = json.dumps(command.batch, ensure_ascii=False).encode()
        try:
            self._ticket_batches.load(raw)
        except (BatchError, BatchConflictError) as exc:
            self._batch_refusals[command.id] = CommandRejectedError("invalid_batch", str(exc))

    def _answer(self, result: CommandResultPayload) -> None:
        """Publish a result that is not recorded against the command's id."""
        with self._ctx.store.transaction() as tx:
            tx.enqueue(self._ctx.topics.command_result_message(result))

    def _answer_unverified(
        self, kind: str, command_id: str | None, exc: CommandRejectedError, now: datetime
    ) -> None:
        try:
            command_kind = CommandKind(kind)
        except ValueError:
            return  # not a topic we answer on
        result = CommandResultPayload(
            id=command_id,
            kind=command_kind,
            status=ResultStatus.REJECTED,
            reason=exc.reason,
            detail=exc.detail or None,
            ts=now,
        )
        self._answer(result)

    def _apply(self, command: Command, now: datetime) -> CommandResultPayload:
        kind = CommandKind(command.kind)
        digest = command_digest(command)
        with self._ctx.store.transaction() as tx:
            first = tx.stored_command(command.id)
            if first is not None and first.content_hash not in (None, digest):
                # The same id with other content: not a resend. Refused, and not recorded (the
                # id keeps its first result).
                self.rejected += 1
                result = CommandResultPayload(
                    id=command.id,
                    kind=kind,
                    status=ResultStatus.REJECTED,
                    reason="duplicate_conflict",
                    detail="this id was used before with different content",
                    ts=now,
                )
                tx.enqueue(self._ctx.topics.command_result_message(result))
                return result
            if first is not None:
                # The same id again: the first result, said again as a duplicate, with no effect.
                self.duplicates += 1
                result = CommandResultPayload.model_validate_json(first.result_json)
                if result.status is ResultStatus.APPLIED:
                    result = result.model_copy(update={"status": ResultStatus.DUPLICATE})
                result = result.model_copy(update={"ts": now})
                tx.enqueue(self._ctx.topics.command_result_message(result))
                return result
            try:
                receipt = self._dispatch(tx, command, now)
            except CommandRejectedError as exc:
                self.rejected += 1
                result = CommandResultPayload(
                    id=command.id,
                    kind=kind,
                    status=ResultStatus.REJECTED,
                    reason=exc.reason,
                    detail=exc.detail or None,
                    ts=now,
                )
            else:
                self.applied += 1
                result = CommandResultPayload(
                    id=command.id, kind=kind, status=ResultStatus.APPLIED, receipt=receipt, ts=now
                )
            tx.record_command(command.id, kind.value, encode_payload(result).decode(), digest)
            tx.enqueue(self._ctx.topics.command_result_message(result))
            return result

    def _account(self, account_id: str) -> Account:
        account = self._ctx.book.by_id.get(account_id)
        if account is None:
            raise CommandRejectedError("unknown_account", f"no account {account_id!r} here")
        return account

    def _account_in(self, account_id: str, currency: str) -> Account:
        """The account, refusing money in another currency than the account's."""
        account = self._account(account_id)
        if currency != account.currency:
            raise CommandRejectedError(
                "currency_mismatch", f"account {account.id} is in {account.currency}"
            )
        return account

    def _save_and_publish(self, tx: Transaction, account: Account, now: datetime) -> None:
        """Persist the account's state and queue its retained ``state`` message."""
        tx.save_account_state(account.id, account.to_record())
        enqueue_account_state(tx, self._ctx.topics, account, now)

    def _dispatch(
        self, tx: Transaction, command: Command, now: datetime
    ) -> AnyReceiptPayload | None:
        if isinstance(command, TopupCommand):
            return self._topup(tx, command, now)
        if isinstance(command, RefundCommand):
            self._refund(tx, command, now)
            return None
        if isinstance(command, ReceiptCommand):
            if command.topup_id is not None:
                receipt = tx.receipt_for_topup(command.topup_id)
                if receipt is None:
                    raise CommandRejectedError("unknown_topup", f"no top-up {command.topup_id!r}")
            else:
                receipt = tx.receipt_by_seq(command.receipt_seq or 0)
                if receipt is None:
                    raise CommandRejectedError(
                        "unknown_receipt", f"no receipt number {command.receipt_seq}"
                    )
            # The receipt is stored as its canonical JSON (what was signed) and its signature.
            signed = {**json.loads(receipt.payload), "signature": receipt.signature.decode()}
            return receipt_model(signed)
        if isinstance(command, SupplyCommand):
            self._supply(tx, command, now)
            return None
        if isinstance(command, MeterCommand):
            self._meter(tx, command, now)
            return None
        if isinstance(command, InvoiceCommand):
            self._invoice(tx, command, now)
            return None
        if isinstance(command, TicketBatchCommand):
            refusal = self._batch_refusals.pop(command.id, None)
            if refusal is not None:
                raise refusal
            return None
        if isinstance(command, TariffCommand):
            self._save_overlay(tx, tariff_overlay(self._ctx, command, now))
            return None
        self._save_overlay(tx, account_overlay(self._ctx, command))
        return None

    def _save_overlay(self, tx: Transaction, overlay: Overlay) -> None:
        try:
            apply_overlay(self._ctx.site, overlay)  # everything must still load
        except (ValidationError, PrepayError, ValueError) as exc:
            raise CommandRejectedError("invalid_config", str(exc).splitlines()[0]) from None
        tx.save_account_state(OVERLAY_KEY, overlay.to_record())
        self._overlay_changed = True

    def _topup(self, tx: Transaction, command: TopupCommand, now: datetime) -> ReceiptPayload:
        account = self._account_in(command.account, command.currency)
        before = account.billing.balance_minor
        if before + command.amount_minor > _INT64_MAX:
            raise CommandRejectedError(
                "balance_overflow", "the balance would leave the 64-bit range the ledger keeps"
            )
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
        # Money first (a recovery of debt moves the balance the receipt shows), then the
        # top-up's own event, then what it caused (``restored`` after ``topup_applied``).
        apply_ledger_ops(tx, account, decision, now, key_base=command.id)
        seq = tx.next_receipt_seq()
        receipt = make_receipt(
            seq,
            command,
            account.billing.balance_minor,
            applied_at=now,
            gateway_key=self._gateway_key,
            store=tx.incarnation,
        )
        signature = str(receipt["signature"]).encode()
        tx.save_receipt(seq, command.id, account.id, canonical_json(receipt), signature)
        payload = ReceiptPayload.model_validate(receipt)
        enqueue_event(
            tx,
            self._ctx.topics,
            account,
            EventKind.TOPUP_APPLIED,
            now,
            amount_minor=command.amount_minor,
            receipt=payload,
        )
        apply_events_and_supply(tx, self._ctx, account, decision, now)
        if command.invoice is not None:
            self._request_invoice(
                tx, command.id, account, (command.id,), command.amount_minor, command.invoice, now
            )
        self._save_and_publish(tx, account, now)
        self._enqueue_checkpoint(tx, now)
        return payload

    def _enqueue_checkpoint(self, tx: Transaction, now: datetime) -> None:
        """Queue the signed ledger head with the top-up that moved it: once the top-up is
        published, so is a head that a store restored from an older copy cannot reach (the
        daemon refuses to start behind it), so the top-up cannot be credited twice."""
        seq, mac = tx.ledger_head()
        topics = self._ctx.topics
        checkpoint = make_checkpoint(
            topics.site, tx.incarnation, seq, mac, ts=now, gateway_key=self._gateway_key
        )
        tx.enqueue(topics.checkpoint_message(checkpoint))

    def _refund(self, tx: Transaction, command: RefundCommand, now: datetime) -> None:
        account = self._account_in(command.account, command.currency)
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
        apply_decision(tx, self._ctx, account, decision, now, key_base=command.id)
        self._save_and_publish(tx, account, now)

    # --- invoices ----------------------------------------------------------------------------

    def _request_invoice(
        self,
        tx: Transaction,
        asked_by: str,
        account: Account,
        topup_ids: tuple[str, ...],
        amount_minor: int,
        details: InvoiceDetailsPayload,
        now: datetime,
    ) -> Invoice:
        """Record an invoice request and queue its message, in the transaction that asks."""
        try:
            invoice = tx.request_invoice(
                invoice_id=invoice_id_of(asked_by),
                account_id=account.id,
                topup_ids=topup_ids,
                amount_minor=amount_minor,
                currency=account.currency,
                details=InvoiceDetails(details.title, details.tax_id, details.email),
            )
        except InvoiceConflictError as exc:
            raise CommandRejectedError("invoice_conflict", str(exc)) from None
        self._publish_invoice(tx, invoice, now, request=True)
        return invoice

    def _publish_invoice(
        self, tx: Transaction, invoice: Invoice, now: datetime, *, request: bool
    ) -> None:
        topics = self._ctx.topics
        if request:
            tx.enqueue(
                topics.invoice_request_message(
                    InvoiceRequestPayload(
                        invoice_id=invoice.invoice_id,
                        account=invoice.account_id,
                        topups=list(invoice.topup_ids),
                        amount_minor=invoice.amount_minor,
                        currency=invoice.currency,
                        details=InvoiceDetailsPayload(
                            title=invoice.details.title,
                            tax_id=invoice.details.tax_id,
                            email=invoice.details.email,
                        ),
                        request=invoice.requests,
                        ts=now,
                    )
                )
            )
        tx.enqueue(
            topics.invoice_state_message(
                InvoiceStatePayload(
                    invoice_id=invoice.invoice_id,
                    account=invoice.account_id,
                    status=InvoiceStatus(invoice.status),
                    number=invoice.number,
                    reason=invoice.reason,
                    ts=now,
                )
            )
        )

    def _invoice(self, tx: Transaction, command: InvoiceCommand, now: datetime) -> None:
        if command.action == "request_period":
            # The model requires these for request_period; the checks satisfy the type checker.
            details, start, end = command.details, command.period_from, command.period_to
            if command.account is None or details is None or start is None or end is None:
                raise CommandRejectedError("malformed", "request_period needs its fields")
            account = self._account(command.account)
            topups = tx.uninvoiced_topups(account.id, start, end)
            if not topups:
                raise CommandRejectedError(
                    "nothing_to_invoice",
                    f"account {account.id} has no top-up in that period that is not invoiced",
                )
            total = sum(amount for _, amount, _ in topups)
            ids = tuple(topup_id for topup_id, _, _ in topups)
            self._request_invoice(tx, command.id, account, ids, total, details, now)
            return
        assert command.invoice_id is not None  # noqa: S101 - the model requires it here
        invoice = tx.invoice(command.invoice_id)
        if invoice is None:
            raise CommandRejectedError("unknown_invoice", f"no invoice {command.invoice_id!r}")
        if command.action == "issued":
            if invoice.status == ISSUED and invoice.number != command.number:
                raise CommandRejectedError(
                    "invoice_conflict",
                    f"invoice {invoice.invoice_id} was issued as {invoice.number}",
                )
            updated = tx.set_invoice_status(invoice.invoice_id, ISSUED, number=command.number)
            self._publish_invoice(tx, updated, now, request=False)
        elif command.action == "failed":
            if invoice.status == ISSUED:
                raise CommandRejectedError(
                    "invoice_conflict", f"invoice {invoice.invoice_id} is issued already"
                )
            updated = tx.set_invoice_status(invoice.invoice_id, FAILED, reason=command.reason)
            self._publish_invoice(tx, updated, now, request=False)
        else:  # reissue: ask again (after a failure, or a customer who lost it)
            updated = tx.set_invoice_status(
                invoice.invoice_id, REQUESTED, number=None, reason=None, resend=True
            )
            self._publish_invoice(tx, updated, now, request=True)

    def _meter(self, tx: Transaction, command: MeterCommand, now: datetime) -> None:
        """Accept the new level of a reset or swapped meter: its billing continues from the
        level the held readings showed, as if that had been its last billed reading."""
        account = self._ctx.book.by_meter.get(command.meter)
        if account is None:
            raise CommandRejectedError("unknown_meter", f"no account is billed by {command.meter}")
        watch = account.watch
        if not watch.decision or watch.level_milli is None or watch.level_at is None:
            raise CommandRejectedError(
                "no_decision_pending",
                f"meter {command.meter} has no reset or swap waiting for a decision",
            )
        for alarm in quality.accept_level(watch, command.reason):
            enqueue_alarm(tx, self._ctx.topics, account, alarm.code, alarm.detail, now)
        account.billing.last_register_milli = watch.level_milli
        account.billing.last_ms = to_ms(watch.level_at)
        account.watch = quality.HoldWatch()
        logger.info(
            "meter %s: new level %d accepted (%s); billing continues from it",
            command.meter,
            watch.level_milli,
            command.reason,
        )
        self._save_and_publish(tx, account, now)

    def _supply(self, tx: Transaction, command: SupplyCommand, now: datetime) -> None:
        account = self._ctx.book.by_actuator.get(command.device)
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
        apply_decision(tx, self._ctx, account, decision, now, key_base=command.id)
        self._save_and_publish(tx, account, now)
