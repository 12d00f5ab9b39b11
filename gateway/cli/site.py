"""``prepay check-config|run|status|init``: a site file, its daemon, its store."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from billing_engine.base.errors import InvalidConfigError, PrepayError
from gateway import logs
from gateway.cli.common import EXIT_INVALID, EXIT_OK, EXIT_USAGE, Commands, print_errors
from gateway.config import load_site
from gateway.logs import LogFormat
from gateway.ops import status, store_init
from gateway.startup import preflight


def _check_config(args: argparse.Namespace) -> int:
    try:
        # Exactly what `prepay run` checks before it starts, and nothing is created.
        site = preflight(Path(args.config))
    except InvalidConfigError as exc:
        return print_errors(exc)
    cfg = site.config
    count = status.count
    print(
        f"{args.config}: ok (site {cfg.site}: {count(len(cfg.accounts), 'account')}, "
        f"{count(len(site.tariffs), 'tariff')}, "
        f"{count(len(cfg.devices.modbus_buses), 'Modbus bus', 'Modbus buses')}, "
        f"{count(len(cfg.devices.lns), 'network server')}, "
        f"{count(len(cfg.devices.ble_dispensers), 'dispenser')})"
    )
    if cfg.publish_only:
        meters = ", ".join(f"{m.meter} ({m.unit.value})" for m in cfg.publish_only)
        print(f"publish-only meters, published and never billed: {meters}")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    # The daemon (asyncio, the flows, the MQTT library) loads only for `prepay run`: the other
    # commands stay light on a small box.
    from gateway.daemon import serve  # noqa: PLC0415

    logs.configure(args.log_level, LogFormat(args.log_format))
    try:
        return asyncio.run(serve(Path(args.config)))
    except InvalidConfigError as exc:
        print("refusing to start: the configuration is invalid", file=sys.stderr)
        return print_errors(exc)
    except PrepayError as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return EXIT_INVALID


def _status(args: argparse.Namespace) -> int:
    try:
        site_status = status.collect(load_site(Path(args.config)), events=args.events)
    except InvalidConfigError as exc:
        return print_errors(exc)
    except (FileNotFoundError, PrepayError) as exc:  # no store yet; a key file too open
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    print(json.dumps(status.to_json(site_status)) if args.json else status.render(site_status))
    return EXIT_OK


def _init(args: argparse.Namespace) -> int:
    if not args.new_store:
        print(
            "prepay init --new-store starts a new, empty store for the site deliberately;"
            " nothing else to do",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        made = store_init.new_store(load_site(Path(args.config)))
    except InvalidConfigError as exc:
        return print_errors(exc)
    except (OSError, PrepayError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    replaced = f", replacing store {made.previous}" if made.previous else ""
    print(f"new store {made.incarnation} at {made.path}{replaced}; recorded in {made.marker}")
    return EXIT_OK


def register(commands: Commands) -> None:
    check_cfg = commands.add_parser("check-config", help="validate a site file")
    check_cfg.add_argument("-c", "--config", required=True, metavar="SITE.yaml")
    check_cfg.set_defaults(func=_check_config)

    run = commands.add_parser(
        "run",
        help="run the gateway daemon",
        description="Run the gateway daemon until SIGTERM or SIGINT; SIGHUP reloads tariffs,"
        " policies and accounts. Under systemd (Type=notify) it reports READY=1 and STATUS=,"
        " and pings the watchdog (WatchdogSec=) while the pipeline can take a turn.",
    )
    run.add_argument("-c", "--config", required=True, metavar="SITE.yaml")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument(
        "--log-format",
        default=LogFormat.TEXT.value,
        choices=[f.value for f in LogFormat],
        help="text: a timestamped line per record; json: one JSON object a line, for log shippers",
    )
    run.set_defaults(func=_run)

    status_cmd = commands.add_parser(
        "status", help="journal, outbox, accounts and recent events, from the store"
    )
    status_cmd.add_argument("-c", "--config", required=True, help="the site file")
    status_cmd.add_argument("--json", action="store_true", help="one JSON object")
    status_cmd.add_argument("--events", type=int, default=10, help="how many recent events")
    status_cmd.set_defaults(func=_status)

    init_store = commands.add_parser(
        "init", help="start a new, empty store for a site deliberately (--new-store)"
    )
    init_store.add_argument("-c", "--config", required=True, metavar="SITE.yaml")
    init_store.add_argument(
        "--new-store",
        action="store_true",
        help="create the site's store anew (never over an existing one) and record it",
    )
    init_store.set_defaults(func=_init)
