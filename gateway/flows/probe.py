"""`GatewayProbe`: a read-only view of a running gateway, for tests, benchmarks and tools.

Tests describe behaviour ("the reading was billed", "the balance is 12.30") through this probe
instead of reaching into the flows' private layout, so the flows can be redesigned without
rewriting the tests. Everything here reads memory the event loop owns: call it from the loop
(a test coroutine), never from another thread.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from billing_engine.tariff import Tariff
from gateway.flows.actuation import ActuationManager
from gateway.flows.command_handler import CommandHandler
from gateway.flows.context import FlowContext
from gateway.flows.pipeline import COMMIT_TIME_BUCKETS_S, Pipeline
from gateway.policy.config import PolicyConfig
from gateway.policy.state import PolicyMode


@dataclass(frozen=True, slots=True)
class Counters:
    """What the flows have done since the gateway started (a snapshot)."""

    received: int  # readings handed over by drivers
    journalled: int  # of which new (committed to the journal)
    duplicates: int  # of which already journalled (re-delivered)
    refused: int  # of which refused by the journal (a value it cannot hold), each alone
    billed: int  # readings billed and published
    held: int  # readings held (unknown meter, implausible, before the tariff, ...)
    journal_commits: int
    billing_batches: int
    # Batches by the time from the end of their window to their commit: (bound, batches at or
    # under it) per `COMMIT_TIME_BUCKETS_S` bound and +Inf, cumulative; and their sum.
    commit_time_buckets: tuple[tuple[float, int], ...]
    commit_time_sum_s: float
    deducted_minor: int
    commands_applied: int
    commands_rejected: int
    commands_duplicate: int
    supply_sent: int
    supply_confirmed: int
    supply_alarms: int


class GatewayProbe:
    """Read-only questions about a running gateway (see the module docstring)."""

    def __init__(
        self,
        ctx: FlowContext,
        pipeline: Pipeline,
        commands: CommandHandler,
        actuation: ActuationManager,
    ) -> None:
        self._ctx = ctx
        self._pipeline = pipeline
        self._commands = commands
        self._actuation = actuation

    def counters(self) -> Counters:
        stats = self._pipeline.stats
        return Counters(
            received=stats.received,
            journalled=stats.journalled,
            duplicates=stats.duplicates,
            refused=stats.refused,
            billed=stats.billed,
            held=stats.held,
            journal_commits=stats.batches,
            billing_batches=stats.billed_batches,
            commit_time_buckets=tuple(
                zip(
                    (*COMMIT_TIME_BUCKETS_S, math.inf),
                    itertools.accumulate(stats.commit_time_counts),
                    strict=True,
                )
            ),
            commit_time_sum_s=stats.commit_time_sum_s,
            deducted_minor=stats.deducted_minor,
            commands_applied=self._commands.applied,
            commands_rejected=self._commands.rejected,
            commands_duplicate=self._commands.duplicates,
            supply_sent=self._actuation.sent,
            supply_confirmed=self._actuation.confirmed,
            supply_alarms=self._actuation.alarms,
        )

    def billed_with_status(self, status: str) -> int:
        """Readings the engine gave ``status`` (billed, baseline, out_of_order, conflict, ...)."""
        return self._pipeline.stats.by_status.get(status, 0)

    def account_ids(self) -> list[str]:
        return sorted(self._ctx.book.by_id)

    def balance_minor(self, account_id: str) -> int:
        """The account's balance as the gateway holds it now.

        Raises:
            KeyError: no such account.
        """
        return self._ctx.book.by_id[account_id].billing.balance_minor

    def debt_minor(self, account_id: str) -> int:
        return self._ctx.book.by_id[account_id].debt_minor

    def mode(self, account_id: str) -> PolicyMode:
        return self._ctx.book.by_id[account_id].policy_state.mode

    def supply_wanted(self, account_id: str) -> bool:
        """Where the policy wants the account's supply (not what the device confirmed)."""
        return self._ctx.book.by_id[account_id].policy_state.supply_on

    def policy(self, account_id: str) -> PolicyConfig:
        """The policy settings the account runs under (after backend changes)."""
        return self._ctx.book.by_id[account_id].policy

    def tariff(self, tariff_id: str) -> Tariff:
        """A tariff as the gateway bills with it (after backend changes).

        Raises:
            KeyError: no such tariff.
        """
        return self._ctx.book.engines[tariff_id].tariff

    def tariff_of(self, account_id: str) -> str:
        """The id of the tariff that bills the account now (after backend changes)."""
        return self._ctx.book.by_id[account_id].config.tariff
