"""`DispenserClient`: one BLE water dispenser behind bleak, as a ReadingSource and an Actuator.

A thin adapter over ``BleakClient``; framing is in `drivers.ble.gatt`. One connection per
dispenser, shared by the reading loop (`run`) and the commands (`authorise`, `refuse`, `stop`,
`set_supply`, ...), opened by bleak-retry-connector's ``establish_connection`` and re-opened after
any disconnect.

Readings: the Dispensed characteristic carries the device's lifetime counter in mL, and the
tariff prices water per litre, so ``register_milli`` = cumulative mL (milli-litres). Because the
counter is cumulative:

* after a reconnect the driver reads Dispensed once to catch up with what flowed while the link
  was down, then subscribes again; a value equal to the last one emitted is not emitted again,
  so nothing is counted twice and nothing is lost;
* when the reading queue is full the oldest pending frame is dropped: a newer frame supersedes
  it, so no volume is lost (only granularity);
* the u32 counter's wrap (after 4 294 967.296 L) is unwrapped and reported as ROLLOVER; any other
  step backwards is reported as COUNTER_RESET and its reading is marked SUSPECT.

Lock: ``set_supply(device_id, False)`` writes Lock = locked (reason NO_CREDIT); `read_supply` reads
it back. `apply_supply` does both and says whether the device obeyed.

Vending (profile v2, `drivers.ports.VendingPort`): once a `VendingSink` is attached, a Request
notification (a customer presented a card, a phone id or a ticket) goes to ``sink.presented``,
every Dispensed frame of a session to ``sink.poured`` (``ended`` on its SESSION_END frame, also
when that frame is read back after a reconnect), and after each (re)connect the device's
``last_session_id`` to ``sink.caught_up``. A v1 device has no Request characteristic: it is
simply never subscribed.
"""

from __future__ import annotations

import asyncio
import enum
import importlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from bleak import BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.exc import BleakError, BleakGATTProtocolError
from bleak_retry_connector import BleakClientWithServiceCache, establish_connection

from drivers.ble.config import BleDispenserConfig
from drivers.ble.gatt import (
    COMMAND_UUID,
    DISPENSED_UUID,
    LOCK_UUID,
    REQUEST_UUID,
    SERVICE_UUID,
    STATUS_UUID,
    U32_MAX,
    AuthoriseCommand,
    DispenseFlags,
    DispenseRef,
    DispenserState,
    FaultCode,
    GattFrameError,
    IdentityKind,
    LockFrame,
    LockReason,
    RefKind,
    RefuseCommand,
    RefuseReason,
    StatusFrame,
    StopCommand,
    decode_dispensed,
    decode_lock,
    decode_request,
    decode_status,
    encode_command,
    encode_lock,
    sign_authorise,
)
from drivers.ports import (
    Actuator,
    Clock,
    DenyReason,
    DeviceRejectedError,
    DeviceTimeoutError,
    DispenserCaughtUp,
    DriverError,
    DriverEvent,
    DriverEventKind,
    FrameError,
    IdentityPresented,
    PourReport,
    Quality,
    Reading,
    ReadingSink,
    ReadingSource,
    SupplyConfirmation,
    SupplyState,
    VendingSink,
    utc_now,
)
from drivers.ports import IdentityKind as PortIdentityKind

logger = logging.getLogger(__name__)

DeviceResolver = Callable[[str, float], Awaitable[BLEDevice | None]]
"""Turns an address into a ``BLEDevice`` (``None``: not seen), given a timeout in seconds."""

_QUEUE_SIZE: Final = 64
_FRAME_DUMP: Final = 16
_COUNTER_SPAN: Final = U32_MAX + 1
# bleak-retry-connector sleeps between attempts (0.1..4 s); allow for it in the overall deadline.
_BACKOFF_ALLOWANCE_S: Final = 5.0

_T = TypeVar("_T")


async def scan_for_device(address: str, timeout_s: float) -> BLEDevice | None:
    """Find ``address`` with a scan (production: BlueZ needs the scanned ``BLEDevice``)."""
    return await BleakScanner.find_device_by_address(address, timeout=timeout_s)


async def address_only_device(address: str, timeout_s: float) -> BLEDevice | None:
    """A ``BLEDevice`` carrying the address only, for custom backends that look it up themselves."""
    return BLEDevice(address, None, None)


class _Channel(enum.Enum):
    DISPENSED = "dispensed"
    STATUS = "status"
    REQUEST = "request"


# The profile's identity kinds and refusal codes, in the core's words (drivers.ports).
_IDENTITY_KINDS: Final = {
    IdentityKind.ACCOUNT_CARD: PortIdentityKind.CARD,
    IdentityKind.PHONE_ID: PortIdentityKind.PHONE,
    IdentityKind.TICKET: PortIdentityKind.TICKET,
}
_REF_KINDS: Final = {
    PortIdentityKind.CARD: RefKind.ACCOUNT,
    PortIdentityKind.PHONE: RefKind.ACCOUNT,
    PortIdentityKind.TICKET: RefKind.PAPER_TICKET,
}
_REFUSE_REASONS: Final = {reason: RefuseReason[reason.name] for reason in DenyReason}


@dataclass(frozen=True, slots=True)
class _Item:
    generation: int
    channel: _Channel
    data: bytes = b""


def next_session_id(last_session_id: int) -> int:
    """The session id after ``last_session_id`` (u32, 0 is never used)."""
    return 1 if last_session_id >= U32_MAX else last_session_id + 1


class DispenserClient:
    """One dispenser: readings out (`run`), authorisations and the lock in.

    Implements `drivers.ports.ReadingSource`, `drivers.ports.Actuator` and
    `drivers.ble.protocols.Dispenser`. Use as an async context manager, or call `close`.

    Args:
        config: the dispenser's site config.
        backend: a bleak backend class; None = the platform's (BlueZ, CoreBluetooth, ...).
        clock: time source for ``Reading.read_at`` (the dispenser has no clock).
        resolve_device: address -> ``BLEDevice``; default: scan when ``backend`` is None, else
            `address_only_device`.
    """

    def __init__(
        self,
        config: BleDispenserConfig,
        *,
        backend: type[BaseBleakClient] | None = None,
        clock: Clock = utc_now,
        resolve_device: DeviceResolver | None = None,
    ) -> None:
        self.config = config
        self.name = f"ble[{config.device_id}]"
        self._backend = backend
        self._clock = clock
        if resolve_device is None:
            resolve_device = scan_for_device if backend is None else address_only_device
        self._resolve = resolve_device
        self._client: BleakClientWithServiceCache | None = None
        self._generation = 0
        self._connect_lock = asyncio.Lock()
        self._command_lock = asyncio.Lock()
        # Notification frames waiting for `run`. Policy: bounded; when full the oldest frame is
        # dropped (deque maxlen): Dispensed frames carry the cumulative counter, so a newer frame
        # supersedes the dropped one. Link loss is not a frame and is never dropped.
        self._frames: deque[_Item] = deque(maxlen=_QUEUE_SIZE)
        self._wakeup = asyncio.Event()
        self._lost_generation = 0
        self._recent_frames: deque[str] = deque(maxlen=_FRAME_DUMP)
        self._last_raw_total: int | None = None
        self._wraps = 0
        self._last_register: int | None = None
        self._online: bool | None = None
        self.last_status: StatusFrame | None = None
        self._vending: VendingSink | None = None
        self.frames_dropped = 0
        self.frame_errors = 0
        self.unexpected_errors = 0
        self.connects = 0

    # ---- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> DispenserClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Disconnect, if connected."""
        client, self._client = self._client, None
        if client is None or not client.is_connected:
            return
        try:
            async with asyncio.timeout(self.config.command_timeout_s):
                await client.disconnect()
        except (TimeoutError, BleakError) as exc:
            logger.warning("dispenser %s: disconnect failed: %s", self.config.device_id, exc)

    @property
    def is_connected(self) -> bool:
        """True while the link is up."""
        return self._client is not None and self._client.is_connected

    # ---- connection -----------------------------------------------------------------------

    async def _link(self) -> tuple[BleakClientWithServiceCache, int]:
        """The live connection and its generation, connecting first if needed."""
        async with self._connect_lock:
            if self._client is not None and self._client.is_connected:
                return self._client, self._generation
            client = await self._connect()
            self._client = client
            self._generation += 1
            self.connects += 1
            self._wakeup.set()  # a reader still on an older connection must move on
            return client, self._generation

    async def _connect(self) -> BleakClientWithServiceCache:
        cfg = self.config
        device_id = cfg.device_id
        try:
            async with asyncio.timeout(cfg.connect_timeout_s + 1.0):
                device = await self._resolve(cfg.address, cfg.connect_timeout_s)
        except TimeoutError as exc:
            raise DeviceTimeoutError(device_id, f"scan for {cfg.address} timed out") from exc
        except BleakError as exc:
            raise DriverError(device_id, f"scan for {cfg.address} failed: {exc}") from exc
        if device is None:
            raise DeviceTimeoutError(device_id, f"{cfg.address} not seen while scanning")

        deadline_s = cfg.connect_timeout_s * cfg.connect_attempts + _BACKOFF_ALLOWANCE_S
        try:
            async with asyncio.timeout(deadline_s):
                client = await establish_connection(
                    BleakClientWithServiceCache,
                    device,
                    self.name,
                    disconnected_callback=self._on_disconnected,
                    max_attempts=cfg.connect_attempts,
                    timeout=cfg.connect_timeout_s,
                    backend=self._backend,
                )
        except TimeoutError as exc:
            raise DeviceTimeoutError(
                device_id, f"connect to {cfg.address} took over {deadline_s:.0f} s"
            ) from exc
        except BleakError as exc:
            raise DriverError(device_id, f"connect to {cfg.address} failed: {exc}") from exc

        if client.services.get_service(SERVICE_UUID) is None:
            try:
                async with asyncio.timeout(cfg.command_timeout_s):
                    await client.disconnect()
            except (TimeoutError, BleakError) as exc:
                logger.warning("dispenser %s: disconnect failed: %s", device_id, exc)
            raise DriverError(device_id, f"{cfg.address} has no dispenser service {SERVICE_UUID}")
        logger.debug("dispenser %s: connected to %s", device_id, cfg.address)
        return client

    def _on_disconnected(self, client: BleakClientWithServiceCache) -> None:
        # bleak calls this on the loop for unsolicited disconnects only.
        if client is not self._client:
            return
        self._lost_generation = self._generation
        self._wakeup.set()

    def _enqueue(self, item: _Item) -> None:
        if len(self._frames) == self._frames.maxlen:
            self.frames_dropped += 1
        self._frames.append(item)
        self._wakeup.set()

    def _notification_handler(
        self, generation: int, channel: _Channel
    ) -> Callable[[BleakGATTCharacteristic, bytearray], None]:
        def handle(_: BleakGATTCharacteristic, data: bytearray) -> None:
            self._enqueue(_Item(generation, channel, bytes(data)))

        return handle

    # ---- ReadingSource --------------------------------------------------------------------

    async def run(self, sink: ReadingSink) -> None:
        """Emit readings and events into ``sink`` until cancelled; reconnects on its own."""
        try:
            while True:
                try:
                    client, generation = await self._link()
                    await self._went_online(sink)
                    await self._subscribe(client, generation, sink)
                    await self._pump(generation, sink)
                    await self._went_offline(sink, "link lost")
                except DriverError as exc:
                    await self._went_offline(sink, str(exc))
                    await asyncio.sleep(self.config.reconnect_delay_s)
                except Exception:
                    # The one supervised loop boundary: log with traceback, count, carry on.
                    # (ruff BLE001 accepts it because logger.exception reports the error.)
                    self.unexpected_errors += 1
                    logger.exception(
                        "dispenser %s: unexpected error (%d so far)",
                        self.config.device_id,
                        self.unexpected_errors,
                    )
                    await asyncio.sleep(self.config.reconnect_delay_s)
        finally:
            await self.close()

    async def _subscribe(
        self, client: BleakClientWithServiceCache, generation: int, sink: ReadingSink
    ) -> None:
        """Catch up with one read of Dispensed and Status, then subscribe to both."""
        dispensed = await self._read(client, DISPENSED_UUID, "dispensed read")
        await self._handle(_Item(generation, _Channel.DISPENSED, dispensed), sink)
        status = await self._read(client, STATUS_UUID, "status read")
        await self._handle(_Item(generation, _Channel.STATUS, status), sink)
        if self._vending is not None and self.last_status is not None:
            await self._vending.caught_up(
                DispenserCaughtUp(
                    self.config.device_id, self.last_status.last_session_id, self._clock()
                )
            )
        channels = [(DISPENSED_UUID, _Channel.DISPENSED), (STATUS_UUID, _Channel.STATUS)]
        if client.services.get_characteristic(REQUEST_UUID) is not None:  # profile v2
            channels.append((REQUEST_UUID, _Channel.REQUEST))
        for uuid, channel in channels:
            try:
                async with asyncio.timeout(self.config.command_timeout_s):
                    await client.start_notify(uuid, self._notification_handler(generation, channel))
            except TimeoutError as exc:
                raise DeviceTimeoutError(self.config.device_id, "subscribe timed out") from exc
            except BleakError as exc:
                raise DriverError(self.config.device_id, f"subscribe failed: {exc}") from exc

    async def _pump(self, generation: int, sink: ReadingSink) -> None:
        """Hand frames of this connection to ``sink`` until the link is lost."""
        while True:
            while self._frames:
                item = self._frames.popleft()
                if item.generation == generation:  # else: left over from an earlier connection
                    await self._handle(item, sink)
            if self._lost_generation >= generation or self._generation != generation:
                return  # lost, or superseded by a connection a command opened meanwhile
            # No await between the emptiness check above and clear(): no wake-up is missed.
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _handle(self, item: _Item, sink: ReadingSink) -> None:
        self._recent_frames.append(f"{item.channel.value}:{item.data.hex()}")
        try:
            if item.channel is _Channel.DISPENSED:
                frame = decode_dispensed(item.data)
                await self._on_dispensed(frame.total_ml, sink)
                if self._vending is not None and frame.session_id:
                    await self._vending.poured(
                        PourReport(
                            self.config.device_id,
                            frame.session_id,
                            frame.session_ml,
                            ended=DispenseFlags.SESSION_END in frame.flags,
                            at=self._clock(),
                        )
                    )
            elif item.channel is _Channel.STATUS:
                self._on_status(decode_status(item.data))
            elif item.channel is _Channel.REQUEST:
                request = decode_request(item.data)
                if self._vending is not None:
                    await self._vending.presented(
                        IdentityPresented(
                            self.config.device_id,
                            request.request_id,
                            _IDENTITY_KINDS[request.kind],
                            request.identity,
                            self._clock(),
                        )
                    )
        except GattFrameError as exc:
            self.frame_errors += 1
            logger.warning(
                "dispenser %s: %s; last frames: %s",
                self.config.device_id,
                exc,
                " ".join(self._recent_frames),
            )
            await sink.event(
                DriverEvent(
                    self.config.device_id,
                    DriverEventKind.FRAME_ERROR,
                    self._clock(),
                    {"frame": exc.frame.hex(), "reason": exc.reason},
                )
            )

    async def _on_dispensed(self, raw_total: int, sink: ReadingSink) -> None:
        quality = Quality.GOOD
        last = self._last_raw_total
        if last is not None and raw_total < last:
            if last - raw_total > _COUNTER_SPAN // 2:
                self._wraps += 1
                await self._event(sink, DriverEventKind.ROLLOVER, {"from": last, "to": raw_total})
            else:
                quality = Quality.SUSPECT
                await self._event(
                    sink, DriverEventKind.COUNTER_RESET, {"from": last, "to": raw_total}
                )
        self._last_raw_total = raw_total
        register = self._wraps * _COUNTER_SPAN + raw_total
        if register == self._last_register:
            return  # the same cumulative value again (catch-up read, repeated frame)
        self._last_register = register
        await sink.put(
            Reading(
                meter_id=self.config.meter_id,
                read_at=self._clock(),
                register_milli=register,
                source=f"ble:{self.config.address}",
                quality=quality,
            )
        )

    def _on_status(self, status: StatusFrame) -> None:
        previous, self.last_status = self.last_status, status
        if status.state is DispenserState.FAULT and (
            previous is None or previous.fault is not status.fault
        ):
            logger.warning(
                "dispenser %s: fault %s", self.config.device_id, status.fault.name.lower()
            )
        elif (
            previous is not None
            and previous.state is DispenserState.FAULT
            and status.state is not DispenserState.FAULT
        ):
            logger.info("dispenser %s: fault cleared", self.config.device_id)

    async def _event(
        self, sink: ReadingSink, kind: DriverEventKind, detail: dict[str, str | int | float | bool]
    ) -> None:
        await sink.event(DriverEvent(self.config.device_id, kind, self._clock(), detail))

    async def _went_online(self, sink: ReadingSink) -> None:
        if self._online is True:
            return
        self._online = True
        logger.info("dispenser %s: online at %s", self.config.device_id, self.config.address)
        await self._event(sink, DriverEventKind.ONLINE, {"address": self.config.address})

    async def _went_offline(self, sink: ReadingSink, why: str) -> None:
        if self._online is False:
            return  # said once; quiet until it comes back
        self._online = False
        logger.warning("dispenser %s: offline: %s", self.config.device_id, why)
        await self._event(sink, DriverEventKind.OFFLINE, {"reason": why})

    # ---- GATT I/O -------------------------------------------------------------------------

    async def _gatt_request(self, what: str, request: Callable[[], Awaitable[_T]]) -> _T:
        """Run one GATT request under the command timeout; map its failures to `DriverError`s.

        Raises:
            DeviceTimeoutError: no answer in time.
            DeviceRejectedError: the dispenser answered with an ATT error.
            DriverError: any other bleak failure.
        """
        device_id = self.config.device_id
        try:
            async with asyncio.timeout(self.config.command_timeout_s):
                return await request()
        except TimeoutError as exc:
            raise DeviceTimeoutError(device_id, f"{what} timed out") from exc
        except BleakGATTProtocolError as exc:
            raise DeviceRejectedError(device_id, int(exc.code), what) from exc
        except BleakError as exc:
            raise DriverError(device_id, f"{what} failed: {exc}") from exc

    async def _read(self, client: BleakClientWithServiceCache, uuid: str, what: str) -> bytes:
        return bytes(await self._gatt_request(what, lambda: client.read_gatt_char(uuid)))

    async def _write(self, uuid: str, frame: bytes, what: str) -> None:
        client, _ = await self._link()
        await self._gatt_request(what, lambda: client.write_gatt_char(uuid, frame, response=True))

    async def _read_decoded(
        self, device_id: str, uuid: str, what: str, decode: Callable[[bytes], _T]
    ) -> _T:
        """Read one characteristic of this dispenser on demand and decode it.

        Raises:
            DriverError: not this dispenser, or the read failed; `FrameError` on a bad frame.
        """
        self._check_device(device_id)
        client, _ = await self._link()
        data = await self._read(client, uuid, what)
        try:
            return decode(data)
        except GattFrameError as exc:
            self.frame_errors += 1
            raise FrameError(self.config.device_id, str(exc)) from exc

    def _check_device(self, device_id: str) -> None:
        if not self.handles(device_id):
            raise DriverError(device_id, f"not driven by {self.name}")

    # ---- Actuator -------------------------------------------------------------------------

    def handles(self, device_id: str) -> bool:
        """True for this dispenser's ``device_id``."""
        return device_id == self.config.device_id

    async def set_supply(self, device_id: str, on: bool) -> None:
        """Unlock (``on``) or lock the dispenser (reason NO_CREDIT). Sent, not confirmed.

        Raises:
            DriverError: not this dispenser, or the write failed (`DeviceRejectedError` when the
                dispenser answered with an ATT error, `DeviceTimeoutError` on timeout).
        """
        await self._write_lock(device_id, on, LockReason.NO_CREDIT)

    async def read_supply(self, device_id: str) -> SupplyState:
        """Read the Lock characteristic back: locked = OFF, unlocked = ON.

        Raises:
            DriverError: not this dispenser, or the read failed; `FrameError` on a bad frame.
        """
        lock = await self._read_decoded(device_id, LOCK_UUID, "lock read", decode_lock)
        return SupplyState.OFF if lock.locked else SupplyState.ON

    async def apply_supply(
        self, device_id: str, on: bool, *, reason: LockReason = LockReason.NO_CREDIT
    ) -> SupplyConfirmation:
        """Write the lock, read it back, and say whether the device obeyed.

        Raises:
            DriverError: as `set_supply` and `read_supply`.
        """
        async with self._command_lock:
            await self._write_lock(device_id, on, reason)
            observed = await self.read_supply(device_id)
        outcome = SupplyConfirmation(device_id, SupplyState.ON if on else SupplyState.OFF, observed)
        if not outcome.confirmed:
            logger.warning(
                "dispenser %s: asked %s, reads back %s: unconfirmed",
                device_id,
                outcome.requested.value,
                observed.value,
            )
        return outcome

    async def _write_lock(self, device_id: str, on: bool, reason: LockReason) -> None:
        self._check_device(device_id)
        frame = LockFrame(locked=False) if on else LockFrame(locked=True, reason=reason)
        await self._write(LOCK_UUID, encode_lock(frame), "lock write")

    # ---- Dispenser ------------------------------------------------------------------------

    async def read_status(self, dispenser_id: str) -> StatusFrame:
        """Read the Status characteristic.

        Raises:
            DriverError: not this dispenser, or the read failed; `FrameError` on a bad frame.
        """
        status = await self._read_decoded(dispenser_id, STATUS_UUID, "status read", decode_status)
        self.last_status = status
        return status

    async def authorise(
        self, dispenser_id: str, max_ml: int, ref: DispenseRef, *, ttl_s: int = 60
    ) -> int:
        """Allow one dispense of at most ``max_ml`` mL, charged to ``ref``; returns the session id.

        The session id is the device's last accepted id + 1 (the device refuses any other as a
        replay). The device stops the valve at ``max_ml`` by itself, even if the link drops.

        Raises:
            ValueError: ``max_ml`` is not 1..2**32-1.
            DeviceRejectedError: the dispenser refused (code in `drivers.ble.gatt.AppError`:
                LOCKED, BAD_MAC, STALE_SESSION, FAULTED, BUSY).
            DriverError: not this dispenser, or the link failed.
        """
        if not 0 < max_ml <= U32_MAX:
            raise ValueError(f"max_ml must be 1..{U32_MAX}, got {max_ml}")
        async with self._command_lock:
            status = await self.read_status(dispenser_id)
            command = AuthoriseCommand(next_session_id(status.last_session_id), max_ml, ref, ttl_s)
            key = self.config.auth_key
            if key is not None:
                command = sign_authorise(command, key)
            await self._write(COMMAND_UUID, encode_command(command), "authorise")
        logger.info(
            "dispenser %s: session %d authorised for %d mL (%s)",
            dispenser_id,
            command.session_id,
            max_ml,
            ref.kind.name.lower(),
        )
        return command.session_id

    async def refuse(self, dispenser_id: str, reason: RefuseReason, session_id: int = 0) -> None:
        """Tell the dispenser to refuse (and cancel ``session_id`` if it is open; 0 = none).

        Raises:
            DriverError: not this dispenser, or the write failed.
        """
        self._check_device(dispenser_id)
        async with self._command_lock:
            await self._write(
                COMMAND_UUID, encode_command(RefuseCommand(session_id, reason)), "refuse"
            )
        logger.info("dispenser %s: refused (%s)", dispenser_id, reason.name.lower())

    async def stop(self, dispenser_id: str, session_id: int) -> None:
        """Close the valve and end ``session_id`` now (a no-op for a session already ended).

        Raises:
            DriverError: not this dispenser, or the write failed.
        """
        self._check_device(dispenser_id)
        async with self._command_lock:
            await self._write(COMMAND_UUID, encode_command(StopCommand(session_id)), "stop")

    # ---- VendingPort ----------------------------------------------------------------------

    def attach_vending(self, sink: VendingSink) -> None:
        """Report requests, pours and reconnects into ``sink`` from now on."""
        self._vending = sink

    async def next_session(self, dispenser_id: str) -> int:
        """The session id the dispenser accepts next: its ``last_session_id`` + 1 (read live).

        Raises:
            DriverError: not this dispenser, or the read failed.
        """
        status = await self.read_status(dispenser_id)
        return next_session_id(status.last_session_id)

    async def grant(
        self,
        dispenser_id: str,
        session_id: int,
        max_ml: int,
        ref_kind: PortIdentityKind,
        ref: str,
    ) -> None:
        """Authorise ``session_id`` (journalled by the core before this call) for ``max_ml``.

        Raises:
            ValueError: ``max_ml`` or ``session_id`` out of range, or ``ref`` too long.
            DeviceRejectedError: the dispenser refused (LOCKED, BUSY, FAULTED, STALE_SESSION...).
            DriverError: not this dispenser, or the link failed.
        """
        self._check_device(dispenser_id)
        command = AuthoriseCommand(session_id, max_ml, DispenseRef(_REF_KINDS[ref_kind], ref))
        key = self.config.auth_key
        if key is not None:
            command = sign_authorise(command, key)
        frame = encode_command(command)
        async with self._command_lock:
            await self._write(COMMAND_UUID, frame, "authorise")
        logger.info(
            "dispenser %s: session %d authorised for %d mL (%s)",
            dispenser_id,
            session_id,
            max_ml,
            ref_kind.value,
        )

    async def deny(self, dispenser_id: str, reason: DenyReason) -> None:
        """Show ``reason`` on the dispenser (no session is opened).

        Raises:
            DriverError: not this dispenser, or the write failed.
        """
        await self.refuse(dispenser_id, _REFUSE_REASONS[reason])

    def faulted(self) -> FaultCode | None:
        """The last reported fault, or None when the last Status showed none."""
        if self.last_status is None or self.last_status.state is not DispenserState.FAULT:
            return None
        return self.last_status.fault


def resolve_backend(import_path: str) -> type[BaseBleakClient]:
    """The bleak backend class named ``"module:Class"`` (a config's ``backend``).

    Loaded by name with `importlib` on purpose: this is the one seam through which a site file
    may plug a simulated backend (``firmware_sim.ble_remote:RemoteSimBackend``) into the
    production driver. The gateway and drivers must not import ``firmware_sim`` statically (the
    import-linter contract "only tests and the demo use firmware_sim"); a string resolved here
    at run time, only when a site file asks for it, keeps that contract.

    Raises:
        ValueError: the module or class cannot be loaded, or is not a ``BaseBleakClient``.
    """
    module_name, _, class_name = import_path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"BLE backend {import_path}: cannot import {module_name}: {exc}") from exc
    backend = getattr(module, class_name, None)
    if not (isinstance(backend, type) and issubclass(backend, BaseBleakClient)):
        # ValueError, as for every other bad BLE config build_ble reports
        raise ValueError(  # noqa: TRY004
            f"BLE backend {import_path}: {class_name} is not a bleak backend class "
            "(a BaseBleakClient subclass)"
        )
    return backend


def build_ble(
    configs: Sequence[BleDispenserConfig], backend: type[BaseBleakClient] | None = None
) -> tuple[list[ReadingSource], list[Actuator]]:
    """One `DispenserClient` per config, as reading sources and as actuators (same objects).

    Args:
        configs: the site's dispensers.
        backend: a bleak backend class for every client (tests); it wins over each config's
            ``backend`` import path. Both None = bleak's platform backend (production).

    Raises:
        ValueError: two configs share a device_id, meter_id or address, or a config's
            ``backend`` cannot be loaded.
    """
    for field in ("device_id", "meter_id", "address"):
        values = [getattr(c, field) for c in configs]
        duplicates = sorted({v for v in values if values.count(v) > 1})
        if duplicates:
            raise ValueError(f"BLE dispensers: duplicate {field} {', '.join(duplicates)}")
    clients = [
        DispenserClient(
            c,
            backend=(
                backend if backend is not None or c.backend is None else resolve_backend(c.backend)
            ),
        )
        for c in configs
    ]
    return list[ReadingSource](clients), list[Actuator](clients)
