"""From one MQTT message to readings, device events and valve state (pure, no I/O).

`UplinkRouter.route` parses the envelope for its network-server kind, finds the configured
device, drops repeats and notices counter resets (`FrameTracker`), decodes the payload with
the device's codec, and updates the `ValveBook`. The subscription adapter only moves bytes.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from drivers.lorawan.codec import CodecSpec, decode_payload, register_milli, supply_state
from drivers.lorawan.config import LnsConfig, LnsDeviceConfig
from drivers.lorawan.envelope import (
    DownlinkEvent,
    EnvelopeError,
    Event,
    JoinEvent,
    Uplink,
    parse_chirpstack,
    parse_nbiot,
    parse_tts,
)
from drivers.lorawan.frames import FrameTracker, FrameVerdict
from drivers.lorawan.valves import ValveBook
from drivers.ports import DriverEvent, DriverEventKind, FrameError, Reading

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RoutedDevice:
    """A configured device with its codec resolved."""

    key: str
    config: LnsDeviceConfig
    codec: CodecSpec | None

    @property
    def label(self) -> str:
        """The gateway-side id to put in events (meter id, else valve id)."""
        return self.config.meter_id or self.config.valve_device_id or self.key


@dataclass(slots=True)
class Routed:
    """What one message produced."""

    readings: list[Reading] = field(default_factory=list)
    events: list[DriverEvent] = field(default_factory=list)
    valve_changed: bool = False


class UplinkRouter:
    """Routes the messages of one `LnsConfig`. Counters in `stats` (repeat, unknown_device...)."""

    def __init__(self, config: LnsConfig, codecs: Mapping[str, CodecSpec]) -> None:
        self.config = config
        self.frames = FrameTracker()
        self.valves = ValveBook()
        self.stats: Counter[str] = Counter()
        self.devices: dict[str, RoutedDevice] = {}
        for device in config.devices:
            codec = codecs[device.codec] if device.codec is not None else None
            key = config.device_key(device)
            self.devices[key] = RoutedDevice(key, device, codec)
        self._source = config.kind

    def route(self, topic: str, body: bytes, *, now: datetime) -> Routed:
        """Handle one message. Never raises for bad input: it becomes a FRAME_ERROR event."""
        if self.config.kind == "nbiot":
            return self._route_nbiot(topic, body, now)
        try:
            event: Event | None
            if self.config.kind == "chirpstack":
                event = parse_chirpstack(topic, body, now=now)
            else:
                event = parse_tts(topic, body, now=now)
        except EnvelopeError as exc:
            self.stats["bad_envelope"] += 1
            return Routed(events=[self._frame_error(topic, str(exc), now)])
        if event is None:
            self.stats["ignored"] += 1
            return Routed()
        device = self.devices.get(event.device_key)
        if device is None:
            self.stats["unknown_device"] += 1
            logger.debug("%s: ignoring unconfigured device %s", self.config.name, event.device_key)
            return Routed()
        if isinstance(event, JoinEvent):
            self.frames.joined(device.key)
            self.stats["join"] += 1
            logger.info("%s: device %s joined (new session)", self.config.name, device.label)
            return Routed()
        if isinstance(event, DownlinkEvent):
            return self._route_downlink(device, event)
        return self._route_uplink(device, event, now)

    def _route_downlink(self, device: RoutedDevice, event: DownlinkEvent) -> Routed:
        valve = device.config.valve_device_id
        if valve is None:
            return Routed()
        updated = self.valves.downlink_event(valve, event)
        if updated is None:
            return Routed()
        logger.info(
            "%s: valve %s command %s is %s",
            self.config.name,
            valve,
            updated.command_id,
            updated.phase,
        )
        return Routed(valve_changed=True)

    def _route_uplink(self, device: RoutedDevice, uplink: Uplink, now: datetime) -> Routed:
        routed = Routed()
        seen = self.frames.observe(device.key, uplink.f_cnt, uplink.payload)
        if seen.verdict is FrameVerdict.REPEAT:
            self.stats["repeat"] += 1
            logger.debug(
                "%s: repeat of %s fCnt %d dropped", self.config.name, device.label, uplink.f_cnt
            )
            return routed
        if seen.verdict is FrameVerdict.RESET:
            self.stats["counter_reset"] += 1
            logger.warning(
                "%s: device %s frame counter reset (%s): %s -> %d, epoch %d",
                self.config.name,
                device.label,
                seen.reason,
                seen.previous_f_cnt,
                uplink.f_cnt,
                seen.epoch,
            )
            detail: dict[str, str | int | float | bool] = {
                "f_cnt": uplink.f_cnt,
                "epoch": seen.epoch,
                "reason": seen.reason,
                "device_key": device.key,
            }
            if seen.previous_f_cnt is not None:
                detail["previous_f_cnt"] = seen.previous_f_cnt
            routed.events.append(
                DriverEvent(device.label, DriverEventKind.COUNTER_RESET, now, detail)
            )
        if device.codec is None:
            return routed
        try:
            decoded = decode_payload(
                device.codec, uplink.payload, uplink.f_port, device_id=device.label
            )
            milli = register_milli(
                device.codec,
                decoded.values,
                multiply=device.config.register_multiply,
                divide=device.config.register_divide,
                device_id=device.label,
            )
        except FrameError as exc:
            self.stats["frame_error"] += 1
            routed.events.append(self._frame_error(device.label, str(exc), now))
            return routed
        if milli is not None and device.config.meter_id is not None:
            routed.readings.append(
                Reading(
                    meter_id=device.config.meter_id,
                    read_at=uplink.received_at,
                    register_milli=milli,
                    source=f"{self._source}:{device.key}",
                    seq=uplink.f_cnt,
                )
            )
        state = supply_state(device.codec, decoded.values)
        valve = device.config.valve_device_id
        if state is not None and valve is not None:
            confirmed = self.valves.report(valve, state, uplink.received_at)
            routed.valve_changed = True
            if confirmed is not None:
                logger.info("%s: valve %s confirmed %s", self.config.name, valve, state)
        return routed

    def _route_nbiot(self, topic: str, body: bytes, now: datetime) -> Routed:
        assert self.config.nbiot is not None  # noqa: S101 - LnsConfig validates it
        try:
            pushed = parse_nbiot(topic, body, self.config.nbiot, now=now)
        except EnvelopeError as exc:
            self.stats["bad_envelope"] += 1
            return Routed(events=[self._frame_error(topic, str(exc), now)])
        device = self.devices.get(pushed.device_key)
        if device is None or device.config.meter_id is None:
            self.stats["unknown_device"] += 1
            return Routed()
        routed = Routed()
        if pushed.seq is not None:
            seen = self.frames.observe(
                device.key, pushed.seq, pushed.register_milli.to_bytes(16, "big")
            )
            if seen.verdict is FrameVerdict.REPEAT:
                self.stats["repeat"] += 1
                return routed
            if seen.verdict is FrameVerdict.RESET:
                self.stats["counter_reset"] += 1
                routed.events.append(
                    DriverEvent(
                        device.label,
                        DriverEventKind.COUNTER_RESET,
                        now,
                        {"f_cnt": pushed.seq, "epoch": seen.epoch, "reason": seen.reason},
                    )
                )
        routed.readings.append(
            Reading(
                meter_id=device.config.meter_id,
                read_at=pushed.read_at,
                register_milli=pushed.register_milli,
                source=f"nbiot:{device.key}",
                seq=pushed.seq,
            )
        )
        return routed

    def _frame_error(self, where: str, message: str, now: datetime) -> DriverEvent:
        logger.warning("%s: %s", self.config.name, message)
        return DriverEvent(where, DriverEventKind.FRAME_ERROR, now, {"message": message})
