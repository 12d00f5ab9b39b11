"""A running simulated site: the servers, links and schedules a `Scenario` describes.

`SimulatedSite` is an async context manager. Entering it opens every Modbus TCP server, makes a
socat pty pair per RS485 line and serves the line's meters on the simulator's end, and serves the
BLE dispensers on a Unix-domain socket (`firmware_sim.ble_remote`); `run` then publishes LoRa
uplinks (reconnecting to the broker when it goes away), pours water at the dispensers on their
schedules, applies scheduled faults, takes control commands, and keeps the status file current
until cancelled. Leaving it stops the servers and socat and removes the BLE socket.

The status file (``--status``) is JSON, replaced atomically (write, then rename) whenever a
relay or valve changes or a fault is applied, and at least every `STATUS_REFRESH_S`::

    {"scenario": "demo", "updated_at": "...Z",
     "modbus_tcp": {"tcp0": {"host": "127.0.0.1", "port": 5020}},
     "modbus_rtu": {"rs485a": {"gateway_port": "/dev/pts/7", "device_port": "/dev/pts/8"}},
     "ble": {"socket": "/tmp/prepay-demo/ble.sock"},
     "devices": {"flat-101-water": {"family": "modbus", "supply_on": false,
                 "register_milli": 1234, "supply_writes": 1, "fault": null, ...},
                 "kiosk-1": {"family": "ble", "locked": true, "total_ml": 5250, ...}}}

Control commands (a line each, from ``--control FILE`` or stdin) apply a `FaultAction` now:
``DEVICE FAULT [COUNT] [option=value ...]``, e.g. ``flat-101-elec timeout 3`` or
``lora-meter-201 repeat_uplinks 1 copies=3``; or play a customer at a BLE dispenser
(`CustomerAction`): ``present DISPENSER card|phone|ticket IDENTITY`` (a card tapped, a phone
shown, a ticket code scanned: a Request to the gateway) and ``pour DISPENSER ML`` (the customer
holds the tap for ML mL of the session the gateway authorised, then presses "done").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt
from pydantic import ValidationError
from pymodbus.constants import ExcCodes

from drivers.ble.gatt import (
    COMMAND_UUID,
    REQUEST_UUID,
    U32_MAX,
    AuthoriseCommand,
    DispenseRef,
    DispenserState,
    IdentityKind,
    RefKind,
    encode_command,
    sign_authorise,
)
from drivers.modbus.config import DeviceProfile
from drivers.modbus.registers import DataType, register_count
from drivers.ports import utc_now
from firmware_sim.ble_remote import BleAirServer
from firmware_sim.dispenser import AttError, SimulatedDispenser
from firmware_sim.lns_uplink import LnsSimulator, SimDevice
from firmware_sim.meter_model import Fault, SimMeter
from firmware_sim.modbus_meter import MeterSimulator
from firmware_sim.scenario import (
    BleDispenser,
    Family,
    FaultAction,
    LoraDevice,
    LoraNetwork,
    ModbusMeter,
    Scenario,
    check_fault,
    rate_function,
)

logger = logging.getLogger(__name__)

STATUS_REFRESH_S = 1.0
CONTROL_POLL_S = 0.2
RECONNECT_S = 2.0
SOCAT_START_TIMEOUT_S = 10.0
LORA_COUNTER_WRAP = 2**32
_NS_PER_HOUR = 3_600 * 1_000_000_000
#: A Dispensed notification per half litre of a pour by control line: an 18.9 L bucket in 38
#: notifications rather than the 378 of the scheduled pours' default 50 mL step.
CONTROL_POUR_STEP_ML = 500
#: The words of ``present`` for what the customer presents (the Request frame's kinds).
IDENTITY_WORDS = {
    "card": IdentityKind.ACCOUNT_CARD,
    "phone": IdentityKind.PHONE_ID,
    "ticket": IdentityKind.TICKET,
}
_FLOAT_ROLLOVER_UNITS = 10**6  # a float register "wraps" where a 6-digit display would

Announce = Callable[[str], None]


def default_rollover_milli(profile: DeviceProfile) -> int:
    """Where the billed register of ``profile`` wraps, in milli-units."""
    spec = profile.energy
    if spec.type in (DataType.FLOAT32, DataType.FLOAT64):
        units = _FLOAT_ROLLOVER_UNITS
    else:
        bits = 16 * register_count(spec.type)
        units = 2 ** (bits - 1) if spec.type.value.startswith("s") else 2**bits
    return int(units * spec.scale)


@dataclass
class SiteMeter(SimMeter):
    """A `SimMeter` whose register wraps and which reports relay/valve changes."""

    device_id: str = ""
    rollover_milli: int = 0
    on_change: Callable[[], None] | None = None

    def advance(self) -> None:
        super().advance()
        if self.rollover_milli and self.energy_milli >= self.rollover_milli:
            self.energy_milli %= self.rollover_milli

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        _count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        before = (self.supply_on, len(self.supply_writes))
        result = await super()._action(
            function_code, start_address, address, _count, registers, set_values
        )
        if (self.supply_on, len(self.supply_writes)) != before and self.on_change is not None:
            self.on_change()
        return result


class Accumulator:
    """Integrates a rate (units per wall-clock hour at t seconds) into whole units, exactly."""

    def __init__(
        self, rate: Callable[[float], int] | None, clock_ns: Callable[[], int] = time.monotonic_ns
    ) -> None:
        self._rate = rate
        self._clock_ns = clock_ns
        self._start_ns = self._last_ns = clock_ns()
        self._carry = 0

    def take(self, *, running: bool = True) -> int:
        """Whole units used since the last call (none while not ``running``)."""
        now = self._clock_ns()
        elapsed, self._last_ns = now - self._last_ns, now
        if elapsed <= 0 or not running or self._rate is None:
            return 0
        self._carry += max(self._rate((now - self._start_ns) / 1e9), 0) * elapsed
        whole, self._carry = divmod(self._carry, _NS_PER_HOUR)
        return whole


@dataclass
class LoraUnit:
    """One simulated LoRa device with its consumption and pending uplink faults."""

    spec: LoraDevice
    network: LoraNetwork
    device: SimDevice
    consumption: Accumulator
    lose: int = 0
    repeat: int = 0
    copies: int = 2
    pending_reset: bool | None = None  # join flag of a counter reset to do on the next uplink
    active: LnsSimulator | None = None

    @property
    def meters_while_closed(self) -> bool:
        return self.device.model == "em300-di"

    def fault_name(self) -> str | None:
        if self.lose:
            return f"lose_uplinks x{self.lose}"
        if self.repeat:
            return f"repeat_uplinks x{self.repeat}"
        return None


@dataclass
class BleUnit:
    """One simulated BLE dispenser and what its customers poured."""

    spec: BleDispenser
    device: SimulatedDispenser
    # Every scheduled customer, served or not: "locked, so nothing flowed" is shown by this
    # counter moving while ``total_ml`` stands still, not by waiting and seeing nothing.
    pour_attempts: int = 0
    pours: int = 0
    poured_ml: int = 0
    refused_pours: int = 0

    def fault_name(self) -> str | None:
        return "ignore_writes" if self.device.ignore_lock_writes else None

    def serve(self, ml: int) -> int:
        """A customer at the machine holds the tap for ``ml`` mL of the session the gateway
        authorised, then presses "done"; returns the mL that flowed (0: no session authorised,
        the valve stays shut)."""
        device = self.device
        if device.state not in (DispenserState.AUTHORISED, DispenserState.DISPENSING):
            return 0
        poured = device.pour(ml, CONTROL_POUR_STEP_ML)
        device.finish()  # no-op when the pour reached the authorised volume and ended it
        if poured:
            self.pours += 1
            self.poured_ml += poured
        return poured

    def pour(self) -> int:
        """One customer's pour now (see `firmware_sim.scenario.Pours`); the mL that flowed."""
        schedule = self.spec.pours
        if schedule is None:
            return 0
        self.pour_attempts += 1
        device = self.device
        if device.locked or device.state is DispenserState.FAULT:
            return 0
        if device.state is DispenserState.IDLE:
            # The customer starts a session at the machine: a local authorisation.
            last = device.last_session_id
            command = AuthoriseCommand(
                1 if last >= U32_MAX else last + 1, schedule.ml, DispenseRef(RefKind.NONE)
            )
            if device.auth_key is not None:
                command = sign_authorise(command, device.auth_key)
            try:
                device.write(COMMAND_UUID, encode_command(command))
            except AttError as exc:
                self.refused_pours += 1
                logger.info("sim: ble %s: pour refused: %s", self.spec.device_id, exc)
                return 0
        poured = device.pour(schedule.ml, schedule.step_ml)
        if poured:
            self.pours += 1
            self.poured_ml += poured
        return poured


@dataclass
class RtuLink:
    """A socat pty pair: the gateway opens ``gateway_port``, the simulator ``device_port``."""

    process: asyncio.subprocess.Process
    gateway_port: str
    device_port: str
    link: Path | None
    drain: asyncio.Task[None] | None = None


async def open_pty_pair(link: Path | None) -> RtuLink:
    """Start ``socat -d -d pty,raw,echo=0[,link=LINK] pty,raw,echo=0`` and wait until it runs.

    Raises:
        RuntimeError: socat is missing or did not set the pair up.
    """
    socat = shutil.which("socat")
    if socat is None:
        raise RuntimeError("socat is not installed (Debian package socat); RTU lines need it")
    gateway_end = "pty,raw,echo=0"
    if link is not None:
        _prepare_link(link)
        gateway_end += f",link={link}"
    proc = await asyncio.create_subprocess_exec(
        socat,
        "-d",
        "-d",
        gateway_end,
        "pty,raw,echo=0",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None  # noqa: S101 - stderr=PIPE above
    try:
        async with asyncio.timeout(SOCAT_START_TIMEOUT_S):
            paths = await _socat_ptys(proc.stderr)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    rtu = RtuLink(proc, str(link) if link is not None else paths[0], paths[1], link)
    rtu.drain = asyncio.create_task(_drain(proc.stderr), name="sim.socat.stderr")
    return rtu


def _prepare_link(link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()  # a stale link from a killed run: socat would not replace it


async def _socat_ptys(stderr: asyncio.StreamReader) -> list[str]:
    """The two pty paths socat reports, once it says the transfer loop runs.

    Raises:
        RuntimeError: socat exited first.
    """
    paths: list[str] = []
    while True:
        line = (await stderr.readline()).decode(errors="replace")
        if not line:
            raise RuntimeError("socat exited before creating the pty pair")
        if match := re.search(r"PTY is (\S+)", line):
            paths.append(match.group(1))
        if "starting data transfer loop" in line and len(paths) == 2:
            return paths


async def _drain(stream: asyncio.StreamReader) -> None:
    while line := await stream.readline():
        logger.debug("socat: %s", line.decode(errors="replace").rstrip())


async def close_pty_pair(rtu: RtuLink) -> None:
    """Stop socat (it removes its link) and wait for it."""
    with contextlib.suppress(ProcessLookupError):
        rtu.process.terminate()
    await rtu.process.wait()
    if rtu.drain is not None:
        await rtu.drain


@dataclass(frozen=True)
class CustomerAction:
    """A customer at a BLE dispenser, by control line.

    Attributes:
        device: the dispenser's device id.
        identity_kind: ``present``: what is presented; None for ``pour``.
        identity: ``present``: the card number, phone id or ticket code (up to 16 characters,
            what the Request frame carries).
        ml: ``pour``: how long the customer holds the tap, in mL.
    """

    device: str
    identity_kind: IdentityKind | None = None
    identity: str = ""
    ml: int = 0


def _parse_customer(words: list[str]) -> CustomerAction:
    if words[0] == "present":
        if len(words) != 4 or words[2] not in IDENTITY_WORDS:
            raise ValueError("want present DISPENSER card|phone|ticket IDENTITY")
        if not 1 <= len(words[3]) <= 16 or not all("!" <= c <= "~" for c in words[3]):
            raise ValueError("the identity is 1 to 16 printable ASCII characters (a Request's)")
        return CustomerAction(words[1], IDENTITY_WORDS[words[2]], words[3])
    if len(words) != 3 or not (words[2].isascii() and words[2].isdigit()) or int(words[2]) == 0:
        raise ValueError("want pour DISPENSER ML (a whole number of mL above 0)")
    return CustomerAction(words[1], ml=int(words[2]))


def parse_command(line: str) -> FaultAction | CustomerAction | None:
    """A control line as a `FaultAction` or a `CustomerAction`; None for a blank line or a
    ``#`` comment.

    Raises:
        ValueError: the line reads as none of ``DEVICE FAULT [COUNT] [option=value ...]``,
            ``present DISPENSER KIND IDENTITY``, ``pour DISPENSER ML``.
    """
    words = line.split("#", 1)[0].split()
    if not words:
        return None
    if words[0] in ("present", "pour"):
        return _parse_customer(words)
    if len(words) < 2:
        raise ValueError("want DEVICE FAULT [COUNT] [option=value ...]")
    data: dict[str, str] = {"device": words[0], "fault": words[1]}
    for word in words[2:]:
        key, sep, value = word.partition("=")
        if sep:
            data[key] = value
        else:
            data["count"] = word
    try:
        return FaultAction.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'command'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise ValueError(problems) from exc


def _read_from(path: Path, offset: int | None) -> tuple[bytes, int]:
    """The bytes of ``path`` after ``offset`` and the new offset; None: create it empty.

    A file that shrank (the operator truncated it) is read again from the start.
    """
    if offset is None:
        path.write_bytes(b"")
        return b"", 0
    try:
        with path.open("rb") as handle:
            if handle.seek(0, os.SEEK_END) < offset:
                offset = 0
            handle.seek(offset)
            chunk = handle.read()
    except FileNotFoundError:
        return b"", 0
    return chunk, offset + len(chunk)


def _now_iso() -> str:
    return utc_now().isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SimulatedSite:
    """Every simulated device of a scenario, its servers, and its status file."""

    def __init__(
        self,
        scenario: Scenario,
        profiles: Mapping[str, DeviceProfile],
        *,
        base_dir: Path,
        status_path: Path | None = None,
        announce: Announce = lambda line: None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.scenario = scenario
        self.status_path = status_path
        self._announce = announce
        self._base_dir = base_dir
        self._families: dict[str, Family] = dict(scenario.devices())
        self._changed = asyncio.Event()
        self.meters: dict[str, SiteMeter] = {}
        self._bus_of: dict[str, str] = {}
        self.tcp: dict[str, MeterSimulator] = {}
        self.rtu: dict[str, tuple[RtuLink, MeterSimulator]] = {}
        self.lora: dict[str, LoraUnit] = {}
        self.ble: dict[str, BleUnit] = {}
        self.ble_server: BleAirServer | None = None
        for server in scenario.modbus_servers():
            for meter in server.meters:
                self.meters[meter.device_id] = self._site_meter(meter, profiles, clock_ns)
                self._bus_of[meter.device_id] = server.name
        for network in scenario.lora:
            for spec in network.devices:
                self.lora[spec.device_id] = self._lora_unit(network, spec, clock_ns)
        for dispenser in scenario.ble_dispensers():
            self.ble[dispenser.device_id] = BleUnit(
                dispenser,
                SimulatedDispenser(
                    dispenser.address.upper(),
                    name=dispenser.device_id,
                    total_ml=dispenser.start,
                    auth_key=(
                        bytes.fromhex(dispenser.auth_key_hex) if dispenser.auth_key_hex else None
                    ),
                    locked=dispenser.locked,
                ),
            )
        self._stack = contextlib.AsyncExitStack()

    def _site_meter(
        self,
        meter: ModbusMeter,
        profiles: Mapping[str, DeviceProfile],
        clock_ns: Callable[[], int],
    ) -> SiteMeter:
        profile = profiles[meter.profile]
        curve = None
        if meter.curve is not None:
            speed = meter.speed or self.scenario.speed
            curve = rate_function(meter.curve, speed=speed, start_hour=self.scenario.start_hour)
        return SiteMeter(
            unit_id=meter.unit_id,
            profile=profile,
            energy_milli=meter.start,
            curve=curve,
            supply_on=meter.supply_on,
            clock_ns=clock_ns,
            device_id=meter.device_id,
            rollover_milli=meter.rollover_at or default_rollover_milli(profile),
            on_change=self.changed,
        )

    def _lora_unit(
        self, network: LoraNetwork, spec: LoraDevice, clock_ns: Callable[[], int]
    ) -> LoraUnit:
        rate = None
        if spec.curve is not None:
            speed = spec.speed or self.scenario.speed
            rate = rate_function(spec.curve, speed=speed, start_hour=self.scenario.start_hour)
        device = SimDevice(
            spec.dev_eui.lower(),
            spec.device_id,
            "em300-di" if spec.kind == "meter" else "uc511",
            pulse=spec.start,
            valve_open=spec.valve_open,
        )
        return LoraUnit(spec, network, device, Accumulator(rate, clock_ns))

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
        self.write_status()

    async def _start(self) -> None:
        for server in self.scenario.modbus_tcp:
            meters = [self.meters[m.device_id] for m in server.meters]
            sim = MeterSimulator.tcp(meters, server.host, server.port)
            await self._stack.enter_async_context(sim)
            self.tcp[server.name] = sim
            self._announce(
                f"modbus_tcp {server.name}: {server.host}:{sim.port} "
                f"(units {', '.join(str(m.unit_id) for m in server.meters)})"
            )
        for line in self.scenario.modbus_rtu:
            link = line.link
            if link is not None and not link.is_absolute():
                link = self._base_dir / link
            rtu = await open_pty_pair(link)
            self._stack.push_async_callback(close_pty_pair, rtu)
            meters = [self.meters[m.device_id] for m in line.meters]
            sim = MeterSimulator.serial(
                meters,
                rtu.device_port,
                baudrate=line.baudrate,
                parity=line.parity,
                stopbits=line.stopbits,
            )
            await self._stack.enter_async_context(sim)
            self.rtu[line.name] = (rtu, sim)
            self._announce(
                f"modbus_rtu {line.name}: gateway port {rtu.gateway_port} "
                f"(simulator on {rtu.device_port}; units "
                f"{', '.join(str(m.unit_id) for m in line.meters)})"
            )
        air = self.scenario.ble
        if air is not None:
            path = air.socket if air.socket.is_absolute() else self._base_dir / air.socket
            ble_server = BleAirServer(
                path,
                {unit.device.address: unit.device for unit in self.ble.values()},
                on_change=self.changed,
            )
            await self._stack.enter_async_context(ble_server)
            self.ble_server = ble_server
            self._announce(
                f"ble air: socket {path} ("
                + ", ".join(f"{d.device_id} {d.address.upper()}" for d in air.dispensers)
                + ")"
            )
        broker = self.scenario.broker
        for network in self.scenario.lora:
            assert broker is not None  # noqa: S101 - Scenario.lora_needs_a_broker
            self._announce(
                f"lora {network.name}: {network.kind} application {network.application_id} "
                f"on {broker.host}:{broker.port} ({len(network.devices)} devices)"
            )
        for fault in self.scenario.faults:
            if fault.at_s == 0:
                self.apply(fault)
        self.write_status()

    async def run(self, control_path: Path | None = None, *, stdin: bool = False) -> None:
        """Publish uplinks, apply the fault schedule, take commands; until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._status_loop(), name="sim.status")
            tg.create_task(self._schedule(), name="sim.faults")
            for network in self.scenario.lora:
                tg.create_task(self._run_network(network), name=f"sim.lora[{network.name}]")
            for unit in self.ble.values():
                if unit.spec.pours is not None:
                    tg.create_task(self._pours(unit), name=f"sim.ble[{unit.spec.device_id}]")
            if control_path is not None:
                tg.create_task(self._control_file(control_path), name="sim.control")
            if stdin:
                tg.create_task(self._control_stdin(), name="sim.stdin")

    # ------------------------------------------------------------------ faults

    def apply(self, action: FaultAction) -> None:
        """Do ``action`` to its device now.

        Raises:
            ValueError: the device is unknown or does not have this fault.
        """
        why = check_fault(action, self._families)
        if why is not None:
            raise ValueError(why)
        if action.device in self.meters:
            self._apply_modbus(self.meters[action.device], action)
        elif action.device in self.lora:
            self._apply_lora(self.lora[action.device], action)
        else:
            self._apply_ble(self.ble[action.device], action)
        logger.info(
            "sim: %s on %s%s",
            action.fault,
            action.device,
            f" for {action.count}" if action.count is not None else "",
        )
        self.changed()

    @staticmethod
    def _apply_modbus(meter: SiteMeter, action: FaultAction) -> None:
        match action.fault:
            case "timeout":
                meter.set_fault(Fault.NO_ANSWER, count=action.count)
            case "crc":
                meter.set_fault(Fault.BAD_CRC, count=action.count)
            case "exception":
                meter.set_fault(Fault.EXCEPTION, count=action.count, code=action.code)
            case "ignore_writes":
                meter.ignore_writes = True
            case "rollover":
                meter.advance()
                meter.energy_milli = max(meter.rollover_milli - action.before, 0)
            case "meter_swap":
                meter.advance()
                meter.energy_milli = action.start
            case _:  # clear
                meter.set_fault(None)
                meter.ignore_writes = False

    @staticmethod
    def _apply_lora(unit: LoraUnit, action: FaultAction) -> None:
        match action.fault:
            case "lose_uplinks":
                unit.lose = action.count or 1
            case "repeat_uplinks":
                unit.repeat, unit.copies = action.count or 1, action.copies
            case "counter_reset":
                unit.pending_reset = action.join
            case "rollover":
                unit.device.pulse = max(LORA_COUNTER_WRAP - action.before, 0)
            case "meter_swap":
                unit.device.pulse = action.start % LORA_COUNTER_WRAP
                unit.pending_reset = True  # a new device joins with a fresh counter
            case _:  # clear
                unit.lose = unit.repeat = 0
                unit.pending_reset = None

    @staticmethod
    def _apply_ble(unit: BleUnit, action: FaultAction) -> None:
        match action.fault:
            case "ignore_writes":
                unit.device.ignore_lock_writes = True
            case "drop_links":
                unit.device.drop_links()
            case _:  # clear
                unit.device.ignore_lock_writes = False
                unit.device.fail_next_connects = 0

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for fault in sorted(self.scenario.faults, key=lambda f: f.at_s):
            if fault.at_s == 0:
                continue  # applied before the site was announced ready
            await asyncio.sleep(max(started + fault.at_s - loop.time(), 0))
            self.apply(fault)

    def command(self, line: str) -> None:
        """Apply one control line; a bad line is logged and ignored."""
        try:
            action = parse_command(line)
            if isinstance(action, CustomerAction):
                self.serve(action)
            elif action is not None:
                self.apply(action)
        except ValueError as exc:
            logger.warning("sim: ignored command %r: %s", line.strip(), exc)

    def serve(self, action: CustomerAction) -> None:
        """A customer at a dispenser now: present an identity, or pour.

        Raises:
            ValueError: not a dispenser of the scenario, or a v1 one (no request path).
        """
        unit = self.ble.get(action.device)
        if unit is None:
            raise ValueError(f"{action.device} is not a BLE dispenser of the scenario")
        device = unit.device
        if action.identity_kind is not None:
            if not device.listening(REQUEST_UUID):
                # Presented all the same, as at a real machine whose gateway is away: the
                # status file's ``listening`` says when a gateway would hear it.
                logger.warning("sim: ble %s: no gateway listens to requests", action.device)
            try:
                request_id = device.present(action.identity_kind, action.identity)
            except RuntimeError as exc:
                raise ValueError(f"{action.device}: {exc}") from exc
            logger.info(
                "sim: ble %s: request %d, %s %s presented",
                action.device,
                request_id,
                action.identity_kind.name.lower(),
                action.identity,
            )
        else:
            poured = unit.serve(action.ml)
            logger.info(
                "sim: ble %s: %s, total %d mL",
                action.device,
                f"poured {poured} mL" if poured else "no session authorised: nothing poured",
                device.total_ml,
            )
        self.changed()

    async def _control_file(self, path: Path) -> None:
        """Apply each line appended to ``path`` (created empty at start)."""
        _read_from(path, None)
        offset, pending = 0, b""
        while True:
            await asyncio.sleep(CONTROL_POLL_S)  # a plain file has no change notification
            chunk, offset = _read_from(path, offset)
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self.command(line.decode(errors="replace"))

    async def _control_stdin(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader),
            os.fdopen(os.dup(0), "rb", buffering=0),
        )
        try:
            while line := await reader.readline():
                self.command(line.decode(errors="replace"))
        finally:
            transport.close()

    # ------------------------------------------------------------------ LoRa

    async def _run_network(self, network: LoraNetwork) -> None:
        broker = self.scenario.broker
        assert broker is not None  # noqa: S101 - Scenario.lora_needs_a_broker
        units = [self.lora[d.device_id] for d in network.devices]
        while True:
            try:
                async with LnsSimulator.connect(
                    broker.host,
                    broker.port,
                    kind=network.kind,
                    application_id=network.application_id,
                    tenant_id=network.tenant_id,
                ) as sim:
                    logger.info("sim: lora %s connected to the broker", network.name)
                    for unit in units:
                        key = (
                            unit.device.dev_eui
                            if network.kind == "chirpstack"
                            else unit.spec.device_id
                        )
                        sim.devices[key] = unit.device
                        unit.active = sim
                    async with asyncio.TaskGroup() as tg:
                        for unit in units:
                            tg.create_task(
                                self._uplinks(sim, unit), name=f"sim.lora[{unit.spec.device_id}]"
                            )
            except* aiomqtt.MqttError as group:
                logger.warning(
                    "sim: lora %s: broker unavailable (%s); retrying in %.0f s",
                    network.name,
                    group.exceptions[0],
                    RECONNECT_S,
                )
            for unit in units:
                unit.active = None
            await asyncio.sleep(RECONNECT_S)

    async def _uplinks(self, sim: LnsSimulator, unit: LoraUnit) -> None:
        device = unit.device
        while True:
            used = unit.consumption.take(running=unit.meters_while_closed or device.valve_open)
            device.pulse = (device.pulse + used) % LORA_COUNTER_WRAP
            if unit.pending_reset is not None:
                sim.reset_counter(device, join=unit.pending_reset)
                unit.pending_reset = None
            lose = unit.lose > 0
            copies = 1
            if lose:
                unit.lose -= 1
            elif unit.repeat > 0:
                unit.repeat -= 1
                copies = unit.copies
            was_open = device.valve_open
            f_cnt = await sim.uplink(device, lose=lose, repeat=copies)
            logger.info(
                "sim: lora %s fCnt %d pulse %d%s%s",
                unit.spec.device_id,
                f_cnt,
                device.pulse,
                ""
                if device.model == "em300-di"
                else f" valve {'open' if device.valve_open else 'closed'}",
                " (lost)" if lose else f" (x{copies})" if copies > 1 else "",
            )
            if device.valve_open != was_open:
                self.changed()
            await asyncio.sleep(unit.spec.interval_s)  # the device's report interval

    # ------------------------------------------------------------------ BLE

    async def _pours(self, unit: BleUnit) -> None:
        schedule = unit.spec.pours
        assert schedule is not None  # noqa: S101 - only started for a dispenser with pours
        loop = asyncio.get_running_loop()
        first = schedule.first_at_s if schedule.first_at_s is not None else schedule.every_s
        due = loop.time() + first
        while True:
            await asyncio.sleep(max(due - loop.time(), 0))
            due += schedule.every_s
            poured = unit.pour()
            device = unit.device
            logger.info(
                "sim: ble %s %s total %d mL",
                unit.spec.device_id,
                f"poured {poured} mL," if poured else "no pour (locked or faulted),",
                device.total_ml,
            )
            self.changed()

    # ------------------------------------------------------------------ status

    def changed(self) -> None:
        """Ask for a status file update now (a relay/valve moved, a fault was applied)."""
        self._changed.set()

    async def _status_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATUS_REFRESH_S):
                    await self._changed.wait()
            self._changed.clear()
            self.write_status()

    def status(self) -> dict[str, Any]:
        """The status document (see the module docstring)."""
        devices: dict[str, dict[str, Any]] = {}
        for device_id, meter in self.meters.items():
            meter.advance()
            fault = meter.fault.value if meter.fault is not None else None
            if meter.ignore_writes:
                fault = "ignore_writes"
            devices[device_id] = {
                "family": "modbus",
                "bus": self._bus_of[device_id],
                "unit_id": meter.unit_id,
                "profile": meter.profile.name,
                "supply_on": meter.supply_on if meter.profile.supply is not None else None,
                "register_milli": meter.energy_milli,
                "supply_writes": len(meter.supply_writes),
                "requests": meter.requests,
                "fault": fault,
                "fault_remaining": meter.fault_budget,
            }
        for device_id, unit in self.lora.items():
            device = unit.device
            devices[device_id] = {
                "family": "lora",
                "network": unit.network.name,
                "dev_eui": device.dev_eui,
                "codec": unit.spec.codec_name,
                "supply_on": device.valve_open if device.model == "uc511" else None,
                "register": device.pulse,
                "f_cnt": device.f_cnt,
                "downlinks": len(device.received),
                "connected": unit.active is not None,
                "fault": unit.fault_name(),
            }
        for device_id, ble in self.ble.items():
            dispenser = ble.device
            devices[device_id] = {
                "family": "ble",
                "address": dispenser.address,
                "supply_on": not dispenser.locked,
                "locked": dispenser.locked,
                "lock_reason": dispenser.lock_reason.name.lower(),
                "total_ml": dispenser.total_ml,
                "register_milli": dispenser.total_ml,
                "state": dispenser.state.name.lower(),
                "device_fault": dispenser.fault.name.lower(),
                "session_id": dispenser.session_id,
                "last_session_id": dispenser.last_session_id,
                "pour_attempts": ble.pour_attempts,
                "pours": ble.pours,
                "poured_ml": ble.poured_ml,
                "refused_pours": ble.refused_pours,
                "connected": dispenser.connected,
                "listening": dispenser.listening(REQUEST_UUID),
                "display": dispenser.display.name.lower() if dispenser.display else None,
                "fault": ble.fault_name(),
            }
        doc: dict[str, Any] = {
            "scenario": self.scenario.name,
            "updated_at": _now_iso(),
            "modbus_tcp": {
                server.name: {"host": server.host, "port": self.tcp[server.name].port}
                for server in self.scenario.modbus_tcp
                if server.name in self.tcp
            },
            "modbus_rtu": {
                name: {"gateway_port": rtu.gateway_port, "device_port": rtu.device_port}
                for name, (rtu, _) in self.rtu.items()
            },
            "devices": devices,
        }
        if self.ble_server is not None:
            doc["ble"] = {"socket": str(self.ble_server.path)}
        return doc

    def write_status(self) -> None:
        """Replace the status file atomically (readers never see half a document)."""
        if self.status_path is None:
            return
        doc = json.dumps(self.status(), indent=2, sort_keys=True)
        tmp = self.status_path.with_name(f".{self.status_path.name}.tmp")
        tmp.write_text(doc + "\n")
        tmp.replace(self.status_path)
