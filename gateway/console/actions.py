"""The console's actions, taken through the path ``prepay topup`` takes.

Each action is a command signed with the operator's Ed25519 key, checked by
`gateway.northbound.commands.parse_and_verify` against ``keys.operator_public_key`` exactly as
the spool checks a ``prepay topup`` (`gateway.flows.spool`), then applied by the daemon's
command handler: same ledger, same journal, same idempotency by command id, same receipt. The
console hands it over in memory rather than through the spool directory, so the operator sees
the result at once. The operator's name goes into the command (``payment_ref`` or ``reason``,
``console:NAME: ...``) and a ``console_action`` event records who did what and what came of it.
Acknowledging an alarm is not a command: it only writes an ``alarm_acknowledged`` event.
Redeeming a water ticket at the counter is not a command either: it takes the path of
``prepay ticket redeem`` (`gateway.console.tickets.CounterTickets.redeem`), with
``console:NAME`` as where it was redeemed, and a ``console_action`` event records it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from billing_engine import money
from gateway.console.reads import ALARM_ACKNOWLEDGED, CONSOLE_ACTION
from gateway.console.tickets import CounterRedemption, CounterTickets
from gateway.errors import CommandRejectedError
from gateway.northbound.commands import Command, new_command, parse_and_verify, sign_command
from gateway.northbound.payloads import CommandKind, CommandResultPayload
from gateway.store import Store

MAX_REASON = 200
#: Bounds of a redemption's place and request id (those of ``prepay ticket redeem``).
MAX_WHERE = 200
MAX_REDEMPTION_ID = 128


class ActionError(ValueError):
    """The action cannot be taken as asked (a bad amount, no reason); nothing was changed."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of an action: ``applied``, ``duplicate`` or ``rejected`` (with why)."""

    command_id: str
    status: str
    reason: str | None
    detail: str | None

    @property
    def ok(self) -> bool:
        return self.status in ("applied", "duplicate")

    def text(self) -> str:
        why = ": ".join(p for p in (self.reason, self.detail) if p)
        return f"{self.status}{f' ({why})' if why else ''}"


class Actions:
    """Signs, applies and journals the console's actions for one running gateway."""

    def __init__(
        self,
        *,
        site_id: str,
        operator_key: Ed25519PrivateKey | None,
        operator_public_key: Ed25519PublicKey | None,
        apply: Callable[[Command, datetime], Awaitable[CommandResultPayload]],
        store: Store,
        lock: asyncio.Lock,
        clock: Callable[[], datetime],
        tickets: CounterTickets | None = None,
    ) -> None:
        self._site = site_id
        self._tickets = tickets
        self._key = operator_key
        self._public = operator_public_key
        self._apply = apply
        self._store = store
        self._lock = lock
        self._clock = clock

    @property
    def enabled(self) -> bool:
        """Actions need the operator's private key here and its public key in the site."""
        return self._key is not None and self._public is not None

    async def topup(self, user: str, account: str, currency: str, amount: str, ref: str) -> Outcome:
        """Credit ``amount`` (major units, ``50.00``) of ``currency`` to ``account``.

        Raises:
            ActionError: the amount is not a positive amount of the currency.
        """
        try:
            amount_minor = money.to_scaled(
                Decimal(amount.strip()), 10 ** money.currency_exponent(currency), "amount"
            )
        except (ValueError, ArithmeticError, InvalidOperation) as exc:
            raise ActionError(f"amount: {exc}") from None
        if amount_minor <= 0:
            raise ActionError("amount: must be more than zero")
        note = ref.strip()[:100]
        fields = {
            "account": account,
            "amount_minor": amount_minor,
            "currency": currency,
            "payment_ref": f"console:{user}" + (f": {note}" if note else ""),
        }
        return await self._command(user, CommandKind.TOPUP, fields, account)

    async def supply(
        self, user: str, account: str, device: str, override: str, reason: str
    ) -> Outcome:
        """Force ``device`` on or off, or hand it back to the policy (``auto``).

        Raises:
            ActionError: no reason, or an override that is not on, off or auto.
        """
        reason = reason.strip()
        if not 1 <= len(reason) <= MAX_REASON:
            raise ActionError(f"reason: say why, in 1 to {MAX_REASON} characters")
        if override not in ("on", "off", "auto"):
            raise ActionError("override: on, off or auto")
        fields = {"device": device, "override": override, "reason": f"console:{user}: {reason}"}
        return await self._command(user, CommandKind.SUPPLY, fields, account)

    async def reissue_receipt(self, user: str, account: str, receipt_seq: str) -> Outcome:
        """Have the daemon issue receipt number ``receipt_seq`` (the form's text) again, of any
        kind (a top-up's, a pour's), through the signed ``receipt`` command.

        Raises:
            ActionError: not a receipt number.
        """
        if not receipt_seq.isdigit() or not 0 < int(receipt_seq) < 2**63:
            raise ActionError(f"receipt number: a positive integer, not {receipt_seq[:20]!r}")
        return await self._command(
            user, CommandKind.RECEIPT, {"receipt_seq": int(receipt_seq)}, account
        )

    async def redeem_ticket(
        self, user: str, text: str, note: str, redemption_id: str
    ) -> CounterRedemption:
        """Redeem a water ticket presented at the counter (a code, or an electronic ticket's
        text), once: the same ``redemption_id`` again (a form sent twice) answers with the
        first redemption and changes nothing.

        Raises:
            ActionError: the site takes no tickets, or the note or id is too long or empty.
        """
        tickets = self._tickets
        if tickets is None:
            raise ActionError("this site takes no water tickets (no tickets: section)")
        if not text.strip():
            raise ActionError("code: type or scan the ticket")
        if not 0 < len(redemption_id) <= MAX_REDEMPTION_ID:
            raise ActionError(f"redemption id: 1 to {MAX_REDEMPTION_ID} characters")
        where = f"console:{user}" + (f": {note.strip()}" if note.strip() else "")
        if len(where) > MAX_WHERE:
            raise ActionError(f"where: at most {MAX_WHERE} characters in all")
        outcome = await asyncio.to_thread(
            tickets.redeem, text, where=where, redemption_id=redemption_id
        )
        redemption = outcome.redeemed or outcome.replayed
        detail: dict[str, Any] = {
            "operator": user,
            "action": "ticket_redeem",
            "code": outcome.code,
            "redemption_id": redemption_id,
            "status": outcome.status,
        }
        if redemption is not None:
            detail.update(product=redemption.product, quantity=redemption.quantity, where=where)
        if outcome.refusal is not None:
            detail.update(reason=outcome.refusal.reason.value, detail=outcome.refusal.detail)
        await self._journal(None, CONSOLE_ACTION, detail)
        return outcome

    async def acknowledge(self, user: str, alarm_event: int, account: str | None) -> None:
        """Journal that ``user`` saw the alarm event ``alarm_event``."""
        await self._journal(
            account,
            ALARM_ACKNOWLEDGED,
            {"alarm_event": alarm_event, "operator": user},
        )
        await self._journal(
            account,
            CONSOLE_ACTION,
            {"operator": user, "action": "acknowledge", "alarm_event": alarm_event},
        )

    async def _command(
        self, user: str, kind: CommandKind, fields: dict[str, Any], account: str
    ) -> Outcome:
        if self._key is None or self._public is None:
            raise ActionError(
                "this console cannot act: console.operator_key and keys.operator_public_key"
                " must both be set in the site file"
            )
        now = self._clock()
        body = new_command(kind, self._site, fields, now=now, command_id=f"console-{uuid.uuid4()}")
        raw = json.dumps(sign_command(body, self._key), sort_keys=True).encode()
        try:  # the spool's check, word for word (gateway.flows.spool)
            command = parse_and_verify(
                kind.value, raw, site_id=self._site, backend_public_key=self._public, now=now
            )
        except CommandRejectedError as exc:
            outcome = Outcome(body["id"], "rejected", exc.reason, exc.detail)
        else:
            result = await self._apply(command, now)
            outcome = Outcome(command.id, result.status.value, result.reason, result.detail)
        await self._journal(
            account,
            CONSOLE_ACTION,
            {
                "operator": user,
                "action": kind.value,
                "command_id": outcome.command_id,
                "status": outcome.status,
                **{k: v for k, v in fields.items() if isinstance(v, str | int)},
            },
        )
        return outcome

    async def _journal(self, account: str | None, kind: str, detail: dict[str, Any]) -> None:
        def write() -> None:
            with self._store.transaction() as tx:
                tx.record_event(account, kind, detail, self._clock())

        # One small insert: the state lock is held for that alone, as every writer does.
        async with self._lock:
            await asyncio.to_thread(write)
