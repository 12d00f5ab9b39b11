"""A simulated prepaid water dispenser: the device side of the profile in ``docs/ble-gatt.md``.

Pure device logic with no bleak import: GATT reads and writes arrive as bytes, answers go back as
bytes or as an `AttError` (the ATT error response), notifications go to whatever `Link`s are
attached. `firmware_sim.ble_backend` puts this behind bleak's `BaseBleakClient`.

The pour is driven by the test (`pour`), never by a timer, so every run is deterministic:

* the valve opens only for an authorised session and never past its ``max_ml``;
* a locked or faulted dispenser pours nothing and refuses new authorisations;
* the lifetime counter ``total_ml`` is u32 and wraps like the firmware's;
* the authorisation ``ttl_s`` is not simulated (the sim has no clock).

Faults on demand: ``fail_next_connects`` (refuse the next N connection attempts),
``disconnect_at_session_ml`` (drop every link once the session reaches that volume; the pour goes
on, as a real dispenser's does), ``ignore_lock_writes`` (answer a Lock write with success and do
nothing), `raise_fault`, `overreport_ml` (a faulty flow meter that reports more than it poured).

Profile v2 (``profile_version`` 2, the default; 1 = a v1 device without the Request
characteristic): `present` is a customer tapping a card, a phone or scanning a ticket (a Request
notification); a Refuse shows its reason on the display (``display``); and the last SESSION_END
frame stays what a read of Dispensed returns until the next Authorise, so a gateway that missed
the end (link down, gateway crashed) settles from it when it reconnects.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from drivers.ble.gatt import (
    COMMAND_UUID,
    DISPENSED_UUID,
    LOCK_UUID,
    REQUEST_UUID,
    STATUS_UUID,
    U32_MAX,
    AppError,
    AuthoriseCommand,
    DispensedFrame,
    DispenseFlags,
    DispenserState,
    FaultCode,
    GattFrameError,
    IdentityKind,
    LockFrame,
    LockReason,
    RefuseCommand,
    RefuseReason,
    RequestFrame,
    StatusFrame,
    StopCommand,
    decode_command,
    decode_lock,
    encode_dispensed,
    encode_lock,
    encode_request,
    encode_status,
    verify_authorise,
)

logger = logging.getLogger(__name__)

ATT_INVALID_LENGTH = 0x0D  # Invalid Attribute Value Length
ATT_VALUE_NOT_ALLOWED = 0x13  # Value Not Allowed
ATT_READ_NOT_PERMITTED = 0x02
ATT_WRITE_NOT_PERMITTED = 0x03


class AttError(Exception):
    """An ATT error response from the simulated GATT server."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"ATT error 0x{code:02x}")


class ConnectRefusedError(Exception):
    """The simulated radio did not establish the link (fault injection)."""


class Link(Protocol):
    """A connected central, as the dispenser sees it."""

    def deliver(self, uuid: str, data: bytes) -> None:
        """Send a notification on characteristic ``uuid`` (if the central subscribed)."""

    def lose(self) -> None:
        """The radio link dropped."""

    def is_subscribed(self, uuid: str) -> bool:
        """True when the central subscribed to ``uuid``."""


@dataclass
class SimulatedDispenser:
    """One dispenser's state. Attributes are the device-side truth the tests look at."""

    address: str
    name: str = "sim-dispenser"
    total_ml: int = 0
    auth_key: bytes | None = None
    model: str = "SIM-WD1"
    firmware: str = "1.0.0"
    profile_version: int = 2
    # fault injection
    fail_next_connects: int = 0
    disconnect_at_session_ml: int | None = None
    ignore_lock_writes: bool = False
    overreport_ml: int = 0  # added to session_ml in every report (a faulty flow meter)
    # session
    state: DispenserState = DispenserState.IDLE
    fault: FaultCode = FaultCode.NONE
    locked: bool = False
    lock_reason: LockReason = LockReason.NONE
    session_id: int = 0
    session_ml: int = 0
    max_ml: int = 0
    last_session_id: int = 0
    # records
    connect_attempts: int = 0
    commands: list[AuthoriseCommand | RefuseCommand | StopCommand] = field(default_factory=list)
    last_dispensed: DispensedFrame | None = None
    # v2: the customer side
    last_request_id: int = 0
    display: RefuseReason | None = None  # the refusal shown on the screen, None = none
    _links: list[Link] = field(default_factory=list)

    # ---- radio -----------------------------------------------------------------------------

    def accept(self, link: Link) -> None:
        """A central connects.

        Raises:
            ConnectRefusedError: while ``fail_next_connects`` > 0.
        """
        self.connect_attempts += 1
        if self.fail_next_connects > 0:
            self.fail_next_connects -= 1
            raise ConnectRefusedError(self.address)
        self._links.append(link)

    def detach(self, link: Link) -> None:
        """A central disconnects on purpose."""
        if link in self._links:
            self._links.remove(link)

    @property
    def connected(self) -> int:
        """How many centrals are connected now."""
        return len(self._links)

    def drop_links(self) -> None:
        """Lose the radio link to every central (out of range, interference)."""
        links, self._links = self._links, []
        for link in links:
            link.lose()

    def inject_notification(self, uuid: str, data: bytes) -> None:
        """Send raw bytes as a notification (fault injection: garbage frames)."""
        self._notify(uuid, data)

    def listening(self, uuid: str) -> bool:
        """True when a connected central subscribed to ``uuid`` (a test waits on it)."""
        return any(link.is_subscribed(uuid) for link in self._links)

    def present(self, kind: IdentityKind, identity: str) -> int:
        """A customer presents a card, a phone or a ticket (v2): a Request notification.

        Returns the request id. A v1 device has no request path and raises `RuntimeError`.
        """
        if self.profile_version < 2:
            raise RuntimeError("a v1 dispenser has no request path")
        self.last_request_id += 1
        self.display = None
        frame = RequestFrame(self.last_request_id, kind, identity)
        self._notify(REQUEST_UUID, encode_request(frame))
        return self.last_request_id

    def _notify(self, uuid: str, data: bytes) -> None:
        for link in list(self._links):
            link.deliver(uuid, data)

    # ---- GATT server -----------------------------------------------------------------------

    def dispensed_frame(self) -> DispensedFrame:
        """What a read of Dispensed returns now."""
        if self.last_dispensed is not None:
            return self.last_dispensed
        return DispensedFrame(self.session_id, self.total_ml, self.session_ml)

    def status_frame(self) -> StatusFrame:
        """What a read of Status returns now."""
        return StatusFrame(self.state, self.fault, self.locked, self.last_session_id)

    def read(self, uuid: str) -> bytes:
        """Serve a GATT read.

        Raises:
            AttError: the characteristic is not readable.
        """
        if uuid == DISPENSED_UUID:
            return encode_dispensed(self.dispensed_frame())
        if uuid == STATUS_UUID:
            return encode_status(self.status_frame())
        if uuid == LOCK_UUID:
            return encode_lock(LockFrame(self.locked, self.lock_reason))
        raise AttError(ATT_READ_NOT_PERMITTED)

    def write(self, uuid: str, data: bytes) -> None:
        """Serve a GATT write with response.

        Raises:
            AttError: malformed frame (0x0D / 0x13) or a refusal (`AppError`).
        """
        try:
            if uuid == COMMAND_UUID:
                self._command(data)
            elif uuid == LOCK_UUID:
                self._lock(decode_lock(data))
            else:
                raise AttError(ATT_WRITE_NOT_PERMITTED)
        except GattFrameError as exc:
            logger.info("dispenser %s: rejected frame: %s", self.address, exc)
            code = ATT_INVALID_LENGTH if "length" in exc.reason else ATT_VALUE_NOT_ALLOWED
            raise AttError(code) from exc

    def _command(self, data: bytes) -> None:
        cmd = decode_command(data)
        match cmd:
            case AuthoriseCommand():
                self._authorise(cmd)
            case RefuseCommand():
                self.display = cmd.reason
                if cmd.session_id and cmd.session_id == self.session_id:
                    self._end_session(DispenseFlags.STOPPED)
            case StopCommand():
                if cmd.session_id == self.session_id and self.session_id:
                    self._end_session(DispenseFlags.STOPPED)
        self.commands.append(cmd)

    def _authorise(self, cmd: AuthoriseCommand) -> None:
        if self.auth_key is not None and not verify_authorise(cmd, self.auth_key):
            raise AttError(AppError.BAD_MAC)
        if self.locked:
            raise AttError(AppError.LOCKED)
        if self.state is DispenserState.FAULT:
            raise AttError(AppError.FAULTED)
        if self.state in (DispenserState.AUTHORISED, DispenserState.DISPENSING):
            raise AttError(AppError.BUSY)
        if cmd.session_id <= self.last_session_id:
            raise AttError(AppError.STALE_SESSION)
        self.session_id = self.last_session_id = cmd.session_id
        self.display = None
        self.session_ml = 0
        self.max_ml = cmd.max_ml
        self.state = DispenserState.AUTHORISED
        self._send_dispensed(DispenseFlags.NONE)
        self._send_status()

    def _lock(self, frame: LockFrame) -> None:
        if self.ignore_lock_writes:
            return  # the faulty firmware answers "OK" and does nothing
        self.locked, self.lock_reason = frame.locked, frame.reason
        if self.locked and self.session_id:
            self._end_session(DispenseFlags.STOPPED)
        self._notify(LOCK_UUID, encode_lock(frame))
        self._send_status()

    # ---- physical side ---------------------------------------------------------------------

    def pour(self, ml: int, step_ml: int = 50) -> int:
        """The customer holds the tap for ``ml``; returns what actually flowed.

        Flows in ``step_ml`` steps, one Dispensed notification each, and stops at the session's
        authorised ``max_ml``.
        """
        poured = 0
        while poured < ml and self._valve_may_open():
            step = min(step_ml, ml - poured, self.max_ml - self.session_ml)
            self.total_ml = (self.total_ml + step) & U32_MAX
            self.session_ml += step
            poured += step
            self.state = DispenserState.DISPENSING
            if self.session_ml >= self.max_ml:
                self._end_session(DispenseFlags.LIMIT_REACHED)
            else:
                self._send_dispensed(DispenseFlags.VALVE_OPEN)
            trigger = self.disconnect_at_session_ml
            if trigger is not None and self.session_ml >= trigger:
                self.disconnect_at_session_ml = None
                self.drop_links()
        return poured

    def finish(self) -> None:
        """The customer presses "done" (stops early): the valve closes, the session ends."""
        if self.session_id:
            self._end_session(DispenseFlags.STOPPED)

    def _valve_may_open(self) -> bool:
        return (
            not self.locked
            and self.state in (DispenserState.AUTHORISED, DispenserState.DISPENSING)
            and self.session_ml < self.max_ml
        )

    def raise_fault(self, fault: FaultCode) -> None:
        """A sensor trips: the valve closes, the session ends, Status says FAULT."""
        if self.session_id:
            self._end_session(DispenseFlags.STOPPED)
        self.fault = fault
        self.state = DispenserState.FAULT
        self._send_status()

    def clear_fault(self) -> None:
        """The technician resets the dispenser."""
        self.fault = FaultCode.NONE
        self.state = DispenserState.IDLE
        self._send_status()

    def _end_session(self, why: DispenseFlags) -> None:
        self._send_dispensed(why | DispenseFlags.SESSION_END)
        self.session_id = 0
        self.session_ml = 0
        self.max_ml = 0
        self.state = DispenserState.IDLE
        if self.profile_version < 2:
            self.last_dispensed = None
        # v2: the SESSION_END frame stays readable until the next Authorise (_send_dispensed
        # kept it in last_dispensed), so a gateway that missed it settles from a read.
        self._send_status()

    def _send_dispensed(self, flags: DispenseFlags) -> None:
        reported = self.session_ml + self.overreport_ml if self.session_id else 0
        frame = DispensedFrame(self.session_id, self.total_ml, min(reported, U32_MAX), flags)
        self.last_dispensed = frame
        self._notify(DISPENSED_UUID, encode_dispensed(frame))

    def _send_status(self) -> None:
        self._notify(STATUS_UUID, encode_status(self.status_frame()))
