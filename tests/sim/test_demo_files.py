"""The shipped demo: the gateway site file passes check-config and matches the scenario."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from firmware_sim.ble_remote import DEFAULT_SOCKET
from firmware_sim.scenario import load_scenario
from gateway.cli import main as prepay
from gateway.config import load_site
from gateway.ops.keys import init_keys

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SCENARIO = CONFIGS / "sites" / "demo-scenario.yaml"
SITE = CONFIGS / "sites" / "demo-site.yaml"


@pytest.fixture
def demo_copy(tmp_path: Path) -> Path:
    """configs/ copied, with the keys `prepay keys init configs/sites/keys` would write."""
    shutil.copytree(CONFIGS, tmp_path / "configs")
    init_keys(tmp_path / "configs" / "sites" / "keys", with_backend=True)
    return tmp_path / "configs" / "sites" / "demo-site.yaml"


def test_demo_site_passes_check_config(demo_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert prepay(["check-config", "-c", str(demo_copy)]) == 0
    assert "ok (site demo-site: 8 accounts" in capsys.readouterr().out


def test_demo_site_points_at_the_simulated_devices(demo_copy: Path) -> None:
    scenario = load_scenario(SCENARIO)
    site = load_site(demo_copy).config
    buses = {bus.name: bus for bus in site.devices.modbus_buses}
    for server in scenario.modbus_tcp:
        bus = buses[server.name]
        assert (bus.kind, bus.host, bus.port) == ("tcp", server.host, server.port)
        served = {(m.device_id, m.unit_id, m.profile) for m in server.meters}
        assert {(d.device_id, d.unit_id, d.profile) for d in bus.devices} == served
    for line in scenario.modbus_rtu:
        bus = buses[line.name]
        assert bus.kind == "rtu"
        assert bus.serial is not None
        assert bus.serial.port == str(line.link)
        served = {(m.device_id, m.unit_id, m.profile) for m in line.meters}
        assert {(d.device_id, d.unit_id, d.profile) for d in bus.devices} == served
    assert scenario.broker is not None
    lns = {n.name: n for n in site.devices.lns}
    for network in scenario.lora:
        config = lns[network.name]
        assert (config.kind, config.application_id) == (network.kind, network.application_id)
        assert (config.broker.host, config.broker.port) == (
            scenario.broker.host,
            scenario.broker.port,
        )
        codecs = {d.dev_eui: d.codec for d in config.devices}
        assert codecs == {d.dev_eui: d.codec_name for d in network.devices}
    # the BLE dispensers: same addresses, reached over the scenario's socket
    assert scenario.ble is not None
    assert scenario.ble.socket == Path(DEFAULT_SOCKET)  # the demo needs no PREPAY_BLE_SIM_SOCKET
    dispensers = {d.device_id: d for d in site.devices.ble_dispensers}
    assert {(d.device_id, d.address.upper()) for d in scenario.ble.dispensers} == {
        (d.device_id, d.address) for d in dispensers.values()
    }
    assert {d.backend for d in dispensers.values()} == {"firmware_sim.ble_remote:RemoteSimBackend"}
    # every meter bills an account; every switchable device is some account's actuator
    meters = {d.meter_id for bus in site.devices.modbus_buses for d in bus.devices}
    meters |= {d.meter_id for n in site.devices.lns for d in n.devices if d.meter_id}
    meters |= {d.meter_id for d in dispensers.values()}
    assert {a.meter for a in site.accounts} == meters
    valves = {d.valve_device_id for n in site.devices.lns for d in n.devices if d.valve_device_id}
    relays = {"flat-101-elec", "flat-101-water", "flat-102-water"}
    assert {a.actuator for a in site.accounts if a.actuator} == relays | valves | set(dispensers)
