"""The cross-references of a site that runs its own devices: every account is read by a device
of the site and cut by one, and every device can do what the site asks of it.

`gateway.config.load_site` checks the site file on its own (its models, tariffs, classes,
policies, profiles present). What needs the devices is checked here, because a test or a
benchmark may load a site and hand the gateway its own sources and actuators; ``prepay run``,
``prepay check-config`` (`gateway.startup.preflight`) and a reload (SIGHUP) call it. Each
problem is a `ConfigError` at the site file's line that names the thing:

- a meter id is read by one device, and a device id names one device across all drivers;
- a LoRaWAN device's codec is in ``codecs_dir``, has a register when the device bills a meter,
  and open/close commands when it drives a valve;
- an account's meter is read by a device of the site (else it would never be billed, and the
  real meter's readings would be held as ``unknown_meter``);
- a publish-only meter (``publish_only:``) is read by a device of the site, in the unit its
  entry says when the device's Modbus profile names one (a kWh meter published as m3 would
  mislead whoever reads it);
- an account's actuator is a device that can switch (a Modbus profile with a usable relay or
  valve, a LoRaWAN valve, a BLE dispenser), and it cuts no other account: the gateway drives a
  device from one account's balance (one account per device in the account book), so two
  accounts on one relay would cut each other.

Pure: YAML and pydantic only, never a protocol library.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from billing_engine.base.errors import ConfigError, InvalidConfigError
from billing_engine.tariff import Unit
from drivers.lorawan.codec import CodecSpec, load_codecs
from drivers.modbus.profiles import load_profiles
from gateway.config import Site

Loc = tuple[int | str, ...]


@dataclass
class _Inventory:
    """What the site's devices offer: meter ids read, device ids that switch."""

    # meter id -> where it is defined (for a meter read twice)
    meters: dict[str, Loc] = field(default_factory=dict)
    # meter id -> (the unit its Modbus profile gives its register, the profile's name)
    units: dict[str, tuple[str, str]] = field(default_factory=dict)
    # device id -> None when it can switch, else why not (a meter without a relay)
    switches: dict[str, str | None] = field(default_factory=dict)
    # device id -> where it is defined
    device_locs: dict[str, Loc] = field(default_factory=dict)
    errors: list[ConfigError] = field(default_factory=list)


def _add_meter(site: Site, inventory: _Inventory, meter_id: str, loc: Loc) -> None:
    first = inventory.meters.setdefault(meter_id, loc)
    if first != loc:
        inventory.errors.append(
            site.error(
                loc,
                f"meter {meter_id} is already read by the device at"
                f" {'.'.join(str(p) for p in first)}; a meter is read by one device",
            )
        )


def _add_device(
    site: Site, inventory: _Inventory, device_id: str, loc: Loc, why_not: str | None
) -> None:
    first = inventory.device_locs.setdefault(device_id, loc)
    if first != loc:
        inventory.errors.append(
            site.error(
                loc,
                f"device id {device_id} is already used at {'.'.join(str(p) for p in first)};"
                " commands are routed by device id: give each device its own",
            )
        )
        return
    inventory.switches[device_id] = why_not


def _modbus(site: Site, inventory: _Inventory) -> None:
    devices = site.config.devices
    names = {d.profile for bus in devices.modbus_buses for d in bus.devices}
    if not names:
        return
    try:
        profiles = load_profiles(site.resolve(devices.profiles_dir), names)
    except InvalidConfigError as exc:  # load_site reports these at their lines already
        inventory.errors.extend(exc.errors)
        return
    for b, bus in enumerate(devices.modbus_buses):
        for d, device in enumerate(bus.devices):
            where: Loc = ("devices", "modbus_buses", b, "devices", d)
            _add_meter(site, inventory, device.meter_id, (*where, "meter_id"))
            inventory.units[device.meter_id] = (
                profiles[device.profile].energy.unit,
                device.profile,
            )
            supply = profiles[device.profile].supply
            why_not: str | None = None
            if supply is None:
                why_not = f"its profile {device.profile} has no relay or valve"
            elif supply.status != "confirmed" and not device.allow_unconfirmed_supply:
                why_not = (
                    f"its profile {device.profile} marks the relay/valve unconfirmed; set"
                    f" allow_unconfirmed_supply: true on device {device.device_id} once a unit"
                    " was tested"
                )
            _add_device(site, inventory, device.device_id, (*where, "device_id"), why_not)


def _codec_errors(
    site: Site, codecs: dict[str, CodecSpec], where: Loc, codec: str, *, meter: bool, valve: bool
) -> list[ConfigError]:
    spec = codecs.get(codec)
    if spec is None:
        known = ", ".join(sorted(codecs)) or "none"
        codecs_dir = site.resolve(site.config.devices.codecs_dir)
        return [site.error((*where, "codec"), f"no codec {codec!r} in {codecs_dir} ({known})")]
    errors = []
    if valve and spec.commands is None:
        errors.append(
            site.error(
                (*where, "valve_device_id"),
                f"codec {codec} has no open/close commands; it cannot drive a valve",
            )
        )
    if meter and spec.billing_register is None:
        errors.append(
            site.error(
                (*where, "meter_id"), f"codec {codec} declares no register; it cannot bill a meter"
            )
        )
    return errors


def _lns(site: Site, inventory: _Inventory) -> None:
    networks = site.config.devices.lns
    codecs: dict[str, CodecSpec] = {}
    if any(d.codec is not None for n in networks for d in n.devices):
        try:
            codecs = load_codecs(site.resolve(site.config.devices.codecs_dir))
        except InvalidConfigError as exc:  # errors inside codec files, at their lines
            inventory.errors.extend(exc.errors)
            return
    for n, network in enumerate(networks):
        for d, device in enumerate(network.devices):
            where: Loc = ("devices", "lns", n, "devices", d)
            if device.codec is not None:
                inventory.errors += _codec_errors(
                    site,
                    codecs,
                    where,
                    device.codec,
                    meter=device.meter_id is not None,
                    valve=device.valve_device_id is not None,
                )
            if device.meter_id is not None:
                _add_meter(site, inventory, device.meter_id, (*where, "meter_id"))
            if device.valve_device_id is not None:
                _add_device(
                    site, inventory, device.valve_device_id, (*where, "valve_device_id"), None
                )


def _ble(site: Site, inventory: _Inventory) -> None:
    for k, dispenser in enumerate(site.config.devices.ble_dispensers):
        where: Loc = ("devices", "ble_dispensers", k)
        _add_meter(site, inventory, dispenser.meter_id, (*where, "meter_id"))
        _add_device(site, inventory, dispenser.device_id, (*where, "device_id"), None)


def _inventory(site: Site) -> _Inventory:
    inventory = _Inventory()
    _modbus(site, inventory)
    _lns(site, inventory)
    _ble(site, inventory)
    return inventory


def _listed(ids: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(sorted(ids)[:limit]) or "none"
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _account_errors(site: Site, inventory: _Inventory) -> list[ConfigError]:
    errors: list[ConfigError] = []
    cut_by: dict[str, str] = {}
    for i, account in enumerate(site.config.accounts):
        if account.meter not in inventory.meters:
            errors.append(
                site.error(
                    ("accounts", i, "meter"),
                    f"no device of the site reads meter {account.meter}, so account"
                    f" {account.id} would never be billed; the devices read"
                    f" {_listed(list(inventory.meters))}",
                )
            )
        actuator = account.actuator
        if actuator is None:
            continue
        loc = ("accounts", i, "actuator")
        if actuator not in inventory.switches:
            switches = [d for d, why_not in inventory.switches.items() if why_not is None]
            errors.append(
                site.error(
                    loc,
                    f"no device {actuator} in the site, so account {account.id} would never be"
                    f" cut; the devices that switch are {_listed(switches)}",
                )
            )
        elif (why_not := inventory.switches[actuator]) is not None:
            errors.append(site.error(loc, f"device {actuator} cannot switch: {why_not}"))
        elif actuator in cut_by:
            errors.append(
                site.error(
                    loc,
                    f"device {actuator} already cuts account {cut_by[actuator]}; a device cuts"
                    " one account (each would cut the other's supply)",
                )
            )
        cut_by.setdefault(actuator, account.id)
    return errors


def _publish_only_errors(site: Site, inventory: _Inventory) -> list[ConfigError]:
    errors: list[ConfigError] = []
    for i, entry in enumerate(site.config.publish_only):
        if entry.meter not in inventory.meters:
            errors.append(
                site.error(
                    ("publish_only", i, "meter"),
                    f"no device of the site reads meter {entry.meter}, so nothing would be"
                    f" published for it; the devices read {_listed(list(inventory.meters))}",
                )
            )
            continue
        unit, profile = inventory.units.get(entry.meter, ("", ""))
        # A profile's unit is free text (``kWh``, or ``""`` when it gives none): compare only
        # when it is one of the units a site can name.
        if unit in {str(u) for u in Unit} and unit != entry.unit:
            errors.append(
                site.error(
                    ("publish_only", i, "unit"),
                    f"meter {entry.meter} is read with profile {profile}, which gives its"
                    f" register in {unit}; write unit: {unit}",
                )
            )
    return errors


def _vending_errors(site: Site) -> list[ConfigError]:
    """A dispenser that sells water: its cards name accounts of the site in its currency, its
    ticket product is one the site's tickets cover, and no account bills its meter as well
    (each litre would be paid twice: by the session and by the meter's reading)."""
    errors: list[ConfigError] = []
    accounts = {a.id: a for a in site.config.accounts}
    billed_meters = {a.meter: a.id for a in site.config.accounts}
    tickets = site.config.tickets
    for k, dispenser in enumerate(site.config.devices.ble_dispensers):
        vending = dispenser.vending
        if vending is None:
            continue
        where: Loc = ("devices", "ble_dispensers", k, "vending")
        for card, account_id in vending.cards.items():
            account = accounts.get(account_id)
            if account is None:
                errors.append(
                    site.error(
                        (*where, "cards", card),
                        f"card {card} draws on account {account_id}, which the site does not"
                        f" have; the accounts are {_listed(list(accounts))}",
                    )
                )
                continue
            currency = account.currency or site.tariffs[account.tariff].currency
            if currency != vending.currency:
                errors.append(
                    site.error(
                        (*where, "cards", card),
                        f"account {account_id} is in {currency}; this dispenser sells in"
                        f" {vending.currency}",
                    )
                )
        product = vending.ticket_product
        if product is not None and (tickets is None or product not in tickets.products):
            covered = "no tickets: section" if tickets is None else f"products {tickets.products}"
            errors.append(
                site.error(
                    (*where, "ticket_product"),
                    f"tickets for {product} cannot be taken here: the site has {covered}",
                )
            )
        if (double := billed_meters.get(dispenser.meter_id)) is not None:
            errors.append(
                site.error(
                    (*where,),
                    f"account {double} bills this dispenser's meter {dispenser.meter_id}"
                    " while it sells water by the session: each litre would be paid twice",
                )
            )
    return errors


def reference_errors(site: Site, running: Site | None = None) -> list[ConfigError]:
    """Every cross-reference problem of ``site`` (empty when it can run).

    Args:
        site: the site file as loaded by `gateway.config.load_site`.
        running: on a reload, the site the daemon started with: its devices are the ones
            running (a device change waits for a restart), so the accounts are checked against
            them, and the devices are not checked again.
    """
    inventory = _inventory(running or site)
    device_errors = inventory.errors if running is None else []
    return (
        device_errors
        + _account_errors(site, inventory)
        + _publish_only_errors(site, inventory)
        + _vending_errors(site)
    )
