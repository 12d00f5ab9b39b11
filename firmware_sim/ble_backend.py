"""A bleak backend (`BaseBleakClient` subclass) in front of simulated dispensers.

Tests hand it to the real ``BleakClient`` as ``backend=``; the driver code is the production
code, with no patching. Connects, reads, writes and notifications go through bleak's own
service-collection types (`BleakGATTServiceCollection`, `BleakGATTService`,
`BleakGATTCharacteristic`, `BleakGATTDescriptor`) and through the callback bleak registers in
``start_notify``.

One `SimulatedAir` is one radio neighbourhood: it maps addresses to `SimulatedDispenser`s and makes
a backend class bound to itself, so tests share no global state::

    air = SimulatedAir()
    dispenser = air.add(SimulatedDispenser("AA:BB:CC:00:00:01"))
    async with BleakClient("AA:BB:CC:00:00:01", backend=air.backend()) as client:
        ...
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

from bleak.args import SizedBuffer
from bleak.assigned_numbers import CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError, BleakGATTProtocolError
from bleak.uuids import normalize_uuid_16

from drivers.ble.gatt import COMMAND_UUID, DISPENSED_UUID, LOCK_UUID, SERVICE_UUID, STATUS_UUID
from firmware_sim.dispenser import AttError, ConnectRefusedError, SimulatedDispenser

_CCCD_UUID = normalize_uuid_16(0x2902)
_DEVICE_INFO_UUID = normalize_uuid_16(0x180A)
_MODEL_NUMBER_UUID = normalize_uuid_16(0x2A24)
_FIRMWARE_REVISION_UUID = normalize_uuid_16(0x2A26)
_ATT_MTU = 247

_PROFILE: tuple[tuple[str, list[CharacteristicPropertyName]], ...] = (
    (COMMAND_UUID, ["write"]),
    (DISPENSED_UUID, ["read", "notify"]),
    (STATUS_UUID, ["read", "notify"]),
    (LOCK_UUID, ["read", "write", "notify"]),
)


class SimulatedAir:
    """The simulated dispensers in radio range, by address."""

    def __init__(self) -> None:
        self._devices: dict[str, SimulatedDispenser] = {}

    def add(self, dispenser: SimulatedDispenser) -> SimulatedDispenser:
        """Put ``dispenser`` in range and return it."""
        self._devices[dispenser.address.upper()] = dispenser
        return dispenser

    def lookup(self, address: str) -> SimulatedDispenser | None:
        """The dispenser at ``address``, or None when nothing answers there."""
        return self._devices.get(address.upper())

    def backend(self) -> type[SimulatedDispenserBackend]:
        """A backend class, for ``BleakClient(..., backend=...)``, that sees this air."""
        air = self

        class SimulatedDispenserBackendBound(SimulatedDispenserBackend):
            _air: ClassVar[SimulatedAir] = air

        return SimulatedDispenserBackendBound


def _build_services(dispenser: SimulatedDispenser) -> BleakGATTServiceCollection:
    """The dispenser's GATT table: Device Information (0x180A) and the dispenser service."""
    collection = BleakGATTServiceCollection()
    handle = 0

    def next_handle() -> int:
        nonlocal handle
        handle += 1
        return handle

    def mtu_payload() -> int:
        return _ATT_MTU - 3

    def add_service(
        uuid: str, chars: tuple[tuple[str, list[CharacteristicPropertyName]], ...]
    ) -> None:
        service = BleakGATTService(None, next_handle(), uuid)
        collection.add_service(service)
        for char_uuid, props in chars:
            next_handle()  # the characteristic declaration attribute
            char = BleakGATTCharacteristic(
                None, next_handle(), char_uuid, props, mtu_payload, service
            )
            collection.add_characteristic(char)
            if "notify" in props:
                collection.add_descriptor(
                    BleakGATTDescriptor(None, next_handle(), _CCCD_UUID, char)
                )

    add_service(
        _DEVICE_INFO_UUID, ((_MODEL_NUMBER_UUID, ["read"]), (_FIRMWARE_REVISION_UUID, ["read"]))
    )
    add_service(SERVICE_UUID, _PROFILE)
    return collection


class SimulatedDispenserBackend(BaseBleakClient):
    """bleak's view of one connection to a `SimulatedDispenser`.

    Use `SimulatedAir.backend` to get a class bound to an air; this base class sees nothing.
    """

    _air: ClassVar[SimulatedAir | None] = None

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
        self._device: SimulatedDispenser | None = None
        self._callbacks: dict[int, NotifyCallback] = {}
        self._cccd: dict[int, bytes] = {}

    # ---- bleak's BaseBleakClient ------------------------------------------------------------

    @property
    def name(self) -> str:
        """The advertised name."""
        return self._device.name if self._device is not None else self.address

    @property
    def mtu_size(self) -> int:
        """The negotiated ATT MTU."""
        return _ATT_MTU

    @property
    def is_connected(self) -> bool:
        """True between a successful `connect` and a disconnect or link loss."""
        return self._device is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        """Connect and discover services.

        Raises:
            BleakDeviceNotFoundError: nothing at this address.
            BleakError: the device refused the link (fault injection).
        """
        device = self._air.lookup(self.address) if self._air is not None else None
        if device is None:
            raise BleakDeviceNotFoundError(self.address, f"Device {self.address} not found")
        try:
            device.accept(self)
        except ConnectRefusedError:
            raise BleakError(f"{self.address}: simulated connection failure") from None
        self._device = device
        self._callbacks.clear()
        self.services = _build_services(device)

    async def disconnect(self) -> None:
        """Disconnect on purpose (no disconnected callback, as in bleak's backends)."""
        if self._device is not None:
            self._device.detach(self)
        self._device = None
        self._callbacks.clear()

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        """Pairing is not part of the profile; accepted and ignored."""

    async def unpair(self) -> None:
        """Pairing is not part of the profile; accepted and ignored."""

    def _connected_device(self) -> SimulatedDispenser:
        if self._device is None:
            raise BleakError("Not connected")
        return self._device

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        """Read a characteristic from the simulated server."""
        device = self._connected_device()
        if characteristic.uuid == _MODEL_NUMBER_UUID:
            return bytearray(device.model.encode())
        if characteristic.uuid == _FIRMWARE_REVISION_UUID:
            return bytearray(device.firmware.encode())
        try:
            return bytearray(device.read(characteristic.uuid))
        except AttError as exc:
            raise BleakGATTProtocolError(exc.code) from exc

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        """Read a descriptor (only CCCDs exist)."""
        self._connected_device()
        return bytearray(self._cccd.get(descriptor.handle, b"\x00\x00"))

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        """Write a characteristic; only write-with-response is offered by the profile."""
        device = self._connected_device()
        if not response:
            raise BleakGATTProtocolError(0x03)  # Write Not Permitted (no write-without-response)
        try:
            device.write(characteristic.uuid, bytes(memoryview(data)))
        except AttError as exc:
            raise BleakGATTProtocolError(exc.code) from exc

    async def write_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, data: SizedBuffer
    ) -> None:
        """Write a descriptor (kept, not interpreted)."""
        self._connected_device()
        self._cccd[descriptor.handle] = bytes(memoryview(data))

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        """Subscribe: later notifications on ``characteristic`` go to ``callback``."""
        self._connected_device()
        if "notify" not in characteristic.properties:
            raise BleakError(f"Characteristic {characteristic.uuid} does not notify")
        self._callbacks[characteristic.handle] = callback

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        """Unsubscribe."""
        self._connected_device()
        self._callbacks.pop(characteristic.handle, None)

    # ---- firmware_sim.dispenser.Link ---------------------------------------------------------

    def deliver(self, uuid: str, data: bytes) -> None:
        """A notification from the device: call bleak's callback if subscribed."""
        if self.services is None:
            return
        characteristic = self.services.get_characteristic(uuid)
        if characteristic is None:
            return
        callback = self._callbacks.get(characteristic.handle)
        if callback is not None:
            callback(bytearray(data))

    def lose(self) -> None:
        """The link dropped: forget the session and schedule bleak's disconnected callback."""
        self._device = None
        self._callbacks.clear()
        if self._disconnected_callback is not None:
            asyncio.get_running_loop().call_soon(self._disconnected_callback)
