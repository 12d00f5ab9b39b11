"""The ``prepay`` command: argument parsing only; each subcommand calls into a module."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from billing_engine import kernels, money
from billing_engine.base.errors import InvalidConfigError, PrepayError
from billing_engine.quote import load_readings_csv, quote
from billing_engine.tariff import load_tariff
from gateway.config import load_site
from gateway.ops import keys, ledger_check, status, store_init, topup
from gateway.startup import read_ledger_key

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
    # The daemon (asyncio, the flows, the MQTT library) loads only for `prepay run`: the other
    # commands stay light on a small box.
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
    try:
        site_status = status.collect(load_site(Path(args.config)), events=args.events)
    except InvalidConfigError as exc:
        return _print_errors(exc)
    except (FileNotFoundError, PrepayError) as exc:  # no store yet; a key file too open
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    print(json.dumps(status.to_json(site_status)) if args.json else status.render(site_status))
    return EXIT_OK


def _kernel_cache_dir(args: argparse.Namespace) -> Path:
    if args.cache_dir:
        return Path(args.cache_dir)
    if args.config:
        site = load_site(Path(args.config))
        if site.config.billing.kernel_cache_dir is not None:
            return site.resolve(site.config.billing.kernel_cache_dir)
    return kernels.default_cache_dir()


def _kernel_build(args: argparse.Namespace) -> int:
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
    try:
        path = kernels.aot_path(_kernel_cache_dir(args))
    except InvalidConfigError as exc:
        return _print_errors(exc)
    state = "present" if path.is_file() else "not built (`prepay kernel build`)"
    print(f"ahead-of-time kernel: {path}: {state}")
    return EXIT_OK if path.is_file() else EXIT_INVALID


def _ledger_verify(args: argparse.Namespace) -> int:
    if args.gateway_key and not args.checkpoint:
        print("--gateway-key checks a --checkpoint's signature; give both", file=sys.stderr)
        return EXIT_USAGE
    try:
        key = read_ledger_key(Path(args.key))
    except PrepayError as exc:  # the key file is too open
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    try:
        checkpoint = None
        if args.checkpoint:
            gateway_key = Path(args.gateway_key) if args.gateway_key else None
            checkpoint = ledger_check.load_checkpoint(Path(args.checkpoint), gateway_key)
        verdict = ledger_check.verify(
            Path(args.state), key, expected_head=args.expected_head, checkpoint=checkpoint
        )
    except ledger_check.CheckpointFileError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    except ValueError as exc:  # --expected-head is not SEQ:MACHEX
        print(f"--expected-head: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PrepayError as exc:  # no store file, or unreadable
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    report = verdict.report
    if verdict.ok:
        reached = (
            f"; holds the expected head at seq {verdict.expected.seq}"
            if verdict.expected is not None
            else ""
        )
        print(f"ledger ok: {report.entries_checked} entries, chain intact{reached}")
        return EXIT_OK
    for problem in report.problems:
        print(f"seq {problem.seq}: {problem.kind.value}: {problem.message}", file=sys.stderr)
    for text in verdict.other_problems:
        print(f"checkpoint: {text}", file=sys.stderr)
    return EXIT_INVALID


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
        return _print_errors(exc)
    except (OSError, PrepayError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    replaced = f", replacing store {made.previous}" if made.previous else ""
    print(f"new store {made.incarnation} at {made.path}{replaced}; recorded in {made.marker}")
    return EXIT_OK


def _keys_init(args: argparse.Namespace) -> int:
    for path in keys.init_keys(Path(args.directory), with_backend=args.with_backend):
        print(f"wrote {path}")
    return EXIT_OK


def _topup(args: argparse.Namespace) -> int:
    try:
        site = load_site(Path(args.config))
    except InvalidConfigError as exc:
        return _print_errors(exc)
    try:
        queued = topup.queue_topup(
            site, args.account, args.amount, Path(args.operator_key), args.reference
        )
    except topup.TopupError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE if str(exc).startswith("--amount") else EXIT_INVALID
    except PrepayError as exc:  # the operator's key file is too open
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    amount = money.format_minor(queued.amount_minor, queued.currency)
    print(f"top-up {queued.command_id} queued for {queued.account}: {amount}")
    result = topup.wait_for_result(site, queued.command_id, args.wait)
    if result is None:
        print(
            "the gateway has not applied it yet (is it running?); it stays queued",
            file=sys.stderr,
        )
        return EXIT_OK
    print(json.dumps(result, ensure_ascii=False))
    return EXIT_OK if result.get("status") in ("applied", "duplicate") else EXIT_INVALID


def _exec_program(module: str, rest: Sequence[str], *, source_tree: bool = False) -> int:
    """Replace this process by ``python -m MODULE REST...``.

    The simulator and the benchmarks are programs of their own, not parts of the gateway (an
    import contract keeps the gateway from importing them): ``prepay sim`` and ``prepay bench``
    only start them, in the same process slot, so signals and exit codes are theirs.
    ``source_tree``: the module lives in the source checkout (benchmarks are not installed).
    """
    env = dict(os.environ)
    if source_tree:
        root = Path(__file__).resolve().parent.parent
        if not (root / module.split(".", maxsplit=1)[0]).is_dir():
            print(f"{module}: run it from a source checkout of prepay-gateway", file=sys.stderr)
            return EXIT_INVALID
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *rest], env)  # noqa: S606


def _sim(args: argparse.Namespace) -> int:
    return _exec_program("firmware_sim", args.rest)


def _bench(args: argparse.Namespace) -> int:
    return _exec_program(f"bench.{args.name}", args.rest, source_tree=True)


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
    head = verify.add_mutually_exclusive_group()
    head.add_argument(
        "--expected-head",
        metavar="SEQ:MACHEX",
        help="a head published earlier: the ledger must reach SEQ with this MAC there",
    )
    head.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="a checkpoint saved from prepay/{site}/checkpoint: the same check, and its store",
    )
    verify.add_argument(
        "--gateway-key",
        metavar="GATEWAY.pub.pem",
        help="check the --checkpoint's signature with the gateway's public key",
    )
    verify.set_defaults(func=_ledger_verify)

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
