"""The files of one `make demo` run: copies of the demo site and scenario with this run's ports
and paths (`bench/demo.py`).

The shipped files name fixed ports (1883, 5020) and paths (``/tmp/prepay-demo``, the keys in
``configs/sites/keys``) for a manual run. A run must not meet another program, or another
demo, on them, so it writes copies into its work directory: ports from the environment would
need both loaders to read it, and copies are ordinary files to read and run again by hand.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.demo_story import TICKET_DEPOT, TICKET_PLANT, TICKET_PRODUCT, TICKET_REGION
from gateway.northbound.signing import generate_private_key, private_key_to_pem, public_key_to_pem


@dataclass(frozen=True)
class RunPlaces:
    """Where this run's site lives.

    Attributes:
        work: the work directory (files, logs, keys, the store).
        links: a short directory for the RS485 link and the BLE socket: a Unix socket path must
            fit in 107 bytes, which a deep work directory may not.
        broker_port: the port of this run's mosquitto.
    """

    work: Path
    links: Path
    broker_port: int

    @property
    def keys(self) -> Path:
        return self.work / "keys"

    @property
    def site_file(self) -> Path:
        """The run copy of the gateway's site file."""
        return self.work / "demo-site.yaml"

    @property
    def control_file(self) -> Path:
        """The simulator's ``--control`` file: a command per line appended."""
        return self.work / "sim-control"

    @property
    def gateway_public_key(self) -> Path:
        """The key receipts are verified with (`prepay keys init` writes it)."""
        return self.keys / "gateway.pub.pem"

    @property
    def plant_key(self) -> Path:
        """The water plant's private key, which signs this run's tickets and batches."""
        return self.keys / "plant.pem"

    @property
    def plant_public_key(self) -> Path:
        return self.keys / "plant.pub.pem"

    @property
    def ble_socket(self) -> Path:
        return self.links / "ble.sock"

    def rtu_link(self, line: str) -> Path:
        return self.links / line


def _absolute(base: Path, path: str) -> str:
    return str((base / path).resolve())


def run_scenario_doc(source: Path, places: RunPlaces) -> dict[str, Any]:
    """The scenario of ``source`` for this run: the broker's port, any free port for each Modbus
    TCP server (the simulator reports the one it got), this run's links; paths absolute."""
    doc: dict[str, Any] = yaml.safe_load(source.read_text())
    doc["profiles_dir"] = _absolute(source.parent, doc.get("profiles_dir", "../devices"))
    if doc.get("broker") is not None:
        doc["broker"]["port"] = places.broker_port
    for server in doc.get("modbus_tcp", []):
        server["port"] = 0
    for line in doc.get("modbus_rtu", []):
        line["link"] = str(places.rtu_link(line["name"]))
    if doc.get("ble") is not None:
        doc["ble"]["socket"] = str(places.ble_socket)
    return doc


def run_site_doc(source: Path, places: RunPlaces, tcp_ports: Mapping[str, int]) -> dict[str, Any]:
    """The gateway site of ``source`` for this run: the broker's port, the simulator's TCP ports
    (by bus name), this run's RS485 links, keys and store; paths absolute."""
    doc: dict[str, Any] = yaml.safe_load(source.read_text())
    base = source.parent
    doc["state_dir"] = str(places.work / "state")
    doc["mqtt"]["port"] = places.broker_port
    doc["keys"] = {name: str(places.keys / Path(path).name) for name, path in doc["keys"].items()}
    doc["tariffs"] = [_absolute(base, path) for path in doc["tariffs"]]
    devices = doc["devices"]
    devices["profiles_dir"] = _absolute(base, devices.get("profiles_dir", "../devices"))
    devices["codecs_dir"] = _absolute(base, devices.get("codecs_dir", "../codecs"))
    for bus in devices.get("modbus_buses", []):
        if bus["kind"] == "tcp":
            bus["port"] = tcp_ports[bus["name"]]
        else:
            bus["serial"]["port"] = str(places.rtu_link(bus["name"]))
    for network in devices.get("lns", []):
        network["broker"]["port"] = places.broker_port
    # The water tickets of the kiosk story: this run's plant key, and its vending dispensers
    # pour a bucket per paper ticket. The shipped file has neither, because no plant key ships
    # with it (and a dispenser's ticket_product needs the site's tickets section).
    for dispenser in devices.get("ble_dispensers", []):
        if dispenser.get("vending") is not None:
            dispenser["vending"]["ticket_product"] = TICKET_PRODUCT
    doc["tickets"] = {
        "plant_code": TICKET_PLANT,
        "depot": TICKET_DEPOT,
        "region": TICKET_REGION,
        "products": [TICKET_PRODUCT],
        "issuer_public_keys": [str(places.plant_public_key)],
        "timezone": "Asia/Shanghai",
    }
    return doc


def write_plant_key(places: RunPlaces) -> None:
    """A plant key pair for this run (kept if there is one): the plant's side of the tickets,
    which `prepay keys init` does not make (a site trusts a plant's key, it never holds it)."""
    if places.plant_key.exists():
        return
    key = generate_private_key()
    # 0600 from the start, as `prepay keys init` writes private keys: `prepay ticket make`
    # refuses a key file its group or others may read.
    fd = os.open(places.plant_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_key_to_pem(key))
    places.plant_public_key.write_bytes(public_key_to_pem(key.public_key()))


def write_run_file(path: Path, doc: Mapping[str, Any], source: Path) -> Path:
    header = f"# Written by bench/demo.py for one run, from {source}.\n"
    path.write_text(header + yaml.safe_dump(dict(doc), sort_keys=False))
    return path
