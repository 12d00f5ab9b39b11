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
    ``source_tree``: the module lives in the source checkout (benchmarks are not installed).
    """
    env = dict(os.environ)
    if source_tree:
        root = Path(__file__).resolve().parents[2]
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


def register(commands: Commands) -> None:
    sim = commands.add_parser("sim", help="run simulated devices (firmware_sim)")
    sim.add_argument("rest", nargs=argparse.REMAINDER)
    sim.set_defaults(func=_sim)

    bench = commands.add_parser("bench", help="run a benchmark from bench/")
    bench.add_argument("name", choices=["billing", "gateway", "modbus"])
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)
