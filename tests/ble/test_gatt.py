"""The dispenser GATT codec: golden frames, round trips, and malformed frames rejected."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.ble.gatt import (
    PROFILE_VERSION,
    U32_MAX,
    AuthoriseCommand,
    DispensedFrame,
    DispenseFlags,
    DispenseRef,
    DispenserState,
    FaultCode,
    GattFrameError,
    LockFrame,
    LockReason,
    RefKind,
    RefuseCommand,
    RefuseReason,
    StatusFrame,
    StopCommand,
    decode_command,
    decode_dispensed,
    decode_lock,
    decode_status,
    encode_command,
    encode_dispensed,
    encode_lock,
    encode_status,
    sign_authorise,
    verify_authorise,
)

u32 = st.integers(min_value=0, max_value=U32_MAX)
session = st.integers(min_value=1, max_value=U32_MAX)

# ---- golden frames (hand-packed, little-endian) -----------------------------------------------


def test_dispensed_golden_frame() -> None:
    # ver=01 | session 7 = 07000000 | total 1500 mL = dc050000 |
    # session 250 mL = fa000000 | flags VALVE_OPEN = 01
    frame = bytes.fromhex("0107000000dc050000fa00000001")
    assert decode_dispensed(frame) == DispensedFrame(7, 1500, 250, DispenseFlags.VALVE_OPEN)
    assert encode_dispensed(DispensedFrame(7, 1500, 250, DispenseFlags.VALVE_OPEN)) == frame


def test_status_golden_frame() -> None:
    # ver=01 | state FAULT=03 | fault LEAK=02 | locked 01 | last session 258 = 02010000
    frame = bytes.fromhex("0103020102010000")
    expected = StatusFrame(DispenserState.FAULT, FaultCode.LEAK, locked=True, last_session_id=258)
    assert decode_status(frame) == expected
    assert encode_status(expected) == frame


def test_lock_golden_frame() -> None:
    # ver=01 | locked 01 | reason NO_CREDIT=01
    assert encode_lock(LockFrame(True, LockReason.NO_CREDIT)) == bytes.fromhex("010101")
    assert decode_lock(bytes.fromhex("010000")) == LockFrame(False)


def test_authorise_golden_frame() -> None:
    # ver=01 op=01 | session 1 = 01000000 | max 500 mL = f4010000 | ttl 60 s = 3c00 |
    # ref kind PAPER_TICKET=02 | "3301011234567890" (16 ASCII digits) | mac zeros (unsigned)
    ref = DispenseRef(RefKind.PAPER_TICKET, "3301011234567890")
    frame = encode_command(AuthoriseCommand(1, 500, ref))
    assert frame == (bytes.fromhex("010101000000f40100003c0002") + b"3301011234567890" + bytes(8))
    assert len(frame) == 37


def test_refuse_and_stop_golden_frames() -> None:
    assert encode_command(RefuseCommand(9, RefuseReason.NO_CREDIT)) == bytes.fromhex(
        "01020900000001"
    )
    assert encode_command(StopCommand(9)) == bytes.fromhex("010309000000")


# ---- round trips --------------------------------------------------------------------------------


@given(
    session_id=u32,
    total=u32,
    session_ml=u32,
    flags=st.integers(0, 0x0F).map(DispenseFlags),
)
def test_dispensed_round_trip(
    session_id: int, total: int, session_ml: int, flags: DispenseFlags
) -> None:
    frame = DispensedFrame(session_id, total, session_ml if session_id else 0, flags)
    assert decode_dispensed(encode_dispensed(frame)) == frame


@given(
    state=st.sampled_from(DispenserState),
    fault=st.sampled_from(FaultCode),
    locked=st.booleans(),
    last=u32,
)
def test_status_round_trip(
    state: DispenserState, fault: FaultCode, locked: bool, last: int
) -> None:
    frame = StatusFrame(state, fault, locked, last)
    assert decode_status(encode_status(frame)) == frame


@given(locked=st.booleans(), reason=st.sampled_from(LockReason))
def test_lock_round_trip(locked: bool, reason: LockReason) -> None:
    frame = LockFrame(locked, reason if locked else LockReason.NONE)
    assert decode_lock(encode_lock(frame)) == frame


refs = st.one_of(
    st.just(DispenseRef(RefKind.NONE)),
    st.builds(
        DispenseRef,
        st.sampled_from([RefKind.ACCOUNT, RefKind.PAPER_TICKET, RefKind.E_TICKET]),
        st.text(
            alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=16
        ),
    ),
)


@given(
    session_id=session,
    max_ml=st.integers(1, U32_MAX),
    ref=refs,
    ttl_s=st.integers(1, 0xFFFF),
    mac=st.binary(min_size=8, max_size=8),
)
def test_authorise_round_trip(
    session_id: int, max_ml: int, ref: DispenseRef, ttl_s: int, mac: bytes
) -> None:
    cmd = AuthoriseCommand(session_id, max_ml, ref, ttl_s, mac)
    assert decode_command(encode_command(cmd)) == cmd


@given(session_id=u32, reason=st.sampled_from(RefuseReason))
def test_refuse_and_stop_round_trip(session_id: int, reason: RefuseReason) -> None:
    assert decode_command(encode_command(RefuseCommand(session_id, reason))) == RefuseCommand(
        session_id, reason
    )
    assert decode_command(encode_command(StopCommand(session_id))) == StopCommand(session_id)


def test_authorise_mac_verifies_only_under_its_key_and_unchanged() -> None:
    key = bytes(range(16))
    signed = sign_authorise(AuthoriseCommand(5, 750, DispenseRef(RefKind.ACCOUNT, "acct-42")), key)
    assert verify_authorise(signed, key)
    assert not verify_authorise(signed, bytes(16))
    tampered = decode_command(encode_command(signed).replace(b"\xee\x02", b"\xff\xff"))
    assert isinstance(tampered, AuthoriseCommand)
    assert tampered.max_ml != 750
    assert not verify_authorise(tampered, key)


# ---- malformed frames ---------------------------------------------------------------------------

GOOD_DISPENSED = encode_dispensed(DispensedFrame(7, 1500, 250))


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "empty frame"),
        (bytes([2]) + GOOD_DISPENSED[1:], "unsupported profile version 2"),
        (GOOD_DISPENSED[:7], "length 7, expected 14"),  # half a frame
        (GOOD_DISPENSED + b"\x00", "length 15, expected 14"),  # junk after
        (GOOD_DISPENSED[:-1] + b"\x10", "undefined flag bits 0x10"),
        (
            encode_dispensed(DispensedFrame(0, 10, 0))[:9] + b"\x05\x00\x00\x00\x00",
            "session_ml without",
        ),
    ],
)
def test_decode_dispensed_malformed_rejected(frame: bytes, reason: str) -> None:
    with pytest.raises(GattFrameError, match=reason) as info:
        decode_dispensed(frame)
    assert info.value.frame_kind == "dispensed"
    assert info.value.frame == frame


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (bytes.fromhex("0107000000000000"), "unknown DispenserState 7"),
        (bytes.fromhex("0100090000000000"), "unknown FaultCode 9"),
        (bytes.fromhex("0100000200000000"), "locked must be 0 or 1, got 2"),
        (bytes.fromhex("01000000000000"), "length 7, expected 8"),
    ],
)
def test_decode_status_malformed_rejected(frame: bytes, reason: str) -> None:
    with pytest.raises(GattFrameError, match=reason):
        decode_status(frame)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (bytes.fromhex("0102"), "length 2, expected 3"),
        (bytes.fromhex("010107"), "unknown LockReason 7"),
        (bytes.fromhex("010001"), "unlocked with a lock reason"),
        (bytes.fromhex("000101"), "unsupported profile version 0"),
    ],
)
def test_decode_lock_malformed_rejected(frame: bytes, reason: str) -> None:
    with pytest.raises(GattFrameError, match=reason):
        decode_lock(frame)


AUTH = encode_command(AuthoriseCommand(1, 500, DispenseRef(RefKind.ACCOUNT, "acct-1")))


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\x01", "length 1"),
        (bytes.fromhex("0109"), "unknown Op 9"),
        (AUTH[:-1], "length 36, expected 37"),
        (bytes.fromhex("01020100000077"), "unknown RefuseReason 119"),
        (AUTH[:2] + bytes(4) + AUTH[6:], "must be > 0"),  # session 0
        (AUTH[:12] + b"\x09" + AUTH[13:], "unknown RefKind 9"),
        (AUTH[:13] + b"ab\x00cd" + AUTH[18:], "NUL inside"),
        (AUTH[:13] + b"\xff" + AUTH[14:], "bad ref"),
    ],
)
def test_decode_command_malformed_rejected(frame: bytes, reason: str) -> None:
    with pytest.raises(GattFrameError, match=reason):
        decode_command(frame)


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode_command(AuthoriseCommand(0, 1, DispenseRef(RefKind.NONE))),
        lambda: encode_command(AuthoriseCommand(1, 0, DispenseRef(RefKind.NONE))),
        lambda: encode_command(AuthoriseCommand(1, U32_MAX + 1, DispenseRef(RefKind.NONE))),
        lambda: encode_lock(LockFrame(False, LockReason.OPERATOR)),
        lambda: DispenseRef(RefKind.ACCOUNT, "x" * 17),
        lambda: DispenseRef(RefKind.NONE, "acct"),
        lambda: DispenseRef(RefKind.ACCOUNT, ""),
    ],
)
def test_encode_out_of_range_raises_value_error(make: object) -> None:
    assert callable(make)
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        make()


def test_profile_version_is_first_byte_of_every_frame() -> None:
    frames = [
        GOOD_DISPENSED,
        encode_status(StatusFrame(DispenserState.IDLE, FaultCode.NONE, False, 0)),
        encode_lock(LockFrame(False)),
        AUTH,
        encode_command(StopCommand(1)),
    ]
    assert {f[0] for f in frames} == {PROFILE_VERSION}
