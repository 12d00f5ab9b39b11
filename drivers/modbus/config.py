"""Configuration models of the Modbus driver: buses (site config) and device profiles (YAML).

`ModbusBusConfig` is what the site config embeds under ``modbus_buses:``; `DeviceProfile` is one
file in ``configs/devices/``. Both are frozen pydantic v2 models that reject unknown keys, so a
typo in an operator file is an error with a line number (see `billing_engine.base.yaml_lines`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.modbus.registers import (
    MAX_READ_REGISTERS,
    ByteOrder,
    DataType,
    Table,
    WordOrder,
    register_count,
)

_FROZEN = ConfigDict(extra="forbid", frozen=True)

Address = Annotated[int, Field(ge=0, le=0xFFFF)]
UnitId = Annotated[int, Field(ge=1, le=247)]  # 0 is broadcast (no reply), 248..255 reserved


# --------------------------------------------------------------------------- bus (site config)


class SerialSettings(BaseModel):
    """Port settings of one RS485 line (all devices on it must match)."""

    model_config = _FROZEN

    port: Annotated[str, Field(min_length=1)]
    baudrate: Annotated[int, Field(gt=0)] = 9600
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    #: silence before each request; None = 3.5 character times (1.75 ms above 19200 baud), per
    #: "Modbus over Serial Line V1.02" section 2.5.1.1.
    inter_frame_gap_s: Annotated[float, Field(ge=0, le=1)] | None = None

    def effective_inter_frame_gap_s(self) -> float:
        """The gap the bus waits between frames, from the setting or the spec's rule."""
        if self.inter_frame_gap_s is not None:
            return self.inter_frame_gap_s
        if self.baudrate > 19200:
            return 0.00175
        bits_per_char = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return 3.5 * bits_per_char / self.baudrate


class ModbusDeviceConfig(BaseModel):
    """One meter on a bus."""

    model_config = _FROZEN

    device_id: Annotated[str, Field(min_length=1)]
    unit_id: UnitId
    profile: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    poll_interval_s: Annotated[float, Field(gt=0, le=86400)] = 10.0
    meter_id: Annotated[str, Field(min_length=1)]
    #: the profile's relay/valve register is marked unconfirmed; switch it anyway (tested unit)
    allow_unconfirmed_supply: bool = False


class ModbusBusConfig(BaseModel):
    """One Modbus bus: a TCP endpoint or an RS485 line, with its devices.

    A bus is half-duplex: its requests are serialised by one task and one lock; separate buses
    run in parallel.
    """

    model_config = _FROZEN

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    kind: Literal["tcp", "rtu"]
    host: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    serial: SerialSettings | None = None
    timeout_s: Annotated[float, Field(gt=0, le=30)] = 1.0
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    backoff_s: Annotated[float, Field(ge=0, le=10)] = 0.05
    backoff_max_s: Annotated[float, Field(ge=0, le=60)] = 1.0
    offline_after: Annotated[int, Field(ge=1, le=100)] = 3
    devices: Annotated[list[ModbusDeviceConfig], Field(min_length=1)]

    @model_validator(mode="after")
    def tcp_has_host_and_port_rtu_has_serial(self) -> ModbusBusConfig:
        """kind decides which endpoint fields are allowed."""
        if self.kind == "tcp":
            if self.host is None or self.port is None:
                raise ValueError("a tcp bus needs host and port (e.g. host: 10.0.0.5, port: 502)")
            if self.serial is not None:
                raise ValueError("a tcp bus takes no serial settings: remove `serial:`")
        else:
            if self.serial is None:
                raise ValueError("an rtu bus needs `serial:` with at least `port:`")
            if self.host is not None or self.port is not None:
                raise ValueError("an rtu bus takes no host/port: use `serial: {port: ...}`")
        return self

    @model_validator(mode="after")
    def unit_and_device_ids_unique(self) -> ModbusBusConfig:
        """Two devices on one bus cannot share a unit id or a device id."""
        units = [d.unit_id for d in self.devices]
        dupes = sorted({u for u in units if units.count(u) > 1})
        if dupes:
            raise ValueError(
                f"unit ids {dupes} appear twice on bus {self.name}; give each a unique id"
            )
        ids = [d.device_id for d in self.devices]
        dupe_ids = sorted({i for i in ids if ids.count(i) > 1})
        if dupe_ids:
            raise ValueError(f"device ids {dupe_ids} appear twice on bus {self.name}")
        return self


# --------------------------------------------------------------------------- device profile


class RegisterSpec(BaseModel):
    """One value in a device's register map."""

    model_config = _FROZEN

    table: Literal[Table.INPUT, Table.HOLDING]
    address: Address
    type: DataType
    word_order: WordOrder = WordOrder.BIG
    byte_order: ByteOrder = ByteOrder.BIG
    #: milli-units per raw unit: raw register value x scale = integer milli-units.
    #: e.g. a float32 kWh register read as Wh has scale 1000; a u32 in 0.01 kWh has scale 10.
    scale: Decimal = Decimal(1)
    unit: str = ""
    description: str = ""

    @model_validator(mode="after")
    def fits_in_address_space(self) -> RegisterSpec:
        """The value's last register must still be a valid address."""
        if self.address + register_count(self.type) - 1 > 0xFFFF:
            raise ValueError(f"{self.type} at {self.address} runs past register 65535")
        if self.scale <= 0:
            raise ValueError("scale must be positive")
        return self


class SupplySpec(BaseModel):
    """How to switch the relay or valve, and how to read its real state back.

    ``write_table: coil`` writes FC05 with ``on_value``/``off_value`` as 1 (0xFF00) or 0;
    ``holding`` writes FC06 with the register value. The read-back is a coil/discrete input
    (bit == on_value means ON) or a register: with masks, ON when ``value & on_mask`` and not
    ``value & off_mask`` (and vice versa); without masks, equality with on/off value.
    """

    model_config = _FROZEN

    status: Literal["confirmed", "unconfirmed"]
    source: str
    write_table: Literal[Table.COIL, Table.HOLDING]
    write_address: Address
    on_value: Annotated[int, Field(ge=0, le=0xFFFF)]
    off_value: Annotated[int, Field(ge=0, le=0xFFFF)]
    read_table: Table
    read_address: Address
    on_mask: Annotated[int, Field(ge=1, le=0xFFFF)] | None = None
    off_mask: Annotated[int, Field(ge=1, le=0xFFFF)] | None = None

    @model_validator(mode="after")
    def values_fit_the_table(self) -> SupplySpec:
        """Coil values are bits; masks come in pairs and only for registers."""
        if self.on_value == self.off_value:
            raise ValueError("on_value and off_value must differ")
        if self.write_table is Table.COIL and {self.on_value, self.off_value} != {0, 1}:
            raise ValueError("a coil is written with on_value/off_value 1 and 0")
        if (self.on_mask is None) != (self.off_mask is None):
            raise ValueError("give both on_mask and off_mask, or neither")
        bit_read = self.read_table in (Table.COIL, Table.DISCRETE_INPUT)
        if bit_read and self.on_mask is not None:
            raise ValueError("masks apply to register read-back only; remove them for a coil")
        return self


class SerialDefaults(BaseModel):
    """The factory serial settings from the manual, for the operator's information."""

    model_config = _FROZEN

    baudrate: int
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    unit_id: int = 1


class DeviceProfile(BaseModel):
    """A device type's register map, loaded from ``configs/devices/<name>.yaml``."""

    model_config = _FROZEN

    name: Annotated[str, Field(min_length=1)]
    vendor: str
    model: str
    kind: Literal["electricity", "water"]
    sources: Annotated[list[str], Field(min_length=1)]
    serial_defaults: SerialDefaults | None = None
    #: the cumulative register that is billed
    energy: RegisterSpec
    #: further values read with each poll (diagnostics; coalesced with the energy register)
    registers: dict[str, RegisterSpec] = Field(default_factory=dict)
    supply: SupplySpec | None = None
    max_read_registers: Annotated[int, Field(ge=1, le=MAX_READ_REGISTERS)] = MAX_READ_REGISTERS
    # The most the meter is rated to measure in one hour, in the billed register's ``unit``
    # (kWh, m3): an electricity meter's Imax x Un x phases, a water meter's overload flow Q4.
    # Cite the datasheet in the profile. None: not known (the gateway then uses its per-unit
    # default, see docs/operator-guide.md "Meter problems").
    max_rate_per_h: Annotated[Decimal, Field(gt=0)] | None = None
    max_gap: Annotated[int, Field(ge=0, le=MAX_READ_REGISTERS)] = 0

    @model_validator(mode="after")
    def register_names_are_free(self) -> DeviceProfile:
        """``energy`` is reserved for the billed register."""
        if "energy" in self.registers:
            raise ValueError("`energy` is the billed register; rename the extra register")
        return self
