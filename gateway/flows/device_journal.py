"""`DeviceJournal`: where actuation reports supply progress, journalled and published.

`gateway.flows.actuation` only drives devices; this module turns what happened into the
retained ``device/{id}/state`` message (with ``confirmation`` pending or confirmed), a journal
event, and, when a device does not confirm, an ``alarm`` on the account it cuts.
"""

from __future__ import annotations

import asyncio

from gateway.flows.actuation import DeviceView
from gateway.flows.context import FlowContext
from gateway.flows.effects import enqueue_alarm
from gateway.northbound.payloads import Confirmation, DeviceStatePayload, EventDetail
from gateway.policy.state import Supply
from gateway.store.events import SUPPLY_CONFIRMED, SUPPLY_SENT


def _supply(on: bool) -> Supply:
    return Supply.ON if on else Supply.OFF


class DeviceJournal:
    """The `ActuationJournal` of the running gateway.

    ``device/{id}/state`` says what the device confirmed, never the wish: ``supply`` is what it
    last reported on a read-back (left out until it has reported anything since the start),
    ``desired`` and ``confirmation: pending`` say where it is being driven, and ``last_seen``
    is when it last answered.
    """

    def __init__(self, ctx: FlowContext) -> None:
        self._ctx = ctx

    def _write(
        self,
        view: DeviceView,
        confirmed: bool,
        event: str,
        detail: EventDetail,
        alarm: str | None = None,
    ) -> None:
        ctx = self._ctx
        now = ctx.clock()
        wanted = _supply(view.wanted)
        state = DeviceStatePayload(
            device=view.device_id,
            supply=None if view.confirmed is None else _supply(view.confirmed),
            confirmation=Confirmation.CONFIRMED if confirmed else Confirmation.PENDING,
            desired=None if confirmed else wanted,
            last_seen=view.last_contact,
            ts=now,
        )
        account = ctx.book.by_actuator.get(view.device_id)
        with ctx.store.transaction() as tx:
            tx.enqueue(ctx.topics.device_state_message(state))
            if alarm is not None and account is not None:
                enqueue_alarm(tx, ctx.topics, account, alarm, detail, now)
            else:
                tx.record_event(
                    account.id if account else None,
                    event,
                    {"device": view.device_id, "supply": wanted.value, **detail},
                    now,
                )

    async def supply_pending(self, view: DeviceView, reason: str) -> None:
        await asyncio.to_thread(self._write, view, False, SUPPLY_SENT, {"reason": reason})
        self._ctx.wake.set()

    async def supply_confirmed(self, view: DeviceView, reason: str) -> None:
        await asyncio.to_thread(self._write, view, True, SUPPLY_CONFIRMED, {"reason": reason})
        self._ctx.wake.set()

    async def supply_alarm(self, view: DeviceView, tries: int, error: str) -> None:
        detail: EventDetail = {
            "device": view.device_id,
            "supply": _supply(view.wanted).value,
            "tries": tries,
            "error": error,
        }
        await asyncio.to_thread(
            self._write, view, False, "supply_alarm", detail, "supply_unconfirmed"
        )
        self._ctx.wake.set()
