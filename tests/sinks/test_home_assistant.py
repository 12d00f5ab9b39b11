"""Home Assistant MQTT discovery against a real mosquitto: every account's device config is
retained under ``homeassistant/device/…/config``, every component's state topic carries the
gateway's real messages and its template renders the right value from them (Home Assistant
itself needs a newer Python than this box, so its templates are rendered with Jinja2, which is
what Home Assistant uses); a Home Assistant restart gets the configs again; an account that
leaves the site is removed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import jinja2
import pytest
import yaml

from drivers.ports import Reading
from gateway.daemon import Gateway
from tests.fixtures.mosquitto import Broker
from tests.gateway.crash_support import Watcher
from tests.gateway.site import load, water_account
from tests.gateway.test_first_start import Relays
from tests.support.gateways import FeedSource, running
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
OID = "prepay_test-site_A1"


def _render(template: str, doc: dict[str, Any]) -> str:
    return str(jinja2.Environment(autoescape=False).from_string(template).render(value_json=doc))  # noqa: S701 - HA's templates are not HTML


def _last(watcher: Watcher, topic: str) -> dict[str, Any]:
    return [d for t, d in watcher.messages if t == topic][-1]


async def test_home_assistant_configs_match_the_real_messages(
    mosquitto: Broker, tmp_path: Path
) -> None:
    accounts = [
        {**water_account("A1", "m1", actuator="v1"), "opening_balance_minor": 5_000},
        water_account("A2", "m2"),
    ]
    site = load(tmp_path, mqtt_port=mosquitto.port, accounts=accounts, extra={"home_assistant": {}})
    relays, feed = Relays(), FeedSource()
    watcher = Watcher(topics=("homeassistant/#", "prepay/test-site/#"))
    async with watcher.connected(mosquitto.host, mosquitto.port):
        gateway = Gateway(site, sources=[feed], actuators=[relays])
        async with running(gateway):
            config = await watcher.wait_for(lambda t, d: t == f"homeassistant/device/{OID}/config")
            # One reading at a time: two in the outbox at once would go out as one backlog
            # batch (meter/m1/readings), which Home Assistant's meter sensor does not read.
            await feed.put(Reading("m1", T0, 10_000))
            await watcher.wait_for(lambda t, d: t.endswith("/meter/m1/reading"))
            # +0.5 m3 from 10 m3 at 5.00 yuan/m3 = 2.50 yuan: 50.00 - 2.50 = 47.50.
            await feed.put(Reading("m1", T0 + timedelta(hours=1), 10_500))
            await watcher.wait_for(
                lambda t, d: t.endswith("/meter/m1/reading") and d["register"] == 10_500
            )
            await watcher.wait_for(
                lambda t, d: t.endswith("/account/A1/state") and d["balance_minor"] == 4_750
            )
            await watcher.wait_for(
                lambda t, d: t.endswith("/device/v1/state") and d.get("supply") == "on"
            )
            cmps = config["cmps"]
            assert set(cmps) == {"balance", "state", "meter", "supply"}
            rendered = {
                name: _render(c["val_tpl"], _last(watcher, c["stat_t"])) for name, c in cmps.items()
            }
            assert float(rendered["balance"]) == 47.5  # fen / 100: CNY has 2 decimals
            assert cmps["balance"]["unit_of_meas"] == "CNY"
            assert rendered["state"] in cmps["state"]["ops"]
            assert int(rendered["meter"]) == 10_500  # litres, as the register counts them
            assert (cmps["meter"]["dev_cla"], cmps["meter"]["unit_of_meas"]) == ("water", "L")
            assert cmps["meter"]["stat_cla"] == "total_increasing"
            assert rendered["supply"] == cmps["supply"]["pl_on"]  # what the relay reported
            assert all("cmd_t" not in c and "command_topic" not in c for c in cmps.values())
            avty = config["avty"][0]
            assert _render(avty["val_tpl"], _last(watcher, avty["t"])) == "online"
            # A2 has no actuator: no supply component.
            other = await watcher.wait_for(
                lambda t, d: t == "homeassistant/device/prepay_test-site_A2/config"
            )
            assert "supply" not in other["cmps"]

            # Home Assistant restarts: it says so, and gets every config again.
            announcer = gateway.home_assistant
            assert announcer is not None
            announced = announcer.announcements
            async with aiomqtt.Client(mosquitto.host, mosquitto.port) as ha:
                await ha.publish("homeassistant/status", b"online", qos=1)
            await eventually(
                lambda: announcer.announcements == announced + 1, what="announced again"
            )

            # A2 leaves the site: a reload removes its device (an empty retained config).
            doc = yaml.safe_load(site.path.read_text())
            doc["accounts"] = [a for a in doc["accounts"] if a["id"] != "A2"]
            site.path.write_text(yaml.safe_dump(doc, sort_keys=False))
            await gateway.reload()
            await eventually(
                lambda: any(
                    t == "homeassistant/device/prepay_test-site_A2/config" and d == {}
                    for t, d in watcher.messages
                ),
                what="A2's config removed",
            )
