"""The ``prepay`` command: argument parsing only; each subcommand calls into a module."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from billing_engine import money
from billing_engine.errors import InvalidConfigError
from billing_engine.quote import load_readings_csv, quote
from billing_engine.tariff import load_tariff

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


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


def _bench(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"bench.{args.name}")
    return int(module.main(args.rest))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prepay", description="Prepaid metering gateway.")
    commands = parser.add_subparsers(dest="command", required=True)

    tariff = commands.add_parser("tariff", help="check and quote tariff files")
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

    bench = commands.add_parser("bench", help="run a benchmark from bench/")
    bench.add_argument("name", choices=["billing", "gateway", "modbus"])
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
