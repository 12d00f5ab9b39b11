"""Payload codecs declared in YAML: byte layouts in, named values out (pure, no I/O).

A codec file in ``configs/codecs/`` describes one device model:

* ``layout: fixed`` - fields at fixed byte offsets (Axioma Qalcosonic W1 style);
* ``layout: tlv`` - a run of ``channel id, channel type, data`` records (Milesight style: the
  UC511 and EM300-DI uplinks are ``01 75 <battery>``, ``05 c8 <u32 LE pulses>`` ...).

Each field has a ``type`` from `FIELD_TYPES`, an ``endian``, an optional ``scale`` and an
optional ``enum`` map. A named Python ``hook`` (see `drivers.lorawan.hooks`) handles what a
table cannot (bit-packed history, checksums). ``register`` says which value is the billing
register and how to turn it into milli-units; ``supply`` says which value is the valve state;
``commands`` hold the documented open/close downlinks; ``examples`` are vendor test vectors.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from billing_engine.base.errors import ConfigError, InvalidConfigError
from billing_engine.base.yaml_lines import load_model
from drivers.lorawan.codec_types import DecodedValue, Values
from drivers.lorawan.hooks import HOOKS
from drivers.ports import REGISTER_MILLI_MAX, FrameError, ImplausibleValueError, SupplyState

FieldType = Literal["u8", "i8", "u16", "i16", "u24", "i24", "u32", "i32", "u64", "i64", "f32"]

FIELD_TYPES: Mapping[str, tuple[int, Literal["uint", "int", "float"]]] = {
    "u8": (1, "uint"),
    "i8": (1, "int"),
    "u16": (2, "uint"),
    "i16": (2, "int"),
    "u24": (3, "uint"),
    "i24": (3, "int"),
    "u32": (4, "uint"),
    "i32": (4, "int"),
    "u64": (8, "uint"),
    "i64": (8, "int"),
    "f32": (4, "float"),
}
"""Field type -> (byte count, kind). A table, not an if-chain."""

Byte = Annotated[int, Field(ge=0, le=255)]
HexBytes = Annotated[str, Field(pattern=r"^([0-9a-fA-F]{2})*$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldSpec(_Model):
    """One value at ``offset`` (from the frame start, or from the TLV channel's data start)."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    type: FieldType
    offset: Annotated[int, Field(ge=0)] = 0
    endian: Literal["little", "big"] = "little"
    scale: float | None = None
    enum: dict[int, str] | None = None

    @property
    def size(self) -> int:
        """Byte count of this field."""
        return FIELD_TYPES[self.type][0]

    @model_validator(mode="after")
    def scale_or_enum(self) -> FieldSpec:
        """A value is either scaled or looked up, not both."""
        if self.scale is not None and self.enum is not None:
            raise ValueError("give either scale or enum, not both")
        return self


class ChannelSpec(_Model):
    """One TLV record: ``id``, ``type``, then ``length`` data bytes holding ``fields``."""

    id: Byte
    type: Byte
    length: Annotated[int, Field(ge=0)] | None = None
    fields: list[FieldSpec] = []

    @property
    def data_length(self) -> int:
        """Data bytes after the two header bytes (explicit, or the end of the last field)."""
        if self.length is not None:
            return self.length
        return max((f.offset + f.size for f in self.fields), default=0)

    @model_validator(mode="after")
    def fields_fit_length(self) -> ChannelSpec:
        """Every field must lie inside the channel's data."""
        for spec in self.fields:
            if spec.offset + spec.size > self.data_length:
                raise ValueError(
                    f"field {spec.name} ends at byte {spec.offset + spec.size}, past the "
                    f"channel length {self.data_length}; raise length or fix the offset"
                )
        return self


class CodecRegisterSpec(_Model):
    """A codec's ``register:``: which decoded value is the billing register, in milli-units
    ``register_milli = raw * multiply // divide`` (not a Modbus register address).

    The device config may override ``multiply``/``divide`` (a pulse meter's K-factor).
    """

    field: str
    multiply: Annotated[int, Field(ge=1)] = 1
    divide: Annotated[int, Field(ge=1)] = 1


class CodecSupplySpec(_Model):
    """A codec's ``supply:``: which decoded value reports the valve or relay, and which values
    mean on and off."""

    field: str
    on: str | int
    off: str | int


class DownlinkSpec(_Model):
    """One documented downlink command."""

    f_port: Annotated[int, Field(ge=1, le=223)]
    hex: HexBytes

    @property
    def payload(self) -> bytes:
        """The command bytes."""
        return bytes.fromhex(self.hex)


class CommandsSpec(_Model):
    """The commands that switch supply. ``confirmed`` asks the device to ACK (recommended)."""

    open: DownlinkSpec
    close: DownlinkSpec
    confirmed: bool = True


class ExampleSpec(_Model):
    """A test vector copied from the vendor's codec, with where it came from."""

    description: str
    source: str = ""
    f_port: int | None = None
    hex: HexBytes
    expect: dict[str, DecodedValue]


class CodecSpec(_Model):
    """One codec file in ``configs/codecs``."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")]
    device: str
    source: str
    layout: Literal["fixed", "tlv"]
    f_ports: list[Annotated[int, Field(ge=1, le=223)]] = []
    length: Annotated[int, Field(ge=1)] | None = None
    fields: list[FieldSpec] = []
    channels: list[ChannelSpec] = []
    hook: str | None = None
    billing_register: CodecRegisterSpec | None = Field(default=None, alias="register")
    supply: CodecSupplySpec | None = None
    commands: CommandsSpec | None = None
    examples: list[ExampleSpec] = []

    @field_validator("hook")
    @classmethod
    def hook_is_registered(cls, value: str | None) -> str | None:
        """Hooks are looked up by name in `drivers.lorawan.hooks.HOOKS`, never imported."""
        if value is not None and value not in HOOKS:
            raise ValueError(f"unknown hook {value!r}; known hooks: {', '.join(sorted(HOOKS))}")
        return value

    @model_validator(mode="after")
    def layout_matches_tables(self) -> CodecSpec:
        """``fixed`` uses ``fields``, ``tlv`` uses ``channels``."""
        if self.layout == "fixed" and self.channels:
            raise ValueError("layout fixed takes fields, not channels")
        if self.layout == "tlv" and self.fields:
            raise ValueError("layout tlv takes channels (each with its fields), not fields")
        keys = [(c.id, c.type) for c in self.channels]
        if len(keys) != len(set(keys)):
            raise ValueError("two channels have the same id and type")
        return self

    @model_validator(mode="after")
    def supply_needs_commands(self) -> CodecSpec:
        """A valve codec must say how to switch it, and vice versa."""
        if (self.supply is None) != (self.commands is None):
            raise ValueError("give supply and commands together (a valve needs both)")
        return self


@dataclass(frozen=True, slots=True)
class Decoded:
    """The result of decoding one payload.

    Attributes:
        values: named values.
        undecoded_from: for TLV payloads, the offset of the first unknown channel (the rest
            was skipped, as the vendor decoders do), else None.
    """

    values: Values
    undecoded_from: int | None = None


def _read(spec: FieldSpec, data: bytes, offset: int) -> DecodedValue:
    size, kind = FIELD_TYPES[spec.type]
    raw = data[offset : offset + size]
    number: int | float
    if kind == "float":
        number = struct.unpack("<f" if spec.endian == "little" else ">f", raw)[0]
    else:
        number = int.from_bytes(raw, spec.endian, signed=kind == "int")
    if spec.enum is not None and isinstance(number, int):
        return spec.enum.get(number, f"unknown({number})")
    if spec.scale is not None:
        return number * spec.scale
    return number


def _decode_fixed(codec: CodecSpec, payload: bytes, device_id: str) -> Decoded:
    if codec.length is not None and len(payload) != codec.length:
        raise FrameError(device_id, f"{codec.name}: {len(payload)} bytes, want {codec.length}")
    values: Values = {}
    for spec in codec.fields:
        if spec.offset + spec.size > len(payload):
            raise FrameError(device_id, f"{codec.name}: payload too short for {spec.name}")
        values[spec.name] = _read(spec, payload, spec.offset)
    return Decoded(values)


def _decode_tlv(codec: CodecSpec, payload: bytes, device_id: str) -> Decoded:
    channels = {(c.id, c.type): c for c in codec.channels}
    values: Values = {}
    i = 0
    while i < len(payload):
        if i + 2 > len(payload):
            raise FrameError(device_id, f"{codec.name}: truncated channel header at byte {i}")
        channel = channels.get((payload[i], payload[i + 1]))
        if channel is None:
            return Decoded(values, undecoded_from=i)
        start = i + 2
        end = start + channel.data_length
        if end > len(payload):
            raise FrameError(
                device_id,
                f"{codec.name}: channel {payload[i]:02x} {payload[i + 1]:02x} needs "
                f"{channel.data_length} bytes, {len(payload) - start} left",
            )
        for spec in channel.fields:
            values[spec.name] = _read(spec, payload, start + spec.offset)
        i = end
    return Decoded(values)


def decode_payload(
    codec: CodecSpec, payload: bytes, f_port: int | None, *, device_id: str = ""
) -> Decoded:
    """Decode ``payload`` with ``codec``.

    Raises:
        FrameError: wrong length, truncated channel, or a port the codec does not accept.
    """
    if codec.f_ports and f_port is not None and f_port not in codec.f_ports:
        raise FrameError(device_id, f"{codec.name}: unexpected fPort {f_port}")
    if codec.layout == "fixed":
        decoded = _decode_fixed(codec, payload, device_id)
    else:
        decoded = _decode_tlv(codec, payload, device_id)
    if codec.hook is not None:
        try:
            extra = HOOKS[codec.hook](payload, f_port, dict(decoded.values))
        except (ValueError, TypeError) as exc:
            raise FrameError(device_id, f"{codec.name}: {exc}") from exc
        decoded = Decoded({**decoded.values, **extra}, decoded.undecoded_from)
    return decoded


def register_milli(
    codec: CodecSpec,
    values: Values,
    *,
    multiply: int | None = None,
    divide: int | None = None,
    device_id: str = "",
) -> int | None:
    """The billing register in milli-units, or None when this payload does not carry it.

    Raises:
        ImplausibleValueError: the register in milli-units is negative (a signed field) or
            beyond int64 (what the journal holds); a `FrameError`, so the payload's device is
            reported and the reading dropped.
    """
    spec = codec.billing_register
    if spec is None:
        return None
    raw = values.get(spec.field)
    if raw is None:
        return None
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise TypeError(f"{codec.name}: register {spec.field} must be an integer")
    mul = multiply if multiply is not None else spec.multiply
    div = divide if divide is not None else spec.divide
    milli = raw * mul // div
    if not 0 <= milli <= REGISTER_MILLI_MAX:
        raise ImplausibleValueError(
            device_id or codec.name,
            spec.field,
            raw,
            f"x {mul} / {div} = {milli} milli-units, outside 0..{REGISTER_MILLI_MAX}"
            " (a cumulative register in int64)",
        )
    return milli


def supply_state(codec: CodecSpec, values: Values) -> SupplyState | None:
    """The reported valve state, or None when this payload does not carry it."""
    if codec.supply is None or codec.supply.field not in values:
        return None
    value = values[codec.supply.field]
    if value == codec.supply.on:
        return SupplyState.ON
    if value == codec.supply.off:
        return SupplyState.OFF
    return SupplyState.UNKNOWN


def supply_command(codec: CodecSpec, *, on: bool) -> DownlinkSpec:
    """The downlink that opens (``on``) or closes the valve.

    Raises:
        ValueError: the codec has no commands (not a valve).
    """
    if codec.commands is None:
        raise ValueError(f"{codec.name} has no supply commands")
    return codec.commands.open if on else codec.commands.close


def load_codecs(codecs_dir: Path) -> dict[str, CodecSpec]:
    """Load every ``*.yaml`` in ``codecs_dir``; all or nothing.

    Raises:
        InvalidConfigError: a file is invalid, or two files declare the same name.
    """
    codecs: dict[str, CodecSpec] = {}
    errors: list[ConfigError] = []
    for path in sorted(codecs_dir.glob("*.yaml")):
        try:
            codec = load_model(path, CodecSpec)
        except InvalidConfigError as exc:
            errors.extend(exc.errors)
            continue
        if codec.name in codecs:
            errors.append(ConfigError(str(path), 1, "name", f"codec {codec.name!r} twice"))
        codecs[codec.name] = codec
    if errors:
        raise InvalidConfigError(errors)
    return codecs
