"""What both simulated BLE transports share: the GATT table, its reads and writes, bleak plumbing.

A simulated dispenser reaches bleak in two ways: in the driver's own process
(`firmware_sim.ble_backend`) and from another process over a Unix socket
(`firmware_sim.ble_remote`). Both must show bleak the same GATT table, answer Device Information
reads the same way, refuse the same writes, and behave the same as a `BaseBleakClient` wherever
the transport does not matter (MTU, CCCDs, subscriptions, pairing). That is kept here, once, so
the two cannot drift apart; each transport module keeps only how a request reaches the device.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, Final

from bleak.args import SizedBuffer
from bleak.assigned_numbers import CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError
from bleak.uuids import normalize_uuid_16

from drivers.ble.gatt import (
    COMMAND_UUID,
    DISPENSED_UUID,
    LOCK_UUID,
    REQUEST_UUID,
    SERVICE_UUID,
    STATUS_UUID,
)
from firmware_sim.dispenser import ATT_WRITE_NOT_PERMITTED, AttError, SimulatedDispenser

ATT_MTU: Final = 247
"""The ATT MTU every simulated link negotiates."""

CCCD_UUID: Final = normalize_uuid_16(0x2902)
DEVICE_INFO_UUID: Final = normalize_uuid_16(0x180A)
MODEL_NUMBER_UUID: Final = normalize_uuid_16(0x2A24)
FIRMWARE_REVISION_UUID: Final = normalize_uuid_16(0x2A26)

_Characteristics = tuple[tuple[str, list[CharacteristicPropertyName]], ...]

_DEVICE_INFO: Final[_Characteristics] = (
    (MODEL_NUMBER_UUID, ["read"]),
    (FIRMWARE_REVISION_UUID, ["read"]),
)
_DISPENSER: Final[_Characteristics] = (
    (COMMAND_UUID, ["write"]),
    (DISPENSED_UUID, ["read", "notify"]),
    (STATUS_UUID, ["read", "notify"]),
    (LOCK_UUID, ["read", "write", "notify"]),
)
# Profile v2 adds the Request characteristic (notify only: a presentation missed while the link
# is down is not replayed; the customer presents again).
_REQUEST: Final[_Characteristics] = ((REQUEST_UUID, ["notify"]),)


def build_services(profile_version: int = 2) -> BleakGATTServiceCollection:
    """The GATT table of a simulated dispenser: Device Information and the dispenser service
    (with the Request characteristic from profile v2 on).

    Handles are numbered as a GATT server does: service, then per characteristic its declaration,
    its value and (when it notifies) its CCCD.
    """
    collection = BleakGATTServiceCollection()
    handle = 0

    def next_handle() -> int:
        nonlocal handle
        handle += 1
        return handle

    def mtu_payload() -> int:
        return ATT_MTU - 3

    dispenser = _DISPENSER + (_REQUEST if profile_version >= 2 else ())
    for uuid, chars in ((DEVICE_INFO_UUID, _DEVICE_INFO), (SERVICE_UUID, dispenser)):
        service = BleakGATTService(None, next_handle(), uuid)
        collection.add_service(service)
        for char_uuid, props in chars:
            next_handle()  # the characteristic declaration attribute
            char = BleakGATTCharacteristic(
                None, next_handle(), char_uuid, props, mtu_payload, service
            )
            collection.add_characteristic(char)
            if "notify" in props:
                collection.add_descriptor(BleakGATTDescriptor(None, next_handle(), CCCD_UUID, char))
    return collection


def serve_read(device: SimulatedDispenser, uuid: str) -> bytes:
    """A GATT read of ``uuid``: Device Information here, the rest by the dispenser.

    Raises:
        AttError: the characteristic is not readable.
    """
    if uuid == MODEL_NUMBER_UUID:
        return device.model.encode()
    if uuid == FIRMWARE_REVISION_UUID:
        return device.firmware.encode()
    return device.read(uuid)


def serve_write(device: SimulatedDispenser, uuid: str, data: bytes, *, response: bool) -> None:
    """A GATT write of ``uuid``; the profile offers write-with-response only.

    Raises:
        AttError: a write without response, a malformed frame, or a refusal.
    """
    if not response:
        raise AttError(ATT_WRITE_NOT_PERMITTED)
    device.write(uuid, data)


class SimulatedBackendBase(BaseBleakClient):
    """The `BaseBleakClient` parts that do not depend on where the dispenser runs.

    Subclasses implement the transport: `connect`, `disconnect`, `is_connected`,
    `read_gatt_char`, `write_gatt_char`, `_check_connected`, and (when the far side must know
    about subscriptions) `_subscription_changed`. CCCD values are kept on this side and not
    interpreted: subscriptions go through `start_notify`, as with bleak's own backends.
    """

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[], None] | None,
        timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout
        )
        self._name = self.address
        self._callbacks: dict[str, NotifyCallback] = {}  # by characteristic UUID
        self._cccd: dict[int, bytes] = {}

    @property
    def name(self) -> str:
        """The advertised name (the address until a connect has told it)."""
        return self._name

    @property
    def mtu_size(self) -> int:
        """The negotiated ATT MTU."""
        return ATT_MTU

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        """Pairing is not part of the profile; accepted and ignored."""

    async def unpair(self) -> None:
        """Pairing is not part of the profile; accepted and ignored."""

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        """Read a descriptor (only CCCDs exist)."""
        self._check_connected()
        return bytearray(self._cccd.get(descriptor.handle, b"\x00\x00"))

    async def write_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, data: SizedBuffer
    ) -> None:
        """Write a descriptor (kept, not interpreted)."""
        self._check_connected()
        self._cccd[descriptor.handle] = bytes(memoryview(data))

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        """Subscribe: later notifications on ``characteristic`` go to ``callback``."""
        self._check_connected()
        if "notify" not in characteristic.properties:
            raise BleakError(f"Characteristic {characteristic.uuid} does not notify")
        self._callbacks[characteristic.uuid] = callback
        await self._subscription_changed(characteristic.uuid, on=True)

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        """Unsubscribe."""
        self._check_connected()
        self._callbacks.pop(characteristic.uuid, None)
        await self._subscription_changed(characteristic.uuid, on=False)

    def is_subscribed(self, uuid: str) -> bool:
        """True when bleak subscribed to ``uuid`` on this link."""
        return uuid in self._callbacks

    def _notified(self, uuid: str, data: bytes) -> None:
        """A notification arrived: hand it to bleak's callback, if subscribed."""
        callback = self._callbacks.get(uuid)
        if callback is not None:
            callback(bytearray(data))

    @abc.abstractmethod
    def _check_connected(self) -> None:
        """Raise `BleakError` unless the link is up."""

    async def _subscription_changed(self, uuid: str, *, on: bool) -> None:
        """Tell the far side about a (un)subscription; in-process there is nobody to tell."""
