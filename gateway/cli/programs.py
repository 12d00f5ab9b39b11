"""``prepay sim`` and ``prepay bench NAME``: programs of their own, started in this slot."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.cli.common import EXIT_INVALID, Commands

# The subcommands whose options belong to another program's parser.
PASS_THROUGH = frozenset({"sim", "bench"})


def _exec_program(module: str, rest: Sequence[str], *, source_tree: bool = False) -> int:
    """Replace this process by ``python -m MODULE REST...``.

    The simulator and the benchmarks are programs of their own, not parts of the gateway (an
    import contract keeps the gateway from importing them): ``prepay sim`` and ``prepay bench``
    only start them, in the same process slot, so signals and exit codes are theirs.
    ``source_tree``: the module's package sits next to the gateway's (``bench/``, in the source
    checkout and in the installed wheel) but may not be importable as it is (an editable
    install maps only the packages it knew when it was made): that folder goes on the path.
    """
    env = dict(os.environ)
    if source_tree:
        root = Path(__file__).resolve().parents[2]
        if not (root / module.split(".", maxsplit=1)[0]).is_dir():
            print(
                f"{module}: not found next to the gateway in {root}; install prepay-gateway from"
                " its wheel, or run it from a source checkout",
                file=sys.stderr,
            )
            return EXIT_INVALID
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *rest], env)  # noqa: S606


def _sim(args: argparse.Namespace) -> int:
    return _exec_program("firmware_sim", args.rest)


def _bench(args: argparse.Namespace) -> int:
    return _exec_program(f"bench.{args.name}", args.rest, source_tree=True)


def register(commands: Commands) -> None:
    sim = commands.add_parser(
        "sim",
        help="run simulated devices (firmware_sim)",
        description="Run simulated devices (firmware_sim): Modbus meters and valves, LoRaWAN"
        " uplinks, BLE dispensers, as a program of their own, which takes the options given"
        " after `sim` (prepay sim -- --help lists them).",
    )
    sim.add_argument("rest", nargs=argparse.REMAINDER)
    sim.set_defaults(func=_sim)

    bench = commands.add_parser(
        "bench",
        help="run a benchmark from bench/",
        description="Run a benchmark from bench/ as a program of its own; options after NAME"
        " are its own (prepay bench NAME --help). billing needs only the wheel and a C compiler;"
        " gateway and modbus also start mosquitto and simulated meters.",
    )
    bench.add_argument(
        "name", choices=["billing", "console", "gateway", "modbus", "publish", "site", "tickets"]
    )
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)
