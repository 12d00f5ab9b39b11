"""Pure register decoding and request planning for Modbus devices: no I/O here.

A Modbus register is 16 bits, sent big-endian on the wire (Modbus Application Protocol
V1.1b3, section 4.2). Wider values span several registers, and vendors disagree on the order:

* **word order** ``big``: the first (lowest-address) register holds the most significant word
  (Eastron, "ABCD"); ``little``: the first register holds the least significant word ("CDAB").
* **byte order** ``big``: each register's high byte comes first (the Modbus default);
  ``little``: the two bytes inside each register are swapped ("BADC"). Little word order plus
  little byte order is full little-endian ("DCBA", the Xintai water meter).

Readings leave this module as integers in milli-units: the raw value times the profile's
decimal ``scale`` (e.g. ``1000`` for a kWh register read as Wh), rounded half-even with
`decimal.Decimal`, so the same register bits always give the same integer and no binary float
ever reaches billing.

Precision of float32 registers: a float32 has a 24-bit significand, so its step at a value V is
``2 ** (floor(log2 V) - 23)``. For a kWh register that is <= 0.49 Wh below 8192 kWh (exact to the
Wh after rounding), 0.98 Wh up to 16 384 kWh, 7.8 Wh near 100 000 kWh and 62.5 Wh above
2^19 kWh. The gateway cannot recover digits the meter never sent; a meter whose float32 total
exceeds ~8 MWh bills in steps coarser than 1 Wh. Prefer an integer register where the device has
one.
"""

from __future__ import annotations

import enum
import functools
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final


class DataType(enum.StrEnum):
    """The register encodings the profiles may name."""

    U16 = "u16"
    S16 = "s16"
    U32 = "u32"
    S32 = "s32"
    U64 = "u64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"


class WordOrder(enum.StrEnum):
    """Order of the 16-bit words of a multi-register value."""

    BIG = "big"  # most significant word at the lowest address ("ABCD")
    LITTLE = "little"  # least significant word at the lowest address ("CDAB")


class ByteOrder(enum.StrEnum):
    """Order of the two bytes inside each register."""

    BIG = "big"  # the Modbus default
    LITTLE = "little"  # swapped ("BADC", or "DCBA" together with little word order)


class Table(enum.StrEnum):
    """The Modbus data tables a value can be read from (and the read function code)."""

    COIL = "coil"  # FC01
    DISCRETE_INPUT = "discrete_input"  # FC02
    HOLDING = "holding"  # FC03
    INPUT = "input"  # FC04


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """How a data type sits in registers: how many, and the big-endian struct format."""

    register_count: int
    struct_format: str


#: data type -> register count and struct format of the big-endian byte string (HA's
#: DEFAULT_STRUCT_FORMAT idea: a table, not an if-chain).
TYPE_TABLE: Final[dict[DataType, TypeInfo]] = {
    DataType.U16: TypeInfo(1, ">H"),
    DataType.S16: TypeInfo(1, ">h"),
    DataType.U32: TypeInfo(2, ">I"),
    DataType.S32: TypeInfo(2, ">i"),
    DataType.U64: TypeInfo(4, ">Q"),
    DataType.FLOAT32: TypeInfo(2, ">f"),
    DataType.FLOAT64: TypeInfo(4, ">d"),
}

#: FC03/FC04 may read at most 125 registers in one request (MODBUS Application Protocol V1.1b3).
MAX_READ_REGISTERS: Final = 125


#: The range of a milli-unit value: the journal stores registers as SQLite INTEGER (int64).
MILLI_MIN: Final = -(2**63)
MILLI_MAX: Final = 2**63 - 1


class DecodeError(ValueError):
    """Register words that cannot become a reading (wrong length, NaN, negative total)."""


class ImplausibleRegisterError(DecodeError):
    """A register decoded to a value no meter can hold: NaN, infinite, or beyond int64
    milli-units after scaling. The driver names the device and register.

    Attributes:
        value: the decoded value, before scaling.
        reason: what is wrong with it.
    """

    def __init__(self, value: int | float, reason: str) -> None:
        self.value = value
        self.reason = reason
        super().__init__(f"register holds {value!r}: {reason}")


def register_count(data_type: DataType) -> int:
    """Number of 16-bit registers ``data_type`` occupies."""
    return TYPE_TABLE[data_type].register_count


@functools.cache
def _unpacker(
    data_type: DataType, word_order: WordOrder, byte_order: ByteOrder
) -> Callable[[Sequence[int]], int | float]:
    """A compiled decoder for one (type, word order, byte order): reorder, pack, unpack."""
    info = TYPE_TABLE[data_type]
    words_struct = struct.Struct(f">{info.register_count}H")
    value_struct = struct.Struct(info.struct_format)
    reverse = word_order is WordOrder.LITTLE
    swap = byte_order is ByteOrder.LITTLE

    def unpack(words: Sequence[int]) -> int | float:
        ordered = list(reversed(words)) if reverse else words
        if swap:
            ordered = [((w & 0xFF) << 8) | (w >> 8) for w in ordered]
        value: int | float = value_struct.unpack(words_struct.pack(*ordered))[0]
        return value

    return unpack


def decode_value(
    words: Sequence[int],
    data_type: DataType,
    word_order: WordOrder = WordOrder.BIG,
    byte_order: ByteOrder = ByteOrder.BIG,
) -> int | float:
    """Decode register words (as read, lowest address first) into a number.

    Raises:
        DecodeError: the number of words does not match ``data_type`` or a word is out of range.
    """
    expected = TYPE_TABLE[data_type].register_count
    if len(words) != expected:
        raise DecodeError(f"{data_type} needs {expected} registers, got {len(words)}")
    try:
        return _unpacker(data_type, word_order, byte_order)(words)
    except struct.error as exc:
        raise DecodeError(f"register words must be 0..65535, got {list(words)}") from exc


def encode_value(
    value: int | float,
    data_type: DataType,
    word_order: WordOrder = WordOrder.BIG,
    byte_order: ByteOrder = ByteOrder.BIG,
) -> list[int]:
    """Encode a number into register words, lowest address first (the inverse of decode)."""
    info = TYPE_TABLE[data_type]
    raw = struct.pack(info.struct_format, value)
    if byte_order is ByteOrder.LITTLE:
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return words if word_order is WordOrder.BIG else list(reversed(words))


def to_milli(value: int | float, scale: Decimal) -> int:
    """Convert a decoded register value to integer milli-units, exactly and deterministically.

    A float is the exact binary fraction the meter sent (``float.as_integer_ratio``) and the
    scale an exact decimal fraction; their product is rounded half-even once, at the end, in
    integer arithmetic. (It used to be ``Decimal(value) * scale``: the same result, since a
    float lies at least one ulp from a half, but exact only to the context's 28 digits, and a
    few microseconds a value, which a poll of four registers paid on every reading.)

    Raises:
        ImplausibleRegisterError: the value is NaN or infinite, or its milli-units do not fit in
            int64 (`MILLI_MIN`..`MILLI_MAX`, what the journal stores): float32 3.4e38 is refused
            here, not turned into a 42-digit integer.
    """
    scale_num, scale_den = _ratio(scale)
    if isinstance(value, int):
        num, den = value * scale_num, scale_den
    elif math.isfinite(value):
        value_num, value_den = value.as_integer_ratio()
        num, den = value_num * scale_num, value_den * scale_den
    else:
        raise ImplausibleRegisterError(value, "not a finite number")
    milli, rest = divmod(num, den)  # den > 0: floor division, 0 <= rest < den
    if 2 * rest > den or (2 * rest == den and milli & 1):
        milli += 1  # half-even: above the half, or at the half with an odd quotient
    if not MILLI_MIN <= milli <= MILLI_MAX:
        raise ImplausibleRegisterError(value, _beyond_int64(scale))
    return milli


def _beyond_int64(scale: Decimal) -> str:
    return f"times the scale {scale} it is beyond the int64 milli-unit range the journal holds"


@functools.cache
def _ratio(scale: Decimal) -> tuple[int, int]:
    """``scale`` as numerator and positive denominator (a profile has a handful of scales)."""
    return scale.as_integer_ratio()


def from_milli(milli: int, scale: Decimal, data_type: DataType) -> int | float:
    """The register value that `to_milli` maps to ``milli`` (used by the simulator)."""
    raw = Decimal(milli) / scale
    if data_type in (DataType.FLOAT32, DataType.FLOAT64):
        return float(raw)
    return int(raw.to_integral_value(rounding=ROUND_HALF_EVEN))


def decode_milli(
    words: Sequence[int],
    data_type: DataType,
    scale: Decimal,
    word_order: WordOrder = WordOrder.BIG,
    byte_order: ByteOrder = ByteOrder.BIG,
) -> int:
    """`decode_value` then `to_milli`: register words to integer milli-units."""
    return to_milli(decode_value(words, data_type, word_order, byte_order), scale)


# --------------------------------------------------------------------------- request planning


@dataclass(frozen=True, slots=True)
class RegisterSpan:
    """A named run of registers one device needs: ``count`` registers from ``address``."""

    name: str
    table: Table
    address: int
    count: int


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request covering one or more spans of the same table."""

    table: Table
    address: int
    count: int
    spans: tuple[RegisterSpan, ...]

    def words_of(self, span: RegisterSpan, words: Sequence[int]) -> Sequence[int]:
        """The slice of this block's response ``words`` that belongs to ``span``."""
        start = span.address - self.address
        return words[start : start + span.count]


def plan_reads(
    spans: Sequence[RegisterSpan], *, max_count: int = MAX_READ_REGISTERS, max_gap: int = 0
) -> list[ReadBlock]:
    """Coalesce register spans into as few read requests as possible.

    Spans of the same table are merged when they overlap, touch, or are at most ``max_gap``
    registers apart, as long as the merged request stays within ``max_count`` registers. The
    default gap is 0 because many meters answer "illegal data address" for a gap register.
    Output is sorted by table then address, so the plan is deterministic.

    Raises:
        ValueError: a span is longer than ``max_count`` or has a non-positive count.
    """
    by_table: dict[Table, list[RegisterSpan]] = {}
    for span in spans:
        if span.count < 1 or span.count > max_count:
            raise ValueError(f"span {span.name!r} has count {span.count}, must be 1..{max_count}")
        by_table.setdefault(span.table, []).append(span)
    blocks: list[ReadBlock] = []
    for table in sorted(by_table):
        ordered = sorted(by_table[table], key=lambda s: (s.address, s.count, s.name))
        current: list[RegisterSpan] = [ordered[0]]
        start = ordered[0].address
        end = ordered[0].address + ordered[0].count  # exclusive
        for span in ordered[1:]:
            new_end = max(end, span.address + span.count)
            if span.address <= end + max_gap and new_end - start <= max_count:
                current.append(span)
                end = new_end
                continue
            blocks.append(ReadBlock(table, start, end - start, tuple(current)))
            current, start, end = [span], span.address, span.address + span.count
        blocks.append(ReadBlock(table, start, end - start, tuple(current)))
    return blocks
