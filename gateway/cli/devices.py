"""``prepay meter read``, ``prepay modbus scan`` and ``prepay supply on|off|auto``: talking to
the devices while commissioning, and switching a supply by hand through the daemon."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from billing_engine.base.errors import InvalidConfigError, PrepayError
from gateway.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_USAGE,
    Commands,
    answer,
    print_errors,
    site_of,
)
from gateway.ops import bus_access, meter_decision, meter_read, modbus_scan, supply, topup
from gateway.store import StoreError

_JSON_HELP = "one JSON object instead of text"
_LAST_ADDRESS = 0xFFFF  # Modbus register addresses are 16 bits
_SHARED_BUS = (
    "The running daemon polls the same buses. On an RTU (RS485) bus two masters garble each"
    " other's frames, so the command refuses an RTU bus while the site's daemon runs, unless"
    " --force (a collision then costs the daemon a retry and this command a clear error). On"
    " TCP both may talk at once; a device that takes one connection at a time refuses the"
    " second ('cannot connect')."
)


def _meter_read(args: argparse.Namespace) -> int:
    site = site_of(args)
    if isinstance(site, int):
        return site
    try:
        target = bus_access.find_device(site, args.device)
        bus_access.check_bus_free(site, target.bus, force=args.force)
        read = asyncio.run(meter_read.read_meter(site, target))
    except InvalidConfigError as exc:  # the device's profile
        return print_errors(exc)
    except (bus_access.BusAccessError, meter_read.MeterReadError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        return answer(json.dumps(meter_read.to_json(read)))
    return answer(meter_read.render(read))


def _meter_accept(args: argparse.Namespace) -> int:
    site = site_of(args)
    if isinstance(site, int):
        return site
    try:
        command_id = meter_decision.queue_accept(
            site, args.meter, args.reason, Path(args.operator_key)
        )
    except meter_decision.MeterDecisionError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except (OSError, PrepayError) as exc:  # the key file: missing, too open; the spool
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    result = topup.wait_for_result(site, command_id, args.wait)
    if result is None:
        print(
            f"{command_id} queued: the gateway has not applied it yet (is it running?)",
            file=sys.stderr,
        )
        return EXIT_OK
    if args.json:
        return answer(json.dumps(result, ensure_ascii=False))
    if result.get("status") == "rejected":
        print(f"rejected: {result.get('reason')}: {result.get('detail', '')}", file=sys.stderr)
        return EXIT_INVALID
    return answer(f"meter {args.meter}: new level accepted; billing continues from it")


def _progress(unit: int, done: int, total: int, found: int) -> None:
    # On a terminal one line rewritten in place; in a log, a line every 16 units and the last.
    text = f"scanning unit {unit} ({done}/{total}), {found} answered"
    if sys.stderr.isatty():
        end = "\n" if done == total else ""
        print(f"\r{text}\x1b[K", end=end, file=sys.stderr, flush=True)
    elif done % 16 == 0 or done == total:
        print(text, file=sys.stderr, flush=True)


def _modbus_scan(args: argparse.Namespace) -> int:
    try:
        units = modbus_scan.parse_units(args.units)
    except modbus_scan.UnitRangeError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    if not 0 < args.timeout <= 30:
        print(f"--timeout {args.timeout}: give seconds in (0, 30]", file=sys.stderr)
        return EXIT_USAGE
    if not 0 <= args.register <= _LAST_ADDRESS:
        print(f"--register {args.register}: addresses are 0..{_LAST_ADDRESS}", file=sys.stderr)
        return EXIT_USAGE
    site = site_of(args)
    if isinstance(site, int):
        return site
    try:
        bus = bus_access.find_bus(site, args.bus)
        bus_access.check_bus_free(site, bus, force=args.force)
        result = asyncio.run(
            modbus_scan.scan(
                bus,
                units,
                timeout_s=args.timeout,
                table=args.table,
                address=args.register,
                progress=None if args.quiet else _progress,
            )
        )
    except (bus_access.BusAccessError, modbus_scan.ScanError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        return answer(json.dumps(modbus_scan.to_json(result)))
    return answer(modbus_scan.render(result))


def _supply(args: argparse.Namespace) -> int:
    if args.wait < 0:
        print(f"--wait {args.wait}: give seconds, 0 or more", file=sys.stderr)
        return EXIT_USAGE
    site = site_of(args)
    if isinstance(site, int):
        return site
    try:
        queued = supply.queue_override(
            site, args.device, args.override, args.reason, Path(args.operator_key)
        )
    except supply.SupplyError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE if str(exc).startswith("--reason") else EXIT_INVALID
    except (OSError, PrepayError) as exc:  # the key file (missing, too open); the store
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    try:
        outcome = supply.await_outcome(site, queued, args.wait)
    except StoreError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    text = json.dumps(supply.to_json(outcome)) if args.json else supply.render(outcome)
    if outcome.status == "rejected":
        if args.json:
            print(text)
        else:
            print(text, file=sys.stderr)
        return EXIT_INVALID
    return answer(text)


def register(commands: Commands) -> None:
    meter = commands.add_parser(
        "meter",
        help="meters: a live read for commissioning; accept a reset or swap",
        description="Meter tools.",
    )
    meter_commands = meter.add_subparsers(dest="meter_command", required=True)
    read = meter_commands.add_parser(
        "read",
        help="read a Modbus device once, live, and print its decoded registers",
        description=(
            "One live read of a Modbus device of the site file, through the gateway's own"
            " driver: every register of its profile, decoded and in the profile's units, and"
            " the relay or valve read back when the profile has one. Nothing is journalled or"
            " billed. A device that does not answer, answers with an exception or with"
            f" garbage, or is not a Modbus device gets a one-line error (exit 1). {_SHARED_BUS}"
            " JSON: {device, meter, bus, endpoint, unit_id, profile, read_at, registers:"
            " [{name, table, address, type, value_milli, value, unit, raw, description}], supply,"
            " supply_error}."
        ),
    )
    read.add_argument("device", metavar="DEVICE", help="a Modbus device id (or its meter id)")
    read.add_argument("-c", "--config", required=True, metavar="SITE.yaml", help="the site")
    read.add_argument("--json", action="store_true", help=_JSON_HELP)
    read.add_argument(
        "--force", action="store_true", help="use an RTU bus even while the daemon polls it"
    )
    read.set_defaults(func=_meter_read)
    accept = meter_commands.add_parser(
        "accept",
        help="accept the new level of a reset or swapped meter (meter_reset_or_swap)",
        description=(
            "A meter whose held readings continue from a new level (reset, swapped, rescaled)"
            " stays held with one meter_reset_or_swap alarm until someone decides. This signs"
            " the decision with the operator's key and hands it to the running daemon (the"
            " same path as the backend's cmd/meter): billing continues from the new level;"
            " the readings held before it stay held, never billed. Rejected (exit 1) when the"
            " meter has no such decision pending. Exit 0 also when the daemon is not running:"
            " the decision stays queued."
        ),
    )
    accept.add_argument("meter", metavar="METER", help="the meter id of the site file")
    accept.add_argument("--reason", required=True, help="why (journalled with the decision)")
    accept.add_argument("--operator-key", required=True, metavar="OPERATOR.pem")
    accept.add_argument("-c", "--config", required=True, metavar="SITE.yaml", help="the site")
    accept.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the result")
    accept.add_argument("--json", action="store_true", help="print the result as JSON")
    accept.set_defaults(func=_meter_accept)

    modbus = commands.add_parser(
        "modbus", help="Modbus bus tools (scan)", description="Modbus bus tools."
    )
    modbus_commands = modbus.add_subparsers(dest="modbus_command", required=True)
    scan = modbus_commands.add_parser(
        "scan",
        help="which unit ids answer on a bus",
        description=(
            "Ask each unit id once (one register, a short timeout, no retry) and list those"
            " that answer: with a value, with a Modbus exception (a device is there all the"
            " same) or garbled; configured devices that stayed silent are listed too. Progress"
            f" goes to stderr. {_SHARED_BUS} JSON: {{bus, endpoint, units_scanned, answered:"
            " [{unit_id, reply, detail, device}], silent_configured: [{unit_id, device}]}."
        ),
    )
    scan.add_argument("--bus", required=True, metavar="B", help="a bus name of the site file")
    scan.add_argument(
        "--units",
        default=f"{modbus_scan.FIRST_UNIT}-{modbus_scan.LAST_UNIT}",
        metavar="RANGE",
        help="unit ids: N, N-M or a list (1,5,10-20); within 1-247 (default: all)",
    )
    scan.add_argument("-c", "--config", required=True, metavar="SITE.yaml", help="the site")
    scan.add_argument(
        "--timeout",
        type=float,
        default=modbus_scan.DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"seconds to wait for each unit (default {modbus_scan.DEFAULT_TIMEOUT_S})",
    )
    scan.add_argument(
        "--register", type=int, default=0, metavar="ADDR", help="register to ask for (0)"
    )
    scan.add_argument(
        "--table", choices=["holding", "input"], default="holding", help="FC03 or FC04"
    )
    scan.add_argument("--quiet", action="store_true", help="no progress on stderr")
    scan.add_argument("--json", action="store_true", help=_JSON_HELP)
    scan.add_argument(
        "--force", action="store_true", help="use an RTU bus even while the daemon polls it"
    )
    scan.set_defaults(func=_modbus_scan)

    supply_cmd = commands.add_parser(
        "supply",
        help="switch a supply on or off by hand (an override through the daemon)",
        description=(
            "Force the relay or valve DEVICE on or off, or hand it back to the policy (auto),"
            " through the same signed, journalled path as a backend supply command: signed with"
            " the operator key, dropped in the spool and applied by the running daemon, which"
            " drives the device and reads it back. The answer says what the device confirmed,"
            " or 'requested, not yet confirmed' when it has not within --wait. Exit 0 when the"
            " daemon applied it (confirmed or not) or it is still queued (daemon not running),"
            " 1 when rejected. JSON: {command_id, device, account, override, status, reason,"
            " detail, supply_wanted, confirmed, supply_confirmed, supply_confirmed_at,"
            " expires_at}."
        ),
    )
    supply_cmd.add_argument(
        "override", choices=["on", "off", "auto"], help="on, off, or auto (the policy decides)"
    )
    supply_cmd.add_argument("device", metavar="DEVICE", help="the supply device (an actuator)")
    supply_cmd.add_argument("--reason", required=True, help="why, journalled with the override")
    supply_cmd.add_argument("-c", "--config", required=True, metavar="SITE.yaml", help="the site")
    supply_cmd.add_argument(
        "--operator-key", required=True, metavar="OPERATOR.pem", help="the operator's key"
    )
    supply_cmd.add_argument(
        "--wait",
        type=float,
        default=20.0,
        metavar="S",
        help="seconds to wait for the result and the device's confirmation (20)",
    )
    supply_cmd.add_argument("--json", action="store_true", help=_JSON_HELP)
    supply_cmd.set_defaults(func=_supply)
