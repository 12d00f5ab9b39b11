"""The driver-neutral interface between the gateway core and the southbound adapters.

The core (pipeline, decisions, store) sees only this module: value types for readings and
supply commands, the `ReadingSource` / `Actuator` protocols, the `DriverError` tree, and the
`Clock` every driver and simulator is given. No protocol library (pymodbus, aiomqtt, bleak) is
imported here.

Units: a register is an integer count of milli-units of the meter's billing unit (Wh for kWh,
litres for m3, millilitres for litres), the same fixed-point scale the billing engine uses.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from billing_engine.base.errors import PrepayError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)

REGISTER_MILLI_MAX = 2**63 - 1
"""The largest register a reading may carry: the journal stores it as an SQLite INTEGER (int64)."""

Clock = Callable[[], datetime]
"""Where a driver or simulator gets "now"; tests pass a fake one. Must return aware UTC."""


def utc_now() -> datetime:
    """The default `Clock`: now, aware UTC."""
    return datetime.now(UTC)


class Quality(enum.StrEnum):
    """How much a reading can be trusted."""

    GOOD = "good"
    ESTIMATED = "estimated"  # interpolated or split by the gateway, not read from the device
    SUSPECT = "suspect"  # accepted but flagged (e.g. after a rollover); held for an operator


@dataclass(frozen=True, slots=True)
class Reading:
    """One cumulative register value of one meter at one instant.

    Attributes:
        meter_id: the meter's id in the site config.
        read_at: when the value was valid, an aware UTC datetime.
        register_milli: cumulative register in milli-units (Wh, L or mL).
        source: where it came from, for audit ("modbus:bus0/3", "chirpstack:70b3d5...").
        quality: see `Quality`.
        seq: the device's own frame counter when it has one (LoRaWAN FCnt), else None.
        reading_id: the reading's identity, ``{meter_id}@{microseconds since the epoch}``: the
            same meter at the same instant is the same reading. Derived, not an argument.
    """

    meter_id: str
    read_at: datetime
    register_milli: int
    source: str = ""
    quality: Quality = Quality.GOOD
    seq: int | None = None
    # Worked out once: the journal, the ledger key and the published reading each need it.
    reading_id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.read_at.tzinfo is None or self.read_at.utcoffset() != UTC.utcoffset(None):
            raise ValueError(f"Reading.read_at must be an aware UTC datetime, got {self.read_at!r}")
        register = self.register_milli
        # An int (not a float, which may be NaN; not a bool) in 0..int64: what the journal holds.
        if isinstance(register, bool) or not isinstance(register, int):
            raise TypeError(f"Reading.register_milli must be an int, got {register!r}")
        if not 0 <= register <= REGISTER_MILLI_MAX:
            raise ValueError(
                f"Reading.register_milli must be 0..{REGISTER_MILLI_MAX} (int64), got {register}"
            )
        micros = (self.read_at - _EPOCH) // _ONE_US  # exact: no float
        object.__setattr__(self, "reading_id", f"{self.meter_id}@{micros}")


class SupplyState(enum.StrEnum):
    """What a relay, valve or dispenser lock reports."""

    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class SupplyConfirmation:
    """What a switch command asked for and what the device reported when read back."""

    device_id: str
    requested: SupplyState
    observed: SupplyState

    @property
    def confirmed(self) -> bool:
        """True when the device reports the requested state."""
        return self.requested is self.observed


class DriverEventKind(enum.StrEnum):
    """Things a driver reports that are not readings."""

    ONLINE = "online"
    OFFLINE = "offline"
    FRAME_ERROR = "frame_error"
    ROLLOVER = "rollover"
    METER_REPLACED = "meter_replaced"
    REGISTER_BACKWARDS = "register_backwards"
    IMPLAUSIBLE_JUMP = "implausible_jump"
    STALE = "stale"
    COUNTER_RESET = "counter_reset"


@dataclass(frozen=True, slots=True)
class DriverEvent:
    """An alarm or a state change of a device, raised by a driver."""

    device_id: str
    kind: DriverEventKind
    at: datetime
    detail: dict[str, str | int | float | bool] = field(default_factory=dict)


class ReadingSink(Protocol):
    """Where a source puts what it reads. ``put`` may block: that is the back-pressure."""

    async def put(self, reading: Reading) -> None:
        """Hand over one reading; returns once the core has accepted it into its queue."""

    async def event(self, event: DriverEvent) -> None:
        """Report a device event (offline, rollover, ...)."""


@runtime_checkable
class ReadingSource(Protocol):
    """A driver that produces readings (a Modbus bus, an LNS subscription, a BLE dispenser)."""

    name: str

    async def run(self, sink: ReadingSink) -> None:
        """Produce readings into ``sink`` until cancelled. Must not return on device errors."""


@runtime_checkable
class Actuator(Protocol):
    """Something that switches supply: a relay, a valve, a dispenser lock."""

    name: str

    def handles(self, device_id: str) -> bool:
        """True when this actuator drives ``device_id``."""

    async def set_supply(self, device_id: str, on: bool) -> None:
        """Send the command. Returning means it was sent, not that the device obeyed.

        Raises:
            DriverError: the command could not be delivered.
        """

    async def read_supply(self, device_id: str) -> SupplyState:
        """Read the device's actual state back (for confirmation).

        Raises:
            DriverError: the state could not be read.
        """


@dataclass(frozen=True, slots=True)
class ConfirmationPacing:
    """How a device on a slow link confirms a supply change, so the gateway waits for it.

    A Modbus relay answers a read-back within milliseconds; a class A LoRaWAN valve hears a
    downlink only in the receive windows after one of its own uplinks, and reports its new
    state with the uplink after that. Re-sending sooner only spends the network's duty cycle,
    and calling it unconfirmed sooner is a false alarm.

    Attributes:
        resend_after_s: never send the same command again sooner than this.
        alarm_after_s: unconfirmed this long after the first send: raise the alarm.
        reports_only_on_contact: a read-back returns the device's last report, not a live
            answer; the gateway trusts the state the device last confirmed (stored) until it
            reports again, and looks again each ``resend_after_s`` to catch a drift.
    """

    resend_after_s: float
    alarm_after_s: float
    reports_only_on_contact: bool = True


@runtime_checkable
class PacedActuator(Actuator, Protocol):
    """An actuator whose devices confirm at their own pace (see `ConfirmationPacing`); one
    without it is paced by the site-wide ``actuation:`` settings."""

    def pacing(self, device_id: str) -> ConfirmationPacing:
        """The pacing of ``device_id`` (one this actuator handles)."""


class DriverError(PrepayError):
    """A device or bus failed. Carries the device id."""

    def __init__(self, device_id: str, message: str) -> None:
        self.device_id = device_id
        super().__init__(f"{device_id}: {message}")


class DeviceTimeoutError(DriverError):
    """The device did not answer in time."""


class FrameError(DriverError):
    """A frame was malformed (bad CRC, truncated, wrong length)."""


class ImplausibleValueError(FrameError):
    """A well-formed reply whose value cannot be a reading: NaN or infinite, negative for a
    cumulative counter, or beyond the int64 milli-unit scale the journal holds.

    A `FrameError` (the device sent something unusable), so code that handles frame errors
    handles this too.

    Attributes:
        register: the register's name in the device profile or codec (``energy``).
        value: the value as decoded (before or after scaling, as ``message`` says).
    """

    def __init__(self, device_id: str, register: str, value: float, message: str) -> None:
        self.register = register
        self.value = value
        super().__init__(device_id, f"register {register} holds {value!r}: {message}")


class DeviceRejectedError(DriverError):
    """The device answered with an exception / rejection code."""

    def __init__(self, device_id: str, code: int, message: str = "") -> None:
        self.code = code
        super().__init__(device_id, f"rejected with code {code}{': ' + message if message else ''}")


# ---- vending at dispensers (docs/vending.md) ---------------------------------------------------
# A self-service dispenser asks the core whether to pour for the identity a customer presented,
# and reports what it poured. The core answers through `VendingPort`; the driver reports into a
# `VendingSink`. Both carry plain values (no BLE), so the core never imports a driver.


class IdentityKind(enum.StrEnum):
    """What a customer presented at a dispenser."""

    CARD = "card"  # an account card
    PHONE = "phone"  # a phone id registered to an account
    TICKET = "ticket"  # a water-ticket code


class DenyReason(enum.StrEnum):
    """Why the core refuses a pour; the dispenser shows it to the customer."""

    NO_CREDIT = "no_credit"
    TICKET_USED = "ticket_used"
    TICKET_EXPIRED = "ticket_expired"
    WRONG_SCOPE = "wrong_scope"
    UNKNOWN_ACCOUNT = "unknown_account"
    LOCKED = "locked"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class IdentityPresented:
    """A customer presented ``identity`` at ``dispenser_id`` (``request_id``: the device's)."""

    dispenser_id: str
    request_id: int
    kind: IdentityKind
    identity: str
    at: datetime


@dataclass(frozen=True, slots=True)
class PourReport:
    """What a dispenser says about one session: ``session_ml`` poured so far; ``ended`` on the
    session's last report (also when it is read back after a reconnect)."""

    dispenser_id: str
    session_id: int
    session_ml: int
    ended: bool
    at: datetime


@dataclass(frozen=True, slots=True)
class DispenserCaughtUp:
    """After a (re)connect: the highest session id the dispenser has ever accepted (a session
    the core opened above it never started at the device)."""

    dispenser_id: str
    last_session_id: int
    at: datetime


class VendingSink(Protocol):
    """Where a vending-capable driver reports (the core's vending flow)."""

    async def presented(self, request: IdentityPresented) -> None:
        """A customer is waiting at the dispenser for an answer."""

    async def poured(self, report: PourReport) -> None:
        """A session's volume (a repeated or replayed report must be harmless)."""

    async def caught_up(self, status: DispenserCaughtUp) -> None:
        """The link is (back) up and the device's session counter is known."""


@runtime_checkable
class VendingPort(Protocol):
    """A driver of dispensers that take requests from customers (profile v2)."""

    name: str

    def handles(self, device_id: str) -> bool:
        """True when this driver drives ``device_id``."""

    def attach_vending(self, sink: VendingSink) -> None:
        """Report requests and pours into ``sink`` from now on."""

    async def next_session(self, dispenser_id: str) -> int:
        """The session id the dispenser will accept next (journalled before `grant`).

        Raises:
            DriverError: the dispenser cannot be read.
        """

    async def grant(
        self, dispenser_id: str, session_id: int, max_ml: int, ref_kind: IdentityKind, ref: str
    ) -> None:
        """Authorise ``session_id`` for at most ``max_ml``, charged to ``ref``.

        Raises:
            DeviceRejectedError: the dispenser refused (locked, busy, faulted, stale session).
            DriverError: the command could not be delivered.
        """

    async def deny(self, dispenser_id: str, reason: DenyReason) -> None:
        """Show ``reason`` on the dispenser.

        Raises:
            DriverError: the command could not be delivered.
        """
