"""The Modbus adapter: one `ModbusBus` per TCP endpoint or RS485 line.

Modbus TCP runs on our own transport (`drivers.modbus.tcp_link.TcpLink`, on `asyncio.Protocol`):
the gateway polls every meter every second, and pymodbus's per-request machinery (its own
``wait_for`` per request, framer and PDU classes, trace hooks) cost more CPU on that hot path
than the protocol itself (measurements in that module). RTU (RS485) runs on pymodbus (`_Link`),
whose RTU framer (CRC, inter-frame timing, resynchronisation) is worth keeping. Both offer the
same `BusLink`.

A bus is half-duplex (Modbus over Serial Line V1.02): one request at a time. Each bus has one
poll task (``modbus[<bus>].poll``) and one `asyncio.Lock`; polls and relay/valve commands take
the lock per transaction, and separate buses run in parallel, so a dead device only costs time
on its own bus.

Failure handling, per device:

* every request runs under ``asyncio.timeout(timeout_s)``; a reply that never forms a valid frame
  is a `DeviceTimeoutError`, or a `FrameError` when bytes did arrive (bad CRC, garbage); an
  exception reply is a `DeviceRejectedError` with the Modbus exception code;
* an online device's failed request is retried ``retries`` times with exponential backoff
  (the lock is released while backing off); an offline device gets one probe per poll interval,
  so a dead device costs at most one timeout per interval;
* after ``offline_after`` failed polls in a row the device is marked offline with one
  `DriverEventKind.OFFLINE` event and one log line (with the bus's last raw frames); the first
  good poll afterwards emits `DriverEventKind.ONLINE`;
* a reply that decodes to a value no meter can hold (NaN, infinite, beyond int64 milli-units,
  a negative energy total) is an `ImplausibleValueError`: that poll fails and gives no reading,
  but the device answered, so it does not count towards offline. One
  `DriverEventKind.FRAME_ERROR` event (detail ``condition=implausible_value``,
  ``state=raised``) and one log line when the condition starts, one (``state=cleared``) at the
  next good value; nothing per poll in between;
* a reading the gateway refuses (``sink.put`` raising) is counted, and the bus polls on; the
  first refusal is logged, the next ones only at debug until a reading is accepted again.

Logging: one line per device state change (offline, online, implausible value raised and
cleared, readings refused and accepted again), never one per poll. pymodbus's own log (RTU
buses) goes through `PymodbusLogFilter`: its debug and info lines (every frame sent and
received) are dropped, the raw frames it appends to each error are cut (the offline line
carries this bus's own), and a repeated message is logged once per `PYMODBUS_LOG_INTERVAL_S`
with a count.

Readings are integers in milli-units decoded by `drivers.modbus.registers`.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import functools
import heapq
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self, TypeVar

from billing_engine.base.errors import PrepayError
from drivers.modbus.config import (
    DeviceProfile,
    ModbusBusConfig,
    ModbusDeviceConfig,
    RegisterSpec,
    SupplySpec,
)
from drivers.modbus.profiles import ENERGY, profile_plan, profile_registers
from drivers.modbus.registers import (
    DecodeError,
    ImplausibleRegisterError,
    ReadBlock,
    Table,
    decode_milli,
)
from drivers.modbus.tcp_link import FRAME_DUMP_SIZE, TcpLink
from drivers.ports import (
    Clock,
    DeviceRejectedError,
    DeviceTimeoutError,
    DriverError,
    DriverEvent,
    DriverEventKind,
    FrameError,
    ImplausibleValueError,
    Reading,
    ReadingSink,
    SupplyConfirmation,
    SupplyState,
    utc_now,
)

if TYPE_CHECKING:
    from pymodbus.pdu import ModbusPDU

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The logger pymodbus writes everything to (``pymodbus.logging.Log``).
PYMODBUS_LOGGER = "pymodbus.logging"
#: A repeated pymodbus message is logged at most once per this many seconds.
PYMODBUS_LOG_INTERVAL_S = 60.0
_PYMODBUS_FRAMES = "\n>>>>> "  # pymodbus appends its last raw frames to errors after this
_NUMBERS = re.compile(r"\d+")
#: Upper bounds (seconds, inclusive) of the poll-time buckets each device counts: a reply on a
#: LAN or a short RS485 line takes milliseconds, a slow line at 9600 baud tens of them, a
#: device that does not answer the timeout times its attempts. The gateway's metrics sum them
#: per bus (``prepay_bus_poll_seconds``).
POLL_TIME_BUCKETS_S: tuple[float, ...] = (
    0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Readings on their way into the journal at once (`ModbusBus._poll_loop`): a bus alone keeps
# `PUTS_IN_FLIGHT_PER_BUS`; the buses of a site (`build_buses`) share one budget of
# `PUTS_IN_FLIGHT_SITE`, however many they are. Shared, so that a site with few buses batches
# as one with many: 16 a bus capped every commit of a one-bus, 100-meter site at 16 readings
# (12.5 on average; 21-33 shared, and 11% less CPU per poll). Not more with more buses: a
# reading waiting for the journal grows older, where a poll waiting for room is made when the
# journal can take it. 16 a bus gave a 2,000-meter site (16 buses) 256, batches of 110 readings
# and a poll -> broker p99 of 80-85 ms; 128 gave batches of 75, a p99 of 46-49 ms, every meter
# still polled every second, and 5-7% less CPU per poll (`bench site`, three alternated pairs).
PUTS_IN_FLIGHT_PER_BUS = 16
PUTS_IN_FLIGHT_SITE = 128


def _raise_lost_cancellation() -> None:
    """Raise the cancellation pymodbus's ``connect`` lost, if it lost one.

    On Python 3.11, ``asyncio.wait_for`` (which pymodbus's ``connect`` awaits) drops a
    cancellation that arrives as the connection attempt fails, and pymodbus then answers
    False (CPython gh-86296, fixed in 3.12). The task is still being cancelled: without this, a
    retry loop around the bus (actuation, polling) went on after the gateway cancelled it, and
    the shutdown waited for it. An expired `asyncio.timeout` around the call is such a
    cancellation too, and comes back out of it as the `TimeoutError` it should have been.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class PymodbusLogFilter(logging.Filter):
    """Makes pymodbus's log fit a daemon's (install with `quiet_pymodbus`).

    pymodbus logs every frame at debug and appends up to 20 raw frames to each error; a bus
    with a dead device would write that every poll. This filter drops its records below
    WARNING, cuts the appended frames, and lets one message through per ``interval_s`` for
    each kind of message (its text with the numbers left out), the next one carrying how many
    were left out meanwhile.
    """

    def __init__(
        self,
        interval_s: float = PYMODBUS_LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._clock = clock
        self._windows: dict[tuple[int, str], tuple[float, int]] = {}  # -> (start, left out)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        text = record.getMessage().split(_PYMODBUS_FRAMES, 1)[0]
        if text == "Repeating....":  # pymodbus's own note of a repeat: counted below instead
            return False
        key = (record.levelno, _NUMBERS.sub("#", text))
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window[0] < self._interval_s:
            self._windows[key] = (window[0], window[1] + 1)
            return False
        if len(self._windows) >= 1_000:  # a bound, should pymodbus vary its texts
            self._windows.clear()
        self._windows[key] = (now, 0)
        if window is not None and window[1]:
            text += f" ({window[1]} more like it in the last {now - window[0]:.0f} s)"
        record.msg, record.args = text, None
        return True


def quiet_pymodbus() -> None:
    """Install `PymodbusLogFilter` on pymodbus's logger once (every bus calls this), and
    raise the logger to WARNING so pymodbus stops formatting frames it would log at debug."""
    target = logging.getLogger(PYMODBUS_LOGGER)
    if not any(isinstance(f, PymodbusLogFilter) for f in target.filters):
        target.addFilter(PymodbusLogFilter())
    if target.level < logging.WARNING:
        target.setLevel(logging.WARNING)


@dataclass
class DeviceStats:
    """Counters and state of one device, for diagnostics and tests (runtime state, not config)."""

    polls: int = 0
    readings: int = 0
    failed_polls: int = 0
    consecutive_failures: int = 0
    retries: int = 0
    timeouts: int = 0
    frame_errors: int = 0
    rejections: int = 0
    unexpected_errors: int = 0
    implausible_values: int = 0  # polls refused for a value no meter can hold
    refused_readings: int = 0  # readings the sink refused (its put raised)
    refusing: bool = False  # the sink refused the last reading (logged once until accepted)
    online: bool = True
    value_alarm: bool = False  # an implausible value is being reported (alarm raised)
    last_error: str = ""
    values_milli: dict[str, int] = field(default_factory=dict)
    #: polls by how long reading the device took, answered or failed (retries and timeouts
    #: included), one count per bucket of `POLL_TIME_BUCKETS_S` and the last for slower ones
    poll_time_counts: list[int] = field(
        default_factory=lambda: [0] * (len(POLL_TIME_BUCKETS_S) + 1)
    )
    poll_time_sum_s: float = 0.0

    def observe_poll_time(self, seconds: float) -> None:
        """Count one poll that took ``seconds`` (a bound is inclusive, as Prometheus' ``le``)."""
        self.poll_time_counts[bisect.bisect_left(POLL_TIME_BUCKETS_S, seconds)] += 1
        self.poll_time_sum_s += seconds


class BusLink(Protocol):
    """What `ModbusBus` needs of a bus's connection: `TcpLink` (Modbus TCP, our own transport)
    or `_Link` (RTU, pymodbus). Every call is one transaction; the caller holds the bus lock."""

    #: the last raw frames, oldest first: ``("tx" | "rx", bytes)``
    frames: collections.deque[tuple[str, bytes]]

    async def read(
        self, device_id: str, unit: int, table: Table, address: int, count: int
    ) -> list[int] | list[bool]:
        """``count`` registers (ints) or bits (bools) of ``table`` from ``address``.

        Raises:
            DeviceTimeoutError: no reply (or no connection) within the timeout.
            FrameError: bytes arrived but never formed a valid reply, or the reply does not
                answer the request.
            DeviceRejectedError: the device sent a Modbus exception reply.
        """
        ...

    async def write(
        self, device_id: str, unit: int, table: Table, address: int, value: int
    ) -> None:
        """Write one coil (on for a true ``value``) or holding register; raises as `read`."""
        ...

    def dump(self) -> str:
        """The last raw frames, oldest first, as ``tx:0104...`` items."""
        ...

    def close(self) -> None:
        """Close the connection (the next call opens it again)."""
        ...


def _new_link(config: ModbusBusConfig) -> BusLink:
    return TcpLink(config) if config.kind == "tcp" else _Link(config)


_BlockRead = Callable[[BusLink], Awaitable[list[int] | list[bool]]]


def _read_on(
    device_id: str, unit: int, table: Table, address: int, count: int, link: BusLink
) -> Awaitable[list[int] | list[bool]]:
    return link.read(device_id, unit, table, address, count)


@dataclass
class _Device:
    config: ModbusDeviceConfig
    profile: DeviceProfile
    plan: list[ReadBlock]
    source: str
    specs: dict[str, RegisterSpec] = field(default_factory=dict)
    stats: DeviceStats = field(default_factory=DeviceStats)
    #: each block of `plan` with its read (a link -> the read's awaitable), made once: a poll
    #: then creates no function per block
    reads: list[tuple[ReadBlock, _BlockRead]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.specs = profile_registers(self.profile)
        cfg = self.config
        self.reads = [
            (
                b,
                functools.partial(
                    _read_on, cfg.device_id, cfg.unit_id, b.table, b.address, b.count
                ),
            )
            for b in self.plan
        ]


class _Link:
    """The pymodbus RTU client of one serial bus, with error mapping and a raw frame log.

    Every call is one transaction; the caller holds the bus lock.
    """

    def __init__(self, config: ModbusBusConfig) -> None:
        # pymodbus loads with the first RTU bus: a site with TCP buses only never needs it
        from pymodbus.client import AsyncModbusSerialClient  # noqa: PLC0415
        from pymodbus.framer import FramerType  # noqa: PLC0415

        quiet_pymodbus()
        self._timeout_s = config.timeout_s
        # pymodbus' own timeout is kept well above ours so that asyncio.timeout() decides and
        # pymodbus never counts "no response" towards its auto-disconnect; retries are ours.
        lib_timeout = config.timeout_s * 4 + 1
        self.frames: collections.deque[tuple[str, bytes]] = collections.deque(
            maxlen=FRAME_DUMP_SIZE
        )
        self._rx = b""
        serial = config.serial
        assert serial is not None  # noqa: S101 - guaranteed by the config validator
        self.client = AsyncModbusSerialClient(
            serial.port,
            framer=FramerType.RTU,
            baudrate=serial.baudrate,
            bytesize=serial.bytesize,
            parity=serial.parity,
            stopbits=serial.stopbits,
            name=config.name,
            reconnect_delay=0,
            timeout=lib_timeout,
            retries=0,
            trace_packet=self._trace_packet,
        )

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self.frames.append(("tx", data))
        else:
            # pymodbus passes the whole receive buffer each time more bytes arrive
            if self.frames and self.frames[-1][0] == "rx" and data.startswith(self.frames[-1][1]):
                self.frames.pop()
            self.frames.append(("rx", data))
            self._rx += data
        return data

    def dump(self) -> str:
        """The last raw frames, oldest first, as ``tx:0104...`` items."""
        return " ".join(f"{kind}:{data.hex()}" for kind, data in self.frames)

    def close(self) -> None:
        self.client.close()

    async def call(self, device_id: str, request: Callable[[], Awaitable[ModbusPDU]]) -> ModbusPDU:
        """Run one request; map every failure to the `DriverError` tree.

        Raises:
            DeviceTimeoutError: no reply (or no connection) within the timeout.
            FrameError: bytes arrived but never formed a valid reply (bad CRC, garbage).
            DeviceRejectedError: the device sent a Modbus exception reply.
        """
        from pymodbus.exceptions import ConnectionException, ModbusException  # noqa: PLC0415

        self._rx = b""
        try:
            async with asyncio.timeout(self._timeout_s):
                connected = self.client.connected or await self.client.connect()
                _raise_lost_cancellation()
                if not connected:
                    raise DeviceTimeoutError(device_id, "cannot connect to the bus")
                response = await request()
        except TimeoutError as exc:
            if self._rx:
                raise FrameError(
                    device_id, f"no valid reply in {self._timeout_s} s; got {self._rx.hex()}"
                ) from exc
            raise DeviceTimeoutError(device_id, f"no reply in {self._timeout_s} s") from exc
        except ConnectionException as exc:
            raise DeviceTimeoutError(device_id, f"not connected: {exc}") from exc
        except ModbusException as exc:
            raise FrameError(device_id, f"bad reply: {exc}") from exc
        if response.isError():
            raise DeviceRejectedError(device_id, response.exception_code)
        return response

    async def read(
        self, device_id: str, unit: int, table: Table, address: int, count: int
    ) -> list[int] | list[bool]:
        c = self.client
        if table is Table.INPUT:
            rr = await self.call(
                device_id, lambda: c.read_input_registers(address, count=count, device_id=unit)
            )
            words = list(rr.registers)
        elif table is Table.HOLDING:
            rr = await self.call(
                device_id, lambda: c.read_holding_registers(address, count=count, device_id=unit)
            )
            words = list(rr.registers)
        else:
            reader = c.read_coils if table is Table.COIL else c.read_discrete_inputs
            rr = await self.call(device_id, lambda: reader(address, count=count, device_id=unit))
            if len(rr.bits) < count:
                raise FrameError(device_id, f"asked {count} bits, got {len(rr.bits)}")
            return list(rr.bits[:count])
        if len(words) != count:
            raise FrameError(device_id, f"asked {count} registers, got {len(words)}")
        return words

    async def write(
        self, device_id: str, unit: int, table: Table, address: int, value: int
    ) -> None:
        c = self.client
        if table is Table.COIL:
            await self.call(device_id, lambda: c.write_coil(address, bool(value), device_id=unit))
        else:
            await self.call(device_id, lambda: c.write_register(address, value, device_id=unit))


def supply_state_from(spec: SupplySpec, raw: int | bool) -> SupplyState:
    """Interpret a read-back value according to the profile (pure)."""
    value = int(raw)
    if spec.read_table in (Table.COIL, Table.DISCRETE_INPUT):
        return SupplyState.ON if value == spec.on_value else SupplyState.OFF
    if spec.on_mask is not None and spec.off_mask is not None:
        on, off = bool(value & spec.on_mask), bool(value & spec.off_mask)
        if on and not off:
            return SupplyState.ON
        if off and not on:
            return SupplyState.OFF
        return SupplyState.UNKNOWN
    if value == spec.on_value:
        return SupplyState.ON
    if value == spec.off_value:
        return SupplyState.OFF
    return SupplyState.UNKNOWN


class ModbusBus:
    """One Modbus bus: a `ReadingSource` (its poll loop) and an `Actuator` (its relays/valves).

    Use ``async with ModbusBus(...)`` or call `aclose` when done; `run` closes the connection
    when it is cancelled.
    """

    def __init__(
        self,
        config: ModbusBusConfig,
        profiles: Mapping[str, DeviceProfile],
        *,
        clock: Clock = utc_now,
        in_flight: asyncio.Semaphore | None = None,
    ) -> None:
        """``in_flight``: the budget of readings on their way into the journal that this bus
        shares with the site's other buses (`build_buses`); None: one of its own, of
        `PUTS_IN_FLIGHT_PER_BUS`."""
        self.config = config
        self.name = f"modbus[{config.name}]"
        self._in_flight = in_flight
        #: the bounds of every device's poll-time buckets (`DeviceStats.poll_time_counts`)
        self.poll_time_buckets_s = POLL_TIME_BUCKETS_S
        self._clock = clock
        self._lock = asyncio.Lock()
        self._link: BusLink | None = None
        self._last_io = 0.0
        self._gap_s = config.serial.effective_inter_frame_gap_s() if config.serial else 0.0
        self._devices: dict[str, _Device] = {}
        for dev in config.devices:
            profile = profiles[dev.profile]
            self._devices[dev.device_id] = _Device(
                dev, profile, profile_plan(profile), f"modbus:{config.name}/{dev.unit_id}"
            )

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the bus connection (a later request reopens it)."""
        async with self._lock:
            if self._link is not None:
                self._link.close()
                self._link = None

    def stats(self, device_id: str) -> DeviceStats:
        """The live counters of ``device_id``."""
        return self._device(device_id).stats

    def frame_dump(self) -> str:
        """The bus's last raw frames (hex), oldest first."""
        return self._link.dump() if self._link is not None else ""

    # ------------------------------------------------------------------ ReadingSource

    async def run(self, sink: ReadingSink) -> None:
        """Poll every device at its interval until cancelled; never returns on device errors."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._poll_loop(sink), name=f"{self.name}.poll")
        finally:
            await asyncio.shield(self.aclose())

    async def _poll_loop(self, sink: ReadingSink) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        queue = [(start, i, dev) for i, dev in enumerate(self._devices.values())]
        heapq.heapify(queue)
        # The bus polls the next device while the gateway journals the last reading: waiting
        # for each commit (an fsync) before the next poll made every reading its own commit.
        # At most the budget's readings wait at once (back-pressure; shared with the site's
        # other buses, whose waits queue in turn); a device's readings reach the gateway in poll
        # order (the deliveries start in order and queue in order).
        room = self._in_flight
        if room is None:
            room = asyncio.Semaphore(PUTS_IN_FLIGHT_PER_BUS)

        def release(_: object) -> None:
            room.release()

        async with asyncio.TaskGroup() as deliveries:
            while True:
                due, order, dev = heapq.heappop(queue)
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)  # the poll schedule, not a settle wait
                reading = await self._read_device(dev, sink)
                if reading is not None:
                    await room.acquire()
                    try:
                        task = deliveries.create_task(self._deliver(dev, reading, sink))
                    except BaseException:
                        # A shared budget outlives this loop (a restarted bus): never leak a slot.
                        room.release()
                        raise
                    task.add_done_callback(release)  # also when cancelled
                # keep the cadence; after an overrun, skip missed slots instead of bursting
                next_due = max(due + dev.config.poll_interval_s, loop.time())
                heapq.heappush(queue, (next_due, order, dev))

    async def poll_device(self, device_id: str, sink: ReadingSink) -> Reading | None:
        """Poll one device once: read, decode, hand the reading to ``sink``.

        Returns the reading, or None when the poll failed (the failure is counted, logged on a
        state change, and reported to ``sink`` as an event; it is never raised) or the gateway
        refused the reading.
        """
        dev = self._device(device_id)
        reading = await self._read_device(dev, sink)
        if reading is None:
            return None
        return await self._deliver(dev, reading, sink)

    async def _read_device(self, dev: _Device, sink: ReadingSink) -> Reading | None:
        """Read and decode one device (its events go to ``sink``); None when the poll failed."""
        device_id = dev.config.device_id
        stats = dev.stats
        stats.polls += 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            # counted in the device's poll-time buckets however it ends (the bus lock, the
            # retries and the timeouts included: the bus's time it took)
            try:
                values = await self._read_values(dev)
            finally:
                stats.observe_poll_time(loop.time() - started)
            read_at = self._clock()
            reading = Reading(
                meter_id=dev.config.meter_id,
                read_at=read_at,
                register_milli=values[ENERGY],
                source=dev.source,
            )
        except ImplausibleValueError as exc:
            await self._value_refused(dev, exc, sink)
            return None
        except DriverError as exc:
            await self._poll_failed(dev, exc, sink)
            return None
        # The poll loop's one supervised boundary (ruff BLE001 accepts it because it logs the
        # traceback): a bug in decoding must not kill the bus; it is logged, counted, survived.
        except Exception as exc:
            stats.unexpected_errors += 1
            logger.exception("%s: unexpected error polling %s", self.name, device_id)
            await self._poll_failed(dev, DriverError(device_id, f"unexpected: {exc!r}"), sink)
            return None
        stats.values_milli = values
        stats.readings += 1
        stats.consecutive_failures = 0
        if not stats.online:
            await self._answered(dev, read_at, sink)
        if stats.value_alarm:
            stats.value_alarm = False
            logger.info(
                "%s: device %s (unit %d) reports plausible values again",
                self.name,
                device_id,
                dev.config.unit_id,
            )
            await sink.event(
                DriverEvent(
                    device_id,
                    DriverEventKind.FRAME_ERROR,
                    read_at,
                    {
                        "bus": self.config.name,
                        "unit_id": dev.config.unit_id,
                        "condition": "implausible_value",
                        "state": "cleared",
                    },
                )
            )
        return reading

    async def _deliver(self, dev: _Device, reading: Reading, sink: ReadingSink) -> Reading | None:
        """Hand ``reading`` to the gateway; None when it refused it (counted and logged)."""
        stats = dev.stats
        device_id = dev.config.device_id
        try:
            await sink.put(reading)
        except (PrepayError, ValueError) as exc:
            # The gateway refused this one reading (it could not journal it): the next poll
            # reads the register again; the other devices on the bus must not wait for it.
            stats.refused_readings += 1
            log = logger.debug if stats.refusing else logger.warning
            stats.refusing = True
            log(
                "%s: device %s: reading %s refused by the gateway: %s",
                self.name,
                device_id,
                reading.reading_id,
                exc,
            )
            return None
        if stats.refusing:
            stats.refusing = False
            logger.info("%s: device %s: readings accepted again", self.name, device_id)
        return reading

    async def _answered(self, dev: _Device, at: datetime, sink: ReadingSink) -> None:
        """The device replied: reset its failure count; report it online if it was not."""
        stats = dev.stats
        stats.consecutive_failures = 0
        if stats.online:
            return
        stats.online = True
        logger.info(
            "%s: device %s (unit %d) is back online",
            self.name,
            dev.config.device_id,
            dev.config.unit_id,
        )
        await sink.event(
            DriverEvent(
                dev.config.device_id,
                DriverEventKind.ONLINE,
                at,
                {"bus": self.config.name, "unit_id": dev.config.unit_id},
            )
        )

    async def _value_refused(
        self, dev: _Device, exc: ImplausibleValueError, sink: ReadingSink
    ) -> None:
        """A reply with a value no meter can hold: a failed poll, alarmed once per episode."""
        stats = dev.stats
        stats.failed_polls += 1
        stats.implausible_values += 1
        stats.last_error = str(exc)
        now = self._clock()
        await self._answered(dev, now, sink)  # it did answer: not a step towards offline
        if stats.value_alarm:
            logger.debug("%s: %s", self.name, exc)
            return
        stats.value_alarm = True
        logger.warning("%s: unit %d: %s", self.name, dev.config.unit_id, exc)
        await sink.event(
            DriverEvent(
                dev.config.device_id,
                DriverEventKind.FRAME_ERROR,
                now,
                {
                    "bus": self.config.name,
                    "unit_id": dev.config.unit_id,
                    "condition": "implausible_value",
                    "state": "raised",
                    "register": exc.register,
                    "value": repr(exc.value),
                    "message": str(exc),
                },
            )
        )

    async def _read_values(self, dev: _Device) -> dict[str, int]:
        specs = dev.specs
        values: dict[str, int] = {}
        for block, read in dev.reads:
            words = await self._with_retries(dev, read)
            for span in block.spans:
                spec = specs[span.name]
                try:
                    # bits (bools) need no int(): decoding packs the words, True as 1
                    values[span.name] = decode_milli(
                        block.words_of(span, words),
                        spec.type,
                        spec.scale,
                        spec.word_order,
                        spec.byte_order,
                    )
                except ImplausibleRegisterError as exc:
                    raise ImplausibleValueError(
                        dev.config.device_id, span.name, exc.value, exc.reason
                    ) from exc
                except DecodeError as exc:
                    raise FrameError(dev.config.device_id, f"{span.name}: {exc}") from exc
        if values[ENERGY] < 0:
            raise ImplausibleValueError(
                dev.config.device_id,
                ENERGY,
                values[ENERGY],
                "negative milli-units; a cumulative counter cannot be",
            )
        return values

    async def _poll_failed(self, dev: _Device, exc: DriverError, sink: ReadingSink) -> None:
        stats = dev.stats
        stats.failed_polls += 1
        stats.consecutive_failures += 1
        stats.last_error = str(exc)
        if stats.online and stats.consecutive_failures >= self.config.offline_after:
            stats.online = False
            logger.warning(
                "%s: device %s (unit %d) offline after %d failed polls: %s; last frames: %s",
                self.name,
                dev.config.device_id,
                dev.config.unit_id,
                stats.consecutive_failures,
                exc,
                self.frame_dump(),
            )
            await sink.event(
                DriverEvent(
                    dev.config.device_id,
                    DriverEventKind.OFFLINE,
                    self._clock(),
                    {
                        "bus": self.config.name,
                        "unit_id": dev.config.unit_id,
                        "failures": stats.consecutive_failures,
                        "error": type(exc).__name__,
                        "message": str(exc),
                    },
                )
            )

    async def _with_retries(self, dev: _Device, op: Callable[[BusLink], Awaitable[T]]) -> T:
        """Run one transaction under the bus lock, retrying transient failures with backoff."""
        stats = dev.stats
        attempts = 1 + (self.config.retries if stats.online else 0)
        loop = asyncio.get_running_loop()
        for attempt in range(attempts):
            try:
                async with self._lock:
                    link = self._link
                    if link is None:
                        link = self._link = _new_link(self.config)
                    if not self._gap_s:  # TCP (or no gap configured): no silence to keep
                        return await op(link)
                    gap = self._last_io + self._gap_s - loop.time()
                    if gap > 0:
                        await asyncio.sleep(gap)  # RS485 inter-frame silence (3.5 chars)
                    try:
                        return await op(link)
                    finally:
                        self._last_io = loop.time()
            except DeviceTimeoutError as exc:
                stats.timeouts += 1
                error: DriverError = exc
            except FrameError as exc:
                stats.frame_errors += 1
                error = exc
            except DeviceRejectedError as exc:
                stats.rejections += 1
                error = exc
            if attempt + 1 == attempts:
                raise error
            stats.retries += 1
            await asyncio.sleep(min(self.config.backoff_s * 2**attempt, self.config.backoff_max_s))
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ Actuator

    def handles(self, device_id: str) -> bool:
        """True for devices on this bus whose profile has a usable relay/valve."""
        dev = self._devices.get(device_id)
        if dev is None or dev.profile.supply is None:
            return False
        return dev.profile.supply.status == "confirmed" or dev.config.allow_unconfirmed_supply

    async def set_supply(self, device_id: str, on: bool) -> None:
        """Write the relay/valve command (retried like a poll). Returning means it was sent.

        Raises:
            DriverError: not a switchable device here, or the write failed after retries.
        """
        dev, spec = self._supply(device_id)
        value = spec.on_value if on else spec.off_value
        logger.info(
            "%s: device %s (unit %d): supply %s",
            self.name,
            device_id,
            dev.config.unit_id,
            "on" if on else "off",
        )
        await self._with_retries(
            dev,
            lambda link: link.write(
                device_id, dev.config.unit_id, spec.write_table, spec.write_address, value
            ),
        )

    async def read_supply(self, device_id: str) -> SupplyState:
        """Read the relay/valve state back from the device.

        Raises:
            DriverError: not a switchable device here, or the read failed after retries.
        """
        dev, spec = self._supply(device_id)
        raw = await self._with_retries(
            dev,
            lambda link: link.read(
                device_id, dev.config.unit_id, spec.read_table, spec.read_address, 1
            ),
        )
        return supply_state_from(spec, raw[0])

    async def set_supply_confirmed(self, device_id: str, on: bool) -> SupplyConfirmation:
        """`set_supply`, then `read_supply`: did the device really do it?

        Raises:
            DriverError: the write or the read-back could not be delivered.
        """
        await self.set_supply(device_id, on)
        observed = await self.read_supply(device_id)
        result = SupplyConfirmation(device_id, SupplyState.ON if on else SupplyState.OFF, observed)
        if not result.confirmed:
            logger.warning(
                "%s: device %s ignored supply %s: reads back %s",
                self.name,
                device_id,
                result.requested,
                observed,
            )
        return result

    # ------------------------------------------------------------------ helpers

    def _device(self, device_id: str) -> _Device:
        dev = self._devices.get(device_id)
        if dev is None:
            raise DriverError(device_id, f"not a device of {self.name}")
        return dev

    def _supply(self, device_id: str) -> tuple[_Device, SupplySpec]:
        dev = self._device(device_id)
        spec = dev.profile.supply
        if spec is None or not self.handles(device_id):
            raise DriverError(device_id, f"{self.name} cannot switch this device's supply")
        return dev, spec


def build_buses(
    buses: Sequence[ModbusBusConfig], profiles: Mapping[str, DeviceProfile], clock: Clock = utc_now
) -> list[ModbusBus]:
    """One `ModbusBus` per bus config, sharing one budget of readings in flight
    (`PUTS_IN_FLIGHT_SITE`)."""
    in_flight = asyncio.Semaphore(PUTS_IN_FLIGHT_SITE)
    return [ModbusBus(bus, profiles, clock=clock, in_flight=in_flight) for bus in buses]
