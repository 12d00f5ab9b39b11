"""Which Modbus bus and device a commissioning command talks to, and whether it may talk now.

``prepay meter read`` and ``prepay modbus scan`` open a bus of the site file themselves, next to
the daemon, which polls the same buses:

* **RTU (RS485):** one line, one master at a time (Modbus over Serial Line V1.02, 2.2: a
  single master). A second process sending on the line while the daemon polls garbles both
  requests, or takes the daemon's reply as its own. So a command refuses an RTU bus while the
  site's daemon runs (it holds ``STATE_DIR/prepay.lock``), unless forced: stop the daemon for
  the commissioning, or accept, with ``--force``, that a collision costs the daemon a retry
  and the command a clear error.
* **TCP:** every client has its own connection and transaction ids, so both may talk at once.
  A device (or serial gateway) that takes one connection at a time refuses the second; that
  shows as "cannot connect".

Whether the daemon runs is asked of the lock itself: a shared, non-blocking `fcntl.flock` on
the lock file fails while the daemon holds it exclusively; when it succeeds it is released at
once.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass

from drivers.modbus.config import ModbusBusConfig, ModbusDeviceConfig
from gateway.config import Site
from gateway.startup import LOCK_FILE


class BusAccessError(ValueError):
    """The device or bus is not one this command can talk to (unknown, not Modbus, busy)."""


@dataclass(frozen=True)
class ModbusTarget:
    """A device of the site file and the bus it is on."""

    bus: ModbusBusConfig
    device: ModbusDeviceConfig


def endpoint(bus: ModbusBusConfig) -> str:
    """``tcp 10.0.0.5:502`` or ``rtu /dev/ttyUSB0 9600 8N1``, for messages."""
    if bus.serial is not None:
        s = bus.serial
        return f"rtu {s.port} {s.baudrate} {s.bytesize}{s.parity}{s.stopbits}"
    return f"tcp {bus.host}:{bus.port}"


def find_device(site: Site, name: str) -> ModbusTarget:
    """The Modbus device called ``name`` (its device id, or the meter id it reads).

    Raises:
        BusAccessError: no such device, or it is not on a Modbus bus (say which kind it is).
    """
    devices = site.config.devices
    for bus in devices.modbus_buses:
        for device in bus.devices:
            if name in (device.device_id, device.meter_id):
                return ModbusTarget(bus, device)
    for lns in devices.lns:
        for lns_device in lns.devices:
            ids = (lns_device.device_id, lns_device.meter_id, lns_device.valve_device_id)
            if name in ids or (lns_device.dev_eui or "").lower() == name.lower():
                raise BusAccessError(
                    f"{name} is a {lns.kind} device of network server {lns.name}, not a Modbus"
                    " device: it reports by uplink, there is nothing to read on demand"
                )
    for dispenser in devices.ble_dispensers:
        if name in (dispenser.device_id, dispenser.meter_id):
            raise BusAccessError(
                f"{name} is a BLE dispenser ({dispenser.address}), not a Modbus device"
            )
    modbus = sorted(d.device_id for bus in devices.modbus_buses for d in bus.devices)
    shown = ", ".join(modbus) or "none"
    raise BusAccessError(f"no device {name!r} in {site.path} (Modbus devices: {shown})")


def find_bus(site: Site, name: str) -> ModbusBusConfig:
    """The Modbus bus called ``name`` in the site file.

    Raises:
        BusAccessError: no such bus.
    """
    buses = site.config.devices.modbus_buses
    for bus in buses:
        if bus.name == name:
            return bus
    shown = ", ".join(b.name for b in buses) or "none"
    raise BusAccessError(f"no Modbus bus {name!r} in {site.path} (buses: {shown})")


def daemon_pid(site: Site) -> int | None:
    """The pid of the site's running daemon, or None when none runs (0: one runs, pid unknown).

    Raises:
        OSError: the lock file exists but cannot be opened (another user's, say).
    """
    path = site.state_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None  # the daemon never ran here
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def check_bus_free(site: Site, bus: ModbusBusConfig, *, force: bool) -> None:
    """Refuse an RTU bus the running daemon polls, unless ``force``.

    Raises:
        BusAccessError: the bus is RTU and the daemon runs (or whether it runs cannot be told).
    """
    if bus.kind != "rtu" or force:
        return
    try:
        pid = daemon_pid(site)
    except OSError as exc:
        raise BusAccessError(
            f"bus {bus.name} is an RS485 line; cannot tell whether the gateway polls it now"
            f" ({exc.strerror or exc}: {site.state_dir / LOCK_FILE}); run as the gateway's"
            " user, or pass --force"
        ) from None
    if pid is not None:
        who = f"pid {pid}" if pid else "its pid unknown"
        raise BusAccessError(
            f"bus {bus.name} is busy: the running gateway ({who}) polls this RS485 line, and two"
            " masters on one line garble each other's frames; stop the gateway for the"
            " commissioning, or pass --force to send between its polls"
        )
