"""Vending at dispensers: a customer presents a card or a phone id, the gateway decides, the
dispenser pours, the pour is billed exactly once (docs/vending.md).

The driver reports into this flow (`drivers.ports.VendingSink`) and is answered through
`drivers.ports.VendingPort`. Each step is one store transaction taken under the state lock:

1. **presented**: the dispenser's next session id is read from the device, then the decision
   (`gateway.policy.vending.decide`) and, for a grant, the ``open`` session row, its event and
   its ``dispenser/{id}/session`` message commit together; only then is the dispenser told to
   pour (``grant``). A refusal commits its event and message, then shows the reason on the
   device. No money moves at this step: the full pour's charge is *held* from the account's
   free credit while the session is open, so the same card at two dispensers cannot spend its
   credit twice.
2. **poured** (the SESSION_END frame, live or read back after a reconnect or a restart): the
   session is closed ``settled``, the charge of the poured volume is deducted under ledger key
   ``vend:{dispenser}:{session}``, the policy sees the new balance, and the session message and
   the account state are queued: one transaction. A session already closed changes nothing (a
   replayed report). A device that reports more than it was authorised is billed the authorised
   volume and raises the alarm ``dispenser_over_report``. The settled session gets its signed
   receipt (`gateway.northbound.receipts.make_vending_receipt`) in the same transaction: the
   message carries it, and a replayed report cannot make a second one.
3. **caught_up** (after every connect): a session journalled open above the device's
   ``last_session_id`` never reached it (the gateway crashed, or the write failed, between
   journal and grant): it is closed ``voided`` and its hold released.

**Tickets.** A paper water ticket presented at a dispenser whose config names a
``ticket_product`` is checked and redeemed through the ticket store
(`gateway.flows.vending_tickets`) under redemption id ``vend:{dispenser}:{session}:{code}``,
then its volume (``ticket_ml`` per ticket) is authorised like a card's; no money moves. The
redemption and the session journal are two transactions (the ticket store keeps its own
connection), both under the state lock: if the gateway dies between them, the same ticket
presented again at that dispenser gets the same redemption id, which answers with the first
redemption, and pours.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from drivers.ports import (
    DenyReason,
    DeviceRejectedError,
    DispenserCaughtUp,
    DriverError,
    IdentityKind,
    IdentityPresented,
    PourReport,
    VendingPort,
)
from gateway.flows.accounts import Account
from gateway.flows.context import FlowContext
from gateway.flows.effects import apply_decision, enqueue_account_state, enqueue_alarm
from gateway.flows.vending_tickets import TicketRefused, redeem_at_dispenser
from gateway.northbound.payloads import (
    DispenserSessionPayload,
    ReceiptKind,
    SessionStatus,
    VendingReceiptPayload,
)
from gateway.northbound.receipts import make_vending_receipt
from gateway.northbound.signing import canonical_json
from gateway.policy import vending
from gateway.policy.machine import on_balance
from gateway.store import EntryKind, Transaction
from gateway.store import vending as journal
from gateway.store.jsontext import JsonValue
from gateway.store.tickets import TicketStore

logger = logging.getLogger(__name__)

OVER_REPORT_ALARM = "dispenser_over_report"

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Granted:
    session_id: int
    max_ml: int


@dataclass(slots=True)
class VendingCounters:
    """What the flow did since the start (tests and the probe wait on these)."""

    presented: int = 0
    granted: int = 0
    refused: int = 0
    settled: int = 0
    replayed: int = 0
    voided: int = 0
    unknown_reports: int = 0
    failures: int = 0


class VendingFlow:
    """Sells water at the site's vending dispensers (`drivers.ports.VendingSink`)."""

    def __init__(
        self,
        ctx: FlowContext,
        ports: Sequence[VendingPort],
        *,
        gateway_key: Ed25519PrivateKey,
        tickets: TicketStore | None = None,
    ) -> None:
        self._ctx = ctx
        self._gateway_key = gateway_key
        self._tickets = tickets
        self._configs = {
            d.device_id: d.vending
            for d in ctx.site.config.devices.ble_dispensers
            if d.vending is not None
        }
        self._ports: dict[str, VendingPort] = {}
        for dispenser_id in self._configs:
            for port in ports:
                if port.handles(dispenser_id):
                    self._ports[dispenser_id] = port
        self._all_ports = list(ports)
        self.counters = VendingCounters()

    def attach(self) -> None:
        """Have every vending-capable driver report here."""
        for port in self._all_ports:
            port.attach_vending(self)

    # ---- the driver's reports -----------------------------------------------------------

    async def presented(self, request: IdentityPresented) -> None:
        """A customer waits at ``request.dispenser_id``: grant or refuse, journalled first."""
        self.counters.presented += 1
        port = self._ports.get(request.dispenser_id)
        config = self._configs.get(request.dispenser_id)
        if port is None or config is None:
            logger.warning(
                "dispenser %s: request %d ignored: no vending section in the site file",
                request.dispenser_id,
                request.request_id,
            )
            return
        try:
            session_id = await port.next_session(request.dispenser_id)
        except DriverError as exc:
            logger.warning("dispenser %s: request not answered: %s", request.dispenser_id, exc)
            return
        now = self._ctx.clock()
        outcome = await self._locked(
            lambda: self._decide(request, session_id, now), request.dispenser_id
        )
        if outcome is None:
            return
        if not isinstance(outcome, _Granted):
            self.counters.refused += 1  # once committed
            logger.info(
                "dispenser %s: request %d (%s) refused: %s",
                request.dispenser_id,
                request.request_id,
                request.kind.value,
                outcome.value,
            )
        try:
            if isinstance(outcome, _Granted):
                await port.grant(
                    request.dispenser_id,
                    outcome.session_id,
                    outcome.max_ml,
                    request.kind,
                    request.identity,
                )
            else:
                await port.deny(request.dispenser_id, outcome)
        except DeviceRejectedError as exc:
            # The device said no (busy, locked, faulted): the session never started there.
            logger.warning("dispenser %s: grant refused by the device: %s", exc.device_id, exc)
            if isinstance(outcome, _Granted):
                await self._locked(
                    lambda: self._void(request.dispenser_id, outcome.session_id, now),
                    request.dispenser_id,
                )
                await self._show(port, request.dispenser_id, DenyReason.OTHER)
        except DriverError as exc:
            # Delivered or not, we cannot tell: the session stays open; the next connect's
            # `caught_up` voids it if the device never accepted it, or its end report settles it.
            logger.warning("dispenser %s: answer not delivered: %s", request.dispenser_id, exc)

    async def _show(self, port: VendingPort, dispenser_id: str, reason: DenyReason) -> None:
        """Best effort: tell the customer why nothing pours."""
        try:
            await port.deny(dispenser_id, reason)
        except DriverError as exc:
            logger.warning("dispenser %s: refusal not shown: %s", dispenser_id, exc)

    async def poured(self, report: PourReport) -> None:
        """Settle a session on its end report; progress reports change nothing."""
        if not report.ended or report.dispenser_id not in self._configs:
            return  # progress, or a dispenser that does not vend (the v1 path bills its meter)
        await self._locked(lambda: self._settle(report), report.dispenser_id)

    async def caught_up(self, status: DispenserCaughtUp) -> None:
        """Void the sessions journalled open that the device never accepted."""
        if status.dispenser_id not in self._configs:
            return
        await self._locked(lambda: self._void_above(status), status.dispenser_id)

    # ---- under the lock, in one transaction ---------------------------------------------

    async def _locked(self, work: Callable[[], _T], dispenser_id: str) -> _T | None:
        """Run ``work`` in a thread under the state lock. A failure rolls back the store and
        reloads the accounts (their balances in memory may have moved), and is logged: the
        driver's loop must go on, and the device's report will come again on its next connect.
        """
        ctx = self._ctx
        async with ctx.lock:
            try:
                return await asyncio.to_thread(work)
            except Exception:
                self.counters.failures += 1
                ctx.wishes.discard()
                await asyncio.to_thread(ctx.reload)
                logger.exception("dispenser %s: vending step failed; rolled back", dispenser_id)
                return None
            finally:
                ctx.wishes.flush()

    def _decide(
        self,
        request: IdentityPresented,
        session_id: int,
        now: datetime,
    ) -> _Granted | DenyReason:
        ctx = self._ctx
        # The site's dispenser config is named through `gateway.config` only (the flows import
        # no driver module), so it is looked up here rather than passed typed.
        if request.kind is IdentityKind.TICKET:
            return self._decide_ticket(request, session_id, now)
        config = self._configs[request.dispenser_id]
        price = self.price_of(request.dispenser_id)
        with ctx.store.transaction() as tx:
            refusal, account = self._account_for(request)
            if account is None or refusal is not None:
                reason = refusal or DenyReason.UNKNOWN_ACCOUNT
                return self._refuse(tx, request, reason, None, now)
            if journal.open_sessions(tx, request.dispenser_id):
                # The end report of the session before is still due (link down, or read back
                # at the next connect); a new authorisation would replace it on the device.
                logger.warning(
                    "dispenser %s: an earlier session is not settled yet; request refused",
                    request.dispenser_id,
                )
                return self._refuse(tx, request, DenyReason.OTHER, account.id, now)
            # Above every id journalled here too: a voided session's id was never used at the
            # device, which would offer it again (it accepts any id above its last one).
            session_id = max(session_id, journal.last_session_id(tx, request.dispenser_id) + 1)
            decision = vending.decide(
                price,
                balance_minor=account.billing.balance_minor,
                disconnect_threshold_minor=account.policy.disconnect_threshold_minor,
                held_minor=journal.held_minor(tx, account.id),
                max_ml=config.max_ml,
                max_buckets=config.max_buckets,
            )
            if isinstance(decision, vending.Deny):
                return self._refuse(tx, request, decision.reason, account.id, now)
            journal.open_session(
                tx,
                journal.NewSession(
                    dispenser_id=request.dispenser_id,
                    session_id=session_id,
                    request_id=request.request_id,
                    identity_kind=request.kind.value,
                    identity=request.identity,
                    account_id=account.id,
                    currency=account.currency,
                    price_minor=price.minor,
                    unit_ml=price.unit_ml,
                    authorised_ml=decision.max_ml,
                    max_charge_minor=decision.max_charge_minor,
                    opened_at=now,
                ),
            )
            self._publish(
                tx,
                SessionStatus.AUTHORISED,
                request.dispenser_id,
                now,
                session_id=session_id,
                request_id=request.request_id,
                identity_kind=request.kind,
                account=account.id,
                authorised_ml=decision.max_ml,
                balance_minor=account.billing.balance_minor,
                currency=account.currency,
            )
            granted = _Granted(session_id, decision.max_ml)
        self.counters.granted += 1  # once committed
        return granted

    def _decide_ticket(
        self, request: IdentityPresented, session_id: int, now: datetime
    ) -> _Granted | DenyReason:
        ctx = self._ctx
        dispenser_id = request.dispenser_id
        config = self._configs[dispenser_id]
        settings = ctx.site.config.tickets
        product = config.ticket_product
        with ctx.store.transaction() as tx:
            if self._tickets is None or settings is None or product is None:
                return self._refuse(tx, request, DenyReason.WRONG_SCOPE, None, now)
            if journal.open_sessions(tx, dispenser_id):
                return self._refuse(tx, request, DenyReason.OTHER, None, now)
            session_id = max(session_id, journal.last_session_id(tx, dispenser_id) + 1)
        # Its own transaction, after the store's has ended: the ticket store keeps its own
        # connection, and both take the file's write lock. The state lock keeps everything else
        # of this process from coming between the two.
        outcome = redeem_at_dispenser(
            self._tickets,
            settings,
            request.identity,
            product=product,
            redemption_id=f"vend:{dispenser_id}:{session_id}:{request.identity}",
            where=f"dispenser {dispenser_id} session {session_id}",
            now=now,
        )
        with ctx.store.transaction() as tx:
            if isinstance(outcome, TicketRefused):
                logger.info("dispenser %s: ticket refused: %s", dispenser_id, outcome.refusal)
                return self._refuse(tx, request, outcome.shown, None, now)
            max_ml = outcome.quantity * config.ticket_ml
            journal.open_session(
                tx,
                journal.NewSession(
                    dispenser_id=dispenser_id,
                    session_id=session_id,
                    request_id=request.request_id,
                    identity_kind=request.kind.value,
                    identity=outcome.code,
                    account_id=None,
                    currency=None,
                    price_minor=0,  # paid for with the ticket: a pour costs nothing here
                    unit_ml=vending.BUCKET_ML,
                    authorised_ml=max_ml,
                    max_charge_minor=0,
                    opened_at=now,
                ),
            )
            self._publish(
                tx,
                SessionStatus.AUTHORISED,
                dispenser_id,
                now,
                session_id=session_id,
                request_id=request.request_id,
                identity_kind=request.kind,
                authorised_ml=max_ml,
            )
            granted = _Granted(session_id, max_ml)
        self.counters.granted += 1  # once committed
        return granted

    def price_of(self, dispenser_id: str) -> vending.Price:
        """The dispenser's price as the policy takes it (the config holds exactly one)."""
        config = self._configs[dispenser_id]
        if config.price_per_bucket_minor is not None:
            return vending.per_bucket(config.price_per_bucket_minor)
        if config.price_per_litre_minor is None:
            raise ValueError(f"dispenser {dispenser_id}: no price")  # the config forbids it
        return vending.per_litre(config.price_per_litre_minor)

    def _account_for(self, request: IdentityPresented) -> tuple[DenyReason | None, Account | None]:
        config = self._configs[request.dispenser_id]
        account_id = config.cards.get(request.identity)
        account = self._ctx.book.by_id.get(account_id) if account_id is not None else None
        if account is None:
            return DenyReason.UNKNOWN_ACCOUNT, None
        if account.currency != config.currency:
            logger.error(
                "dispenser %s: prices in %s but account %s is in %s; request refused",
                request.dispenser_id,
                config.currency,
                account.id,
                account.currency,
            )
            return DenyReason.OTHER, account
        return None, account

    def _refuse(
        self,
        tx: Transaction,
        request: IdentityPresented,
        reason: DenyReason,
        account_id: str | None,
        now: datetime,
    ) -> DenyReason:
        self._publish(
            tx,
            SessionStatus.REFUSED,
            request.dispenser_id,
            now,
            request_id=request.request_id,
            identity_kind=request.kind,
            account=account_id,
            reason=reason,
        )
        return reason  # counted and logged once committed (`presented`)

    def _settle(self, report: PourReport) -> None:
        ctx = self._ctx
        now = report.at
        with ctx.store.transaction() as tx:
            found = journal.session(tx, report.dispenser_id, report.session_id)
            if found is None:
                # Authorised from elsewhere (the v1 path) or before this store: not ours to bill.
                self.counters.unknown_reports += 1
                logger.info(
                    "dispenser %s: end of session %d, not a vending session here",
                    report.dispenser_id,
                    report.session_id,
                )
                return
            if found.state is not journal.SessionState.OPEN:
                self.counters.replayed += 1
                return  # settled (or voided) before: a replayed report changes nothing
            opened = found.opened
            price = vending.Price(opened.price_minor, opened.unit_ml)
            bill = vending.settle(price, opened.authorised_ml, report.session_ml)
            key_base = f"vend:{report.dispenser_id}:{report.session_id}"
            account = ctx.book.by_id.get(opened.account_id or "")
            ledger_seq = None
            if account is not None and bill.charge_minor > 0:
                entry, created = tx.append_entry(
                    account.id,
                    EntryKind.DEDUCTION,
                    -bill.charge_minor,
                    account.currency,
                    key_base,
                    created_at=now,
                    ref=f"{report.dispenser_id}:{report.session_id}",
                    detail={"poured_ml": report.session_ml, "billed_ml": bill.billed_ml},
                )
                if created:
                    account.billing.balance_minor -= bill.charge_minor
                ledger_seq = entry.seq
            journal.close_session(
                tx,
                report.dispenser_id,
                report.session_id,
                state=journal.SessionState.SETTLED,
                poured_ml=report.session_ml,
                billed_ml=bill.billed_ml,
                charge_minor=bill.charge_minor,
                ledger_seq=ledger_seq,
                at=now,
            )
            # The customer's receipt names who paid: the account, or the ticket. A session whose
            # account left the site while it was open was charged to nobody: no receipt.
            paid_by_ticket = opened.identity_kind == IdentityKind.TICKET.value
            receipt = (
                self._receipt(tx, found, report, bill.billed_ml, bill.charge_minor, account)
                if account is not None or paid_by_ticket
                else None
            )
            alarm = OVER_REPORT_ALARM if bill.over_ml else None
            if account is not None:
                if alarm is not None:
                    enqueue_alarm(
                        tx,
                        ctx.topics,
                        account,
                        alarm,
                        {
                            "dispenser": report.dispenser_id,
                            "session_id": report.session_id,
                            "authorised_ml": opened.authorised_ml,
                            "reported_ml": report.session_ml,
                        },
                        now,
                    )
                decision = on_balance(
                    account.policy, account.policy_state, account.billing.balance_minor, now
                )
                apply_decision(tx, ctx, account, decision, now, key_base=key_base)
                tx.save_account_state(account.id, account.to_record())
                enqueue_account_state(tx, ctx.topics, account, now)
            self._publish(
                tx,
                SessionStatus.SETTLED,
                report.dispenser_id,
                now,
                session_id=report.session_id,
                request_id=opened.request_id,
                identity_kind=IdentityKind(opened.identity_kind),
                account=opened.account_id,
                authorised_ml=opened.authorised_ml,
                poured_ml=report.session_ml,
                billed_ml=bill.billed_ml,
                # An account that left the site while its session was open is charged
                # nothing (no ledger entry): its message says 0, not the price of the pour.
                charge_minor=(
                    bill.charge_minor
                    if account is not None
                    else (0 if opened.account_id is not None else None)
                ),
                balance_minor=account.billing.balance_minor if account is not None else None,
                currency=opened.currency,
                alarm=alarm,
                receipt=receipt,
            )
        # Counted and logged once committed: a commit that fails settled nothing (and tests
        # that wait on the counter then read what the store holds).
        self.counters.settled += 1
        if account is None and opened.account_id is not None:
            logger.warning(
                "dispenser %s: session %d of account %s, which left the site while it was"
                " open: %d mL poured, charged to nobody",
                report.dispenser_id,
                report.session_id,
                opened.account_id,
                report.session_ml,
            )
        if alarm is not None:
            logger.warning(
                "dispenser %s: session %d reported %d mL, authorised %d: billed %d",
                report.dispenser_id,
                report.session_id,
                report.session_ml,
                opened.authorised_ml,
                bill.billed_ml,
            )
        logger.info(
            "dispenser %s: session %d settled: %d mL, %d %s",
            report.dispenser_id,
            report.session_id,
            bill.billed_ml,
            bill.charge_minor,
            opened.currency or "",
        )

    def _receipt(
        self,
        tx: Transaction,
        found: journal.VendSession,
        report: PourReport,
        billed_ml: int,
        charge_minor: int,
        account: Account | None,
    ) -> VendingReceiptPayload:
        """Sign and keep the receipt of the session settled in ``tx`` (its number moves with
        the transaction: a settlement rolled back burns none). Paid from ``account``, or with
        the ticket the session was opened for."""
        opened = found.opened
        seq = tx.next_receipt_seq()
        paid = (
            {
                "account": account.id,
                "amount_minor": charge_minor,
                "currency": account.currency,
                "balance_after_minor": account.billing.balance_minor,
            }
            if account is not None
            else {"ticket": opened.identity}
        )
        signed = make_vending_receipt(
            seq,
            site=self._ctx.topics.site,
            dispenser=report.dispenser_id,
            session_id=report.session_id,
            poured_ml=report.session_ml,
            billed_ml=billed_ml,
            closed_at=report.at,
            gateway_key=self._gateway_key,
            store=tx.incarnation,
            **paid,
        )
        tx.save_receipt(
            seq,
            f"{report.dispenser_id}:{report.session_id}",
            account.id if account is not None else None,
            canonical_json(signed),
            str(signed["signature"]).encode(),
            kind=ReceiptKind.VENDING,
        )
        return VendingReceiptPayload.model_validate(signed)

    def _void(self, dispenser_id: str, session_id: int, now: datetime) -> None:
        with self._ctx.store.transaction() as tx:
            found = journal.session(tx, dispenser_id, session_id)
            if found is not None:
                self._void_in(tx, found, now)

    def _void_above(self, status: DispenserCaughtUp) -> None:
        with self._ctx.store.transaction() as tx:
            for found in journal.open_sessions(tx, status.dispenser_id):
                if found.opened.session_id > status.last_session_id:
                    self._void_in(tx, found, status.at)

    def _void_in(self, tx: Transaction, found: journal.VendSession, now: datetime) -> None:
        opened = found.opened
        closed = journal.close_session(
            tx,
            opened.dispenser_id,
            opened.session_id,
            state=journal.SessionState.VOIDED,
            poured_ml=None,
            billed_ml=None,
            charge_minor=None,
            ledger_seq=None,
            at=now,
        )
        if not closed:
            return
        self._publish(
            tx,
            SessionStatus.VOIDED,
            opened.dispenser_id,
            now,
            session_id=opened.session_id,
            request_id=opened.request_id,
            identity_kind=IdentityKind(opened.identity_kind),
            account=opened.account_id,
            authorised_ml=opened.authorised_ml,
        )
        self.counters.voided += 1
        logger.warning(
            "dispenser %s: session %d never started at the device: voided",
            opened.dispenser_id,
            opened.session_id,
        )

    def _publish(
        self,
        tx: Transaction,
        status: SessionStatus,
        dispenser_id: str,
        now: datetime,
        **fields: object,
    ) -> None:
        """Journal the session event and queue its ``dispenser/{id}/session`` message (one
        event id for both, as `gateway.flows.effects.enqueue_event`)."""
        receipt = fields.get("receipt")
        record: dict[str, JsonValue] = {
            "dispenser": dispenser_id,
            "status": status.value,
            **{k: _json(v) for k, v in fields.items() if v is not None and k != "receipt"},
        }
        if isinstance(receipt, VendingReceiptPayload):  # the event names it; the store keeps it
            record["receipt_seq"] = receipt.receipt_seq
        account = fields.get("account")
        event_id = tx.record_event(
            account if isinstance(account, str) else None, f"vend_{status.value}", record, now
        )
        topics = self._ctx.topics
        payload = DispenserSessionPayload.model_validate(
            {
                "event_id": f"{topics.site}-{tx.incarnation}-{event_id}",
                "dispenser": dispenser_id,
                "status": status,
                "ts": now,
                **{k: v for k, v in fields.items() if v is not None},
            }
        )
        tx.enqueue(topics.dispenser_session_message(payload))


def _json(value: object) -> JsonValue:
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)
