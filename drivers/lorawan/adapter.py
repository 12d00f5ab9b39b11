"""The subscription adapter: one aiomqtt connection per network server (thin, all I/O).

`LnsAdapter` is both a `ReadingSource` (``run`` subscribes and feeds the sink) and an
`Actuator` (``set_supply`` enqueues the valve's documented downlink). Parsing, dedup, decoding
and command bookkeeping live in `UplinkRouter`; this module only connects, subscribes,
publishes and reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiomqtt

from billing_engine.base.errors import ConfigError, InvalidConfigError
from drivers.lorawan.codec import CodecSpec, load_codecs, supply_command
from drivers.lorawan.config import LnsConfig, LnsDeviceConfig
from drivers.lorawan.envelope import (
    chirpstack_down_topic,
    chirpstack_event_filter,
    encode_chirpstack_down,
    encode_tts_down,
    tts_down_topic,
    tts_event_filters,
    tts_user,
)
from drivers.lorawan.router import Routed, UplinkRouter
from drivers.lorawan.valves import CommandPhase, ValveCommand
from drivers.ports import (
    Actuator,
    Clock,
    ConfirmationPacing,
    DeviceTimeoutError,
    DriverError,
    DriverEvent,
    DriverEventKind,
    ReadingSink,
    ReadingSource,
    SupplyState,
    utc_now,
)

logger = logging.getLogger(__name__)


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()


class LnsAdapter:
    """One network-server MQTT integration: readings in, valve commands out.

    Args:
        config: the integration.
        codecs: codec name -> codec (every device's codec must be present).
        clock: the time source for events and reception fallbacks.

    Raises:
        InvalidConfigError: a device names a codec that is not loaded, or a valve's codec has
            no commands.
    """

    def __init__(
        self,
        config: LnsConfig,
        codecs: Mapping[str, CodecSpec],
        *,
        clock: Clock = utc_now,
    ) -> None:
        _check_codecs(config, codecs)
        self.name = f"lns[{config.name}]"
        self.config = config
        self.router = UplinkRouter(config, codecs)
        self._clock = clock
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._changed = asyncio.Condition()
        self._valves: dict[str, tuple[str, LnsDeviceConfig, CodecSpec]] = {}
        for device in config.devices:
            if device.valve_device_id is not None and device.codec is not None:
                key = config.device_key(device)
                self._valves[device.valve_device_id] = (key, device, codecs[device.codec])
        self.errors = 0

    # -- ReadingSource ----------------------------------------------------------------------

    async def run(self, sink: ReadingSink) -> None:
        """Subscribe and feed ``sink`` until cancelled; reconnects when the broker goes away."""
        offline_reported = False
        while True:
            try:
                async with contextlib.AsyncExitStack() as stack:
                    client = self._make_client()
                    async with asyncio.timeout(self.config.io_timeout_s):
                        await stack.enter_async_context(client)
                        for topic in self._filters():
                            await client.subscribe(topic, qos=self.config.qos)
                    self._client = client
                    self._connected.set()
                    logger.info(
                        "%s: subscribed at %s:%d",
                        self.name,
                        self.config.broker.host,
                        self.config.broker.port,
                    )
                    if offline_reported:
                        await sink.event(
                            DriverEvent(self.name, DriverEventKind.ONLINE, self._clock())
                        )
                        offline_reported = False
                    async for message in client.messages:
                        await self._handle(str(message.topic), message.payload, sink)
                        # Only now, with the readings journalled (`put` returned), does the
                        # broker learn the uplink is taken; a crash before this leaves it
                        # unacknowledged, and a persistent session delivers it again.
                        _acknowledge(client, message)
            except (aiomqtt.MqttError, TimeoutError) as exc:
                self._connected.clear()
                self._client = None
                if not offline_reported:
                    logger.warning("%s: broker connection lost: %s", self.name, exc)
                    await sink.event(
                        DriverEvent(
                            self.name,
                            DriverEventKind.OFFLINE,
                            self._clock(),
                            {"error": str(exc)},
                        )
                    )
                    offline_reported = True
            finally:
                self._connected.clear()
                self._client = None
            await asyncio.sleep(self.config.reconnect_s)  # reconnect back-off, not a settle

    async def wait_connected(self) -> None:
        """Return once subscribed (use under ``asyncio.timeout``)."""
        await self._connected.wait()

    async def _handle(self, topic: str, payload: object, sink: ReadingSink) -> None:
        try:
            routed = self.router.route(topic, _payload_bytes(payload), now=self._clock())
        except Exception:  # the one supervised boundary: a bad message (or a
            # codec bug) must not end the subscription; logged with its topic and counted.
            self.errors += 1
            logger.exception("%s: failed to handle a message on %s", self.name, topic)
            return
        await self._deliver(routed, sink)

    async def _deliver(self, routed: Routed, sink: ReadingSink) -> None:
        for event in routed.events:
            await sink.event(event)
        for reading in routed.readings:
            await sink.put(reading)  # may block: back-pressure on the subscription
        if routed.valve_changed:
            async with self._changed:
                self._changed.notify_all()

    # -- Actuator ---------------------------------------------------------------------------

    def handles(self, device_id: str) -> bool:
        """True for the valves this network server reaches."""
        return device_id in self._valves

    async def set_supply(self, device_id: str, on: bool) -> None:
        """Enqueue the valve's open/close downlink (confirmed). Returning means enqueued.

        Raises:
            DriverError: unknown valve, or not connected to the broker.
            DeviceTimeoutError: the broker did not take the message in time.
        """
        key, _device, codec = self._valve(device_id)
        client = self._client
        if client is None:
            raise DriverError(device_id, f"{self.name} is not connected to its broker")
        command = supply_command(codec, on=on)
        confirmed = codec.commands.confirmed if codec.commands is not None else True
        command_id = str(uuid.uuid4())
        if self.config.kind == "chirpstack":
            assert self.config.application_id is not None  # noqa: S101 - validated
            topic = chirpstack_down_topic(self.config.prefix, self.config.application_id, key)
            body = encode_chirpstack_down(
                key, command.f_port, command.payload, confirmed=confirmed, command_id=command_id
            )
        else:
            assert self.config.application_id is not None  # noqa: S101 - validated
            user = tts_user(self.config.application_id, self.config.tenant_id)
            topic = tts_down_topic(self.config.prefix, user, key)
            body = encode_tts_down(
                command.f_port,
                command.payload,
                confirmed=confirmed,
                command_id=command_id,
                priority=self.config.tts_priority,
            )
        want = SupplyState.ON if on else SupplyState.OFF
        self.router.valves.begin(
            ValveCommand(
                device_id=device_id,
                device_key=key,
                command_id=command_id,
                want=want,
                f_port=command.f_port,
                payload=command.payload,
                phase=CommandPhase.QUEUED,
                queued_at=self._clock(),
            )
        )
        try:
            async with asyncio.timeout(self.config.io_timeout_s):
                await client.publish(topic, body, qos=self.config.qos)
        except TimeoutError as exc:
            self.router.valves.abandon(device_id, command_id)
            raise DeviceTimeoutError(device_id, "broker did not take the downlink") from exc
        except aiomqtt.MqttError as exc:
            self.router.valves.abandon(device_id, command_id)
            raise DriverError(device_id, f"downlink publish failed: {exc}") from exc
        logger.info("%s: valve %s %s enqueued as %s", self.name, device_id, want, command_id)

    def pacing(self, device_id: str) -> ConfirmationPacing:
        """A class A valve confirms at its own uplink pace (see `ConfirmationPacing`).

        Raises:
            DriverError: unknown valve.
        """
        _key, device, _codec = self._valve(device_id)
        return ConfirmationPacing(
            resend_after_s=float(device.uplink_interval_s),
            alarm_after_s=device.valve_alarm_after_s,
        )

    async def read_supply(self, device_id: str) -> SupplyState:
        """The last state the valve itself reported (UNKNOWN before its first report).

        Raises:
            DriverError: unknown valve.
        """
        self._valve(device_id)
        return self.router.valves.state(device_id)

    def command(self, device_id: str) -> ValveCommand | None:
        """The latest command sent to a valve, with its phase."""
        return self.router.valves.command(device_id)

    async def wait_confirmed(self, device_id: str, on: bool) -> ValveCommand:
        """Wait until the latest command to ``on`` is acknowledged *and* reported by the valve.

        Use under ``asyncio.timeout``: a class A valve only hears after its next uplink.

        Raises:
            DriverError: unknown valve, or the command was not acknowledged or failed.
        """
        self._valve(device_id)
        want = SupplyState.ON if on else SupplyState.OFF
        book = self.router.valves

        def settled() -> bool:
            command = book.command(device_id)
            return command is None or command.phase in {
                CommandPhase.CONFIRMED,
                CommandPhase.NACKED,
                CommandPhase.FAILED,
            }

        async with self._changed:
            await self._changed.wait_for(settled)
        command = book.command(device_id)
        if command is None or not book.is_confirmed(device_id, want):
            phase = command.phase if command is not None else "missing"
            raise DriverError(device_id, f"command not confirmed: {phase}")
        return command

    def _valve(self, device_id: str) -> tuple[str, LnsDeviceConfig, CodecSpec]:
        try:
            return self._valves[device_id]
        except KeyError:
            raise DriverError(device_id, f"not a valve of {self.name}") from None

    # -- connection -------------------------------------------------------------------------

    def _make_client(self) -> aiomqtt.Client:
        broker = self.config.broker
        client = aiomqtt.Client(
            broker.host,
            broker.port,
            username=broker.username,
            password=broker.password.get_secret_value() if broker.password else None,
            identifier=broker.client_id,
            # With a fixed client id the broker keeps the session, and with it the QoS 1
            # uplinks not yet acknowledged, across our restarts; a random id would orphan it.
            clean_session=broker.client_id is None,
            keepalive=broker.keepalive_s,
            protocol=aiomqtt.ProtocolVersion.V311,  # TTS speaks MQTT 3.1.1 only
            tls_params=aiomqtt.TLSParameters() if broker.tls else None,
            timeout=self.config.io_timeout_s,
        )
        if self.config.qos > 0:
            _manual_acks(client)
        return client

    def _filters(self) -> list[str]:
        config = self.config
        if config.kind == "nbiot":
            assert config.nbiot is not None  # noqa: S101 - validated
            return [config.nbiot.topic]
        assert config.application_id is not None  # noqa: S101 - validated
        if config.kind == "chirpstack":
            return [chirpstack_event_filter(config.prefix, config.application_id)]
        return tts_event_filters(config.prefix, tts_user(config.application_id, config.tenant_id))


def _manual_acks(client: aiomqtt.Client) -> None:
    """Acknowledge QoS 1 uplinks ourselves, after they are journalled, not on arrival.

    aiomqtt has no public switch for paho-mqtt's manual acknowledgement yet (aiomqtt issue
    #345, pull request #346, open): it is set on the paho client aiomqtt wraps. paho's own API
    (`manual_ack_set`, `ack`), used from the event loop that runs the client, as aiomqtt does.
    """
    client._client.manual_ack_set(True)


def _acknowledge(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
    if message.qos > 0:
        client._client.ack(message.mid, message.qos)  # private: see `_manual_acks`


def _check_codecs(config: LnsConfig, codecs: Mapping[str, CodecSpec]) -> None:
    errors: list[ConfigError] = []
    where = f"<lns {config.name}>"
    for index, device in enumerate(config.devices):
        if device.codec is None:
            continue
        codec = codecs.get(device.codec)
        if codec is None:
            known = ", ".join(sorted(codecs)) or "none"
            errors.append(
                ConfigError(
                    where,
                    0,
                    f"devices.{index}.codec",
                    f"unknown codec {device.codec!r}; known: {known}",
                )
            )
        elif device.valve_device_id is not None and codec.commands is None:
            errors.append(
                ConfigError(
                    where,
                    0,
                    f"devices.{index}.valve_device_id",
                    f"codec {device.codec} has no open/close commands; it cannot drive a valve",
                )
            )
        elif device.meter_id is not None and codec.billing_register is None:
            errors.append(
                ConfigError(
                    where,
                    0,
                    f"devices.{index}.meter_id",
                    f"codec {device.codec} declares no register; it cannot bill a meter",
                )
            )
    if errors:
        raise InvalidConfigError(errors)


def build_lns(
    configs: Sequence[LnsConfig], codecs_dir: Path
) -> tuple[list[ReadingSource], list[Actuator]]:
    """Build one `LnsAdapter` per config; each is a source if it has meters, an actuator if
    it has valves.

    Raises:
        InvalidConfigError: a codec file is invalid, or a device's codec is unknown or unfit.
    """
    codecs = load_codecs(codecs_dir)
    sources: list[ReadingSource] = []
    actuators: list[Actuator] = []
    for config in configs:
        adapter = LnsAdapter(config, codecs)
        if any(d.meter_id is not None for d in config.devices):
            sources.append(adapter)
        if any(d.valve_device_id is not None for d in config.devices):
            actuators.append(adapter)
    return sources, actuators
