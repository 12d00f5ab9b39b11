"""The prepaid water dispenser GATT profile: UUIDs and pure frame codecs (bytes in, values out).

This is **our own profile** (no Bluetooth SIG profile exists for water dispensers, and no vendor
publishes one); it extends a common private layout and is
documented in ``docs/ble-gatt.md``. Every frame is little-endian and starts with a version byte,
``PROFILE_VERSION``; a frame of another version, of the wrong length or with an out-of-range
field is rejected with `GattFrameError`, never guessed at.

Characteristics (UUID suffix after ``6e1d``; all in service ``6e1d0001-...``):

* Command ``0002``, write with response: `AuthoriseCommand`, `RefuseCommand`, `StopCommand`;
* Dispensed ``0003``, read + notify: `DispensedFrame` (cumulative mL counter, session id);
* Status ``0004``, read + notify: `StatusFrame`;
* Lock ``0005``, read + write + notify: `LockFrame`;
* Request ``0006``, read + notify (profile v2): `RequestFrame` (a customer presented an identity).

Versions: every v1 frame keeps version byte ``PROFILE_VERSION`` (1) in v2, so a v1 device stays
valid; the Request frame, new in v2, carries ``REQUEST_VERSION`` (2). A receiver checks each
frame kind against the one version defined for it.

No I/O here: the adapter (`drivers.ble.dispenser`) and the simulator (`firmware_sim.dispenser`) both
call these functions.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass, replace
from typing import Final, TypeVar

from billing_engine.base.errors import PrepayError

PROFILE_VERSION: Final = 1
#: The version byte of the Request frame: it was added in profile v2.
REQUEST_VERSION: Final = 2

SERVICE_UUID: Final = "6e1d0001-7a3c-4f52-9b1e-3c0f5a000001"
COMMAND_UUID: Final = "6e1d0002-7a3c-4f52-9b1e-3c0f5a000001"
DISPENSED_UUID: Final = "6e1d0003-7a3c-4f52-9b1e-3c0f5a000001"
STATUS_UUID: Final = "6e1d0004-7a3c-4f52-9b1e-3c0f5a000001"
LOCK_UUID: Final = "6e1d0005-7a3c-4f52-9b1e-3c0f5a000001"
REQUEST_UUID: Final = "6e1d0006-7a3c-4f52-9b1e-3c0f5a000001"

U32_MAX: Final = 0xFFFF_FFFF
REF_LEN: Final = 16  # a paper/electronic water-ticket code is 16 digits (tickets.md)
MAC_LEN: Final = 8


class GattFrameError(PrepayError):
    """A frame does not follow the profile. The adapter wraps it into `FrameError`.

    Attributes:
        frame_kind: which frame was being decoded ("dispensed", "status", ...).
        frame: the raw bytes, for the frame dump.
        reason: what is wrong, in words.
    """

    def __init__(self, frame_kind: str, frame: bytes, reason: str) -> None:
        self.frame_kind = frame_kind
        self.frame = bytes(frame)
        self.reason = reason
        super().__init__(f"malformed {frame_kind} frame {self.frame.hex()}: {reason}")


class AppError(enum.IntEnum):
    """ATT application error codes (0x80..0x9F) the dispenser answers a write with."""

    LOCKED = 0x80  # authorise while locked
    BAD_MAC = 0x81  # Authorise MAC does not verify under the device key
    STALE_SESSION = 0x82  # session_id not greater than the last accepted one (replay guard)
    FAULTED = 0x83  # authorise while in FAULT
    BUSY = 0x84  # authorise while another session is open


class Op(enum.IntEnum):
    """Command opcodes (byte 1 of a Command frame)."""

    AUTHORISE = 0x01
    REFUSE = 0x02
    STOP = 0x03


class RefKind(enum.IntEnum):
    """What paid for a dispense."""

    NONE = 0
    ACCOUNT = 1
    PAPER_TICKET = 2
    E_TICKET = 3


class RefuseReason(enum.IntEnum):
    """Why the gateway refuses a dispense; the dispenser shows it to the customer."""

    NO_CREDIT = 1
    TICKET_USED = 2
    TICKET_EXPIRED = 3
    WRONG_SCOPE = 4
    UNKNOWN_ACCOUNT = 5
    LOCKED = 6
    OTHER = 0xFF


class DispenseFlags(enum.IntFlag):
    """Bits of the Dispensed frame's flags byte."""

    NONE = 0
    VALVE_OPEN = 0x01
    SESSION_END = 0x02  # final frame of the session
    LIMIT_REACHED = 0x04  # stopped because session_ml reached the authorised max_ml
    STOPPED = 0x08  # stopped by a Stop/Refuse command, a lock or a fault


class DispenserState(enum.IntEnum):
    """Byte 1 of the Status frame."""

    IDLE = 0
    AUTHORISED = 1
    DISPENSING = 2
    FAULT = 3


class FaultCode(enum.IntEnum):
    """Byte 2 of the Status frame; NONE unless state is FAULT (LOW_BATTERY may come with IDLE)."""

    NONE = 0
    NO_WATER = 1
    LEAK = 2
    FLOW_SENSOR = 3
    VALVE_STUCK = 4
    TAMPER = 5
    LOW_BATTERY = 6
    OTHER = 0xFF


class LockReason(enum.IntEnum):
    """Why the dispenser is locked (byte 2 of the Lock frame); NONE when unlocked."""

    NONE = 0
    NO_CREDIT = 1
    OPERATOR = 2
    FAULT = 3


class IdentityKind(enum.IntEnum):
    """What the customer presented at the dispenser (byte 5 of the Request frame, v2)."""

    ACCOUNT_CARD = 1
    PHONE_ID = 2
    TICKET = 3


@dataclass(frozen=True, slots=True)
class DispenseRef:
    """The account or ticket a dispense is charged to: up to 16 printable ASCII characters."""

    kind: RefKind
    code: str = ""

    def __post_init__(self) -> None:
        if len(self.code) > REF_LEN or not self.code.isascii() or not self.code.isprintable():
            raise ValueError(f"DispenseRef.code must be <= {REF_LEN} printable ASCII characters")
        if (self.kind is RefKind.NONE) != (self.code == ""):
            raise ValueError("DispenseRef: kind NONE goes with an empty code, and only it")


@dataclass(frozen=True, slots=True)
class AuthoriseCommand:
    """Allow one dispense of at most ``max_ml`` for ``session_id``.

    ``session_id`` must be greater than the device's last accepted one (replay guard; see Status).
    ``ttl_s``: the authorisation lapses if the pour has not started within that many seconds.
    ``mac``: first 8 bytes of HMAC-SHA256 over the frame's first 33 bytes; zeros when unsigned.
    """

    session_id: int
    max_ml: int
    ref: DispenseRef
    ttl_s: int = 60
    mac: bytes = bytes(MAC_LEN)


@dataclass(frozen=True, slots=True)
class RefuseCommand:
    """Refuse (and cancel, if pending or running) ``session_id``; 0 = show the reason only."""

    session_id: int
    reason: RefuseReason


@dataclass(frozen=True, slots=True)
class StopCommand:
    """Close the valve and end ``session_id`` now."""

    session_id: int


Command = AuthoriseCommand | RefuseCommand | StopCommand


@dataclass(frozen=True, slots=True)
class DispensedFrame:
    """One Dispensed notification.

    Attributes:
        session_id: the session the device is pouring for, 0 when none.
        total_ml: the device's lifetime cumulative counter in mL (u32, wraps at 2**32).
        session_ml: mL poured in ``session_id`` so far.
        flags: see `DispenseFlags`.
    """

    session_id: int
    total_ml: int
    session_ml: int
    flags: DispenseFlags = DispenseFlags.NONE


@dataclass(frozen=True, slots=True)
class StatusFrame:
    """One Status read or notification.

    Attributes:
        state: see `DispenserState`.
        fault: see `FaultCode`.
        locked: mirrors the Lock characteristic.
        last_session_id: the highest session id the device has accepted (0 = none yet).
    """

    state: DispenserState
    fault: FaultCode
    locked: bool
    last_session_id: int


@dataclass(frozen=True, slots=True)
class LockFrame:
    """The Lock characteristic, read and written with the same layout."""

    locked: bool
    reason: LockReason = LockReason.NONE


@dataclass(frozen=True, slots=True)
class RequestFrame:
    """One Request notification (profile v2): a customer presented an identity at the machine.

    Attributes:
        request_id: u32 > 0, chosen by the device, new for each presentation (the gateway's logs
            and the device's display tie the answer to it).
        kind: see `IdentityKind`.
        identity: the card number, phone id or ticket code: 1..16 printable ASCII characters.
    """

    request_id: int
    kind: IdentityKind
    identity: str

    def __post_init__(self) -> None:
        code = self.identity
        if not 0 < len(code) <= REF_LEN or not code.isascii() or not code.isprintable():
            raise ValueError(f"RequestFrame.identity must be 1..{REF_LEN} printable ASCII")
        if not 0 < self.request_id <= U32_MAX:
            raise ValueError(f"RequestFrame.request_id must be 1..{U32_MAX}")


# struct layouts, one per frame kind: "<" = little-endian, no padding.
_DISPENSED: Final = struct.Struct("<BIIIB")  # ver session_id total_ml session_ml flags = 14
_STATUS: Final = struct.Struct("<BBBBI")  # ver state fault locked last_session_id = 8
_LOCK: Final = struct.Struct("<BBB")  # ver locked reason = 3
_AUTH_BODY: Final = struct.Struct("<BBIIHB16s")  # ver op session max_ml ttl ref_kind ref = 29
_AUTH: Final = struct.Struct("<BBIIHB16s8s")  # body + mac = 37
_REFUSE: Final = struct.Struct("<BBIB")  # ver op session reason = 7
_STOP: Final = struct.Struct("<BBI")  # ver op session = 6
_REQUEST: Final = struct.Struct("<BIB16s")  # ver request_id kind identity = 22

_DEFINED_FLAGS: Final = 0x0F

# The MAC covers everything before it.
AUTH_SIGNED_LEN: Final = _AUTH_BODY.size


def _check_len(
    kind: str, data: bytes, layout: struct.Struct, version: int = PROFILE_VERSION
) -> None:
    if len(data) == 0:
        raise GattFrameError(kind, data, "empty frame")
    if data[0] != version:
        raise GattFrameError(
            kind,
            data,
            f"unsupported profile version {data[0]} (a {kind} frame is version {version})",
        )
    if len(data) != layout.size:
        raise GattFrameError(kind, data, f"length {len(data)}, expected {layout.size}")


_E = TypeVar("_E", bound=enum.IntEnum)


def _enum(kind: str, data: bytes, cls: type[_E], value: int) -> _E:
    try:
        return cls(value)
    except ValueError:
        raise GattFrameError(kind, data, f"unknown {cls.__name__} {value}") from None


def _bool(kind: str, data: bytes, field: str, value: int) -> bool:
    if value not in (0, 1):
        raise GattFrameError(kind, data, f"{field} must be 0 or 1, got {value}")
    return value == 1


def _u32(name: str, value: int) -> None:
    if not 0 <= value <= U32_MAX:
        raise ValueError(f"{name} must fit in u32, got {value}")


# ---- Dispensed ---------------------------------------------------------------------------------


def encode_dispensed(frame: DispensedFrame) -> bytes:
    """Pack a Dispensed frame (the device side; tests and the simulator use it)."""
    for name in ("session_id", "total_ml", "session_ml"):
        _u32(name, getattr(frame, name))
    return _DISPENSED.pack(
        PROFILE_VERSION, frame.session_id, frame.total_ml, frame.session_ml, int(frame.flags)
    )


def decode_dispensed(data: bytes) -> DispensedFrame:
    """Unpack a Dispensed frame.

    Raises:
        GattFrameError: wrong version or length, or undefined flag bits.
    """
    data = bytes(data)
    _check_len("dispensed", data, _DISPENSED)
    _, session_id, total_ml, session_ml, flags = _DISPENSED.unpack(data)
    if flags & ~_DEFINED_FLAGS:
        raise GattFrameError("dispensed", data, f"undefined flag bits 0x{flags:02x}")
    if session_id == 0 and session_ml != 0:
        raise GattFrameError("dispensed", data, "session_ml without a session")
    return DispensedFrame(session_id, total_ml, session_ml, DispenseFlags(flags))


# ---- Status ------------------------------------------------------------------------------------


def encode_status(frame: StatusFrame) -> bytes:
    """Pack a Status frame."""
    _u32("last_session_id", frame.last_session_id)
    return _STATUS.pack(
        PROFILE_VERSION, frame.state, frame.fault, int(frame.locked), frame.last_session_id
    )


def decode_status(data: bytes) -> StatusFrame:
    """Unpack a Status frame.

    Raises:
        GattFrameError: wrong version or length, unknown state or fault, locked not 0/1.
    """
    data = bytes(data)
    _check_len("status", data, _STATUS)
    _, state, fault, locked, last_session_id = _STATUS.unpack(data)
    return StatusFrame(
        state=_enum("status", data, DispenserState, state),
        fault=_enum("status", data, FaultCode, fault),
        locked=_bool("status", data, "locked", locked),
        last_session_id=last_session_id,
    )


# ---- Lock --------------------------------------------------------------------------------------


def encode_lock(frame: LockFrame) -> bytes:
    """Pack a Lock frame (written by the gateway, read back for confirmation)."""
    if not frame.locked and frame.reason is not LockReason.NONE:
        raise ValueError("an unlock carries reason NONE")
    return _LOCK.pack(PROFILE_VERSION, int(frame.locked), frame.reason)


def decode_lock(data: bytes) -> LockFrame:
    """Unpack a Lock frame.

    Raises:
        GattFrameError: wrong version or length, locked not 0/1, unknown reason.
    """
    data = bytes(data)
    _check_len("lock", data, _LOCK)
    _, locked, reason = _LOCK.unpack(data)
    frame = LockFrame(
        _bool("lock", data, "locked", locked), _enum("lock", data, LockReason, reason)
    )
    if not frame.locked and frame.reason is not LockReason.NONE:
        raise GattFrameError("lock", data, "unlocked with a lock reason")
    return frame


# ---- Command -----------------------------------------------------------------------------------


def _auth_body(cmd: AuthoriseCommand) -> bytes:
    _u32("session_id", cmd.session_id)
    _u32("max_ml", cmd.max_ml)
    if cmd.session_id == 0:
        raise ValueError("session_id 0 means 'no session' and cannot be authorised")
    if cmd.max_ml == 0:
        raise ValueError("max_ml must be > 0; refuse instead")
    if not 0 < cmd.ttl_s <= 0xFFFF:
        raise ValueError(f"ttl_s must be 1..65535, got {cmd.ttl_s}")
    return _AUTH_BODY.pack(
        PROFILE_VERSION,
        Op.AUTHORISE,
        cmd.session_id,
        cmd.max_ml,
        cmd.ttl_s,
        cmd.ref.kind,
        cmd.ref.code.encode("ascii").ljust(REF_LEN, b"\0"),
    )


def authorise_mac(cmd: AuthoriseCommand, key: bytes) -> bytes:
    """The 8-byte truncated HMAC-SHA256 of an Authorise frame's signed part under ``key``."""
    return hmac.new(key, _auth_body(cmd), hashlib.sha256).digest()[:MAC_LEN]


def sign_authorise(cmd: AuthoriseCommand, key: bytes) -> AuthoriseCommand:
    """Return ``cmd`` with its MAC set for ``key``."""
    return replace(cmd, mac=authorise_mac(cmd, key))


def verify_authorise(cmd: AuthoriseCommand, key: bytes) -> bool:
    """True when ``cmd.mac`` is the MAC of ``cmd`` under ``key`` (constant-time compare)."""
    return hmac.compare_digest(cmd.mac, authorise_mac(cmd, key))


def encode_command(cmd: Command) -> bytes:
    """Pack a Command frame.

    Raises:
        ValueError: a field is out of range (programming error, not a device fault).
    """
    match cmd:
        case AuthoriseCommand():
            if len(cmd.mac) != MAC_LEN:
                raise ValueError(f"mac must be {MAC_LEN} bytes")
            return _auth_body(cmd) + cmd.mac
        case RefuseCommand():
            _u32("session_id", cmd.session_id)
            return _REFUSE.pack(PROFILE_VERSION, Op.REFUSE, cmd.session_id, cmd.reason)
        case StopCommand():
            _u32("session_id", cmd.session_id)
            return _STOP.pack(PROFILE_VERSION, Op.STOP, cmd.session_id)


_COMMAND_LAYOUTS: Final = {Op.AUTHORISE: _AUTH, Op.REFUSE: _REFUSE, Op.STOP: _STOP}


def decode_command(data: bytes) -> Command:
    """Unpack a Command frame (the device side).

    Raises:
        GattFrameError: wrong version or length, unknown opcode or field value.
    """
    data = bytes(data)
    if len(data) < 2:
        _check_len("command", data, _STOP)  # reports empty / bad version / short
    op = _enum("command", data, Op, data[1])
    _check_len("command", data, _COMMAND_LAYOUTS[op])
    match op:
        case Op.AUTHORISE:
            _, _, session_id, max_ml, ttl_s, kind, raw_ref, mac = _AUTH.unpack(data)
            if session_id == 0 or max_ml == 0 or ttl_s == 0:
                raise GattFrameError("command", data, "session_id, max_ml and ttl_s must be > 0")
            code_bytes = raw_ref.rstrip(b"\0")
            if b"\0" in code_bytes:
                raise GattFrameError("command", data, "ref has a NUL inside the code")
            try:
                ref = DispenseRef(_enum("command", data, RefKind, kind), code_bytes.decode("ascii"))
                return AuthoriseCommand(session_id, max_ml, ref, ttl_s, mac)
            except (ValueError, UnicodeDecodeError) as exc:
                raise GattFrameError("command", data, f"bad ref: {exc}") from exc
        case Op.REFUSE:
            _, _, session_id, reason = _REFUSE.unpack(data)
            return RefuseCommand(session_id, _enum("command", data, RefuseReason, reason))
        case Op.STOP:
            _, _, session_id = _STOP.unpack(data)
            return StopCommand(session_id)


# ---- Request (v2) ------------------------------------------------------------------------------


def encode_request(frame: RequestFrame) -> bytes:
    """Pack a Request frame (the device side; the simulator uses it)."""
    return _REQUEST.pack(
        REQUEST_VERSION,
        frame.request_id,
        frame.kind,
        frame.identity.encode("ascii").ljust(REF_LEN, b"\0"),
    )


def decode_request(data: bytes) -> RequestFrame:
    """Unpack a Request frame.

    Raises:
        GattFrameError: wrong version or length, unknown kind, request_id 0, or an identity
            that is empty, has a NUL inside or is not printable ASCII.
    """
    data = bytes(data)
    _check_len("request", data, _REQUEST, REQUEST_VERSION)
    _, request_id, kind, raw = _REQUEST.unpack(data)
    identity = raw.rstrip(b"\0")
    if b"\0" in identity:
        raise GattFrameError("request", data, "identity has a NUL inside")
    try:
        return RequestFrame(
            request_id, _enum("request", data, IdentityKind, kind), identity.decode("ascii")
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise GattFrameError("request", data, f"bad request: {exc}") from exc
