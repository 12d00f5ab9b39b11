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

from drivers.ports import (
    Actuator,
    Clock,
    ConfirmationPacing,
    DriverError,
    PacedActuator,
    SupplyState,
)
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
    pacing: ConfirmationPacing | None  # None: the site-wide ``actuation:`` settings
    desired: bool | None = None
    reason: str = ""
    confirmed: bool | None = None  # what the device last reported (or the store, at a start)
    last_contact: datetime | None = None  # when it last answered a read-back
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    sent_at: dict[bool, float] = field(default_factory=dict)
    resend_at: float = 0.0  # loop time before which a paced device is not sent to again


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
            pacing = actuator.pacing(device_id) if isinstance(actuator, PacedActuator) else None
            self._devices[device_id] = _Device(actuator, pacing)

    def handles(self, device_id: str) -> bool:
        return device_id in self._devices

    def seed(self, device_id: str, on: bool, at: datetime) -> None:
        """What the store says ``device_id`` last confirmed, before any wish (at a start).

        A device that answers live (a Modbus relay) is read back anyway before anything is
        sent; one that reports only when it makes contact (a class A valve) is taken at its
        stored word until it reports again, so a start sends it nothing it already obeys.
        """
        device = self._devices.get(device_id)
        if device is not None and device.confirmed is None:
            device.confirmed = on
            device.last_contact = at

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

    async def _read_back(self, device_id: str, device: _Device) -> bool | None:
        """The device's state now (None: it does not know), remembered as its last word."""
        async with asyncio.timeout(self._config.io_timeout_s):
            observed = await device.actuator.read_supply(device_id)
        if observed is SupplyState.UNKNOWN:
            if device.pacing is not None and device.pacing.reports_only_on_contact:
                return device.confirmed  # no report since the start: its stored word stands
            return None
        device.last_contact = self._clock()
        device.confirmed = observed is SupplyState.ON
        return device.confirmed

    async def _attempt(
        self, device_id: str, device: _Device, on: bool, window_s: float, *, check_first: bool
    ) -> bool:
        """Send (unless a paced device was sent to too recently), then read back until it
        matches or ``window_s`` has passed.

        ``check_first``: read back before sending: the device may have reached the target since
        the last read (a slow valve), and a command it no longer needs is not sent. Reading
        back several times before sending again matters for slow links: a LoRaWAN valve reports
        its new state only with its next uplink, and re-sending the downlink at every read would
        only spend the network's duty cycle.
        """
        loop = asyncio.get_running_loop()
        if check_first and await self._read_back(device_id, device) == on:
            return True
        if loop.time() >= device.resend_at:
            async with asyncio.timeout(self._config.io_timeout_s):
                device.sent_at[on] = loop.time()
                await device.actuator.set_supply(device_id, on)
            self.sent += 1
            if device.pacing is not None:
                device.resend_at = loop.time() + device.pacing.resend_after_s
        deadline = loop.time() + window_s
        poll_s = min(max(window_s / 4, 0.05), 2.0)
        while True:
            if await self._read_back(device_id, device) == on:
                return True
            if loop.time() + poll_s > deadline or device.changed.is_set():
                return False
            await asyncio.sleep(poll_s)

    async def _matches_now(self, device_id: str, device: _Device, on: bool) -> bool:
        """A read-back before any command: True when the device already is where it is
        wanted (a start with the relay already on, a valve whose stored state matches)."""
        if device.confirmed is not None and device.confirmed != on:
            return False  # known to be the other way: send at once (a cut waits for nothing)
        try:
            return await self._read_back(device_id, device) == on
        except (DriverError, TimeoutError):
            return False  # the retries below deal with a device that does not answer

    async def _work(self, device_id: str, device: _Device) -> None:
        while True:
            await self._wait_for_change(device_id, device)
            device.changed.clear()
            on = device.desired
            if on is None:
                continue
            reason = device.reason
            if await self._matches_now(device_id, device, on):
                self.confirmed += 1
                await self._journal.supply_confirmed(self._view(device_id, device, on), reason)
                continue
            # Send first, journal after: the cutoff itself is already durable (committed with
            # the deduction that caused it); only the "pending" device state waits.
            pending = asyncio.create_task(
                self._journal.supply_pending(self._view(device_id, device, on), reason),
                name=f"pending[{device_id}]",
            )
            self._background.add(pending)
            pending.add_done_callback(self._background.discard)
            await self._drive(device_id, device, on, reason, pending)

    async def _wait_for_change(self, device_id: str, device: _Device) -> None:
        """Until a new wish; a device that reports only on contact is also looked at once per
        resend interval, and driven back when it reported a state other than the wish (a valve
        closed by hand, a command it lost)."""
        pacing = device.pacing
        if pacing is None or not pacing.reports_only_on_contact:
            await device.changed.wait()
            return
        while not device.changed.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pacing.resend_after_s):
                    await device.changed.wait()
            on = device.desired
            if device.changed.is_set() or on is None:
                continue
            try:
                observed = await self._read_back(device_id, device)
            except (DriverError, TimeoutError):
                continue
            if observed is not None and observed != on:
                logger.warning(
                    "device %s reported supply %s, wanted %s: driving it back",
                    device_id,
                    "on" if observed else "off",
                    "on" if on else "off",
                )
                device.reason = f"device reported {'on' if observed else 'off'}"
                device.changed.set()

    async def _drive(
        self,
        device_id: str,
        device: _Device,
        on: bool,
        reason: str,
        pending: asyncio.Task[None],
    ) -> None:
        """Send and confirm, retrying with backoff (or at the device's own pace), one alarm
        when it stays unconfirmed, until confirmed or a newer wish replaces this one."""
        loop = asyncio.get_running_loop()
        pacing = device.pacing
        started = loop.time()
        device.resend_at = 0.0  # a new wish goes out at once; only its repeats wait
        delay = pacing.resend_after_s if pacing is not None else self._config.backoff_initial_s
        # A paced device's link failing outright (broker down) is retried on the site's
        # backoff, never in a tight loop, and never slower than the device's own pace.
        error_pause = self._config.backoff_initial_s
        tries = 0
        alarmed = False
        while True:
            tries += 1
            error = "state read back does not match"
            raised = False
            window = delay
            if pacing is not None and not alarmed:
                # Look again when the alarm falls due, even between two sends.
                window = max(min(delay, started + pacing.alarm_after_s - loop.time()), 0.05)
            try:
                ok = await self._attempt(device_id, device, on, window, check_first=tries > 1)
            except (DriverError, TimeoutError) as exc:
                ok = False
                raised = True
                error = str(exc) or type(exc).__name__
            if ok:
                self.confirmed += 1
                await pending  # keep "pending" before "confirmed" on the device's topic
                await self._journal.supply_confirmed(self._view(device_id, device, on), reason)
                return
            logger.warning(
                "device %s: supply %s not confirmed (try %d): %s",
                device_id,
                "on" if on else "off",
                tries,
                error,
            )
            due = (
                loop.time() - started >= pacing.alarm_after_s
                if pacing is not None
                else tries >= self._config.confirm_tries
            )
            if due and not alarmed:
                alarmed = True
                self.alarms += 1
                await self._journal.supply_alarm(self._view(device_id, device, on), tries, error)
            pause = delay / 2
            if pacing is not None:
                pause = error_pause if raised else 0.0
                if raised:
                    error_pause = min(
                        error_pause * 2, self._config.backoff_max_s, pacing.resend_after_s
                    )
            if pause > 0 and not device.changed.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await device.changed.wait()
            if device.changed.is_set() and device.desired != on:
                return  # a newer wish replaces this one; the worker picks it up
            device.changed.clear()
            if pacing is None:
                delay = min(delay * 2, self._config.backoff_max_s)
