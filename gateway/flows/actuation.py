"""Supply switching: send, confirm by reading back, retry with backoff, alarm when stuck.

One worker task per device. Callers only say what they want (`request`); the latest wish wins,
so a cut followed quickly by a restore never leaves a stale command queued. A change counts as
done only when the device's own state, read back, matches; until then the device is ``pending``
and the worker retries with exponential backoff. After ``confirm_tries`` failed rounds it raises
one alarm and keeps trying at the capped interval (a valve stuck open is the utility's problem to
know about, not a reason to stop).

Every outcome (sent, confirmed, alarm) is journalled and published through `ActuationJournal`
(`gateway.flows.device_journal` in the daemon).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from drivers.ports import Actuator, Clock, DriverError, SupplyConfirmation, SupplyState
from gateway.config import ActuationConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceView:
    """What the gateway knows of a supply device, as it reports it: what the device last
    confirmed (None: nothing since the start) and when it last answered, next to the wish.

    Attributes:
        device_id: the device.
        wanted: where the policy wants the supply.
        confirmed: what the device reported when last read back, when that was on or off.
        last_contact: when the device last answered a read-back (None: never since the start).
    """

    device_id: str
    wanted: bool
    confirmed: bool | None
    last_contact: datetime | None


class ActuationJournal(Protocol):
    """Where the manager reports (the daemon journals and publishes these)."""

    async def supply_pending(self, view: DeviceView, reason: str) -> None: ...

    async def supply_confirmed(self, view: DeviceView, reason: str) -> None: ...

    async def supply_alarm(self, view: DeviceView, tries: int, error: str) -> None: ...


@dataclass
class _Device:
    actuator: Actuator
    desired: bool | None = None
    reason: str = ""
    confirmed: bool | None = None  # what the device last reported on a read-back
    last_contact: datetime | None = None  # when it last answered a read-back
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    sent_at: dict[bool, float] = field(default_factory=dict)


class ActuationManager:
    """Drives every supply device toward the state the policy wants."""

    def __init__(
        self,
        actuators: Sequence[Actuator],
        journal: ActuationJournal,
        config: ActuationConfig,
        device_ids: Sequence[str],
        clock: Clock,
    ) -> None:
        self._journal = journal
        self._config = config
        self._clock = clock
        self._devices: dict[str, _Device] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.confirmed = 0
        self.alarms = 0
        for device_id in device_ids:
            actuator = next((a for a in actuators if a.handles(device_id)), None)
            if actuator is None:
                logger.warning(
                    "device %s: no driver handles it; supply cannot be switched", device_id
                )
                continue
            self._devices[device_id] = _Device(actuator)

    def handles(self, device_id: str) -> bool:
        return device_id in self._devices

    def request(self, device_id: str, on: bool, reason: str) -> None:
        """Ask for supply ``on``/off at ``device_id``; returns at once."""
        device = self._devices.get(device_id)
        if device is None:
            logger.error(
                "device %s: supply %s wanted (%s) but no driver handles it",
                device_id,
                "on" if on else "off",
                reason,
            )
            return
        if device.desired == on and device.confirmed == on:
            return
        device.desired = on
        device.reason = reason
        device.changed.set()

    def first_sent_at(self, device_id: str, on: bool) -> float | None:
        """Loop time when a command toward ``on`` last left for the device (benchmarks)."""
        device = self._devices.get(device_id)
        return None if device is None else device.sent_at.get(on)

    async def run(self) -> None:
        """One worker per device, until cancelled."""
        if not self._devices:
            await asyncio.Event().wait()  # nothing to drive; stay up like every other task
        async with asyncio.TaskGroup() as group:
            for device_id, device in self._devices.items():
                group.create_task(self._work(device_id, device), name=f"actuation[{device_id}]")

    def _view(self, device_id: str, device: _Device, on: bool) -> DeviceView:
        return DeviceView(device_id, on, device.confirmed, device.last_contact)

    async def _read_back(self, device_id: str, device: _Device, on: bool) -> SupplyConfirmation:
        async with asyncio.timeout(self._config.io_timeout_s):
            observed = await device.actuator.read_supply(device_id)
        device.last_contact = self._clock()
        if observed is not SupplyState.UNKNOWN:
            device.confirmed = observed is SupplyState.ON
        return SupplyConfirmation(device_id, SupplyState.ON if on else SupplyState.OFF, observed)

    async def _attempt(
        self, device_id: str, device: _Device, on: bool, window_s: float, *, retry: bool
    ) -> bool:
        """Send once, then read back until it matches or ``window_s`` has passed.

        A retry reads back first: the device may have reached the target since the last read
        (a slow valve), and a command it no longer needs is not sent. Reading back several
        times before sending again matters for slow links: a LoRaWAN valve reports its new
        state only with its next uplink, and re-sending the downlink at every read would only
        spend the network's duty cycle.
        """
        loop = asyncio.get_running_loop()
        if retry and (await self._read_back(device_id, device, on)).confirmed:
            return True
        async with asyncio.timeout(self._config.io_timeout_s):
            device.sent_at[on] = loop.time()
            await device.actuator.set_supply(device_id, on)
        self.sent += 1
        deadline = loop.time() + window_s
        poll_s = min(max(window_s / 4, 0.05), 2.0)
        while True:
            if (await self._read_back(device_id, device, on)).confirmed:
                return True
            if loop.time() + poll_s > deadline or device.changed.is_set():
                return False
            await asyncio.sleep(poll_s)

    async def _work(self, device_id: str, device: _Device) -> None:
        while True:
            await device.changed.wait()
            device.changed.clear()
            on = device.desired
            if on is None:
                continue
            reason = device.reason
            # Send first, journal after: the cutoff itself is already durable (committed with
            # the deduction that caused it); only the "pending" device state waits.
            pending = asyncio.create_task(
                self._journal.supply_pending(self._view(device_id, device, on), reason),
                name=f"pending[{device_id}]",
            )
            self._background.add(pending)
            pending.add_done_callback(self._background.discard)
            delay = self._config.backoff_initial_s
            tries = 0
            alarmed = False
            while True:
                tries += 1
                error = "state read back does not match"
                try:
                    ok = await self._attempt(device_id, device, on, delay, retry=tries > 1)
                except (DriverError, TimeoutError) as exc:
                    ok = False
                    error = str(exc) or type(exc).__name__
                if ok:
                    self.confirmed += 1
                    await pending  # keep "pending" before "confirmed" on the device's topic
                    await self._journal.supply_confirmed(self._view(device_id, device, on), reason)
                    break
                logger.warning(
                    "device %s: supply %s not confirmed (try %d): %s",
                    device_id,
                    "on" if on else "off",
                    tries,
                    error,
                )
                if tries >= self._config.confirm_tries and not alarmed:
                    alarmed = True
                    self.alarms += 1
                    await self._journal.supply_alarm(
                        self._view(device_id, device, on), tries, error
                    )
                if not device.changed.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay / 2):
                            await device.changed.wait()
                if device.changed.is_set() and device.desired != on:
                    break  # a newer wish replaces this one; the outer loop picks it up
                device.changed.clear()
                delay = min(delay * 2, self._config.backoff_max_s)
