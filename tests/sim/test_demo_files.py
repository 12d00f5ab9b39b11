"""The shipped demo: the gateway site file passes check-config and matches the scenario, its
faults fit the run, and the copies `make demo` runs use the run's own ports and paths."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.demo_files import (
    RunPlaces,
    run_scenario_doc,
    run_site_doc,
    write_plant_key,
    write_run_file,
)
from bench.demo_story import FAULT_EFFECTS, KIOSK, KIOSK_ACCOUNT, KIOSK_CARD, fault_watches
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
    assert "ok (site demo-site: 7 accounts" in capsys.readouterr().out


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
    # every meter bills an account, but the vending kiosk's: its pours are billed to the card's
    # account, and billing its meter too would have every litre paid twice (docs/vending.md)
    meters = {d.meter_id for bus in site.devices.modbus_buses for d in bus.devices}
    meters |= {d.meter_id for n in site.devices.lns for d in n.devices if d.meter_id}
    assert {a.meter for a in site.accounts} == meters
    assert dispensers[KIOSK].meter_id not in meters
    # every switchable device is some account's actuator; the kiosk is no account's: a lock
    # for want of one account's credit would turn every other customer away
    valves = {d.valve_device_id for n in site.devices.lns for d in n.devices if d.valve_device_id}
    relays = {"flat-101-elec", "flat-101-water", "flat-102-water"}
    assert {a.actuator for a in site.accounts if a.actuator} == relays | valves


def test_demo_kiosk_sells_to_an_account_of_the_site(demo_copy: Path) -> None:
    site = load_site(demo_copy).config
    (kiosk,) = site.devices.ble_dispensers
    assert kiosk.device_id == KIOSK
    vending = kiosk.vending
    assert vending is not None
    assert dict(vending.cards) == {KIOSK_CARD: KIOSK_ACCOUNT}
    assert KIOSK_ACCOUNT in {a.id for a in site.accounts}
    # bench/demo_story.py's golden charge (2.5 L -> 88 fen) is worked out at this price
    assert (vending.currency, vending.price_per_litre_minor) == ("CNY", 35)
    # tickets need the site's tickets section, which only the run copy has (its plant key)
    assert site.tickets is None
    assert vending.ticket_product is None


def test_demo_faults_fire_within_the_run_and_each_has_an_answer_the_demo_waits_for() -> None:
    scenario = load_scenario(SCENARIO)
    assert scenario.faults, "the demo announces faults; the scenario must schedule some"
    # The site's part of the demo ends about 45 s after the start (bench/demo.py): a fault at
    # 30 s still has its answer (the slowest, 3 failed polls at 2 s, takes about 7 s) in time.
    assert max(f.at_s for f in scenario.faults) <= 30
    assert {f.fault for f in scenario.faults} <= set(FAULT_EFFECTS)


def test_demo_faults_name_devices_of_accounts(demo_copy: Path) -> None:
    scenario = load_scenario(SCENARIO)
    site = load_site(demo_copy).config
    watches = fault_watches(site, scenario)
    # hand-mapped through demo-site.yaml: flat-102-water is A-102-W's valve, flat-101-water
    # A-101-W's, shop-1-elec reads m-shop-1-e (S-1-E), lora-valve-202 is dev_eui
    # 24e124460c000202 = m-202-w (A-202-W); kiosk-1 has no fault: it is no account's device
    assert [(w.fault.device, w.account) for w in watches] == [
        ("flat-102-water", "A-102-W"),
        ("flat-101-water", "A-101-W"),
        ("shop-1-elec", "S-1-E"),
        ("lora-valve-202", "A-202-W"),
    ]


def test_demo_run_copies_use_this_runs_ports_links_keys_and_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    places = RunPlaces(work, tmp_path / "links", broker_port=41883)
    init_keys(places.keys, with_backend=True)
    write_plant_key(places)
    scenario_file = write_run_file(
        work / "demo-scenario.yaml", run_scenario_doc(SCENARIO, places), SCENARIO
    )
    site_file = write_run_file(
        work / "demo-site.yaml", run_site_doc(SITE, places, {"tcp0": 41502}), SITE
    )
    assert prepay(["check-config", "-c", str(site_file)]) == 0
    assert "ok (site demo-site: 7 accounts" in capsys.readouterr().out
    scenario = load_scenario(scenario_file)
    site = load_site(site_file)
    # the simulator takes any free port; the site gets the one it reported
    assert [s.port for s in scenario.modbus_tcp] == [0]
    assert [(b.name, b.port) for b in site.config.devices.modbus_buses if b.kind == "tcp"] == [
        ("tcp0", 41502)
    ]
    # one broker of this run, for the gateway, its network server and the simulator
    assert scenario.broker is not None
    assert scenario.broker.port == 41883
    assert site.config.mqtt.port == 41883
    assert [n.broker.port for n in site.config.devices.lns] == [41883]
    # this run's RS485 link and BLE socket, not /tmp/prepay-demo
    rtu = [b.serial.port for b in site.config.devices.modbus_buses if b.serial is not None]
    assert rtu == [str(tmp_path / "links" / "rs485a")]
    assert [line.link for line in scenario.modbus_rtu] == [tmp_path / "links" / "rs485a"]
    assert scenario.ble is not None
    assert scenario.ble.socket == tmp_path / "links" / "ble.sock"
    # keys and store in the work directory, not in configs/
    assert site.state_dir == work / "state"
    assert site.resolve(site.config.keys.ledger_key_file) == work / "keys" / "ledger.key"
    # the tickets: this run's plant key, trusted by the run's site; the private half 0600, as
    # `prepay ticket make` wants it
    tickets = site.config.tickets
    assert tickets is not None
    assert tickets.issuer_public_keys == (work / "keys" / "plant.pub.pem",)
    assert (work / "keys" / "plant.pem").stat().st_mode & 0o077 == 0
    (kiosk,) = site.config.devices.ble_dispensers
    assert kiosk.vending is not None
    assert kiosk.vending.ticket_product == "18.9L"
    assert tickets.products == ("18.9L",)
