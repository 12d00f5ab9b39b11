"""Valve command bookkeeping: what we asked, what the network said, what the device reports.

A valve command is only done when two independent facts agree (pure state, no I/O):

1. the network server says the device acknowledged the confirmed downlink (ChirpStack ``ack``
   with ``acknowledged: true``, TTS ``down/ack``); ``txack``/``down/sent`` only mean a gateway
   took it;
2. the device's next uplink reports the commanded state.

`ValveBook.state` is always the last state the *device* reported, never the commanded one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime

from drivers.lorawan.envelope import DownlinkEvent, DownlinkStatus
from drivers.ports import SupplyState


class CommandPhase(enum.StrEnum):
    """Where a valve command is."""

    QUEUED = "queued"  # published to the network server
    SENT = "sent"  # a gateway took it for transmission
    ACKED = "acked"  # the device acknowledged it
    CONFIRMED = "confirmed"  # acknowledged and the device reports the commanded state
    NACKED = "nacked"  # not acknowledged in time
    FAILED = "failed"  # the network could not schedule it


_FINAL = {CommandPhase.CONFIRMED, CommandPhase.NACKED, CommandPhase.FAILED}


@dataclass(frozen=True, slots=True)
class ValveCommand:
    """One command to one valve.

    Attributes:
        device_id: the valve's id in the site config.
        device_key: the network server's id (DevEUI or TTS device id).
        command_id: our id (ChirpStack queue item id / TTS correlation id).
        want: the commanded state.
        f_port, payload: the downlink, to match TTS events that carry no correlation id.
        phase: see `CommandPhase`.
        queued_at: when we published it.
        acked: the network reported the device's ACK.
        reported: the last state the device reported since the command was queued.
    """

    device_id: str
    device_key: str
    command_id: str
    want: SupplyState
    f_port: int
    payload: bytes
    phase: CommandPhase
    queued_at: datetime
    acked: bool = False
    reported: SupplyState | None = None


class ValveBook:
    """Pending commands and reported states of the valves behind one network server."""

    def __init__(self) -> None:
        self._reported: dict[str, tuple[SupplyState, datetime]] = {}
        self._commands: dict[str, ValveCommand] = {}

    def begin(self, command: ValveCommand) -> None:
        """Track a new command; it replaces any older one for the same valve."""
        self._commands[command.device_id] = command

    def abandon(self, device_id: str, command_id: str) -> None:
        """Forget a command that could not be published."""
        current = self._commands.get(device_id)
        if current is not None and current.command_id == command_id:
            del self._commands[device_id]

    def command(self, device_id: str) -> ValveCommand | None:
        """The latest command for a valve."""
        return self._commands.get(device_id)

    def state(self, device_id: str) -> SupplyState:
        """The last state the device itself reported (UNKNOWN before its first report)."""
        reported = self._reported.get(device_id)
        return reported[0] if reported is not None else SupplyState.UNKNOWN

    def reported_at(self, device_id: str) -> datetime | None:
        """When the device last reported its state."""
        reported = self._reported.get(device_id)
        return reported[1] if reported is not None else None

    def report(self, device_id: str, state: SupplyState, at: datetime) -> ValveCommand | None:
        """The device reported ``state``; returns the command if this confirmed it."""
        self._reported[device_id] = (state, at)
        command = self._commands.get(device_id)
        if command is None or command.phase in _FINAL:
            return None
        confirmed = command.acked and state == command.want
        phase = CommandPhase.CONFIRMED if confirmed else command.phase
        updated = self._set(replace(command, reported=state, phase=phase))
        return updated if confirmed else None

    def downlink_event(self, device_id: str, event: DownlinkEvent) -> ValveCommand | None:
        """Apply a network downlink event; returns the updated command when it matched."""
        command = self._commands.get(device_id)
        if command is None or command.phase in _FINAL or not self._matches(command, event):
            return None
        if event.status is DownlinkStatus.ACKED:
            # The uplink that carried the ACK usually also reports the new state, and the
            # network server may publish it before the ack event: confirm from either order.
            confirmed = command.reported == command.want
            phase = CommandPhase.CONFIRMED if confirmed else CommandPhase.ACKED
            return self._set(replace(command, acked=True, phase=phase))
        phase = {
            DownlinkStatus.QUEUED: CommandPhase.QUEUED,
            DownlinkStatus.SENT: CommandPhase.SENT,
            DownlinkStatus.NACKED: CommandPhase.NACKED,
            DownlinkStatus.FAILED: CommandPhase.FAILED,
        }[event.status]
        if command.acked and phase in {CommandPhase.QUEUED, CommandPhase.SENT}:
            return None  # late txack after the ack: keep the better news
        return self._set(replace(command, phase=phase))

    def is_confirmed(self, device_id: str, want: SupplyState) -> bool:
        """True when the latest command for ``want`` is acknowledged and reported."""
        command = self._commands.get(device_id)
        return (
            command is not None and command.want == want and command.phase is CommandPhase.CONFIRMED
        )

    def _set(self, command: ValveCommand) -> ValveCommand:
        self._commands[command.device_id] = command
        return command

    @staticmethod
    def _matches(command: ValveCommand, event: DownlinkEvent) -> bool:
        if event.command_id is not None:
            return event.command_id == command.command_id
        if event.payload is not None:
            return event.payload == command.payload and event.f_port in {None, command.f_port}
        return False
