"""``make demo``: a whole simulated site, billed and switched by the real gateway.

1. Checks the sample tariffs and quotes two bills worked out by hand in the shared notes.
2. Starts a local mosquitto (the utility's broker and the LoRaWAN network server's), the
   simulated site of ``configs/sites/demo-scenario.yaml`` (`prepay sim`: Modbus TCP and RTU
   meters with relays and valves, LoRaWAN meters and a valve, a BLE water dispenser reached
   through the simulator's socket) and the gateway
   (`prepay run -c configs/sites/demo-site.yaml`), each as its own process.
3. Plays the backend: watches the MQTT topics, sees every account cut off (they start with no
   credit) and the devices confirm it, sends signed top-ups, sees supply restored, injects a
   device fault, then stops everything with SIGTERM and verifies the ledger.
4. Runs the quick billing benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt

from billing_engine.money import format_minor
from gateway.cli import main as prepay
from gateway.northbound.commands import new_command, sign_command
from gateway.northbound.payloads import CommandKind
from gateway.northbound.signing import load_private_key
from gateway.ops.keys import init_keys

ROOT = Path(__file__).resolve().parents[1]
TARIFFS = ROOT / "configs" / "tariffs"
DATA = ROOT / "bench" / "data"
SITES = ROOT / "configs" / "sites"
DEMO = ROOT / ".demo"
SITE = "demo-site"
ACCOUNTS = ["A-101-E", "A-101-W", "A-102-E", "A-102-W", "S-1-E", "A-201-W", "A-202-W", "K-1-W"]
DEVICES = ["flat-101-elec", "flat-101-water", "flat-102-water", "lora-valve-202", "kiosk-1"]


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run_cli(argv: list[str]) -> None:
    print(f"$ prepay {' '.join(argv)}", flush=True)
    status = prepay(argv)
    if status != 0:
        sys.exit(status)


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def start(name: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    print(f"starting {name}: {' '.join(argv)}  (log: {log.relative_to(ROOT)})", flush=True)
    return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)  # noqa: S603


def stop(proc: subprocess.Popen[bytes], name: str) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            started = time.monotonic()
            proc.wait(timeout=10)
            print(
                f"{name}: exited {proc.returncode} {time.monotonic() - started:.1f} s after "
                "SIGTERM",
                flush=True,
            )
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            print(f"{name}: killed (did not stop within 10 s)", flush=True)
    return proc.returncode or 0


def device_status() -> dict[str, Any]:
    path = DEMO / "sim-status.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def print_devices() -> None:
    devices = device_status().get("devices", {})
    line = ", ".join(
        f"{d}: {'ON' if devices.get(d, {}).get('supply_on') else 'OFF'}"
        for d in DEVICES
        if d in devices
    )
    print(f"  device side (simulator): {line}", flush=True)


class Backend:
    """The utility's side: watches the site's topics and sends signed commands."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.states: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.results: dict[str, dict[str, Any]] = {}
        self.readings = 0
        self.key = load_private_key((SITES / "keys" / "backend.pem").read_bytes())

    async def watch(self) -> None:
        async for message in self.client.messages:
            topic = str(message.topic)
            payload = message.payload
            if not isinstance(payload, bytes):
                continue
            doc = json.loads(payload)
            if topic.endswith("/state") and "/account/" in topic:
                self.states[doc["account"]] = doc
            elif topic.endswith("/event"):
                self.events.append((doc["account"], doc))
                detail = doc.get("alarm") or ""
                print(
                    f"  event {doc['account']}: {doc['event']} {detail} "
                    f"(balance {format_minor(doc.get('balance_minor', 0), 'CNY')})",
                    flush=True,
                )
            elif topic.endswith("/reading"):
                self.readings += 1
            elif topic.endswith("/readings"):
                self.readings += len(doc["readings"])
            elif topic.endswith("/result"):
                self.results[doc.get("id") or "?"] = doc

    async def topup(self, account: str, amount_minor: int, command_id: str) -> None:
        body = new_command(
            CommandKind.TOPUP,
            SITE,
            {"account": account, "amount_minor": amount_minor, "currency": "CNY"},
            now=datetime.now(UTC),
            command_id=command_id,
        )
        await self.client.publish(
            f"prepay/{SITE}/cmd/topup", json.dumps(sign_command(body, self.key)), qos=1
        )

    def balances(self) -> str:
        return ", ".join(
            f"{a}: {format_minor(s['balance_minor'], 'CNY')} ({s['state']})"
            for a, s in sorted(self.states.items())
        )


async def wait_for(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.25)
    return False


async def site_demo(port: int) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="demo-backend") as client:
        await client.subscribe(f"prepay/{SITE}/#", qos=1)
        backend = Backend(client)
        watcher = asyncio.create_task(backend.watch())
        try:
            step("every account starts with no credit: the gateway cuts what it can switch")
            cut = await wait_for(
                lambda: sum(1 for _, e in backend.events if e["event"] == "cutoff") >= 3, 40
            )
            await asyncio.sleep(3)
            print(f"  cutoffs seen: {cut}; balances: {backend.balances()}")
            print_devices()

            step("the backend sends signed top-ups of 50.00 yuan to every account")
            for i, account in enumerate(ACCOUNTS):
                await backend.topup(account, 5_000, f"demo-topup-{i}")
            await wait_for(lambda: len(backend.results) >= len(ACCOUNTS), 20)
            for command_id, result in sorted(backend.results.items()):
                receipt = result.get("receipt") or {}
                print(
                    f"  {command_id}: {result['status']}, receipt #{receipt.get('receipt_seq')}"
                    f" balance after {format_minor(receipt.get('balance_after_minor', 0), 'CNY')}"
                )
            await wait_for(
                lambda: sum(1 for _, e in backend.events if e["event"] == "restored") >= 3, 40
            )
            await asyncio.sleep(3)
            print_devices()

            step("the same top-up again is answered duplicate and changes nothing")
            await backend.topup("A-101-W", 5_000, "demo-topup-1")
            await asyncio.sleep(2)
            print(f"  demo-topup-1: {backend.results['demo-topup-1']['status']}")

            step("20 s of simulated consumption (x60: 20 minutes of a day), billed live")
            await asyncio.sleep(20)
            print(f"  readings published: {backend.readings}")
            print(f"  balances: {backend.balances()}")

            step("a fault: flat-101-water stops answering on the Modbus bus")
            with (DEMO / "sim-control").open("a") as control:
                control.write("flat-101-water timeout 40\n")
            offline = await wait_for(
                lambda: any(e.get("alarm") == "device_offline" for _, e in backend.events), 45
            )
            print(f"  device reported offline after its failed polls: {offline}")
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


def main() -> None:
    zj = str(TARIFFS / "zhejiang-residential-electricity.yaml")
    step("validate the sample tariffs")
    run_cli(["tariff", "check", *sorted(str(p) for p in TARIFFS.glob("*.yaml"))])
    step("10 kWh 21:00-23:00 on peak/valley (hand: 5 x 0.568 + 5 x 0.288 = 4.28 yuan)")
    run_cli(
        [
            "tariff",
            "quote",
            "--tariff",
            zj,
            "--class",
            "resident_tou",
            "--readings",
            str(DATA / "evening-peak-valley.csv"),
        ]
    )

    step("a simulated site: broker, devices and gateway as separate processes")
    DEMO.mkdir(exist_ok=True)
    shutil.rmtree(DEMO / "state", ignore_errors=True)
    (DEMO / "sim-control").write_text("")
    init_keys(SITES / "keys", with_backend=True)
    run_cli(["check-config", "-c", str(SITES / "demo-site.yaml")])
    # The demo starts from an empty store each time, deliberately: the gateway refuses to start
    # on a missing state directory where the site has run before.
    run_cli(["init", "--new-store", "-c", str(SITES / "demo-site.yaml")])
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    broker_port = 1883
    if port_free(broker_port):
        conf = DEMO / "mosquitto.conf"
        conf.write_text(f"listener {broker_port} 127.0.0.1\nallow_anonymous true\n")
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        procs.append(
            ("mosquitto", start("mosquitto", [exe, "-c", str(conf)], DEMO / "mosquitto.log"))
        )
        time.sleep(0.5)
    else:
        print("a broker already listens on 127.0.0.1:1883; using it")
    env_python = sys.executable
    procs.append(
        (
            "simulator",
            start(
                "simulator",
                [
                    env_python,
                    "-m",
                    "firmware_sim",
                    "-c",
                    str(SITES / "demo-scenario.yaml"),
                    "--status",
                    str(DEMO / "sim-status.json"),
                    "--control",
                    str(DEMO / "sim-control"),
                ],
                DEMO / "sim.log",
            ),
        )
    )
    time.sleep(2)
    procs.append(
        (
            "gateway",
            start(
                "gateway",
                [
                    env_python,
                    "-m",
                    "gateway.cli",
                    "run",
                    "-c",
                    str(SITES / "demo-site.yaml"),
                ],
                DEMO / "gateway.log",
            ),
        )
    )
    status = 0
    try:
        asyncio.run(site_demo(broker_port))
    finally:
        step("SIGTERM to the gateway, then the simulator and the broker")
        for name, proc in reversed(procs):
            status |= stop(proc, name)
    step("the ledger's HMAC chain verifies after the run")
    run_cli(
        [
            "ledger",
            "verify",
            "--state",
            str(DEMO / "state"),
            "--key",
            str(SITES / "keys" / "ledger.key"),
        ]
    )
    step("what an operator on the box sees: prepay status, read from the store")
    run_cli(["status", "-c", str(SITES / "demo-site.yaml"), "--events", "5"])
    step("billing benchmark (quick)")
    run_cli(["bench", "billing", "--quick"])
    if status:
        sys.exit(status)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
