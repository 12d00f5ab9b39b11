"""``prepay tariff check|quote``: validate tariff files and price readings, itemised."""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal
from pathlib import Path

from billing_engine import money
from billing_engine.base.errors import InvalidConfigError
from billing_engine.quote import load_readings_csv, quote
from billing_engine.tariff import load_tariff
from gateway.cli.common import EXIT_INVALID, EXIT_OK, EXIT_USAGE, Commands


def _tariff_check(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for path in args.files:
        try:
            tariff = load_tariff(Path(path))
        except InvalidConfigError as exc:
            for error in exc.errors:
                print(error, file=sys.stderr)
            status = EXIT_INVALID
        else:
            print(
                f"{path}: ok ({tariff.id}: {len(tariff.versions)} version(s), "
                f"classes {', '.join(tariff.class_names)})"
            )
    return status


def _tariff_quote(args: argparse.Namespace) -> int:
    try:
        tariff = load_tariff(Path(args.tariff))
        readings = load_readings_csv(Path(args.readings))
    except InvalidConfigError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return EXIT_INVALID
    class_name = args.class_name or tariff.class_names[0]
    if class_name not in tariff.class_names:
        print(
            f"{args.tariff}: unknown class {class_name!r}; the tariff has "
            f"{', '.join(tariff.class_names)}",
            file=sys.stderr,
        )
        return EXIT_INVALID
    try:
        opening = money.to_scaled(Decimal(args.opening_usage), money.QTY_SCALE, "opening usage")
    except ValueError as exc:
        print(f"--opening-usage: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = quote(tariff, class_name, readings, opening_usage_milli=opening)
    print(result.render())
    if args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    return EXIT_OK


def register(commands: Commands) -> None:
    tariff = commands.add_parser("tariff", help="check and quote tariff files", description=__doc__)
    tariff_commands = tariff.add_subparsers(dest="tariff_command", required=True)
    check = tariff_commands.add_parser("check", help="validate tariff files")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=_tariff_check)
    q = tariff_commands.add_parser("quote", help="price a CSV of readings, itemised")
    q.add_argument("--tariff", required=True, metavar="FILE")
    q.add_argument("--class", dest="class_name", metavar="C")
    q.add_argument(
        "--opening-usage",
        default="0",
        metavar="Q",
        help="quantity already used in the cycle of the first reading (tariff units)",
    )
    q.add_argument(
        "--readings",
        required=True,
        metavar="FILE.csv",
        help="rows of timestamp,register (ISO 8601 with offset, tariff units)",
    )
    q.add_argument("--json", action="store_true", help="end with one JSON line")
    q.set_defaults(func=_tariff_quote)
