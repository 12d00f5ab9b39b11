"""`HomeAssistantAnnouncer`: the discovery configs of every account, kept current.

The configs (`gateway.northbound.ha_discovery`) go out through the outbox, retained, at every
start, after a reload (SIGHUP: accounts come and go) and whenever Home Assistant says it is
back (``{prefix}/status`` ``online``: it may have lost what it knew). An account that left the
site gets an empty retained config, which removes its device from Home Assistant; the ids
announced are kept in the store so a restart still knows what to remove.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Final

from billing_engine import money
from billing_engine.tariff import REGISTER_UNIT
from gateway.flows.context import FlowContext
from gateway.messages import MessageClass, Outgoing
from gateway.northbound.ha_discovery import AccountFacts, config_topic, device_config
from gateway.northbound.sink_settings import HomeAssistantSettings
from gateway.northbound.topics import QOS

logger = logging.getLogger(__name__)

#: The object ids announced last (a reserved record of the account-state table).
ANNOUNCED_KEY: Final = "~ha.announced"


class HomeAssistantAnnouncer:
    """Announces the site's accounts to Home Assistant (see the module)."""

    def __init__(self, ctx: FlowContext, settings: HomeAssistantSettings, version: str) -> None:
        self._ctx = ctx
        self._prefix = settings.discovery_prefix
        self._version = version
        self._again = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.announcements = 0
        ctx.on_reload(self._reloaded)

    @property
    def status_topic(self) -> str:
        return f"{self._prefix}/status"

    def _reloaded(self) -> None:
        # Called in the reloading thread: hand the event to the loop.
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._again.set)

    async def run(self) -> None:
        """Announce now, then again after each reload or Home Assistant restart."""
        self._loop = asyncio.get_running_loop()
        while True:
            self._again.clear()
            async with self._ctx.lock:
                await asyncio.to_thread(self._announce)
            self._ctx.wake.set()
            await self._again.wait()

    async def on_status(self, topic: str, raw: bytes, *, retained: bool) -> None:
        """``{prefix}/status``: Home Assistant is back (``online``): announce again."""
        if raw.strip() == b"online":
            self._again.set()

    def _facts(self) -> list[AccountFacts]:
        book = self._ctx.book
        return [
            AccountFacts(
                account=account.id,
                meter=account.config.meter,
                currency=account.currency,
                currency_exponent=money.currency_exponent(account.currency),
                register_unit=REGISTER_UNIT[book.engine_for(account).tariff.unit],
                actuator=account.config.actuator,
            )
            for account in sorted(book.by_id.values(), key=lambda a: a.id)
        ]

    def _announce(self) -> None:
        ctx = self._ctx
        store = ctx.store
        record = store.load_account_states().get(ANNOUNCED_KEY) or {}
        before = set(str(record.get("ids") or "").split(",")) - {""}
        now: set[str] = set()
        with store.transaction() as tx:
            for facts in self._facts():
                oid, config = device_config(ctx.topics, facts, version=self._version)
                now.add(oid)
                payload = json.dumps(config, ensure_ascii=False, separators=(",", ":")).encode()
                topic = config_topic(self._prefix, oid)
                tx.enqueue(Outgoing(topic, payload, QOS, True, MessageClass.STATE))
            for gone in sorted(before - now):
                # An empty retained config removes the device from Home Assistant.
                topic = config_topic(self._prefix, gone)
                tx.enqueue(Outgoing(topic, b"", QOS, True, MessageClass.STATE))
            tx.save_account_state(ANNOUNCED_KEY, {"ids": ",".join(sorted(now))})
        self.announcements += 1
        logger.info(
            "Home Assistant: %d account(s) announced, %d removed", len(now), len(before - now)
        )
