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
from billing_engine.errors import InvalidConfigError, PrepayError
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


def _print_errors(exc: InvalidConfigError) -> int:
    for error in exc.errors:
        print(error, file=sys.stderr)
    return EXIT_INVALID


def _check_config(args: argparse.Namespace) -> int:
    from gateway.config import load_site  # noqa: PLC0415 - keeps `prepay tariff` light

    try:
        site = load_site(Path(args.config))
    except InvalidConfigError as exc:
        return _print_errors(exc)
    cfg = site.config
    print(
        f"{args.config}: ok (site {cfg.site}: {len(cfg.accounts)} accounts, "
        f"{len(site.tariffs)} tariffs, {len(cfg.devices.modbus_buses)} Modbus buses, "
        f"{len(cfg.devices.lns)} network servers, {len(cfg.devices.ble_dispensers)} dispensers)"
    )
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415
    import logging  # noqa: PLC0415

    from gateway.daemon import serve  # noqa: PLC0415

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(serve(Path(args.config)))
    except InvalidConfigError as exc:
        print("refusing to start: the configuration is invalid", file=sys.stderr)
        return _print_errors(exc)
    except PrepayError as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return EXIT_INVALID


def _status(args: argparse.Namespace) -> int:
    from gateway.config import load_site  # noqa: PLC0415
    from gateway.status import collect, render, to_json  # noqa: PLC0415

    try:
        status = collect(load_site(Path(args.config)), events=args.events)
    except InvalidConfigError as exc:
        return _print_errors(exc)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    print(json.dumps(to_json(status)) if args.json else render(status))
    return EXIT_OK


def _kernel_cache_dir(args: argparse.Namespace) -> Path:
    from billing_engine import kernels  # noqa: PLC0415
    from gateway.config import load_site  # noqa: PLC0415

    if args.cache_dir:
        return Path(args.cache_dir)
    if args.config:
        site = load_site(Path(args.config))
        if site.config.billing.kernel_cache_dir is not None:
            return site.resolve(site.config.billing.kernel_cache_dir)
    return kernels.default_cache_dir()


def _kernel_build(args: argparse.Namespace) -> int:
    from billing_engine import kernels  # noqa: PLC0415

    try:
        path = kernels.build_aot(_kernel_cache_dir(args))
        kernels.load_aot(path)  # proves it imports here
    except InvalidConfigError as exc:
        return _print_errors(exc)
    except kernels.KernelUnavailableError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    print(f"built {path}")
    return EXIT_OK


def _kernel_info(args: argparse.Namespace) -> int:
    from billing_engine import kernels  # noqa: PLC0415

    try:
        path = kernels.aot_path(_kernel_cache_dir(args))
    except InvalidConfigError as exc:
        return _print_errors(exc)
    state = "present" if path.is_file() else "not built (`prepay kernel build`)"
    print(f"ahead-of-time kernel: {path}: {state}")
    return EXIT_OK if path.is_file() else EXIT_INVALID


def _ledger_verify(args: argparse.Namespace) -> int:
    from gateway.daemon import STATE_FILE, read_ledger_key  # noqa: PLC0415
    from gateway.store import verify_ledger  # noqa: PLC0415

    key = read_ledger_key(Path(args.key))
    report = verify_ledger(Path(args.state) / STATE_FILE, key)
    if report.ok:
        print(f"ledger ok: {report.entries_checked} entries, chain intact")
        return EXIT_OK
    for problem in report.problems:
        print(f"seq {problem.seq}: {problem.kind.value}: {problem.message}", file=sys.stderr)
    return EXIT_INVALID


def _keys_init(args: argparse.Namespace) -> int:
    from gateway.keys import init_keys  # noqa: PLC0415

    for path in init_keys(Path(args.directory), with_backend=args.with_backend):
        print(f"wrote {path}")
    return EXIT_OK


def _topup(args: argparse.Namespace) -> int:
    import time  # noqa: PLC0415
    import uuid  # noqa: PLC0415
    from datetime import UTC, datetime  # noqa: PLC0415

    from gateway.config import load_site  # noqa: PLC0415
    from gateway.northbound.commands import (  # noqa: PLC0415
        load_private_key,
        new_command,
        sign_command,
    )
    from gateway.northbound.topics import CommandKind  # noqa: PLC0415
    from gateway.spool import result_path, submit  # noqa: PLC0415

    try:
        site = load_site(Path(args.config))
    except InvalidConfigError as exc:
        return _print_errors(exc)
    account = next((a for a in site.config.accounts if a.id == args.account), None)
    if account is None:
        print(f"unknown account {args.account!r}", file=sys.stderr)
        return EXIT_INVALID
    currency = account.currency or site.tariffs[account.tariff].currency
    try:
        amount = money.to_scaled(
            Decimal(args.amount), 10 ** money.currency_exponent(currency), "amount"
        )
    except ValueError as exc:
        print(f"--amount: {exc}", file=sys.stderr)
        return EXIT_USAGE
    key = load_private_key(Path(args.operator_key).read_bytes())
    fields = {
        "account": account.id,
        "amount_minor": amount,
        "currency": currency,
        "payment_ref": f"operator:{args.reference}",
    }
    body = new_command(
        CommandKind.TOPUP,
        site.config.site,
        fields,
        now=datetime.now(UTC),
        command_id=f"op-{uuid.uuid4()}",
    )
    command = sign_command(body, key)
    submit(site.state_dir, "topup", command)
    print(f"top-up {command['id']} queued for {account.id}: {money.format_minor(amount, currency)}")
    deadline = time.monotonic() + args.wait
    result = result_path(site.state_dir, command["id"])
    while time.monotonic() < deadline:
        if result.exists():
            doc = json.loads(result.read_text())
            print(json.dumps(doc, ensure_ascii=False))
            return EXIT_OK if doc.get("status") in ("applied", "duplicate") else EXIT_INVALID
        time.sleep(0.2)
    print("the gateway has not applied it yet (is it running?); it stays queued", file=sys.stderr)
    return EXIT_OK


def _sim(args: argparse.Namespace) -> int:
    # firmware_sim is not a dependency of the gateway (import contract): load it by name.
    module = importlib.import_module("firmware_sim.__main__")
    return int(module.main(args.rest))


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

    check_cfg = commands.add_parser("check-config", help="validate a site file")
    check_cfg.add_argument("-c", "--config", required=True, metavar="SITE.yaml")
    check_cfg.set_defaults(func=_check_config)

    run = commands.add_parser("run", help="run the gateway daemon")
    run.add_argument("-c", "--config", required=True, metavar="SITE.yaml")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=_run)

    status = commands.add_parser(
        "status", help="journal, outbox, accounts and recent events, from the store"
    )
    status.add_argument("-c", "--config", required=True, help="the site file")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.add_argument("--events", type=int, default=10, help="how many recent events")
    status.set_defaults(func=_status)

    kernel = commands.add_parser("kernel", help="the billing kernel's ahead-of-time build")
    kernel_commands = kernel.add_subparsers(dest="kernel_command", required=True)
    for name, func, text in (
        ("build", _kernel_build, "build the ahead-of-time kernel (a C compiler is needed)"),
        ("info", _kernel_info, "show where the ahead-of-time kernel is and whether it is built"),
    ):
        sub = kernel_commands.add_parser(name, help=text)
        where = sub.add_mutually_exclusive_group()
        where.add_argument("-c", "--config", help="a site file (its billing.kernel_cache_dir)")
        where.add_argument("--cache-dir", help="the cache directory")
        sub.set_defaults(func=func)

    ledger = commands.add_parser("ledger", help="ledger tools")
    ledger_commands = ledger.add_subparsers(dest="ledger_command", required=True)
    verify = ledger_commands.add_parser("verify", help="check the HMAC chain of the ledger")
    verify.add_argument("--state", required=True, metavar="DIR")
    verify.add_argument("--key", required=True, metavar="LEDGER.key")
    verify.set_defaults(func=_ledger_verify)

    keys = commands.add_parser("keys", help="key files")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    init = keys_commands.add_parser("init", help="generate a site's key set")
    init.add_argument("directory", metavar="DIR")
    init.add_argument(
        "--with-backend",
        action="store_true",
        help="also a stand-in backend key pair (demos, tests)",
    )
    init.set_defaults(func=_keys_init)

    topup = commands.add_parser("topup", help="apply a local, operator-signed top-up")
    topup.add_argument("-c", "--config", required=True, metavar="SITE.yaml")
    topup.add_argument("--account", required=True)
    topup.add_argument("--amount", required=True, help="in major units, e.g. 50.00")
    topup.add_argument("--operator-key", required=True, metavar="OPERATOR.pem")
    topup.add_argument("--reference", default="counter", help="receipt / payment reference")
    topup.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the result")
    topup.set_defaults(func=_topup)

    sim = commands.add_parser("sim", help="run simulated devices (firmware_sim)")
    sim.add_argument("rest", nargs=argparse.REMAINDER)
    sim.set_defaults(func=_sim)

    bench = commands.add_parser("bench", help="run a benchmark from bench/")
    bench.add_argument("name", choices=["billing", "gateway", "modbus"])
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # `prepay sim` and `prepay bench NAME` hand their options to another program's parser.
    args, extra = parser.parse_known_args(argv)
    if args.command in {"sim", "bench"}:
        args.rest = [*extra, *args.rest]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
