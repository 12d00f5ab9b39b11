"""A class A LoRaWAN valve is driven at its own pace, not the Modbus relay's.

The valve hears a downlink only after one of its uplinks and reports its new state with the
next one. The site's ``actuation:`` settings here are a fast relay's (50 ms backoff, alarm after
2 tries): the valve must not get them. It gets its ``uplink_interval_s`` (no re-send sooner)
and its ``confirm_window_s`` (no alarm sooner), through a real mosquitto and the ChirpStack
simulator; a restart sends nothing to a valve whose stored state matches; a valve that later
reports the other state is driven back.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drivers.lorawan.adapter import LnsAdapter
from drivers.lorawan.config import LnsConfig
from drivers.ports import Reading
from firmware_sim.lns_uplink import LnsSimulator
from gateway.daemon import Gateway
from tests.fixtures.mosquitto import Broker
from tests.gateway.crash_support import Watcher
from tests.gateway.site import load
from tests.lorawan.helpers import codecs
from tests.support.gateways import FeedSource, running
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

APP = "8f5a2b1c-3d4e-4f60-9a7b-1c2d3e4f5a6b"
VALVE_EUI = "24e124460c000002"
T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
UPLINK_S = 5
WINDOW_S = 6.0


def _lns(broker: Broker) -> LnsConfig:
    return LnsConfig.model_validate(
        {
            "name": "cs",
            "kind": "chirpstack",
            "broker": {"host": broker.host, "port": broker.port},
            "application_id": APP,
            "qos": 1,
            "reconnect_s": 0.2,
            "devices": [
                {
                    "dev_eui": VALVE_EUI,
                    "codec": "milesight-uc511",
                    "valve_device_id": "v1",
                    "uplink_interval_s": UPLINK_S,
                    "confirm_window_s": WINDOW_S,
                }
            ],
        }
    )


def _gateway(tmp_path: Path, broker: Broker) -> tuple[Gateway, FeedSource, LnsAdapter]:
    site = load(
        tmp_path,
        mqtt_port=broker.port,
        extra={
            "actuation": {
                "backoff_initial_s": 0.05,
                "backoff_max_s": 0.5,
                "io_timeout_s": 2.0,
                "confirm_tries": 2,
            }
        },
    )
    adapter = LnsAdapter(_lns(broker), codecs())
    feed = FeedSource()
    return Gateway(site, sources=[feed, adapter], actuators=[adapter]), feed, adapter


def _valve_state(watcher: Watcher, supply: str) -> Any:
    return watcher.wait_for(
        lambda t, d: (
            t.endswith("/device/v1/state")
            and d.get("supply") == supply
            and d["confirmation"] == "confirmed"
        )
    )


async def test_valve_pacing_silent_valve_restart_and_drift(
    mosquitto: Broker, tmp_path: Path
) -> None:
    watcher = Watcher()
    gateway, feed, _adapter = _gateway(tmp_path, mosquitto)
    async with (
        LnsSimulator.connect(
            mosquitto.host, mosquitto.port, kind="chirpstack", application_id=APP
        ) as sim,
        watcher.connected(mosquitto.host, mosquitto.port),
    ):
        valve = sim.add_valve(VALVE_EUI, "valve-1", valve_open=True)
        async with running(gateway):
            # First start, nothing stored: the valve's state is unknown, so "open" is sent
            # once; its uplink carries the downlink, the next one's ack and report confirm it.
            await eventually(lambda: len(valve.queue) == 1, what="the start's open downlink")
            await sim.uplink(valve)
            await sim.uplink(valve)
            await _valve_state(watcher, "on")
            sent_before_cut = gateway.actuation.sent
            assert sent_before_cut == 1

            # 2 m3 at 5.00 yuan/m3 from a zero balance: -10.00 yuan, cutoff. The valve stays
            # silent: no uplink, so the close downlink waits at the network server.
            await feed.put(Reading("m1", T0, 0), Reading("m1", T0 + timedelta(hours=1), 2_000))
            cutoff = await watcher.wait_for(
                lambda t, d: t.endswith("/event") and d["event"] == "cutoff"
            )
            alarm = await watcher.wait_for(
                lambda t, d: t.endswith("/event") and d.get("alarm") == "supply_unconfirmed",
                timeout_s=WINDOW_S + 30,
            )
            # Sent at the cut (t=0) and again no sooner than one uplink interval later (t>=5);
            # the alarm falls due at t>=6, the third send not before t>=10: at most 2 here.
            # The site's relay settings would have sent 3 and alarmed after 2 tries (~0.15 s).
            close_sends = gateway.actuation.sent - sent_before_cut
            assert 1 <= close_sends <= 2
            waited = datetime.fromisoformat(alarm["ts"]) - datetime.fromisoformat(cutoff["ts"])
            assert waited >= timedelta(seconds=WINDOW_S)

            # The valve wakes up: its uplink takes the queued close, the next reports it.
            await sim.uplink(valve)
            await sim.uplink(valve)
            assert valve.valve_open is False
            await _valve_state(watcher, "off")
        messages_before_restart = len(watcher.messages)

        # A restart with the account still cut: the store says the valve confirmed "off";
        # nothing is sent to it, and its state is published from that stored word.
        valve.queue.clear()
        gateway, feed, _adapter = _gateway(tmp_path, mosquitto)
        async with running(gateway):
            await watcher.wait_for(
                lambda t, d: (
                    watcher.messages.index((t, d)) >= messages_before_restart
                    and t.endswith("/device/v1/state")
                    and d["confirmation"] == "confirmed"
                )
            )
            assert gateway.actuation.sent == 0
            assert not valve.queue

            # Someone opens the valve by hand: its next uplink reports "open"; within one
            # uplink interval the gateway looks again and sends the close.
            valve.valve_open = True
            await sim.uplink(valve)
            await eventually(lambda: len(valve.queue) == 1, what="the valve driven back to off")
            assert gateway.actuation.sent == 1
