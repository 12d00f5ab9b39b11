"""Site configuration of one BLE water dispenser (pydantic v2, frozen, extra fields forbidden).

Config only: the connection and its counters live in `drivers.ble.dispenser.DispenserClient`.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

_MAC_ADDRESS: Final = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")
# macOS hides addresses and hands out a per-host UUID instead.
_CB_UUID: Final = re.compile(r"^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$")

Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
# "package.module:Class"
ImportPath = Annotated[
    str, Field(max_length=200, pattern=r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
]


class BleDispenserConfig(BaseModel):
    """One dispenser speaking the profile in ``docs/ble-gatt.md``.

    Attributes:
        address: Bluetooth address ``AA:BB:CC:DD:EE:FF`` (or a CoreBluetooth UUID on macOS);
            stored upper-case.
        device_id: the actuator id the core addresses (``set_supply(device_id, ...)``).
        meter_id: the meter id its readings carry (register = cumulative mL).
        connect_timeout_s: per connection attempt.
        connect_attempts: attempts per connect (bleak-retry-connector's ``max_attempts``).
        command_timeout_s: deadline of each GATT read, write or subscribe.
        reconnect_delay_s: pause after a failed connect before the next round of attempts.
        auth_key_hex: per-device key for the Authorise MAC (hex, 16..32 bytes); None = unsigned.
        backend: **simulation only.** The import path ``"module:Class"`` of a bleak backend
            class (a ``BaseBleakClient`` subclass), e.g.
            ``firmware_sim.ble_remote:RemoteSimBackend`` to reach the dispensers of a
            ``prepay sim`` process. Production leaves it unset: bleak's platform backend
            (BlueZ, CoreBluetooth, WinRT) and a scan for the address.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str
    device_id: Identifier
    meter_id: Identifier
    connect_timeout_s: Annotated[float, Field(gt=0, le=120)] = 20.0
    connect_attempts: Annotated[int, Field(ge=1, le=10)] = 4
    command_timeout_s: Annotated[float, Field(gt=0, le=60)] = 10.0
    reconnect_delay_s: Annotated[float, Field(ge=0, le=600)] = 5.0
    auth_key_hex: SecretStr | None = None
    backend: ImportPath | None = None

    @field_validator("address")
    @classmethod
    def address_is_mac_or_uuid(cls, value: str) -> str:
        """Accept ``AA:BB:CC:DD:EE:FF`` or a macOS UUID, in either case."""
        upper = value.strip().upper()
        if not (_MAC_ADDRESS.match(upper) or _CB_UUID.match(upper)):
            raise ValueError(
                "address must be a Bluetooth address like AA:BB:CC:DD:EE:FF "
                "(or a CoreBluetooth UUID on macOS)"
            )
        return upper

    @field_validator("auth_key_hex")
    @classmethod
    def auth_key_is_hex_16_to_32_bytes(cls, value: SecretStr | None) -> SecretStr | None:
        """The key is hex of 16 to 32 bytes; the message never echoes it."""
        if value is None:
            return None
        try:
            key = bytes.fromhex(value.get_secret_value())
        except ValueError:
            raise ValueError("auth_key_hex must be hexadecimal") from None
        if not 16 <= len(key) <= 32:
            raise ValueError("auth_key_hex must be 16 to 32 bytes (32 to 64 hex digits)")
        return value

    @property
    def auth_key(self) -> bytes | None:
        """The MAC key as bytes, or None when commands go unsigned."""
        if self.auth_key_hex is None:
            return None
        return bytes.fromhex(self.auth_key_hex.get_secret_value())
