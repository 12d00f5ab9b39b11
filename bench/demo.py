"""``make demo``: a whole simulated site, billed and switched by the real gateway.

1. Checks the sample tariffs and quotes a bill worked out by hand (left out by ``--site-only``).
2. Starts its own mosquitto on a free port (never a broker that is already there), the
   simulated site of ``configs/sites/demo-scenario.yaml`` (`prepay sim`: Modbus TCP and RTU
   meters with relays and valves, LoRaWAN meters and a valve, a BLE water dispenser reached
   through the simulator's socket) and the gateway (`prepay run`), each as its own process.
   The site and scenario files name fixed ports and paths, so the demo runs copies of them
   written into its work directory (``.demo/`` unless ``--workdir``): the broker's free port,
   the port the simulator's Modbus TCP server got, an RS485 link and a BLE socket of this run,
   and keys and a store of its own.
3. Plays the backend on MQTT: every account starts with no credit and the gateway cuts what it
   can switch; the backend sends signed top-ups (50.00 yuan, and a small 6.00 to flat 101's
   electricity, whose meter runs fast-forwarded so its credit runs out within the demo), sends
   one again (answered ``duplicate``), waits for flat 101 to go low and be cut, tops it up again
   and waits for the restore. Meanwhile the scenario's faults fire and the demo waits for the
   gateway's answer to each. At the water kiosk (`kiosk-1`, which sells water: its ``vending``
   section), the backend sends a signed batch of paper tickets (signed by a plant key made for
   the run), a customer's card pays for 2.5 L from flat 201's credit, a paper ticket pours a
   bucket, and an electronic ticket (its QR string) is redeemed at the counter with
   ``prepay ticket redeem``; the customers are control lines to the simulator
   (``present kiosk-1 card CARD-0001``, ``pour kiosk-1 2500``). Then it stops everything with
   SIGTERM, verifies the ledger, and writes the newest top-up's receipt as a PDF into the work
   directory and checks it with ``prepay receipt verify``.
4. Runs the quick billing benchmark (left out by ``--site-only``).
5. Ends with the story of what happened, built from the messages the backend received: top-up,
   low balance, cutoff confirmed by the device, top-up, restore confirmed, the effect of each
   fault, and the kiosk's sessions and redemptions, with times from the start of the site, and
   the receipt. Whatever did not happen is said, and the demo then exits 1.

Every wait is on messages (or the simulator's status file), each under a deadline; none is a
pause to let things settle. The run takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO, TypeVar

import aiomqtt

from bench.demo_files import (
    RunPlaces,
    run_scenario_doc,
    run_site_doc,
    write_plant_key,
    write_run_file,
)
from bench.demo_story import (
    CARD_POUR_ML,
    CURRENCY,
    ELECTRONIC_CODE,
    KIOSK,
    KIOSK_CARD,
    PAPER_CODE,
    STORY_ACCOUNT,
    STORY_DEVICE,
    STORY_TOPUP_MINOR,
    TICKET_BATCH,
    TICKET_BATCH_RANGE,
    TICKET_DEPOT,
    TICKET_FACE_MINOR,
    TICKET_PLANT,
    TICKET_POUR_ML,
    TICKET_PRODUCT,
    TICKET_REGION,
    TOPUP_MINOR,
    FaultWatch,
    ReceiptCheck,
    Seen,
    fault_watches,
    find_steps,
    litres,
    money,
    story_complete,
    story_steps,
    tell_kiosk_story,
    tell_story,
)
from bench.mosquitto import Broker, free_port, write_config
from billing_engine.base.errors import PrepayError
from billing_engine.money import format_minor
from firmware_sim.scenario import Scenario, load_scenario
from gateway.cli import main as prepay
from gateway.config import SiteConfig, load_site
from gateway.console.users import Role, add_user, new_password
from gateway.northbound.commands import new_command, sign_command
from gateway.northbound.payloads import CommandKind
from gateway.northbound.signing import load_private_key
from gateway.ops.keys import init_keys
from gateway.ops.receipts import write_demo_receipt
from gateway.ops.tickets import make_electronic
from gateway.tickets.scope import Scope

ROOT = Path(__file__).resolve().parents[1]
TARIFFS = ROOT / "configs" / "tariffs"
DATA = ROOT / "bench" / "data"
SITES = ROOT / "configs" / "sites"
SITE_FILE = SITES / "demo-site.yaml"
SCENARIO_FILE = SITES / "demo-scenario.yaml"
DEFAULT_WORKDIR = ROOT / ".demo"

# Deadlines of the waits, generous for a loaded 2-core machine: they bound a run that is going
# wrong, they do not pace one that is going right.
START_TIMEOUT_S = 30.0  # the simulator's servers, the gateway's first cutoffs
COMMAND_TIMEOUT_S = 20.0  # a command's result
STORY_TIMEOUT_S = 45.0  # from the small top-up to the cutoff confirmed on the relay
FAULT_TIMEOUT_S = 30.0  # from a fault's at_s to the gateway's answer
STOP_TIMEOUT_S = 10.0
KIOSK_TIMEOUT_S = 40.0  # the whole water kiosk scene (about 2 s when it goes right)
#: The tickets' validity: from yesterday (a local day in Asia/Shanghai may be ahead of UTC's)
#: for half a year.
TICKET_DAYS = 180


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run_cli(argv: list[str]) -> int:
    print(f"$ prepay {shlex.join(argv)}", flush=True)
    return prepay(argv)


# ---------------------------------------------------------------------- processes


def start(
    name: str, argv: list[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    print(f"starting {name}: {' '.join(argv)}  (log: {log})", flush=True)
    with log.open("wb") as handle:
        return subprocess.Popen(  # noqa: S603 - our own programs
            argv, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env
        )


def stop(proc: subprocess.Popen[bytes], name: str) -> int:
    """SIGTERM, then wait; SIGKILL after `STOP_TIMEOUT_S`. The exit status (0 when killed
    by our SIGTERM's default action too: that is the stop we asked for)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            print(f"{name}: killed (did not stop within {STOP_TIMEOUT_S:.0f} s)", flush=True)
            return 1
        print(
            f"{name}: exited {proc.returncode} {time.monotonic() - started:.1f} s after SIGTERM",
            flush=True,
        )
    return 0 if proc.returncode in (0, -signal.SIGTERM) else proc.returncode


def start_broker(work: Path) -> Broker:
    """Our own mosquitto on a free port. A port found free can be taken before mosquitto binds
    it (another program, another demo): then mosquitto exits and we try another port."""
    for attempt in range(3):
        port = free_port()
        broker = Broker("127.0.0.1", port, write_config(work, port))
        try:
            broker.start()
        except RuntimeError:
            if attempt == 2:
                raise
            continue
        print(f"mosquitto: 127.0.0.1:{port} (config {broker.config})", flush=True)
        return broker
    raise AssertionError("unreachable")  # pragma: no cover


def wait_for_simulator(
    status: Path, sim: subprocess.Popen[bytes], scenario: Scenario
) -> dict[str, int]:
    """The TCP port of each Modbus TCP server, once the simulator's status file reports them
    all (the simulator writes it when its servers are up).

    Raises:
        RuntimeError: the simulator exited, or did not start within `START_TIMEOUT_S`.
    """
    wanted = {server.name for server in scenario.modbus_tcp}
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        with contextlib.suppress(OSError, ValueError):
            servers = json.loads(status.read_text()).get("modbus_tcp", {})
            if wanted <= set(servers):
                return {name: int(servers[name]["port"]) for name in wanted}
        if sim.poll() is not None:
            raise RuntimeError(f"the simulator exited ({sim.returncode}); see its log")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the simulator did not start within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.1)  # a plain file has no change notification


def device_status(work: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((work / "sim-status.json").read_text()).get("devices", {}))
    except (OSError, ValueError):
        return {}


def print_devices(work: Path, only: str | None = None) -> None:
    """The relays, valves and locks as the simulated devices have them."""
    line = ", ".join(
        f"{name}: {'ON' if device['supply_on'] else 'OFF'}"
        for name, device in sorted(device_status(work).items())
        if device.get("supply_on") is not None and only in (None, name)
    )
    print(f"  device side (the simulator's status file): {line}", flush=True)


# ---------------------------------------------------------------------- the backend


def print_event(doc: Mapping[str, Any]) -> None:
    detail = doc.get("detail")
    reason = detail.get("reason") if isinstance(detail, dict) else None
    balance = doc.get("balance_minor")
    after = f" (balance {format_minor(balance, CURRENCY)})" if isinstance(balance, int) else ""
    print(f"  event {doc['account']}: {doc['event']} {doc.get('alarm') or reason or ''}{after}")


T = TypeVar("T")


class Backend:
    """The utility's side: keeps every message of the site's topics, sends signed commands."""

    def __init__(
        self,
        client: aiomqtt.Client,
        site: str,
        key_file: Path,
        log: TextIO,
        alive: Callable[[], bool],
    ) -> None:
        self.client = client
        self.alive = alive
        self.site = site
        self.log = log  # every message as ``topic payload``, like ``mosquitto_sub -v``
        self.seen: list[Seen] = []
        self.results: dict[str, list[dict[str, Any]]] = {}
        self._arrived = asyncio.Event()
        self._key = load_private_key(key_file.read_bytes())

    async def watch(self) -> None:
        async for message in self.client.messages:
            if not isinstance(message.payload, bytes):
                continue  # the gateway publishes JSON only
            topic = str(message.topic)
            self.log.write(f"{topic} {message.payload.decode(errors='replace')}\n")
            doc = json.loads(message.payload)
            if topic.endswith("/result"):
                self.results.setdefault(str(doc.get("id")), []).append(doc)
                self.seen.append(Seen(topic, doc))
            elif "/cmd/" not in topic:  # not our own commands
                self.seen.append(Seen(topic, doc))
                if topic.endswith("/event"):
                    print_event(doc)
            self._arrived.set()

    async def until(self, find: Callable[[], T | None], timeout_s: float) -> T | None:
        """``find()`` once it is not None, asked again at each message; None after
        ``timeout_s``, or at once when a process of the site has exited (nothing more will
        come: the story then says what is missing)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (found := find()) is None:
            self._arrived.clear()
            remaining = deadline - loop.time()
            if remaining <= 0 or not self.alive():
                return None
            # At most a second between looks at the processes: an exit sends no message.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 1.0)):
                    await self._arrived.wait()
        return found

    def signed_topup(self, account: str, amount_minor: int) -> dict[str, Any]:
        fields = {"account": account, "amount_minor": amount_minor, "currency": CURRENCY}
        return self.signed(CommandKind.TOPUP, fields)

    def signed(self, kind: CommandKind, fields: Mapping[str, Any]) -> dict[str, Any]:
        body = new_command(kind, self.site, fields, now=datetime.now(UTC))
        return sign_command(body, self._key)

    def first_after(self, mark: int, matches: Callable[[Seen], bool]) -> Seen | None:
        """The first message from index ``mark`` on that ``matches``."""
        return next((s for s in self.seen[mark:] if matches(s)), None)

    async def send(self, command: Mapping[str, Any]) -> None:
        topic = f"prepay/{self.site}/cmd/{command['kind']}"
        await self.client.publish(topic, json.dumps(command), qos=1)

    def balances(self) -> str:
        states: dict[str, dict[str, Any]] = {}
        for seen in self.seen:
            if seen.topic.endswith("/state") and "/account/" in seen.topic:
                states[seen.doc["account"]] = seen.doc
        return ", ".join(
            f"{a}: {format_minor(s['balance_minor'], CURRENCY)} ({s['state']})"
            for a, s in sorted(states.items())
        )

    def readings(self) -> int:
        return sum(
            1 if s.topic.endswith("/reading") else len(s.doc.get("readings", []))
            for s in self.seen
            if s.topic.endswith(("/reading", "/readings"))
        )


# ---------------------------------------------------------------------- the play


@dataclass
class Play:
    """What the backend saw during the run, for the story."""

    alive: Callable[[], bool]  # every process of the site still runs
    backend: Backend | None = None
    watches: list[FaultWatch] = field(default_factory=list)


async def play_backend(
    play: Play,
    places: RunPlaces,
    site: SiteConfig,
    started: datetime,
    launch_gateway: Callable[[], None],
) -> None:
    async with aiomqtt.Client("127.0.0.1", places.broker_port, identifier="demo-backend") as client:
        log = (places.work / "mqtt.log").open("w")  # blocking writes of a few lines: fine here
        await client.subscribe(f"prepay/{site.site}/#", qos=1)
        # The plant's ticket topics: redemptions the gateway publishes to the plant's boxes.
        await client.subscribe(f"prepay/tickets/{TICKET_PLANT}/#", qos=1)
        backend = Backend(client, site.site, places.keys / "backend.pem", log, play.alive)
        play.backend = backend
        watcher = asyncio.create_task(backend.watch(), name="demo.backend")
        try:
            launch_gateway()  # after the subscription: the backend sees every message
            await _scenes(backend, play, places, site, started)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            log.close()


async def _scenes(
    backend: Backend, play: Play, places: RunPlaces, site: SiteConfig, started: datetime
) -> None:
    modbus_relays = {
        a.id: a.actuator
        for a in site.accounts
        for bus in site.devices.modbus_buses
        if a.actuator in {d.device_id for d in bus.devices}
    }

    step("every account starts with no credit: the gateway cuts what it can switch")

    def cut_and_confirmed() -> bool | None:
        done = all(
            any(s.is_event(account, "cutoff") for s in backend.seen)
            and any(s.is_confirmed(relay, "off") for s in backend.seen)
            for account, relay in modbus_relays.items()
            if relay is not None
        )
        return True if done else None

    cut = await backend.until(cut_and_confirmed, START_TIMEOUT_S)
    print(f"  the Modbus relays and valves confirmed off: {bool(cut)}")
    print_devices(places.work)

    step(
        f"the backend sends signed top-ups: {format_minor(TOPUP_MINOR, CURRENCY)} each, "
        f"{format_minor(STORY_TOPUP_MINOR, CURRENCY)} to {STORY_ACCOUNT}"
    )
    commands = {
        a.id: backend.signed_topup(
            a.id, STORY_TOPUP_MINOR if a.id == STORY_ACCOUNT else TOPUP_MINOR
        )
        for a in site.accounts
    }
    for command in commands.values():
        await backend.send(command)
    ids = [str(c["id"]) for c in commands.values()]
    await backend.until(
        lambda: True if all(i in backend.results for i in ids) else None, COMMAND_TIMEOUT_S
    )
    for account, command in commands.items():
        results = backend.results.get(str(command["id"]), [])
        if not results:
            print(f"  {account}: no result")
            continue
        receipt = results[0].get("receipt") or {}
        print(
            f"  {account}: {results[0]['status']}, receipt #{receipt.get('receipt_seq')}, "
            f"balance after {money(receipt, 'balance_after_minor')}"
        )

    step("the same top-up again is answered duplicate and changes nothing")
    again = commands["A-101-W"]
    await backend.send(again)
    answers = await backend.until(
        lambda: backend.results.get(str(again["id"]), [])[1:] or None, COMMAND_TIMEOUT_S
    )
    print(f"  {again['id']}: {answers[0]['status'] if answers else 'no answer'}")

    try:
        async with asyncio.timeout(KIOSK_TIMEOUT_S):
            await _kiosk(backend, places)
    except TimeoutError:
        print(f"  the kiosk's scene did not end within {KIOSK_TIMEOUT_S:.0f} s")

    step(f"{STORY_ACCOUNT} uses up its {format_minor(STORY_TOPUP_MINOR, CURRENCY)}")
    steps = story_steps(STORY_ACCOUNT, STORY_DEVICE)
    confirmed_off = await backend.until(
        lambda: find_steps(backend.seen, steps[:4])[3], STORY_TIMEOUT_S
    )
    print_devices(places.work, STORY_DEVICE)
    if confirmed_off is not None:
        step(f"the backend tops {STORY_ACCOUNT} up again")
        await backend.send(backend.signed_topup(STORY_ACCOUNT, TOPUP_MINOR))
        await backend.until(lambda: find_steps(backend.seen, steps)[6], COMMAND_TIMEOUT_S)
        print_devices(places.work, STORY_DEVICE)

    step("the scenario's faults: waiting for the gateway's answer to each")
    for watch in play.watches:
        fault_at = started.timestamp() + watch.at_s
        after = datetime.fromtimestamp(fault_at, UTC)
        remaining = fault_at + FAULT_TIMEOUT_S - time.time()

        def answered(w: FaultWatch = watch, a: datetime = after) -> bool | None:
            return True if w.look(backend.seen, a) else None

        done = await backend.until(answered, max(remaining, 0.0))
        print(f"  {watch.fault.device} {watch.fault.fault}: {'seen' if done else 'NOT SEEN'}")
    print(f"  readings published: {backend.readings()}")
    print(f"  balances: {backend.balances()}")


# ---------------------------------------------------------------------- the water kiosk


def control(places: RunPlaces, line: str) -> None:
    """A command to the simulator (a customer at the kiosk), through its control file."""
    print(f"  simulator: {line}", flush=True)
    with places.control_file.open("a") as handle:
        handle.write(line + "\n")


async def kiosk_listening(places: RunPlaces, alive: Callable[[], bool]) -> bool:
    """True once the gateway listens to the kiosk's customers (the simulator's status file:
    a central subscribed to the Request characteristic); False after `START_TIMEOUT_S`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    while not device_status(places.work).get(KIOSK, {}).get("listening"):
        if loop.time() > deadline or not alive():
            return False
        await asyncio.sleep(0.1)  # a plain file has no change notification
    return True


def _session(dispenser: str, kind: str, *statuses: str) -> Callable[[Seen], bool]:
    def matches(seen: Seen) -> bool:
        return any(seen.is_session(dispenser, status, kind) for status in statuses)

    return matches


async def _customer(
    backend: Backend, places: RunPlaces, kind: str, identity: str, pour_ml: int
) -> None:
    """One customer: presents ``identity``; once authorised, holds the tap for ``pour_ml``."""
    mark = len(backend.seen)
    control(places, f"present {KIOSK} {kind} {identity}")
    answer = await backend.until(
        lambda: backend.first_after(mark, _session(KIOSK, kind, "authorised", "refused")),
        COMMAND_TIMEOUT_S,
    )
    if answer is None:
        print("  no answer from the gateway")
        return
    doc = answer.doc
    if doc["status"] == "refused":
        print(f"  refused: {doc.get('reason')}")
        return
    print(f"  session {doc['session_id']} authorised, up to {litres(doc['authorised_ml'])}")
    mark = len(backend.seen)
    control(places, f"pour {KIOSK} {pour_ml}")
    settled = await backend.until(
        lambda: backend.first_after(mark, _session(KIOSK, kind, "settled")), COMMAND_TIMEOUT_S
    )
    if settled is None:
        print("  the session did not settle")
        return
    doc = settled.doc
    charge = money(doc, "charge_minor") if doc.get("charge_minor") is not None else "no money"
    print(f"  session {doc['session_id']} settled: {litres(doc['poured_ml'])}, {charge}")


async def _kiosk(backend: Backend, places: RunPlaces) -> None:
    today = datetime.now(UTC).date()
    valid_from, valid_until = today - timedelta(days=1), today + timedelta(days=TICKET_DAYS)

    step("the plant signs a batch of paper tickets; the backend sends it to the gateway")
    batch_file = places.work / "ticket-batch.json"
    first, count = TICKET_BATCH_RANGE
    make = ["ticket", "make", "batch", "--key", str(places.plant_key), "--batch", TICKET_BATCH]
    make += ["--plant", TICKET_PLANT, "--product", TICKET_PRODUCT, "--currency", CURRENCY]
    make += ["--face-minor", str(TICKET_FACE_MINOR), "--region", TICKET_REGION]
    make += ["--from", str(valid_from), "--until", str(valid_until), "--range", f"{first}:{count}"]
    if await asyncio.to_thread(run_cli, [*make, "--out", str(batch_file)]) == 0:
        command = backend.signed(
            CommandKind.TICKET_BATCH, {"batch": json.loads(batch_file.read_text())}
        )
        await backend.send(command)
        result = await backend.until(
            lambda: backend.results.get(str(command["id"])), COMMAND_TIMEOUT_S
        )
        print(f"  cmd/ticket_batch: {result[0]['status'] if result else 'no result'}")

    step(f"the water kiosk {KIOSK}: customers at the machine")
    if not await kiosk_listening(places, backend.alive):
        print(f"  the gateway does not listen to {KIOSK}'s customers")
        return
    print(f"  a card: {KIOSK_CARD} (flat 201's water account), {litres(CARD_POUR_ML)}")
    await _customer(backend, places, "card", KIOSK_CARD, CARD_POUR_ML)
    print(f"  a paper ticket: {PAPER_CODE}, a bucket")
    await _customer(backend, places, "ticket", PAPER_CODE, TICKET_POUR_ML)

    step("an electronic ticket (the QR string on the phone) redeemed at the counter")
    try:
        qr = make_electronic(
            places.plant_key,
            code=ELECTRONIC_CODE,
            product=TICKET_PRODUCT,
            valid_from=valid_from,
            valid_until=valid_until,
            scope=Scope(depot=TICKET_DEPOT),
        )
    except (PrepayError, ValueError) as exc:  # the plant key unreadable, a field refused
        print(f"  no electronic ticket: {exc}")
        return
    print(f"  the plant's tool signed {ELECTRONIC_CODE}: {qr[:40]}... ({len(qr)} characters)")
    mark = len(backend.seen)
    redeem = ["ticket", "redeem", "-c", str(places.site_file), qr, "--where", "counter 1"]
    if await asyncio.to_thread(run_cli, redeem) == 0:
        published = await backend.until(
            lambda: backend.first_after(mark, lambda s: s.is_redeemed(ELECTRONIC_CODE)),
            COMMAND_TIMEOUT_S,
        )
        print(f"  published to the plant's boxes: {published.topic if published else 'no'}")


def check_receipt(places: RunPlaces) -> ReceiptCheck:
    """The newest receipt (a top-up's) as a PDF in the work directory, verified offline."""
    try:
        path = write_demo_receipt(load_site(places.site_file), places.work)
    except PrepayError as exc:
        print(f"  no receipt: {exc}")
        return ReceiptCheck(None, problem=str(exc))
    print(f"  written: {path}")
    seq = int(path.stem.removeprefix("receipt-"))  # write_demo_receipt's receipt-<seq>.pdf
    verify = ["receipt", "verify", str(path), "--gateway-key", str(places.gateway_public_key)]
    verified = run_cli(verify) == 0
    if path.is_relative_to(ROOT):
        path = path.relative_to(ROOT)  # told as .demo/receipt-<seq>.pdf
    if not verified:
        return ReceiptCheck(path, seq, problem="prepay receipt verify refused it")
    return ReceiptCheck(path, seq, verified=True)


def run_site(work: Path, *, keep_running: bool = False) -> tuple[int, list[str]]:
    """The simulated site with the gateway: the exit status and the story."""
    # A new store each run, deliberately: the gateway refuses to start on a missing state
    # directory where the site has run before, and `prepay init --new-store` makes it.
    shutil.rmtree(work / "state", ignore_errors=True)
    status_file = work / "sim-status.json"
    status_file.unlink(missing_ok=True)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    links = Path(tempfile.mkdtemp(prefix="prepay-demo-"))
    play = Play(alive=lambda: all(proc.poll() is None for _, proc in procs))
    started = datetime.now(UTC)  # set again just before the simulator starts
    status = 0
    try:
        broker = start_broker(work)
        assert broker.proc is not None  # noqa: S101 - started above
        procs.append(("mosquitto", broker.proc))
        places = RunPlaces(work, links, broker.port)
        init_keys(places.keys, with_backend=True)
        write_plant_key(places)
        scenario_file = write_run_file(
            work / "demo-scenario.yaml", run_scenario_doc(SCENARIO_FILE, places), SCENARIO_FILE
        )
        scenario = load_scenario(scenario_file)
        started = datetime.now(UTC)  # the faults' at_s count from the simulator's start
        argv = [sys.executable, "-m", "firmware_sim", "-c", str(scenario_file)]
        argv += ["--status", str(status_file), "--control", str(places.control_file)]
        sim = start("simulator", argv, work / "sim.log")
        procs.append(("simulator", sim))
        tcp_ports = wait_for_simulator(status_file, sim, scenario)
        site_doc = run_site_doc(SITE_FILE, places, tcp_ports)
        console = add_console(site_doc, places)
        site_file = write_run_file(places.site_file, site_doc, SITE_FILE)
        print(f"operator console: {console.url}  login: {console.user} / {console.password}")
        for check in (
            ["check-config", "-c", str(site_file)],
            ["init", "--new-store", "-c", str(site_file)],
        ):
            if (code := run_cli(check)) != 0:
                return code, []
        site = load_site(site_file).config
        play.watches = fault_watches(site, scenario)
        print("the scenario's faults, in seconds after the start:")
        for watch in play.watches:
            print(f"  {watch.at_s:5.1f}  {watch.fault.device} {watch.fault.fault}")
        env = {**os.environ, "PREPAY_BLE_SIM_SOCKET": str(places.ble_socket)}

        def launch_gateway() -> None:
            argv = [sys.executable, "-m", "gateway.cli", "run", "-c", str(site_file)]
            procs.append(("gateway", start("gateway", argv, work / "gateway.log", env)))

        asyncio.run(play_backend(play, places, site, started, launch_gateway))
        if keep_running:
            hold(procs, console)
    finally:
        step("SIGTERM to the gateway, then the simulator and the broker")
        for name, proc in reversed(procs):
            status |= stop(proc, name)
        shutil.rmtree(links, ignore_errors=True)
    step("the ledger's HMAC chain verifies after the run")
    verify = ["ledger", "verify", "--state", str(work / "state")]
    status |= run_cli([*verify, "--key", str(places.keys / "ledger.key")])
    step("what an operator on the box sees: prepay status, read from the store")
    status |= run_cli(["status", "-c", str(site_file), "--events", "5"])
    step("the newest top-up's receipt as a PDF, checked offline with the gateway's public key")
    receipt = check_receipt(places)
    seen = play.backend.seen if play.backend is not None else []
    story = tell_story(seen, play.watches, started)
    return status, story + tell_kiosk_story(seen, started, receipt)


@dataclass(frozen=True)
class ConsoleLogin:
    url: str
    user: str
    password: str


def add_console(doc: dict[str, Any], places: RunPlaces) -> ConsoleLogin:
    """Give the run's site the operator console on a free port (`prepay run` serves it), with a
    one-time login: user ``demo``, operator, a new random password each run."""
    users = places.work / "console-users.json"
    users.unlink(missing_ok=True)  # the last run's login ends here
    port = free_port()  # as for the broker: taken meanwhile, the console retries with backoff
    doc["console"] = {
        "port": port,
        "users_file": str(users),
        "operator_key": str(places.keys / "operator.pem"),
    }
    password = new_password()
    add_user(users, "demo", Role.OPERATOR, password)
    return ConsoleLogin(f"http://127.0.0.1:{port}/", "demo", password)


def hold(procs: Sequence[tuple[str, subprocess.Popen[bytes]]], console: ConsoleLogin) -> None:
    """Keep the site running until Ctrl-C (or one of its processes ends)."""
    step(f"the site runs on: console {console.url} (Ctrl-C stops everything)")
    with contextlib.suppress(KeyboardInterrupt):
        while all(proc.poll() is None for _, proc in procs):
            time.sleep(0.5)


def check_tariffs() -> int:
    step("validate the sample tariffs")
    status = run_cli(["tariff", "check", *sorted(str(p) for p in TARIFFS.glob("*.yaml"))])
    step("10 kWh 21:00-23:00 on peak/valley (hand: 5 x 0.568 + 5 x 0.288 = 4.28 yuan)")
    zhejiang = str(TARIFFS / "zhejiang-residential-electricity.yaml")
    readings = str(DATA / "evening-peak-valley.csv")
    return status | run_cli(
        ["tariff", "quote", "--tariff", zhejiang, "--class", "resident_tou", "--readings", readings]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--workdir", type=Path, default=DEFAULT_WORKDIR, help="files, logs and store of the run"
    )
    parser.add_argument(
        "--site-only", action="store_true", help="leave out the tariff checks and the benchmark"
    )
    parser.add_argument(
        "--bounded",
        action="store_true",
        help="stop once the story is played (default when stdin is not a terminal: CI, scripts)",
    )
    args = parser.parse_args(argv)
    # Line by line into a pipe too: the benchmark's process writes to the same stdout.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    work: Path = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    status = 0 if args.site_only else check_tariffs()
    step("a simulated site: broker, devices and gateway as separate processes")
    try:
        site_status, story = run_site(work, keep_running=not args.bounded and sys.stdin.isatty())
    except (RuntimeError, ValueError, OSError) as exc:  # the processes are stopped by now
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    status |= site_status
    if not args.site_only:
        step("billing benchmark (quick)")
        # `prepay bench` replaces its process by the benchmark's: a process of its own, then.
        print("$ prepay bench billing --quick", flush=True)
        bench = [sys.executable, "-m", "gateway.cli", "bench", "billing", "--quick"]
        status |= subprocess.run(bench, cwd=ROOT, check=False).returncode  # noqa: S603
    step("the story of the run")
    for line in story:
        print(line)
    if not story or not story_complete(story):
        print("something the demo announced did not happen: see the NOT SEEN lines and the logs")
        status |= 1
    return 1 if status else 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
