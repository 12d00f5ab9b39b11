"""The dispenser port: what the core may ask of a dispenser beyond `Actuator`.

Proposed for ``drivers/ports.py`` (it lives here until it moves; with it would move
`DispenseRef`, `RefKind` and `RefuseReason` from `drivers.ble.gatt`, which are value types with no
BLE in them).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from drivers.ble.gatt import DispenseRef, RefuseReason


@runtime_checkable
class Dispenser(Protocol):
    """A dispenser that pours only what the gateway authorised."""

    name: str

    def handles(self, device_id: str) -> bool:
        """True when this driver drives ``device_id``."""

    async def authorise(
        self, dispenser_id: str, max_ml: int, ref: DispenseRef, *, ttl_s: int = 60
    ) -> int:
        """Allow one dispense of at most ``max_ml``; returns the session id the device will report.

        Raises:
            DeviceRejectedError: the dispenser refused (locked, busy, faulted, bad MAC, replay).
            DriverError: the command could not be delivered.
        """

    async def refuse(self, dispenser_id: str, reason: RefuseReason, session_id: int = 0) -> None:
        """Show a refusal on the dispenser, cancelling ``session_id`` if it is open.

        Raises:
            DriverError: the command could not be delivered.
        """

    async def stop(self, dispenser_id: str, session_id: int) -> None:
        """End ``session_id`` now.

        Raises:
            DriverError: the command could not be delivered.
        """
