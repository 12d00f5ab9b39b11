"""The scenario file of ``prepay sim -c SCENARIO.yaml``: a whole simulated site, validated.

A scenario names the Modbus TCP servers and RS485 lines (served over socat pty pairs) with the
meters on them, the LoRaWAN devices published through a network server's MQTT integration
(ChirpStack v4 or The Things Stack v3) on a broker, how each meter consumes over a simulated
day, and a schedule of faults. Models are frozen and closed (``extra="forbid"``); `load_scenario`
reports every problem as ``FILE:LINE: field: message`` and loads nothing when one is found.

Consumption is a daily curve: ``per_day`` units spread over the 24 simulated hours by hourly
weights (a named ``shape`` or an explicit ``hourly`` list). The simulated clock runs ``speed``
times faster than the wall clock and starts at ``start_hour``, so ``speed: 60`` shows a day in
24 minutes. ``per_day`` is in the register's milli-units (Wh, litres) for Modbus meters and in
pulses for LoRa pulse counters.

Fault times (``at_s``) and LoRa ``interval_s`` are wall-clock seconds after start: faults are
for the gateway's timeouts, which do not speed up.

BLE water dispensers (``ble:``) are served to other processes on a Unix-domain socket
(`firmware_sim.ble_remote`); a customer pours ``pours.ml`` every ``pours.every_s`` wall-clock
seconds while the dispenser is unlocked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from billing_engine.base.errors import ConfigError, InvalidConfigError
from billing_engine.base.yaml_lines import line_of, load_model, parse_yaml

Ident = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
DevEui = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{16}$")]
Speed = Annotated[float, Field(gt=0, le=100_000)]
Port = Annotated[int, Field(ge=0, le=65535)]  # 0: any free port (printed at start)
BleAddress = Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")]
Family = Literal["modbus", "lora", "ble"]

#: Hourly weights of the named daily shapes, hour 0 (00:00-01:00) first.
SHAPES: dict[str, tuple[int, ...]] = {
    "flat": (1,) * 24,
    # low at night, a morning peak (07-09) and a larger evening peak (18-22)
    "residential": (3, 2, 2, 2, 2, 3, 6, 10, 9, 6, 5, 5, 5, 5, 5, 5, 6, 8, 11, 12, 11, 9, 6, 4),
    # shop / office hours 08-18, a base load at night
    "commercial": (2, 2, 2, 2, 2, 2, 3, 6, 9, 10, 10, 10, 9, 10, 10, 10, 9, 7, 4, 3, 2, 2, 2, 2),
}

ModbusFaultKind = Literal["timeout", "crc", "exception", "ignore_writes"]
LoraFaultKind = Literal["lose_uplinks", "repeat_uplinks", "counter_reset"]
BleFaultKind = Literal["drop_links"]
FaultKind = Literal[ModbusFaultKind, LoraFaultKind, BleFaultKind, "rollover", "meter_swap", "clear"]
MODBUS_FAULTS: frozenset[str] = frozenset(
    {"timeout", "crc", "exception", "ignore_writes", "rollover", "meter_swap", "clear"}
)
LORA_FAULTS: frozenset[str] = frozenset(
    {"lose_uplinks", "repeat_uplinks", "counter_reset", "rollover", "meter_swap", "clear"}
)
BLE_FAULTS: frozenset[str] = frozenset({"ignore_writes", "drop_links", "clear"})
_FAULTS_OF: dict[str, frozenset[str]] = {
    "modbus": MODBUS_FAULTS,
    "lora": LORA_FAULTS,
    "ble": BLE_FAULTS,
}
_FAULT_OPTIONS: dict[str, frozenset[str]] = {
    "timeout": frozenset({"count"}),
    "crc": frozenset({"count"}),
    "exception": frozenset({"count", "code"}),
    "ignore_writes": frozenset(),
    "lose_uplinks": frozenset({"count"}),
    "repeat_uplinks": frozenset({"count", "copies"}),
    "counter_reset": frozenset({"join"}),
    "rollover": frozenset({"before"}),
    "meter_swap": frozenset({"start"}),
    "drop_links": frozenset(),
    "clear": frozenset(),
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Curve(_Model):
    """A daily consumption curve.

    Attributes:
        per_day: units per simulated day (milli-units for Modbus meters, pulses for LoRa).
        shape: a named shape from `SHAPES`, unless ``hourly`` is given.
        hourly: 24 hourly weights, hour 0 first (instead of ``shape``).
    """

    per_day: Annotated[int, Field(ge=0)]
    shape: Literal["flat", "residential", "commercial"] | None = None
    hourly: (
        Annotated[tuple[Annotated[int, Field(ge=0)], ...], Field(min_length=24, max_length=24)]
        | None
    ) = None

    @model_validator(mode="after")
    def shape_or_hourly(self) -> Self:
        if self.shape is not None and self.hourly is not None:
            raise ValueError("give shape or hourly, not both")
        if self.hourly is not None and sum(self.hourly) == 0:
            raise ValueError("hourly weights are all 0; use per_day: 0 for no consumption")
        return self

    def weights(self) -> tuple[int, ...]:
        """The 24 hourly weights in effect (``residential`` by default)."""
        return self.hourly if self.hourly is not None else SHAPES[self.shape or "residential"]


def rate_function(curve: Curve, *, speed: float, start_hour: float) -> Callable[[float], int]:
    """Consumption per wall-clock hour at ``t`` wall-clock seconds after start.

    The simulated time of day is ``start_hour + t * speed / 3600``; in simulated hour ``h`` the
    meter uses ``per_day * w[h] / sum(w)`` per simulated hour, which is ``speed`` times as much
    per wall-clock hour.
    """
    weights = curve.weights()
    total = sum(weights)
    start_s = start_hour * 3600

    def rate(t_s: float) -> int:
        hour = int((start_s + t_s * speed) // 3600) % 24
        return int(curve.per_day * weights[hour] * speed / total)

    return rate


class ModbusMeter(_Model):
    """One simulated Modbus meter.

    Attributes:
        device_id: the name used in faults, the status file and the gateway's site file.
        unit_id: Modbus unit id, unique on its server or line.
        profile: a device profile in ``profiles_dir`` (``configs/devices``).
        start: the billed register at start, in milli-units (Wh, L).
        curve: daily consumption (default: none).
        speed: overrides the scenario's speed for this meter.
        supply_on: the relay/valve state at start.
        rollover_at: the register wraps to 0 here (milli-units); default: the largest value of
            an integer register type plus one, or 10**6 units for a float register.
    """

    device_id: Ident
    unit_id: Annotated[int, Field(ge=1, le=247)]
    profile: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    start: Annotated[int, Field(ge=0)] = 0
    curve: Curve | None = None
    speed: Speed | None = None
    supply_on: bool = True
    rollover_at: Annotated[int, Field(gt=0)] | None = None


def _unit_ids_unique(meters: tuple[ModbusMeter, ...]) -> None:
    seen: set[int] = set()
    for meter in meters:
        if meter.unit_id in seen:
            raise ValueError(f"unit_id {meter.unit_id} is used twice; each meter needs its own")
        seen.add(meter.unit_id)


class ModbusTcpServer(_Model):
    """A Modbus TCP server (one port) with its meters."""

    name: Ident
    host: str = "127.0.0.1"
    port: Port
    meters: Annotated[tuple[ModbusMeter, ...], Field(min_length=1)]

    @model_validator(mode="after")
    def unit_ids_unique(self) -> Self:
        _unit_ids_unique(self.meters)
        return self


class ModbusRtuLine(_Model):
    """An RS485 line: a socat pty pair; the simulator opens one end, the gateway the other.

    Attributes:
        link: a stable path for the gateway's end (a symlink socat makes), so a site file can
            name it; without it the gateway's end is whatever ``/dev/pts/N`` socat gets, printed
            at start and written to the status file.
    """

    name: Ident
    link: Path | None = None
    baudrate: Annotated[int, Field(gt=0)] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    meters: Annotated[tuple[ModbusMeter, ...], Field(min_length=1)]

    @model_validator(mode="after")
    def unit_ids_unique(self) -> Self:
        _unit_ids_unique(self.meters)
        return self


class LoraDevice(_Model):
    """A LoRaWAN device: a pulse meter (Milesight EM300-DI) or a valve (Milesight UC511).

    Attributes:
        device_id: the name in faults and the status file; the TTS device id.
        kind: ``meter`` (EM300-DI) or ``valve`` (UC511: valve 1 and its pulse input).
        codec: the gateway codec the payloads follow; must fit ``kind``.
        interval_s: wall-clock seconds between uplinks.
        start: the pulse counter at start.
        valve_open: the valve state at start (valves only).
    """

    device_id: Ident
    dev_eui: DevEui
    kind: Literal["meter", "valve"]
    codec: Literal["milesight-em300-di", "milesight-uc511"] | None = None
    interval_s: Annotated[float, Field(gt=0, le=86_400)] = 10.0
    start: Annotated[int, Field(ge=0, lt=2**32)] = 0
    curve: Curve | None = None
    speed: Speed | None = None
    valve_open: bool = True

    @model_validator(mode="after")
    def codec_fits_kind(self) -> Self:
        wanted = "milesight-em300-di" if self.kind == "meter" else "milesight-uc511"
        if self.codec is not None and self.codec != wanted:
            raise ValueError(f"a {self.kind} is simulated as {wanted}; set codec: {wanted}")
        return self

    @property
    def codec_name(self) -> str:
        return self.codec or ("milesight-em300-di" if self.kind == "meter" else "milesight-uc511")


class LoraNetwork(_Model):
    """One network server's MQTT integration, as the gateway's ``devices.lns`` entry sees it."""

    name: Ident
    kind: Literal["chirpstack", "tts"] = "chirpstack"
    application_id: Annotated[str, Field(pattern=r"^[^/#+\s]+$")]
    tenant_id: Annotated[str, Field(pattern=r"^[^/#+\s]+$")] | None = None
    devices: Annotated[tuple[LoraDevice, ...], Field(min_length=1)]

    @model_validator(mode="after")
    def tenant_only_for_tts(self) -> Self:
        if self.kind != "tts" and self.tenant_id is not None:
            raise ValueError("tenant_id is only for kind tts")
        return self


class Broker(_Model):
    """The MQTT broker the network server integration publishes to."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883


class Pours(_Model):
    """A customer at a self-service dispenser: ``ml`` every ``every_s`` wall-clock seconds.

    A pour happens only while the dispenser is unlocked and not faulted. With no session open,
    the customer starts one at the machine (a local authorisation of ``ml``, ref NONE, signed
    with the dispenser's key if it has one); with a session the gateway authorised, the pour
    goes into that session (and stops at its ``max_ml``).

    Attributes:
        ml: mL per pour.
        every_s: wall-clock seconds between pours.
        first_at_s: the first pour, in seconds after start (default: ``every_s``).
        step_ml: mL per Dispensed notification during a pour.
    """

    ml: Annotated[int, Field(gt=0, lt=2**32)]
    every_s: Annotated[float, Field(gt=0, le=86_400)]
    first_at_s: Annotated[float, Field(ge=0)] | None = None
    step_ml: Annotated[int, Field(gt=0)] = 50


class BleDispenser(_Model):
    """A simulated BLE water dispenser (profile: ``docs/ble-gatt.md``).

    Attributes:
        device_id: the name in faults and the status file; the gateway's ``device_id``.
        address: its Bluetooth address, as the gateway's site file names it.
        start: the lifetime counter ``total_ml`` at start, in mL.
        locked: the Lock state at start.
        auth_key_hex: the device key for Authorise MACs (hex, 16..32 bytes); None = unsigned.
        pours: the customers' schedule (default: nobody pours).
    """

    device_id: Ident
    address: BleAddress
    start: Annotated[int, Field(ge=0, lt=2**32)] = 0
    locked: bool = False
    auth_key_hex: Annotated[str, Field(pattern=r"^([0-9a-fA-F]{2}){16,32}$")] | None = None
    pours: Pours | None = None


class BleAir(_Model):
    """The BLE dispensers and the Unix-domain socket that serves them to the gateway.

    Attributes:
        socket: the socket path (relative: to the scenario file); the gateway's
            ``PREPAY_BLE_SIM_SOCKET`` (`firmware_sim.ble_remote`).
    """

    socket: Path
    dispensers: Annotated[tuple[BleDispenser, ...], Field(min_length=1)]


class FaultAction(_Model):
    """Something to do to a device now (a control command) or at ``at_s`` (a scheduled fault).

    Attributes:
        device: a device id of the scenario.
        fault: what to do. Modbus: ``timeout`` (no answer), ``crc`` (corrupt reply),
            ``exception`` (exception reply ``code``), ``ignore_writes`` (acknowledge relay/valve
            writes, do nothing). LoRa: ``lose_uplinks``, ``repeat_uplinks`` (publish each
            ``copies`` times), ``counter_reset`` (FCnt back to 0, with a join when ``join``).
            Both: ``rollover`` (register to ``before`` below its wrap point), ``meter_swap``
            (a new meter reading ``start``), ``clear`` (end the device's faults). BLE:
            ``ignore_writes`` (Lock writes answered OK and not carried out), ``drop_links``
            (the radio link to every central drops), ``clear``.
        count: replies (Modbus) or uplinks (LoRa) affected; Modbus default: until cleared,
            LoRa default: 1.
    """

    device: Ident
    fault: FaultKind
    count: Annotated[int, Field(ge=1)] | None = None
    code: Annotated[int, Field(ge=1, le=255)] = 4
    copies: Annotated[int, Field(ge=2, le=20)] = 2
    join: bool = True
    before: Annotated[int, Field(ge=1)] = 1000
    start: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def options_fit_the_fault(self) -> Self:
        allowed = _FAULT_OPTIONS[self.fault] | {"device", "fault", "at_s"}
        extra = sorted(self.model_fields_set - allowed)
        if extra:
            takes = ", ".join(sorted(_FAULT_OPTIONS[self.fault])) or "no options"
            raise ValueError(f"fault {self.fault} takes {takes}; remove {', '.join(extra)}")
        return self


class ScheduledFault(FaultAction):
    """A fault at ``at_s`` wall-clock seconds after start."""

    at_s: Annotated[float, Field(ge=0)]


class Scenario(_Model):
    """A whole simulated site.

    Attributes:
        speed: simulated seconds per wall-clock second for the consumption curves.
        start_hour: simulated time of day at start (6.5 = 06:30).
        profiles_dir: Modbus device profiles, relative to the scenario file.
        broker: where LoRa uplinks go (needed when ``lora`` is not empty).
    """

    name: Ident = "sim"
    speed: Speed = 1.0
    start_hour: Annotated[float, Field(ge=0, lt=24)] = 6.0
    profiles_dir: Path = Path("../devices")
    broker: Broker | None = None
    modbus_tcp: tuple[ModbusTcpServer, ...] = ()
    modbus_rtu: tuple[ModbusRtuLine, ...] = ()
    lora: tuple[LoraNetwork, ...] = ()
    ble: BleAir | None = None
    faults: tuple[ScheduledFault, ...] = ()

    @model_validator(mode="after")
    def lora_needs_a_broker(self) -> Self:
        if self.lora and self.broker is None:
            raise ValueError("lora devices publish to a broker: add broker: {host: ..., port: ...}")
        return self

    @model_validator(mode="after")
    def names_unique(self) -> Self:
        for label, values in (
            ("device id", [d for d, _ in self.devices()]),
            ("server/line/network name", [s.name for s in self._servers()]),
            ("dev_eui", [d.dev_eui.lower() for n in self.lora for d in n.devices]),
            ("tcp port", [str(s.port) for s in self.modbus_tcp if s.port != 0]),
            ("BLE address", [d.address.upper() for d in self.ble_dispensers()]),
        ):
            seen: set[str] = set()
            for value in values:
                if value in seen:
                    raise ValueError(f"{label} {value} appears twice")
                seen.add(value)
        return self

    def _servers(self) -> Iterator[ModbusTcpServer | ModbusRtuLine | LoraNetwork]:
        yield from self.modbus_tcp
        yield from self.modbus_rtu
        yield from self.lora

    def modbus_servers(self) -> Iterator[ModbusTcpServer | ModbusRtuLine]:
        """The TCP servers, then the RTU lines."""
        yield from self.modbus_tcp
        yield from self.modbus_rtu

    def devices(self) -> Iterator[tuple[str, Family]]:
        """Every (device id, family), in file order."""
        for server in self.modbus_servers():
            for meter in server.meters:
                yield meter.device_id, "modbus"
        for network in self.lora:
            for device in network.devices:
                yield device.device_id, "lora"
        for dispenser in self.ble_dispensers():
            yield dispenser.device_id, "ble"

    def ble_dispensers(self) -> Iterator[BleDispenser]:
        """The BLE dispensers (none without a ``ble`` section)."""
        if self.ble is not None:
            yield from self.ble.dispensers

    def modbus_meters(self) -> Iterator[tuple[tuple[str | int, ...], ModbusMeter]]:
        """Every Modbus meter with its location in the file."""
        for i, tcp in enumerate(self.modbus_tcp):
            for j, meter in enumerate(tcp.meters):
                yield ("modbus_tcp", i, "meters", j), meter
        for i, rtu in enumerate(self.modbus_rtu):
            for j, meter in enumerate(rtu.meters):
                yield ("modbus_rtu", i, "meters", j), meter

    def profiles_path(self, scenario_file: Path) -> Path:
        """``profiles_dir`` resolved against the scenario file's directory."""
        if self.profiles_dir.is_absolute():
            return self.profiles_dir
        return (scenario_file.parent / self.profiles_dir).resolve()


def check_fault(action: FaultAction, families: Mapping[str, Family]) -> str | None:
    """Why ``action`` cannot apply to this scenario's devices, or None when it can."""
    family = families.get(action.device)
    if family is None:
        return f"unknown device {action.device!r}; the scenario has {sorted(families)}"
    allowed = _FAULTS_OF[family]
    if action.fault not in allowed:
        return f"{action.device} is a {family} device; its faults are {sorted(allowed)}"
    return None


def _reference_problems(scenario: Scenario, path: Path) -> list[tuple[tuple[str | int, ...], str]]:
    problems: list[tuple[tuple[str | int, ...], str]] = []
    families = dict(scenario.devices())
    for i, fault in enumerate(scenario.faults):
        why = check_fault(fault, families)
        if why is not None:
            problems.append(
                (("faults", i, "device" if fault.device not in families else "fault"), why)
            )
    profiles = scenario.profiles_path(path)
    for loc, meter in scenario.modbus_meters():
        if not (profiles / f"{meter.profile}.yaml").is_file():
            known = sorted(p.stem for p in profiles.glob("*.yaml"))
            problems.append(
                ((*loc, "profile"), f"no profile {meter.profile!r} in {profiles}; known: {known}")
            )
    return problems


def load_scenario(path: Path) -> Scenario:
    """Load and check a scenario file, all or nothing.

    Raises:
        InvalidConfigError: one ``FILE:LINE: field: message`` per problem (schema, unknown
            devices in faults, missing profiles).
    """
    scenario = load_model(path, Scenario)
    problems = _reference_problems(scenario, path)
    if problems:
        _, node = parse_yaml(path)
        raise InvalidConfigError(
            [
                ConfigError(str(path), line_of(node, loc), ".".join(str(p) for p in loc), message)
                for loc, message in problems
            ]
        )
    return scenario
