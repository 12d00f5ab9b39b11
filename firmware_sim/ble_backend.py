"""A bleak backend (`BaseBleakClient` subclass) in front of simulated dispensers, in-process.

Tests hand it to the real ``BleakClient`` as ``backend=``; the driver code is the production
code, with no patching. Connects, reads, writes and notifications go through bleak's own
service-collection types and through the callback bleak registers in ``start_notify``; the GATT
table and the transport-independent bleak plumbing are `firmware_sim.ble_gatt_sim`'s.

One `SimulatedAir` is one radio neighbourhood: it maps addresses to `SimulatedDispenser`s and makes
a backend class bound to itself, so tests share no global state::

    air = SimulatedAir()
    dispenser = air.add(SimulatedDispenser("AA:BB:CC:00:00:01"))
    async with BleakClient("AA:BB:CC:00:00:01", backend=air.backend()) as client:
        ...
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from bleak.args import SizedBuffer
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.exc import BleakDeviceNotFoundError, BleakError, BleakGATTProtocolError

from firmware_sim.ble_gatt_sim import SimulatedBackendBase, build_services, serve_read, serve_write
from firmware_sim.dispenser import AttError, ConnectRefusedError, SimulatedDispenser


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


class SimulatedDispenserBackend(SimulatedBackendBase):
    """bleak's view of one connection to a `SimulatedDispenser`.

    Use `SimulatedAir.backend` to get a class bound to an air; this base class sees nothing.
    """

    _air: ClassVar[SimulatedAir | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # bleak's signature, as the base's
        super().__init__(*args, **kwargs)
        self._device: SimulatedDispenser | None = None

    # ---- bleak's BaseBleakClient: the transport ---------------------------------------------

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
        self._name = device.name
        self._callbacks.clear()
        self.services = build_services(device.profile_version)

    async def disconnect(self) -> None:
        """Disconnect on purpose (no disconnected callback, as in bleak's backends)."""
        if self._device is not None:
            self._device.detach(self)
        self._device = None
        self._callbacks.clear()

    def _check_connected(self) -> None:
        self._connected_device()

    def _connected_device(self) -> SimulatedDispenser:
        if self._device is None:
            raise BleakError("Not connected")
        return self._device

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        """Read a characteristic from the simulated server."""
        device = self._connected_device()
        try:
            return bytearray(serve_read(device, characteristic.uuid))
        except AttError as exc:
            raise BleakGATTProtocolError(exc.code) from exc

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        """Write a characteristic; only write-with-response is offered by the profile."""
        device = self._connected_device()
        try:
            serve_write(device, characteristic.uuid, bytes(memoryview(data)), response=response)
        except AttError as exc:
            raise BleakGATTProtocolError(exc.code) from exc

    # ---- firmware_sim.dispenser.Link ---------------------------------------------------------

    def deliver(self, uuid: str, data: bytes) -> None:
        """A notification from the device: call bleak's callback if subscribed."""
        self._notified(uuid, data)

    def lose(self) -> None:
        """The link dropped: forget the session and schedule bleak's disconnected callback."""
        self._device = None
        self._callbacks.clear()
        if self._disconnected_callback is not None:
            asyncio.get_running_loop().call_soon(self._disconnected_callback)
