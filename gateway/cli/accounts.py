"""``prepay account list|show|statement``: the accounts and their ledger, read from the store."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gateway.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_USAGE,
    Commands,
    answer,
    site_of,
)
from gateway.ops import accounts, statement
from gateway.store import StoreError

_READS = (
    "Reads one snapshot of the store: safe while the daemon runs (it is never blocked, nothing"
    " is written) and without the network."
)
_JSON_HELP = "one JSON object (money in integer minor units, times RFC 3339 UTC)"


def _list(args: argparse.Namespace) -> int:
    site = site_of(args)
    if isinstance(site, int):
        return site
    try:
        found = accounts.collect(site)
    except StoreError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        doc = {"site": site.config.site, "accounts": [accounts.summary_json(a) for a in found]}
        return answer(json.dumps(doc))
    return answer(accounts.render_list(site, found))


def _show(args: argparse.Namespace) -> int:
    site = site_of(args)
    if isinstance(site, int):
        return site
    try:
        found = accounts.detail(site, args.account, recent=args.entries)
    except (StoreError, accounts.UnknownAccountError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        doc = {
            **accounts.summary_json(found.summary),
            "recent_entries": [accounts.line_json(line) for line in found.recent],
        }
        return answer(json.dumps(doc))
    return answer(accounts.render_detail(found))


def _statement(args: argparse.Namespace) -> int:
    if args.json and args.csv == "-":
        print("--json and --csv - both want stdout; give --csv a FILE", file=sys.stderr)
        return EXIT_USAGE
    try:
        period = statement.parse_period(args.start, args.end)
    except statement.PeriodError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    site = site_of(args)
    if isinstance(site, int):
        return site
    try:
        found = statement.build(site, args.account, period)
    except (StoreError, statement.UnknownAccountError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    if args.csv == "-":
        statement.write_csv(found, sys.stdout)
        return EXIT_OK
    if args.csv is not None:
        try:
            with Path(args.csv).open("w", newline="", encoding="utf-8") as handle:
                statement.write_csv(found, handle)
        except OSError as exc:
            print(f"--csv {args.csv}: cannot write: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_INVALID
        if not args.json:
            return answer(f"{args.csv}: {len(found.lines)} entries of account {found.account}")
    if args.json:
        return answer(json.dumps(statement.to_json(found)))
    return answer(statement.render(found))


def register(commands: Commands) -> None:
    account = commands.add_parser(
        "account",
        help="accounts: balances, supply, ledger history (from the store)",
        description=f"Where the site's accounts stand, and their ledger history. {_READS}",
    )
    account_commands = account.add_subparsers(dest="account_command", required=True)

    list_cmd = account_commands.add_parser(
        "list",
        help="every account: balance, state, supply wanted and confirmed, last reading",
        description=(
            "Every account of the site (the site file with the backend's changes): balance,"
            " debt, policy state, the supply the policy wants and the supply the device last"
            f" confirmed (with its time), and the time of the last reading. {_READS}"
            " JSON: {site, accounts: [{account, meter, actuator, tariff, class, policy,"
            " currency, balance_minor, debt_minor, state, supply_wanted, override,"
            " override_reason, override_until, supply_confirmed, supply_confirmed_at,"
            " supply_pending, last_reading_at, ledger_entries}]}."
        ),
    )
    list_cmd.add_argument("-c", "--config", required=True, metavar="SITE.yaml", help="the site")
    list_cmd.add_argument("--json", action="store_true", help=_JSON_HELP)
    list_cmd.set_defaults(func=_list)

    show = account_commands.add_parser(
        "show",
        help="one account in full, with its newest ledger entries",
        description=(
            "One account: everything `account list` shows, its tariff, class, policy and"
            f" supply override, and its newest ledger entries. {_READS} JSON: the object of"
            " `account list` plus recent_entries (as `account statement`'s entries)."
        ),
    )
    show.add_argument("account", metavar="ACCOUNT", help="the account id")
    show.add_argument("-c", "--config", required=True, metavar="SITE.yaml", help="the site")
    show.add_argument("--json", action="store_true", help=_JSON_HELP)
    show.add_argument(
        "--entries", type=int, default=5, metavar="N", help="newest ledger entries to show (5)"
    )
    show.set_defaults(func=_show)

    stmt = account_commands.add_parser(
        "statement",
        help="an account's ledger history for a period (text, JSON or CSV)",
        description=(
            "The ledger entries of one account: seq, time, kind, amount, balance after it,"
            " reference (command id of a top-up or refund, reading id of a deduction) and the"
            " top-up's receipt seq, between an opening and a closing balance. DATE is a UTC"
            " day (2026-06-01; --to includes all of that day) or a time with its offset"
            f" (2026-06-01T08:00+08:00; --to ends just before it). {_READS} JSON: {{account,"
            " currency, from, to, opening_balance_minor, closing_balance_minor, entries:"
            " [{seq, at, kind, amount_minor, currency, balance_after_minor, reference,"
            " receipt_seq}]}. CSV columns: " + ",".join(statement.CSV_COLUMNS) + "."
        ),
    )
    stmt.add_argument("account", metavar="ACCOUNT", help="the account id")
    stmt.add_argument("-c", "--config", required=True, metavar="SITE.yaml", help="the site")
    stmt.add_argument(
        "--from", dest="start", metavar="DATE", help="first day (or time) of the period"
    )
    stmt.add_argument("--to", dest="end", metavar="DATE", help="last day (or end time) of it")
    stmt.add_argument(
        "--csv", metavar="FILE|-", help="write the entries as CSV to FILE, or to stdout with -"
    )
    stmt.add_argument("--json", action="store_true", help=_JSON_HELP)
    stmt.set_defaults(func=_statement)
