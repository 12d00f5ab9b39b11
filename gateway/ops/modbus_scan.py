"""``prepay modbus scan --bus B --units 1-247``: which unit ids answer on a bus.

Each unit id gets one request (FC03 "read holding registers", one register at address 0 unless
told otherwise) with a short timeout and no retry. Any well-formed answer means a device is
there: a register value, and just as well a Modbus exception reply (a device that has no
register 0 still says so), except a TCP gateway's "no device behind me" (exception 0x0A or
0x0B). A reply that is not a valid frame is reported as garbled (two devices sharing the id,
or wrong serial settings); silence is no device. The configured devices
of the bus that stayed silent are listed too.

The requests go through the gateway's own driver (`drivers.modbus.client.ModbusBus`), which
reads through device profiles; the scan gives each unit id a one-register probe profile, so
framing, timeouts and the RS485 inter-frame gap are the daemon's own. pymodbus loads inside
`scan` only. See `gateway.ops.bus_access` for when a bus the daemon polls may be used.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from drivers.modbus.config import DeviceProfile, ModbusBusConfig
from drivers.ports import DriverEvent, Reading
from gateway.ops.bus_access import endpoint

#: Modbus over Serial Line V1.02, 2.2: 0 is the broadcast address (no reply), 248..255 are
#: reserved; 1..247 are the unit ids a device may have.
FIRST_UNIT, LAST_UNIT = 1, 247
DEFAULT_TIMEOUT_S = 0.3

Reply = Literal["registers", "exception", "garbled"]
Progress = Callable[[int, int, int, int], None]  # unit, done, total, found so far

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
# `drivers.ports.DeviceRejectedError`'s message; the driver's counters keep the text only.
_EXCEPTION_CODE = re.compile(r"rejected with code (\d+)")
#: Modbus Application Protocol V1.1b3, 7: exception codes a TCP-to-serial gateway answers
#: for the device behind it: 0x0A "gateway path unavailable", 0x0B "gateway target device
#: failed to respond". The gateway answered; no device at that unit id did.
GATEWAY_NO_DEVICE = frozenset({0x0A, 0x0B})


class UnitRangeError(ValueError):
    """``--units`` is not a list of unit ids and ranges within 1..247."""


class ScanError(RuntimeError):
    """The bus itself cannot be used (no connection); no unit was asked."""


@dataclass(frozen=True)
class UnitAnswer:
    """A unit id that answered, how, and which configured device has that id (if any)."""

    unit_id: int
    reply: Reply
    detail: str
    device: str | None


@dataclass(frozen=True)
class ScanResult:
    """What a scan found on one bus."""

    bus: str
    endpoint: str
    units: list[int]
    answered: list[UnitAnswer]
    #: configured devices of the bus (unit id, device id) that were scanned and stayed silent
    silent_configured: list[tuple[int, str]]


def parse_units(text: str) -> list[int]:
    """``1-247``, ``5`` or ``1,5,10-20`` as the sorted unit ids they name.

    Raises:
        UnitRangeError: not that form, a range running backwards, or an id outside 1..247.
    """
    units: set[int] = set()
    for part in text.split(","):
        match = _RANGE.match(part.strip())
        if match is None:
            raise UnitRangeError(
                f"--units {text}: expected N, N-M or a list of them (1-247, 1,5,10-20)"
            )
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if last < first:
            raise UnitRangeError(f"--units {text}: {first}-{last} runs backwards")
        if first < FIRST_UNIT or last > LAST_UNIT:
            raise UnitRangeError(
                f"--units {text}: unit ids are {FIRST_UNIT}..{LAST_UNIT}"
                " (0 is broadcast, 248..255 are reserved)"
            )
        units.update(range(first, last + 1))
    return sorted(units)


def probe_profile(table: Literal["holding", "input"], address: int) -> DeviceProfile:
    """A profile of one 16-bit register: the smallest request a device can answer."""
    return DeviceProfile.model_validate(
        {
            "name": "scan-probe",
            "vendor": "-",
            "model": "-",
            "kind": "electricity",
            "sources": ["prepay modbus scan: one register, to see who answers"],
            "energy": {"table": table, "address": address, "type": "u16"},
        }
    )


class _Discard:
    async def put(self, reading: Reading) -> None:
        pass

    async def event(self, event: DriverEvent) -> None:
        pass


async def scan(
    bus: ModbusBusConfig,
    units: Sequence[int],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    table: Literal["holding", "input"] = "holding",
    address: int = 0,
    progress: Progress | None = None,
) -> ScanResult:
    """Ask every unit id in ``units`` once, in order.

    Raises:
        ScanError: the bus cannot be connected to (nothing would answer).
    """
    # pymodbus and pyserial load here, not when the CLI starts.
    from drivers.modbus.client import ModbusBus  # noqa: PLC0415

    configured = {d.unit_id: d.device_id for d in bus.devices}
    probes = [
        {"device_id": f"unit-{u}", "unit_id": u, "profile": "scan-probe", "meter_id": f"unit-{u}"}
        for u in units
    ]
    probe_bus = ModbusBusConfig.model_validate(
        {
            **bus.model_dump(exclude={"devices"}),
            "timeout_s": timeout_s,
            "retries": 0,
            "offline_after": 100,  # one request per unit: no unit is ever "offline"
            "devices": probes,
        }
    )
    answered: list[UnitAnswer] = []
    silent: list[tuple[int, str]] = []
    sink = _Discard()
    async with ModbusBus(probe_bus, {"scan-probe": probe_profile(table, address)}) as driver:
        for done, unit in enumerate(units, start=1):
            device_id = f"unit-{unit}"
            reading = await driver.poll_device(device_id, sink)
            stats = driver.stats(device_id)
            answer = _answer(unit, reading, stats.rejections, stats.frame_errors, stats.last_error)
            if answer is not None:
                answered.append(UnitAnswer(unit, answer[0], answer[1], configured.get(unit)))
            elif "cannot connect" in stats.last_error or "not connected" in stats.last_error:
                raise ScanError(
                    f"cannot connect to bus {bus.name} ({endpoint(bus)}): not reachable, or"
                    " busy (a device that takes one connection at a time, a serial port in use)"
                )
            elif unit in configured:
                silent.append((unit, configured[unit]))
            if progress is not None:
                progress(unit, done, len(units), len(answered))
    return ScanResult(bus.name, endpoint(bus), list(units), answered, silent)


def _answer(
    unit: int, reading: Reading | None, rejections: int, frame_errors: int, error: str
) -> tuple[Reply, str] | None:
    if reading is not None:
        return "registers", f"register value {reading.register_milli}"
    if rejections:
        code = _EXCEPTION_CODE.search(error)
        if code is not None and int(code.group(1)) in GATEWAY_NO_DEVICE:
            return None
        return "exception", error.removeprefix(f"unit-{unit}: ")
    if frame_errors:
        return "garbled", error.removeprefix(f"unit-{unit}: ")
    return None


def to_json(result: ScanResult) -> dict[str, Any]:
    """The scan as one JSON object."""
    return {
        "bus": result.bus,
        "endpoint": result.endpoint,
        "units_scanned": len(result.units),
        "answered": [
            {"unit_id": a.unit_id, "reply": a.reply, "detail": a.detail, "device": a.device}
            for a in result.answered
        ],
        "silent_configured": [
            {"unit_id": unit, "device": device} for unit, device in result.silent_configured
        ],
    }


def render(result: ScanResult) -> str:
    """The scan as text: one line per unit that answered, then the configured silent ones."""
    lines = [
        f"bus {result.bus} ({result.endpoint}): {len(result.answered)} of"
        f" {len(result.units)} unit ids answer"
    ]
    for a in result.answered:
        known = f"configured as {a.device}" if a.device else "not in the site file"
        lines.append(f"  unit {a.unit_id}: {a.reply} ({a.detail}); {known}")
    for unit, device in result.silent_configured:
        lines.append(f"  unit {unit}: no answer; configured as {device}")
    return "\n".join(lines)
