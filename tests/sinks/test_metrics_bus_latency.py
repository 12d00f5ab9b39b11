"""``prepay_bus_poll_seconds``: the time of every Modbus poll, one histogram per configured
bus, scraped from ``/metrics`` of a running gateway that polls a real Modbus TCP slave
(`firmware_sim.modbus_meter`) on one bus and a port nobody answers on another."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from drivers.modbus.client import POLL_TIME_BUCKETS_S
from drivers.modbus.profiles import load_profile
from firmware_sim.meter_model import SimMeter
from firmware_sim.modbus_meter import MeterSimulator
from gateway.config import load_site
from gateway.daemon import Gateway
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import PROFILES, write_site
from tests.support.gateways import running
from tests.support.metrics import Samples, scrape
from tests.support.waiting import DEFAULT_TIMEOUT_S

pytestmark = pytest.mark.integration

LIVE, DEAD = "modbus[bus0]", "modbus[dead]"


def of_bus(samples: Samples, name: str, bus: str) -> dict[str, float]:
    """The samples ``name`` of ``bus``, by their ``le`` (or "" for a sample without one)."""
    return {
        dict(labels).get("le", ""): value
        for (sample, labels), value in samples.items()
        if sample == name and dict(labels)["bus"] == bus
    }


async def test_metrics_bus_poll_seconds_counts_every_poll_of_each_bus(tmp_path: Path) -> None:
    port = free_port()
    profile = load_profile(PROFILES / "water_xintai_valve.yaml")
    async with MeterSimulator.tcp([SimMeter(1, profile, energy_milli=1_000)], port=0) as sim:
        path = write_site(
            tmp_path,
            mqtt_port=free_port(),
            modbus_port=sim.port,
            extra={"metrics": {"port": port, "refresh_s": 0.1}},
        )
        # A second bus, on a port where nothing listens: every poll fails at once (refused).
        doc = yaml.safe_load(path.read_text())
        doc["devices"]["modbus_buses"].append(
            {
                "name": "dead",
                "kind": "tcp",
                "host": "127.0.0.1",
                "port": 1,
                "timeout_s": 0.5,
                "retries": 0,
                "devices": [
                    {
                        "device_id": "d9",
                        "unit_id": 9,
                        "profile": "water_xintai_valve",
                        "poll_interval_s": 0.1,
                        "meter_id": "m9",
                    }
                ],
            }
        )
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        gateway = Gateway(load_site(path), connect_mqtt=False)
        async with running(gateway):
            samples: Samples = {}
            deadline = asyncio.get_running_loop().time() + DEFAULT_TIMEOUT_S
            while True:  # until both buses have polled a few times (a scrape is <= 0.1 s old)
                try:
                    samples = await asyncio.to_thread(scrape, port)
                except OSError:
                    samples = {}  # the server is not up yet
                counts = [
                    of_bus(samples, "prepay_bus_poll_seconds_count", bus).get("", 0)
                    for bus in (LIVE, DEAD)
                ]
                if min(counts) >= 3:
                    break
                assert asyncio.get_running_loop().time() < deadline, samples
                await asyncio.sleep(0.05)

    # One histogram per configured bus, and only those: the label is the bus, never a device.
    buses = {dict(labels)["bus"] for (name, labels) in samples if name.startswith("prepay_bus_")}
    assert buses == {LIVE, DEAD}
    bounds = [repr(b) for b in POLL_TIME_BUCKETS_S] + ["+Inf"]
    for bus in (LIVE, DEAD):
        buckets = of_bus(samples, "prepay_bus_poll_seconds_bucket", bus)
        count = of_bus(samples, "prepay_bus_poll_seconds_count", bus)[""]
        total_s = of_bus(samples, "prepay_bus_poll_seconds_sum", bus)[""]
        polls = of_bus(samples, "prepay_bus_polls_total", bus)[""]
        assert list(buckets) == bounds  # every bound, in order, then +Inf
        values = [buckets[b] for b in bounds]
        assert values == sorted(values)  # cumulative
        assert buckets["+Inf"] == count
        # Every poll is timed once. A poll is counted when it starts and timed when it ends, so
        # a snapshot taken during one (each bus here has one device) sees it counted, not yet
        # timed: one at most.
        assert polls - 1 <= count <= polls
        assert total_s > 0
    # The dead bus's polls all failed, and each was timed too.
    dead_polls = of_bus(samples, "prepay_bus_polls_total", DEAD)[""]
    assert of_bus(samples, "prepay_bus_poll_errors_total", DEAD)[""] == dead_polls
    assert of_bus(samples, "prepay_bus_poll_errors_total", LIVE)[""] == 0
