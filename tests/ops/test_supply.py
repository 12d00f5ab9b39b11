"""``prepay supply on|off|auto``: an operator override through the running daemon, against
mosquitto and a simulated Modbus valve; what the device confirmed, never just what was asked."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from drivers.modbus.config import DeviceProfile
from firmware_sim.meter_model import SimMeter
from firmware_sim.modbus_meter import MeterSimulator
from gateway.cli import main
from gateway.config import load_site
from gateway.daemon import Gateway
from gateway.flows.spool import spool_dir
from tests.fixtures.mosquitto import Broker, free_port
from tests.gateway.crash_support import Watcher
from tests.gateway.site import write_site
from tests.support.gateways import running
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def _prepay(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


def _supply(site: Path, *args: str, key: str = "operator.pem") -> list[str]:
    keys = site.parent / "keys"
    return ["supply", *args, "-c", str(site), "--operator-key", str(keys / key)]


async def test_supply_off_then_auto_confirmed_by_the_valve(
    mosquitto: Broker,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    modbus_profiles: dict[str, DeviceProfile],
) -> None:
    valve = SimMeter(1, modbus_profiles["water_xintai_valve"], energy_milli=1_000_000)
    watcher = Watcher()
    async with MeterSimulator.tcp([valve], port=0) as sim:
        site = write_site(tmp_path, mqtt_port=mosquitto.port, modbus_port=sim.port)
        gateway = Gateway(load_site(site))
        async with watcher.connected(mosquitto.host, mosquitto.port), running(gateway):
            # 50.00 yuan of credit: the policy wants the valve open.
            topup = ["topup", "-c", str(site), "--account", "A1", "--amount", "50.00"]
            keys = tmp_path / "keys"
            code, _, _ = await _prepay(
                [*topup, "--operator-key", str(keys / "operator.pem"), "--wait", "60"], capsys
            )
            assert code == 0
            await watcher.wait_for(
                lambda t, d: t.endswith("device/v1/state") and d.get("supply") == "on"
            )

            argv = _supply(site, "off", "v1", "--reason", "meter swap", "--json", "--wait", "60")
            code, out, _ = await _prepay(argv, capsys)
            assert code == 0
            doc = json.loads(out)
            assert (doc["status"], doc["device"], doc["account"]) == ("applied", "v1", "A1")
            assert (doc["supply_wanted"], doc["confirmed"], doc["supply_confirmed"]) == (
                "off",
                True,
                "off",
            )
            assert valve.supply_on is False  # the device side: the valve really closed
            assert valve.supply_writes[-1] is False
            # The same path as a backend command: its result went to the backend.
            result = await watcher.wait_for(
                lambda t, d: t.endswith("cmd/supply/result") and d.get("id") == doc["command_id"]
            )
            assert result["status"] == "applied"

            code, out, _ = await _prepay(["account", "list", "-c", str(site), "--json"], capsys)
            [a1] = json.loads(out)["accounts"]
            assert (a1["override"], a1["override_reason"]) == ("off", "operator: meter swap")
            assert (a1["supply_wanted"], a1["supply_confirmed"], a1["supply_pending"]) == (
                "off",
                "off",
                False,
            )

            code, out, _ = await _prepay(
                _supply(site, "auto", "v1", "--reason", "swap done", "--wait", "60"), capsys
            )
            assert code == 0
            assert out.startswith("override cleared, the policy wants on at v1 (account A1):")
            assert "confirmed by the device at" in out
            assert valve.supply_on is True


async def test_supply_requested_but_not_confirmed_says_so(
    mosquitto: Broker,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    modbus_profiles: dict[str, DeviceProfile],
) -> None:
    valve = SimMeter(1, modbus_profiles["water_xintai_valve"], energy_milli=1_000_000)
    async with MeterSimulator.tcp([valve], port=0) as sim:
        site = write_site(tmp_path, mqtt_port=mosquitto.port, modbus_port=sim.port)
        gateway = Gateway(load_site(site))
        watcher = Watcher()
        async with watcher.connected(mosquitto.host, mosquitto.port), running(gateway):
            await watcher.wait_for(
                lambda t, d: t.endswith("device/v1/state") and d["confirmation"] == "confirmed"
            )
            valve.ignore_writes = True  # acknowledges the write, keeps the valve open
            # The command's own deadline is what is tested: it must not claim "off" at it.
            argv = _supply(site, "off", "v1", "--reason", "leak", "--wait", "3")
            code, out, _ = await _prepay(argv, capsys)
            assert code == 0
            assert (
                "supply off at v1 (account A1): requested, not yet confirmed by the device" in out
            )
            assert "; it last confirmed on at " in out
            await eventually(lambda: False in valve.supply_writes, what="the close was sent")
            assert valve.supply_on is True


async def test_supply_bad_input_changes_nothing(
    mosquitto: Broker,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    modbus_profiles: dict[str, DeviceProfile],
) -> None:
    valve = SimMeter(1, modbus_profiles["water_xintai_valve"], energy_milli=1_000_000)
    async with MeterSimulator.tcp([valve], port=0) as sim:
        site = write_site(tmp_path, mqtt_port=mosquitto.port, modbus_port=sim.port)
        gateway = Gateway(load_site(site))
        async with running(gateway):
            code, out, err = await _prepay(_supply(site, "off", "nope", "--reason", "x"), capsys)
            assert (code, out) == (1, "")
            assert err.strip() == (
                "no account is cut by device 'nope' (supply devices on this site: v1)"
            )
            code, _, err = await _prepay(_supply(site, "off", "v1", "--reason", " "), capsys)
            assert code == 2
            assert "--reason: say why" in err
            assert not list(spool_dir(tmp_path / "state").glob("*.json"))  # nothing queued

            # Signed with the backend's key, not the operator's: the daemon refuses it.
            argv = _supply(site, "off", "v1", "--reason", "x", "--wait", "60", key="backend.pem")
            code, out, err = await _prepay(argv, capsys)
            assert (code, out) == (1, "")
            assert "override off at v1 (account A1) rejected: bad_signature" in err
            code, out, _ = await _prepay(
                ["account", "show", "A1", "-c", str(site), "--json"], capsys
            )
            assert json.loads(out)["override"] is None  # no override took hold


def test_supply_with_no_daemon_stays_queued(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = write_site(tmp_path, mqtt_port=free_port())
    code = main(_supply(site, "off", "v1", "--reason", "x", "--wait", "0.5"))
    out, _ = capsys.readouterr()
    assert code == 0
    assert "the gateway has not applied it yet (is it running?); it stays queued until" in out
    [queued] = spool_dir(tmp_path / "state").glob("*.supply.json")
    command = json.loads(queued.read_text())
    assert (command["kind"], command["device"], command["override"]) == ("supply", "v1", "off")
    assert command["reason"] == "operator: x"
