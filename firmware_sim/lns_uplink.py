"""Simulated LoRaWAN meters and valves behind a simulated network server, over real MQTT.

The simulator plays the network server's MQTT integration (ChirpStack v4 or The Things Stack
v3) for devices it holds in memory: it publishes their uplink events with real payloads
(Milesight EM300-DI pulse counter, Milesight UC511 valve controller), base64 ``data`` /
``frm_payload``, frame counters and radio metadata; it takes downlink commands from the
``command/down`` / ``down/push`` topics and delivers them class A style (after the device's
next uplink); a valve obeys ``ff 1d`` valve tasks and reports its new state in its next uplink,
which also carries the ACK of a confirmed downlink (published as ``ack`` / ``down/ack``).
Uplinks can be lost or repeated, and the frame counter reset (with or without a join event).

Run: ``python -m firmware_sim.lns_uplink --port 1883 --kind chirpstack --application-id APP
--meter 24e124136b000001 --valve 24e124460c000002 --interval-s 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiomqtt

from drivers.ports import utc_now

logger = logging.getLogger(__name__)

SimKind = Literal["chirpstack", "tts"]
Model = Literal["em300-di", "uc511"]

MILESIGHT_PORT = 85
IO_TIMEOUT_S = 10.0


def encode_em300_di(battery: int, pulse: int) -> bytes:
    """EM300-DI uplink: ``01 75 battery`` + ``05 c8 pulse(u32 LE)`` (em300-di.js)."""
    return bytes([0x01, 0x75, battery, 0x05, 0xC8]) + pulse.to_bytes(4, "little")


def encode_uc511(battery: int, *, valve_open: bool, pulse: int) -> bytes:
    """UC511 uplink: battery, ``03 01`` valve 1 state, ``04 c8`` valve 1 pulses (README)."""
    return bytes(
        [0x01, 0x75, battery, 0x03, 0x01, 1 if valve_open else 0, 0x04, 0xC8]
    ) + pulse.to_bytes(4, "little")


def apply_uc511_downlink(payload: bytes) -> bool | None:
    """The valve 1 state a UC511 takes from a ``ff 1d ctrl seq ...`` task, else None.

    ctrl bit 5 = open (1) / close (0), bits 0..2 = valve index - 1 (uc511-encoder.js).
    """
    if len(payload) < 4 or payload[0] != 0xFF or payload[1] != 0x1D:
        return None
    ctrl = payload[2]
    if ctrl & 0x07 != 0:
        return None  # another valve
    return bool(ctrl & 0x20)


@dataclass
class Downlink:
    """A downlink waiting in the simulated network server's queue."""

    command_id: str
    f_port: int
    payload: bytes
    confirmed: bool
    correlation_ids: list[str] = field(default_factory=list)


@dataclass
class SimDevice:
    """One simulated device. Tests may change ``pulse``, ``battery`` and ``valve_open``."""

    dev_eui: str
    device_id: str
    model: Model
    battery: int = 92
    pulse: int = 0
    valve_open: bool = True
    f_cnt: int = 0
    dev_addr: str = "01ab23cd"
    session: int = 0
    join_pending: bool = False
    ack_pending: Downlink | None = None
    queue: deque[Downlink] = field(default_factory=deque)
    received: list[Downlink] = field(default_factory=list)

    def payload(self) -> bytes:
        """The application payload of this device's next uplink."""
        if self.model == "em300-di":
            return encode_em300_di(self.battery, self.pulse)
        return encode_uc511(self.battery, valve_open=self.valve_open, pulse=self.pulse)

    def apply(self, downlink: Downlink) -> None:
        """Execute a downlink the way the device firmware does."""
        self.received.append(downlink)
        if self.model == "uc511":
            state = apply_uc511_downlink(downlink.payload)
            if state is not None:
                self.valve_open = state


def _now() -> str:
    return utc_now().isoformat(timespec="microseconds").replace("+00:00", "Z")


class LnsSimulator:
    """A simulated network server's MQTT integration for a handful of devices.

    Use `connect` (an async context manager); then `add_meter` / `add_valve`, `uplink`,
    `reset_counter`, `wait_downlink`.
    """

    def __init__(
        self,
        client: aiomqtt.Client,
        *,
        kind: SimKind,
        application_id: str,
        tenant_id: str | None = None,
        prefix: str | None = None,
    ) -> None:
        self.client = client
        self.kind = kind
        self.application_id = application_id
        self.tenant_id = tenant_id
        self.prefix = prefix or ("application" if kind == "chirpstack" else "v3")
        self.user = f"{application_id}@{tenant_id}" if tenant_id else application_id
        self.devices: dict[str, SimDevice] = {}
        self._downlinks = asyncio.Condition()

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        kind: SimKind,
        application_id: str,
        tenant_id: str | None = None,
        prefix: str | None = None,
    ) -> AsyncIterator[LnsSimulator]:
        """Connect to the broker, subscribe to downlink topics and serve them until exit."""
        client = aiomqtt.Client(host, port, timeout=IO_TIMEOUT_S)
        async with contextlib.AsyncExitStack() as stack:
            async with asyncio.timeout(IO_TIMEOUT_S):
                await stack.enter_async_context(client)
            sim = cls(
                client,
                kind=kind,
                application_id=application_id,
                tenant_id=tenant_id,
                prefix=prefix,
            )
            async with asyncio.timeout(IO_TIMEOUT_S):
                await client.subscribe(sim._down_filter(), qos=1 if kind == "chirpstack" else 0)
            listener = asyncio.create_task(sim._listen(), name="lns-sim.downlinks")
            try:
                yield sim
            finally:
                listener.cancel()
                await asyncio.wait([listener])

    # -- devices ----------------------------------------------------------------------------

    def add_meter(self, dev_eui: str, device_id: str | None = None, pulse: int = 0) -> SimDevice:
        """Add an EM300-DI pulse counter."""
        return self._add(
            SimDevice(dev_eui.lower(), device_id or dev_eui.lower(), "em300-di", pulse=pulse)
        )

    def add_valve(
        self,
        dev_eui: str,
        device_id: str | None = None,
        *,
        valve_open: bool = True,
        pulse: int = 0,
    ) -> SimDevice:
        """Add a UC511 valve controller (valve 1, with its pulse input)."""
        return self._add(
            SimDevice(
                dev_eui.lower(),
                device_id or dev_eui.lower(),
                "uc511",
                valve_open=valve_open,
                pulse=pulse,
            )
        )

    def _add(self, device: SimDevice) -> SimDevice:
        self.devices[device.dev_eui if self.kind == "chirpstack" else device.device_id] = device
        return device

    def reset_counter(self, device: SimDevice, *, join: bool = True) -> None:
        """Restart the device's frame counter at 0 (rejoin, or an ABP reboot when not ``join``)."""
        device.f_cnt = 0
        device.session += 1
        device.join_pending = join
        device.ack_pending = None

    # -- uplinks ----------------------------------------------------------------------------

    async def uplink(self, device: SimDevice, *, lose: bool = False, repeat: int = 1) -> int:
        """Send the device's next uplink; returns its FCnt.

        Args:
            device: the device.
            lose: the radio frame is lost: the counter advances, nothing is published.
            repeat: publish the same uplink event this many times (a retransmission or an
                MQTT redelivery reaching the application).
        """
        f_cnt = device.f_cnt
        device.f_cnt += 1
        if lose:
            return f_cnt
        if device.join_pending:
            device.join_pending = False
            await self._publish(self._event_topic(device, "join"), self._join_body(device))
        body = self._up_body(device, f_cnt, device.payload())
        for _ in range(repeat):
            await self._publish(self._event_topic(device, "up"), body)
        acked, device.ack_pending = device.ack_pending, None
        if acked is not None:
            await self._publish(
                self._event_topic(device, "ack" if self.kind == "chirpstack" else "down/ack"),
                self._ack_body(device, acked),
            )
        if device.queue:  # class A: the downlink goes out in the RX window of this uplink
            downlink = device.queue.popleft()
            await self._publish(
                self._event_topic(device, "txack" if self.kind == "chirpstack" else "down/sent"),
                self._sent_body(device, downlink),
            )
            device.apply(downlink)
            if downlink.confirmed:
                device.ack_pending = downlink
        return f_cnt

    async def wait_downlink(self, device: SimDevice) -> None:
        """Return once the device has a downlink queued (use under ``asyncio.timeout``)."""
        async with self._downlinks:
            await self._downlinks.wait_for(lambda: bool(device.queue))

    async def _publish(self, topic: str, body: dict[str, Any]) -> None:
        qos = 1 if self.kind == "chirpstack" else 0
        async with asyncio.timeout(IO_TIMEOUT_S):
            await self.client.publish(topic, json.dumps(body).encode(), qos=qos)

    # -- downlinks --------------------------------------------------------------------------

    def _down_filter(self) -> str:
        if self.kind == "chirpstack":
            return f"{self.prefix}/{self.application_id}/device/+/command/down"
        return f"{self.prefix}/{self.user}/devices/+/down/push"

    async def _listen(self) -> None:
        async for message in self.client.messages:
            topic = str(message.topic)
            payload = message.payload
            raw = payload if isinstance(payload, bytes | bytearray) else str(payload).encode()
            try:
                self._take_downlink(topic, json.loads(raw))
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("lns-sim: bad downlink on %s: %s", topic, exc)
                continue
            async with self._downlinks:
                self._downlinks.notify_all()

    def _take_downlink(self, topic: str, body: dict[str, Any]) -> None:
        parts = topic.split("/")
        if self.kind == "chirpstack":
            device = self.devices.get(parts[-3].lower())
            if device is None:
                raise KeyError(parts[-3])
            if str(body["devEui"]).lower() != device.dev_eui:
                raise ValueError("devEui differs from the topic")  # ChirpStack rejects it too
            device.queue.append(
                Downlink(
                    command_id=str(body.get("id") or uuid.uuid4()),
                    f_port=int(body["fPort"]),
                    payload=base64.b64decode(body.get("data", "")),
                    confirmed=bool(body.get("confirmed", False)),
                )
            )
            return
        device = self.devices.get(parts[-3])
        if device is None:
            raise KeyError(parts[-3])
        for item in body["downlinks"]:
            device.queue.append(
                Downlink(
                    command_id=str(uuid.uuid4()),
                    f_port=int(item["f_port"]),
                    payload=base64.b64decode(item.get("frm_payload", "")),
                    confirmed=bool(item.get("confirmed", False)),
                    correlation_ids=[str(c) for c in item.get("correlation_ids", [])],
                )
            )

    # -- message bodies ---------------------------------------------------------------------

    def _event_topic(self, device: SimDevice, kind: str) -> str:
        if self.kind == "chirpstack":
            return f"{self.prefix}/{self.application_id}/device/{device.dev_eui}/event/{kind}"
        return f"{self.prefix}/{self.user}/devices/{device.device_id}/{kind}"

    def _device_info(self, device: SimDevice) -> dict[str, Any]:
        return {
            "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
            "tenantName": "ChirpStack",
            "applicationId": self.application_id,
            "applicationName": "water",
            "deviceProfileId": "2a3f5c1e-6a0b-4b8e-9f0e-3d1c2b4a5e6f",
            "deviceProfileName": "UC511" if device.model == "uc511" else "EM300-DI",
            "deviceName": device.device_id,
            "devEui": device.dev_eui,
            "deviceClassEnabled": "CLASS_A",
            "tags": {},
        }

    def _tts_ids(self, device: SimDevice) -> dict[str, Any]:
        return {
            "device_id": device.device_id,
            "application_ids": {"application_id": self.application_id},
            "dev_eui": device.dev_eui.upper(),
            "join_eui": "24E124C0002A0001",
            "dev_addr": device.dev_addr.upper(),
        }

    def _up_body(self, device: SimDevice, f_cnt: int, payload: bytes) -> dict[str, Any]:
        data = base64.b64encode(payload).decode("ascii")
        now = _now()
        if self.kind == "chirpstack":
            return {
                "deduplicationId": str(uuid.uuid4()),
                "time": now,
                "deviceInfo": self._device_info(device),
                "devAddr": device.dev_addr,
                "adr": True,
                "dr": 5,
                "fCnt": f_cnt,
                "fPort": MILESIGHT_PORT,
                "confirmed": False,
                "data": data,
                "rxInfo": [
                    {
                        "gatewayId": "0016c001f153a14c",
                        "uplinkId": 20331,
                        "gwTime": now,
                        "rssi": -57,
                        "snr": 9.5,
                        "channel": 2,
                        "location": {},
                        "context": "AAAAAAAAAAAAAAAA",
                        "crcStatus": "CRC_OK",
                    }
                ],
                "txInfo": {
                    "frequency": 868500000,
                    "modulation": {
                        "lora": {"bandwidth": 125000, "spreadingFactor": 7, "codeRate": "CR_4_5"}
                    },
                },
            }
        uplink: dict[str, Any] = {
            "session_key_id": f"AYx{device.session:05d}",
            "f_port": MILESIGHT_PORT,
            "frm_payload": data,
            "rx_metadata": [
                {
                    "gateway_ids": {"gateway_id": "gw-1", "eui": "0016C001F153A14C"},
                    "time": now,
                    "rssi": -68,
                    "channel_rssi": -68,
                    "snr": 9.2,
                    "uplink_token": "ChIKEAoEZ3ctMRIIABbAAfFToUwQ",
                    "received_at": now,
                }
            ],
            "settings": {
                "data_rate": {
                    "lora": {"bandwidth": 125000, "spreading_factor": 7, "coding_rate": "4/5"}
                },
                "frequency": "868500000",
            },
            "received_at": now,
            "consumed_airtime": "0.061696s",
            "network_ids": {"net_id": "000013", "tenant_id": self.tenant_id or "ttn"},
        }
        if f_cnt:  # TTS omits empty fields: f_cnt 0 is absent
            uplink["f_cnt"] = f_cnt
        return {
            "end_device_ids": self._tts_ids(device),
            "correlation_ids": [f"as:up:{uuid.uuid4().hex}"],
            "received_at": now,
            "uplink_message": uplink,
        }

    def _join_body(self, device: SimDevice) -> dict[str, Any]:
        if self.kind == "chirpstack":
            return {
                "deduplicationId": str(uuid.uuid4()),
                "time": _now(),
                "deviceInfo": self._device_info(device),
                "devAddr": device.dev_addr,
            }
        return {
            "end_device_ids": self._tts_ids(device),
            "correlation_ids": [f"as:up:{uuid.uuid4().hex}"],
            "received_at": _now(),
            "join_accept": {"session_key_id": f"AYx{device.session:05d}", "received_at": _now()},
        }

    def _tts_downlink(self, downlink: Downlink) -> dict[str, Any]:
        return {
            "f_port": downlink.f_port,
            "frm_payload": base64.b64encode(downlink.payload).decode("ascii"),
            "confirmed": downlink.confirmed,
            "priority": "NORMAL",
            "correlation_ids": [*downlink.correlation_ids, f"as:downlink:{uuid.uuid4().hex}"],
        }

    def _ack_body(self, device: SimDevice, downlink: Downlink) -> dict[str, Any]:
        if self.kind == "chirpstack":
            return {
                "deduplicationId": str(uuid.uuid4()),
                "time": _now(),
                "deviceInfo": self._device_info(device),
                "queueItemId": downlink.command_id,
                "acknowledged": True,
                "fCntDown": 1,
            }
        return {
            "end_device_ids": self._tts_ids(device),
            "correlation_ids": downlink.correlation_ids,
            "received_at": _now(),
            "downlink_ack": self._tts_downlink(downlink),
        }

    def _sent_body(self, device: SimDevice, downlink: Downlink) -> dict[str, Any]:
        if self.kind == "chirpstack":
            return {
                "downlinkId": 3405691582,
                "time": _now(),
                "deviceInfo": self._device_info(device),
                "queueItemId": downlink.command_id,
                "fCntDown": 1,
                "gatewayId": "0016c001f153a14c",
                "txInfo": {"frequency": 869525000, "power": 27},
            }
        return {
            "end_device_ids": self._tts_ids(device),
            "correlation_ids": downlink.correlation_ids,
            "received_at": _now(),
            "downlink_sent": self._tts_downlink(downlink),
        }


# -- the program ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m firmware_sim.lns_uplink",
        description="Simulated LoRaWAN meters and valves behind a ChirpStack/TTS MQTT integration.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--kind", choices=["chirpstack", "tts"], default="chirpstack")
    parser.add_argument("--application-id", required=True)
    parser.add_argument("--tenant-id", default=None, help="TTS tenant (ttn on TTN)")
    parser.add_argument(
        "--meter",
        action="append",
        default=[],
        metavar="DEV_EUI[:DEVICE_ID]",
        help="an EM300-DI pulse counter (repeatable)",
    )
    parser.add_argument(
        "--valve",
        action="append",
        default=[],
        metavar="DEV_EUI[:DEVICE_ID]",
        help="a UC511 valve controller (repeatable)",
    )
    parser.add_argument("--interval-s", type=float, default=10.0)
    parser.add_argument("--pulses-per-uplink", type=int, default=10)
    parser.add_argument("--count", type=int, default=0, help="uplinks per device; 0 = forever")
    return parser


def _split(spec: str) -> tuple[str, str | None]:
    dev_eui, _, device_id = spec.partition(":")
    return dev_eui, device_id or None


async def run(args: argparse.Namespace) -> None:
    """Publish an uplink per device every ``interval_s`` and obey downlinks."""
    async with LnsSimulator.connect(
        args.host,
        args.port,
        kind=args.kind,
        application_id=args.application_id,
        tenant_id=args.tenant_id,
    ) as sim:
        devices = [sim.add_meter(*_split(s)) for s in args.meter]
        devices += [sim.add_valve(*_split(s)) for s in args.valve]
        sent = 0
        while args.count == 0 or sent < args.count:
            for device in devices:
                if device.model == "em300-di" or device.valve_open:
                    device.pulse += args.pulses_per_uplink
                f_cnt = await sim.uplink(device)
                logger.info(
                    "lns-sim: %s uplink fCnt %d pulse %d valve %s",
                    device.device_id,
                    f_cnt,
                    device.pulse,
                    "open" if device.valve_open else "closed",
                )
            sent += 1
            await asyncio.sleep(args.interval_s)  # the devices' report interval


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m firmware_sim.lns_uplink``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = _parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
