"""Decode tables and the request planner, against hand-written register values."""

from __future__ import annotations

import math
import struct
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.registers import (
    MILLI_MAX,
    MILLI_MIN,
    TYPE_TABLE,
    ByteOrder,
    DataType,
    DecodeError,
    ImplausibleRegisterError,
    ReadBlock,
    RegisterSpan,
    Table,
    WordOrder,
    decode_milli,
    decode_value,
    encode_value,
    plan_reads,
    to_milli,
)

B, L = WordOrder.BIG, WordOrder.LITTLE
BB, BL = ByteOrder.BIG, ByteOrder.LITTLE

# (words as read, lowest address first), type, word order, byte order, expected value.
# Each row is worked by hand: e.g. u32 CDAB [0x0002, 0x0001] -> words swapped -> 0x0001_0002.
CASES: list[tuple[list[int], DataType, WordOrder, ByteOrder, int | float]] = [
    ([0x1234], DataType.U16, B, BB, 0x1234),
    ([0x3412], DataType.U16, B, BL, 0x1234),  # bytes swapped inside the word
    ([0xFFFE], DataType.S16, B, BB, -2),
    ([0xFEFF], DataType.S16, B, BL, -2),
    ([0x8000], DataType.S16, B, BB, -32768),
    ([0x0001, 0x0002], DataType.U32, B, BB, 0x0001_0002),  # ABCD
    ([0x0002, 0x0001], DataType.U32, L, BB, 0x0001_0002),  # CDAB
    ([0x0100, 0x0200], DataType.U32, B, BL, 0x0001_0002),  # BADC
    ([0x0200, 0x0100], DataType.U32, L, BL, 0x0001_0002),  # DCBA
    ([0xFFFF, 0xFFFE], DataType.S32, B, BB, -2),
    ([0xFFFE, 0xFFFF], DataType.S32, L, BB, -2),
    ([0x8000, 0x0000], DataType.S32, B, BB, -(2**31)),
    ([0x0001, 0x0002, 0x0003, 0x0004], DataType.U64, B, BB, 0x0001_0002_0003_0004),
    ([0x0004, 0x0003, 0x0002, 0x0001], DataType.U64, L, BB, 0x0001_0002_0003_0004),
    ([0x0100, 0x0200, 0x0300, 0x0400], DataType.U64, B, BL, 0x0001_0002_0003_0004),
    ([0xFFFF] * 4, DataType.U64, B, BB, 2**64 - 1),
    # 0x43660000 = 230.0 (the SDM voltage example in register-maps.md)
    ([0x4366, 0x0000], DataType.FLOAT32, B, BB, 230.0),
    ([0x0000, 0x4366], DataType.FLOAT32, L, BB, 230.0),
    ([0x6643, 0x0000], DataType.FLOAT32, B, BL, 230.0),
    ([0x0000, 0x6643], DataType.FLOAT32, L, BL, 230.0),
    # 0x3F800000 = 1.0 ; 0xC0490FDB = -3.1415927410125732 (float32 pi)
    ([0x3F80, 0x0000], DataType.FLOAT32, B, BB, 1.0),
    ([0xC049, 0x0FDB], DataType.FLOAT32, B, BB, -3.1415927410125732),
    # 0x4059000000000000 = 100.0 ; 0x3FF0000000000000 = 1.0
    ([0x4059, 0x0000, 0x0000, 0x0000], DataType.FLOAT64, B, BB, 100.0),
    ([0x0000, 0x0000, 0x0000, 0x4059], DataType.FLOAT64, L, BB, 100.0),
    ([0x0000, 0x0000, 0x0000, 0xF03F], DataType.FLOAT64, L, BL, 1.0),
]


@pytest.mark.parametrize(("words", "data_type", "word_order", "byte_order", "expected"), CASES)
def test_decode_value_hand_written(
    words: list[int],
    data_type: DataType,
    word_order: WordOrder,
    byte_order: ByteOrder,
    expected: float,
) -> None:
    assert decode_value(words, data_type, word_order, byte_order) == expected
    # and the encoder is its exact inverse on the same row
    assert encode_value(expected, data_type, word_order, byte_order) == words


def test_decode_value_every_type_is_in_the_table() -> None:
    assert set(TYPE_TABLE) == set(DataType)
    covered = {(dt, wo, bo) for _, dt, wo, bo, _ in CASES}
    assert {dt for dt, _, _ in covered} == set(DataType)


def test_decode_value_xintai_doc_example_dcba() -> None:
    # Xintai doc: bytes 1E 85 0B 3F on the wire = 0.545 m3/h, little-endian float
    words = [0x1E85, 0x0B3F]
    value = decode_value(words, DataType.FLOAT32, L, BL)
    assert value == struct.unpack("<f", bytes([0x1E, 0x85, 0x0B, 0x3F]))[0]
    assert math.isclose(value, 0.545, rel_tol=1e-6)


@pytest.mark.parametrize("n", [0, 1, 3])
def test_decode_value_wrong_word_count_raises(n: int) -> None:
    with pytest.raises(DecodeError):
        decode_value([0] * n, DataType.U64)


def test_decode_value_word_out_of_range_raises() -> None:
    with pytest.raises(DecodeError):
        decode_value([0x10000], DataType.U16)


@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from(list(WordOrder)),
    st.sampled_from(list(ByteOrder)),
)
def test_encode_decode_u32_round_trip(value: int, wo: WordOrder, bo: ByteOrder) -> None:
    assert decode_value(encode_value(value, DataType.U32, wo, bo), DataType.U32, wo, bo) == value


@given(st.floats(width=32, allow_nan=False, allow_infinity=False), st.sampled_from(list(WordOrder)))
def test_encode_decode_float32_round_trip(value: float, wo: WordOrder) -> None:
    words = encode_value(value, DataType.FLOAT32, wo, BB)
    assert decode_value(words, DataType.FLOAT32, wo, BB) == value


# ------------------------------------------------------------------ exact milli conversion


def test_to_milli_float32_kwh_rounds_to_nearest_wh() -> None:
    # float32(0.7) = 0.699999988079071044921875 exactly; x1000 = 699.99998807... -> 700 Wh
    f32 = struct.unpack(">f", struct.pack(">f", 0.7))[0]
    assert Decimal(f32) == Decimal("0.699999988079071044921875")
    assert to_milli(f32, Decimal(1000)) == 700


def test_to_milli_is_exact_not_float_multiplication() -> None:
    # 1234.5678 kWh as float32 is 1234.5677490234375 exactly -> 1234567.7490234375 Wh -> 1234568
    words = encode_value(1234.5678, DataType.FLOAT32)
    assert decode_milli(words, DataType.FLOAT32, Decimal(1000)) == 1_234_568


def test_to_milli_half_even_at_exact_halves() -> None:
    # u32 in 0.0005 kWh steps would give exact .5 Wh: half-even is deterministic
    assert to_milli(1, Decimal("0.5")) == 0
    assert to_milli(3, Decimal("0.5")) == 2
    assert to_milli(12345, Decimal(10)) == 123_450  # Acrel: 123.45 kWh = 123 450 Wh


def test_to_milli_float32_precision_limit_above_8192_kwh() -> None:
    # above 2^14 kWh the float32 step is 2^-9 kWh = 1.953125 Wh: adjacent floats skip a Wh
    lo = struct.unpack(">f", struct.pack(">f", 16384.0))[0]
    nxt = struct.unpack(">f", struct.pack(">I", struct.unpack(">I", struct.pack(">f", lo))[0] + 1))[
        0
    ]
    assert to_milli(nxt, Decimal(1000)) - to_milli(lo, Decimal(1000)) == 2


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_to_milli_non_finite_raises(bad: float) -> None:
    with pytest.raises(DecodeError):
        to_milli(bad, Decimal(1000))


@given(st.integers(0, 2**32 - 1))
def test_decode_milli_integer_types_are_exact(raw: int) -> None:
    assert decode_milli(encode_value(raw, DataType.U32), DataType.U32, Decimal(10)) == raw * 10


# ------------------------------------------------------------------ planner


def span(name: str, address: int, count: int = 2, table: Table = Table.INPUT) -> RegisterSpan:
    return RegisterSpan(name, table, address, count)


def test_plan_reads_adjacent_spans_coalesce() -> None:
    spans = [span("energy", 0x48), span("freq", 0x46), span("export", 0x4A)]
    assert plan_reads(spans) == [ReadBlock(Table.INPUT, 0x46, 6, (spans[1], spans[0], spans[2]))]


def test_plan_reads_gap_splits_unless_allowed() -> None:
    spans = [span("a", 0), span("b", 3)]
    assert [(b.address, b.count) for b in plan_reads(spans)] == [(0, 2), (3, 2)]
    assert [(b.address, b.count) for b in plan_reads(spans, max_gap=1)] == [(0, 5)]


def test_plan_reads_tables_never_mix() -> None:
    spans = [span("a", 0, table=Table.HOLDING), span("b", 2, table=Table.INPUT)]
    blocks = plan_reads(spans)
    assert [(b.table, b.address) for b in blocks] == [(Table.HOLDING, 0), (Table.INPUT, 2)]


def test_plan_reads_respects_max_count() -> None:
    spans = [span(f"r{i}", i * 2) for i in range(100)]  # 200 contiguous registers
    blocks = plan_reads(spans)
    assert [(b.address, b.count) for b in blocks] == [(0, 124), (124, 76)]
    assert all(b.count <= 125 for b in blocks)


def test_plan_reads_overlapping_spans_share_a_request() -> None:
    spans = [span("wide", 10, 4), span("inner", 11, 1)]
    (block,) = plan_reads(spans)
    assert (block.address, block.count) == (10, 4)
    assert list(block.words_of(spans[1], [1, 2, 3, 4])) == [2]


def test_plan_reads_span_too_long_raises() -> None:
    with pytest.raises(ValueError, match="count 126"):
        plan_reads([span("big", 0, 126)])


@given(
    st.lists(
        st.tuples(st.integers(0, 400), st.integers(1, 4), st.sampled_from(list(Table))),
        min_size=1,
        max_size=40,
    ),
    st.integers(0, 3),
)
def test_plan_reads_every_span_is_covered_once(
    raw: list[tuple[int, int, Table]], max_gap: int
) -> None:
    spans = [span(f"s{i}", a, c, t) for i, (a, c, t) in enumerate(raw)]
    blocks = plan_reads(spans, max_count=20, max_gap=max_gap)
    seen = [s for b in blocks for s in b.spans]
    assert sorted(seen, key=lambda s: s.name) == sorted(spans, key=lambda s: s.name)
    for b in blocks:
        assert 1 <= b.count <= 20
        for s in b.spans:
            assert s.table is b.table
            assert b.address <= s.address
            assert s.address + s.count <= b.address + b.count


# The scales the sample profiles use, and awkward ones: a third of a unit, a tenth, a negative
# power of ten, a huge factor.
_SCALES = [Decimal(s) for s in ("1000", "10", "1", "0.1", "0.5", "0.001", "1.5", "2.5", "1E+12")]


@given(
    st.one_of(
        st.floats(allow_nan=False, allow_infinity=False, width=32),
        st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15),
        st.integers(-(2**40), 2**40),
    ),
    st.sampled_from(_SCALES),
)
def test_to_milli_is_the_exact_product_rounded_half_even(value: float, scale: Decimal) -> None:
    # The oracle: Fraction holds the float and the scale exactly; Python's round() of a
    # Fraction rounds half to even.
    exact = round(Fraction(value) * Fraction(scale))
    if MILLI_MIN <= exact <= MILLI_MAX:
        assert to_milli(value, scale) == exact
    else:
        with pytest.raises(ImplausibleRegisterError):
            to_milli(value, scale)


@pytest.mark.parametrize(
    ("value", "scale", "milli"),
    [
        (0.0025, Decimal(1000), 3),  # float 0.0025 is 0.00250000000000000005...: above 2.5
        (2.5, Decimal(1), 2),  # exact half, even below
        (3.5, Decimal(1), 4),  # exact half, even above
        (-2.5, Decimal(1), -2),  # negative half, even
        (-0.0015, Decimal(1000), -2),  # float -0.0015 is -0.00150000000000000003...: below -1.5
        (7, Decimal("0.5"), 4),  # 3.5 -> 4
    ],
)
def test_to_milli_halves_by_hand(value: float, scale: Decimal, milli: int) -> None:
    assert to_milli(value, scale) == milli
