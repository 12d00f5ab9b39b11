"""BLE water dispensers: our GATT profile (`gatt`), its config (`config`) and the bleak adapter
(`dispenser`). Only this package imports bleak and bleak-retry-connector."""

from __future__ import annotations

from drivers.ble.config import BleDispenserConfig
from drivers.ble.dispenser import DispenserClient, SupplyConfirmation, build_ble
from drivers.ble.gatt import DispenseRef, LockReason, RefKind, RefuseReason
from drivers.ble.protocols import Dispenser

__all__ = [
    "BleDispenserConfig",
    "DispenseRef",
    "Dispenser",
    "DispenserClient",
    "LockReason",
    "RefKind",
    "RefuseReason",
    "SupplyConfirmation",
    "build_ble",
]
