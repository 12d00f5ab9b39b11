"""Site configuration of one BLE water dispenser (pydantic v2, frozen, extra fields forbidden).

Config only: the connection and its counters live in `drivers.ble.dispenser.DispenserClient`.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_MAC_ADDRESS: Final = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")
# macOS hides addresses and hands out a per-host UUID instead.
_CB_UUID: Final = re.compile(r"^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$")

Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
# "package.module:Class"
ImportPath = Annotated[
    str, Field(max_length=200, pattern=r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
]


#: A card number or phone id as the dispenser sends it (the Request frame's 16 ASCII bytes).
CardId = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[\x21-\x7e]+$")]
Minor = Annotated[int, Field(gt=0, le=10**12)]


class VendingConfig(BaseModel):
    """A dispenser that sells water to customers who present a card or a phone id (profile v2).

    Exactly one price: per litre, or per 18.9 L bucket (``docs/vending.md``).

    Attributes:
        currency: ISO 4217 code of the prices; must be the accounts' currency.
        price_per_litre_minor: minor units per litre (1 000 mL).
        price_per_bucket_minor: minor units per 18.9 L bucket (18 900 mL); a session is
            authorised whole buckets only.
        max_ml: the most one session may pour (the rest of the credit waits for the next).
        max_buckets: the most buckets one session may pour (bucket pricing).
        ttl_s: the authorisation lapses if the pour has not started within this time.
        cards: card number or phone id -> the account it draws on.
        ticket_product: the product a paper water ticket buys here (one of the site's
            ``tickets.products``, e.g. ``18.9L``); None = tickets are not taken here.
        ticket_ml: the volume one ticket pours (default one 18.9 L bucket).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    price_per_litre_minor: Minor | None = None
    price_per_bucket_minor: Minor | None = None
    max_ml: Annotated[int, Field(gt=0, le=1_000_000)] = 50_000
    max_buckets: Annotated[int, Field(ge=1, le=10)] = 1
    ttl_s: Annotated[int, Field(ge=1, le=3600)] = 60
    cards: dict[CardId, Identifier] = Field(default_factory=dict)
    ticket_product: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    ticket_ml: Annotated[int, Field(gt=0, le=100_000)] = 18_900

    @model_validator(mode="after")
    def exactly_one_price(self) -> VendingConfig:
        """One price list per dispenser: per litre or per bucket."""
        if (self.price_per_litre_minor is None) == (self.price_per_bucket_minor is None):
            raise ValueError("give exactly one of price_per_litre_minor, price_per_bucket_minor")
        return self


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
        vending: customers buy water at this dispenser (profile v2, ``docs/vending.md``);
            None = the v1 behaviour (the gateway authorises from elsewhere, and the meter's
            account, if any, is billed by the cumulative reading).
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
    vending: VendingConfig | None = None

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
