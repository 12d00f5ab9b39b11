"""Valve command bookkeeping: ack and device report must both agree."""

from __future__ import annotations

from datetime import UTC, datetime

from drivers.lorawan.envelope import DownlinkEvent, DownlinkStatus
from drivers.lorawan.valves import CommandPhase, ValveBook, ValveCommand
from drivers.ports import SupplyState

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CLOSE = bytes.fromhex("ff1d0000")


def _book(want: SupplyState = SupplyState.OFF) -> ValveBook:
    book = ValveBook()
    book.report("V", SupplyState.ON, T0)
    book.begin(ValveCommand("V", "dev", "c-1", want, 85, CLOSE, CommandPhase.QUEUED, T0))
    return book


def _event(status: DownlinkStatus, command_id: str | None = "c-1") -> DownlinkEvent:
    return DownlinkEvent("dev", status, T0, command_id=command_id)


def test_valves_state_is_what_the_device_reported_not_what_was_commanded() -> None:
    book = _book()
    assert book.state("V") is SupplyState.ON
    assert book.state("other") is SupplyState.UNKNOWN


def test_valves_ack_then_report_confirms() -> None:
    book = _book()
    assert book.downlink_event("V", _event(DownlinkStatus.SENT)) is not None
    acked = book.downlink_event("V", _event(DownlinkStatus.ACKED))
    assert acked is not None
    assert acked.phase is CommandPhase.ACKED
    assert not book.is_confirmed("V", SupplyState.OFF)
    confirmed = book.report("V", SupplyState.OFF, T0)
    assert confirmed is not None
    assert confirmed.phase is CommandPhase.CONFIRMED
    assert book.is_confirmed("V", SupplyState.OFF)


def test_valves_report_then_ack_confirms() -> None:
    book = _book()
    assert book.report("V", SupplyState.OFF, T0) is None
    confirmed = book.downlink_event("V", _event(DownlinkStatus.ACKED))
    assert confirmed is not None
    assert confirmed.phase is CommandPhase.CONFIRMED


def test_valves_ack_with_wrong_report_is_not_confirmed() -> None:
    book = _book()
    book.downlink_event("V", _event(DownlinkStatus.ACKED))
    assert book.report("V", SupplyState.ON, T0) is None  # device says still open
    assert not book.is_confirmed("V", SupplyState.OFF)


def test_valves_nack_is_final() -> None:
    book = _book()
    nacked = book.downlink_event("V", _event(DownlinkStatus.NACKED))
    assert nacked is not None
    assert nacked.phase is CommandPhase.NACKED
    assert book.downlink_event("V", _event(DownlinkStatus.ACKED)) is None
    book.report("V", SupplyState.OFF, T0)
    assert not book.is_confirmed("V", SupplyState.OFF)


def test_valves_late_txack_does_not_undo_ack() -> None:
    book = _book()
    book.downlink_event("V", _event(DownlinkStatus.ACKED))
    assert book.downlink_event("V", _event(DownlinkStatus.SENT)) is None
    command = book.command("V")
    assert command is not None
    assert command.phase is CommandPhase.ACKED


def test_valves_events_for_other_commands_are_ignored() -> None:
    book = _book()
    assert book.downlink_event("V", _event(DownlinkStatus.ACKED, "c-other")) is None
    by_payload = DownlinkEvent("dev", DownlinkStatus.ACKED, T0, None, 85, CLOSE)
    assert book.downlink_event("V", by_payload) is not None  # TTS without our correlation id


def test_valves_abandon_forgets_only_that_command() -> None:
    book = _book()
    book.abandon("V", "c-other")
    assert book.command("V") is not None
    book.abandon("V", "c-1")
    assert book.command("V") is None
