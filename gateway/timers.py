"""The daemon's clocks: the policy clock, the stale-meter watch, the state flush, journal
retention and the ledger checkpoint. Each is a supervised task that sleeps until its next moment
and then does one short piece of work in a worker thread (under the state lock when it touches
the accounts).

- **policy clock**: runs `on_tick` for every account whose grace, friendly window, dwell time
  or override ends (`next_wakeup` says when), or at once when a reload changed the accounts;
- **stale watch**: raises ``meter_stale`` once when a meter stops reporting (its
  ``stale_after_s``), ``meter_reporting`` when it is back;
- **state flush**: publishes the balances that moved but were not yet due when billed
  (``state_publish_interval_s``);
- **journal retention**: prunes billed readings older than ``journal_retention_days``, at start
  and then about every six hours, in short passes, so the journal stays bounded on an SD card;
- **checkpoint watch**: publishes the ledger's head as a signed, retained checkpoint once it has
  moved by ``checkpoint_every`` entries since the last one this watch published (top-ups
  publish one at once, and the daemon one at shutdown: `checkpoint`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.flows.accounts import Account
from gateway.flows.context import FlowContext
from gateway.flows.effects import apply_decision, enqueue_account_state, enqueue_alarm
from gateway.flows.pipeline import Pipeline
from gateway.northbound.receipts import make_checkpoint
from gateway.policy.machine import next_wakeup, on_tick

logger = logging.getLogger(__name__)

_MAX_TICK_S = 60.0
_RETENTION_PERIOD_S = 6 * 3600.0  # each run prunes about six hours of readings
#: Publish a checkpoint once the ledger head has moved by this many entries.
DEFAULT_CHECKPOINT_EVERY = 100
_CHECKPOINT_POLL_S = 2.0


class Timers:
    """The five timed tasks of one running gateway (see the module docstring).

    Args:
        ctx: the flows' shared context.
        pipeline: the billing pipeline (stale checks, dirty states).
        gateway_key: signs the ledger checkpoints.
        checkpoint_every: entries the head may move before the watch publishes a checkpoint.
        checkpoint_poll_s: how often the watch looks at the head.
    """

    def __init__(
        self,
        ctx: FlowContext,
        pipeline: Pipeline,
        *,
        gateway_key: Ed25519PrivateKey,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
        checkpoint_poll_s: float = _CHECKPOINT_POLL_S,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        self._ctx = ctx
        self._pipeline = pipeline
        self._gateway_key = gateway_key
        self._checkpoint_every = checkpoint_every
        self._checkpoint_poll_s = checkpoint_poll_s
        self._tick = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        ctx.on_reload(self._reloaded)

    def _reloaded(self) -> None:
        # Runs in the reloading worker thread: new accounts may be due at once.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._tick.set)

    # --- policy clock -----------------------------------------------------------------------

    async def policy_clock(self) -> None:
        """Runs `on_tick` when an account's grace, window, dwell or override time comes."""
        ctx = self._ctx
        self._loop = asyncio.get_running_loop()
        while True:
            now = ctx.clock()
            wakeups = [
                w
                for a in ctx.book.by_id.values()
                if (w := next_wakeup(a.policy, a.policy_state, now)) is not None
            ]
            if wakeups and min(wakeups) <= now:
                async with ctx.lock:
                    try:
                        await asyncio.to_thread(self._tick_due, now)
                    except BaseException:
                        ctx.wishes.discard()
                        await asyncio.to_thread(ctx.reload)
                        raise
                ctx.wishes.flush()
                continue
            wait_s = _MAX_TICK_S
            if wakeups:
                wait_s = min(wait_s, max((min(wakeups) - now).total_seconds(), 0.0))
            self._tick.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s + 0.01):
                    await self._tick.wait()

    async def settle(self) -> None:
        """Run the ticks already due, once, before anything is switched at a start: an
        account that starts exhausted is cut by this tick, so its device is only ever asked
        for "off" (never "on" at the start, then "off" a moment later)."""
        ctx = self._ctx
        async with ctx.lock:
            try:
                await asyncio.to_thread(self._tick_due, ctx.clock())
            except BaseException:
                ctx.wishes.discard()
                await asyncio.to_thread(ctx.reload)
                raise
        ctx.wishes.flush()

    def _tick_due(self, now: datetime) -> None:
        ctx = self._ctx
        with ctx.store.transaction() as tx:
            for account in ctx.book.by_id.values():
                due = next_wakeup(account.policy, account.policy_state, now)
                if due is None or due > now:
                    continue
                decision = on_tick(
                    account.policy, account.policy_state, account.billing.balance_minor, now
                )
                apply_decision(tx, ctx, account, decision, now, key_base=f"tick:{now.isoformat()}")
                tx.save_account_state(account.id, account.to_record())
                enqueue_account_state(tx, ctx.topics, account, now)

    # --- stale watch ------------------------------------------------------------------------

    async def stale_watch(self) -> None:
        """Raises ``meter_stale`` once when a meter stops reporting, ``meter_reporting`` back."""
        ctx = self._ctx
        while True:
            limits = [m.stale_after_s for m in ctx.site.config.meters if m.stale_after_s]
            period = min(max(min(limits) / 4, 1.0), 60.0) if limits else 60.0
            await asyncio.sleep(period)
            if not limits:
                continue
            now = ctx.clock()
            async with ctx.lock:
                changes = self._pipeline.stale_check(now)
                if changes:
                    await asyncio.to_thread(self._journal_stale, changes, now)
            if changes:
                ctx.wake.set()

    def _journal_stale(self, changes: list[tuple[Account, bool]], now: datetime) -> None:
        ctx = self._ctx
        with ctx.store.transaction() as tx:
            for account, stale in changes:
                alarm = "meter_stale" if stale else "meter_reporting"
                enqueue_alarm(tx, ctx.topics, account, alarm, {"meter": account.config.meter}, now)

    # --- state flush ------------------------------------------------------------------------

    async def state_flush(self) -> None:
        """Publishes the balances that moved but were not yet due when they were billed."""
        ctx = self._ctx
        period = max(min(ctx.site.config.state_publish_interval_s / 2, 5.0), 0.2)
        while True:
            await asyncio.sleep(period)
            async with ctx.lock:
                sent = await asyncio.to_thread(self._pipeline.publish_dirty_states)
            if sent:
                ctx.wake.set()

    # --- journal retention ------------------------------------------------------------------

    async def journal_retention(self) -> None:
        """Prunes billed readings older than ``journal_retention_days``, at start and then every
        few hours, so the journal stays bounded on a small box's SD card."""
        ctx = self._ctx
        while True:
            days = ctx.site.config.journal_retention_days
            if days is not None:
                cutoff = ctx.clock() - timedelta(days=days)
                pruned = await asyncio.to_thread(self.prune_journal, cutoff)
                if pruned:
                    logger.info(
                        "journal: pruned %d billed readings received before %s", pruned, cutoff
                    )
            await asyncio.sleep(_RETENTION_PERIOD_S)

    def prune_journal(self, cutoff: datetime) -> int:
        """Prune billed readings received before ``cutoff`` now (in a worker thread); returns
        how many went, and journals how many when any did."""
        ctx = self._ctx
        pruned = ctx.store.prune_journal(cutoff)
        if pruned:
            with ctx.store.transaction() as tx:
                tx.record_event(
                    None,
                    "journal_pruned",
                    {"readings": pruned, "received_before": cutoff.isoformat()},
                    ctx.clock(),
                )
        return pruned

    # --- ledger checkpoint ------------------------------------------------------------------

    async def checkpoint_watch(self) -> None:
        """Publishes a checkpoint once the ledger head has moved by ``checkpoint_every``."""
        ctx = self._ctx
        published, _ = await asyncio.to_thread(ctx.store.ledger_head)
        while True:
            await asyncio.sleep(self._checkpoint_poll_s)
            seq, _ = await asyncio.to_thread(ctx.store.ledger_head)
            if seq - published >= self._checkpoint_every:
                published = await asyncio.to_thread(self.checkpoint)
                ctx.wake.set()

    def checkpoint(self) -> int:
        """Queue the ledger head as a signed, retained checkpoint now (in a worker thread);
        returns its seq. Needs no state lock: it reads the head in its own transaction, and
        transactions are serialised, so a later checkpoint never carries an older head."""
        ctx = self._ctx
        with ctx.store.transaction() as tx:
            seq, mac = tx.ledger_head()
            checkpoint = make_checkpoint(
                ctx.topics.site,
                tx.incarnation,
                seq,
                mac,
                ts=ctx.clock(),
                gateway_key=self._gateway_key,
            )
            tx.enqueue(ctx.topics.checkpoint_message(checkpoint))
        return seq
