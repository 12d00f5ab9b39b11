"""``prepay sim`` / ``python -m firmware_sim``: run a whole simulated site until SIGTERM/SIGINT.

Usage::

    python -m firmware_sim -c configs/sites/demo-scenario.yaml --status .demo/sim-status.json
    prepay sim -- -c configs/sites/demo-scenario.yaml        # or: prepay sim SCENARIO.yaml
    prepay sim modbus --tcp 127.0.0.1:5020 --meter 1:eastron_sdm120   # one Modbus server
    prepay sim lora --port 1883 --application-id APP --meter 24e124136b000001

The scenario (`firmware_sim.scenario`) lists the Modbus TCP servers, the RS485 lines (socat pty
pairs), the LoRa devices, the BLE dispensers (served on a Unix-domain socket,
`firmware_sim.ble_remote`) and a fault schedule. On start the program prints one line per server
(the TCP port, the gateway's end of each pty pair, the broker) and then ``ready`` on stdout;
on SIGTERM or SIGINT it stops the servers and socat, writes the status file a last time, prints
``stopped`` and exits 0. Exit status 1: the scenario is invalid (``FILE:LINE: field: message``
lines on stderr) or a server could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from billing_engine.base.errors import InvalidConfigError
from drivers.modbus.profiles import load_profiles
from firmware_sim.scenario import Scenario, load_scenario
from firmware_sim.site_runtime import SimulatedSite

logger = logging.getLogger("firmware_sim")

EXIT_OK = 0
EXIT_FAILED = 1


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prepay sim",
        description=(
            "Run a simulated site (Modbus TCP/RTU meters, LoRa meters and valves, "
            "BLE water dispensers on a Unix socket)."
        ),
    )
    parser.add_argument("scenario", nargs="?", type=Path, metavar="SCENARIO.yaml")
    parser.add_argument("-c", "--config", type=Path, metavar="SCENARIO.yaml")
    parser.add_argument(
        "--status", type=Path, metavar="FILE", help="JSON status file: supply and registers"
    )
    parser.add_argument(
        "--control",
        type=Path,
        metavar="FILE",
        help="append 'DEVICE FAULT [COUNT] [option=value ...]' lines here to trigger faults",
    )
    parser.add_argument(
        "--stdin", action="store_true", help="also read control lines from standard input"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    return parser


async def _run(
    scenario: Scenario, site: SimulatedSite, control: Path | None, *, stdin: bool
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with site:
        _say(f"ready: scenario {scenario.name}, speed x{scenario.speed:g}")
        runner = asyncio.create_task(site.run(control, stdin=stdin), name="sim.site")
        stopping = asyncio.create_task(stop.wait(), name="sim.stop")
        await asyncio.wait({runner, stopping}, return_when=asyncio.FIRST_COMPLETED)
        runner.cancel()
        stopping.cancel()
        await asyncio.wait({runner, stopping})
        if not runner.cancelled():
            runner.result()  # re-raises what ended the site early


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m firmware_sim`` and ``prepay sim``."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["--"]:
        args_in = args_in[1:]  # `prepay sim -- -c FILE`
    if args_in[:1] == ["modbus"]:
        from firmware_sim import modbus_meter  # noqa: PLC0415

        return modbus_meter.main(args_in[1:])
    if args_in[:1] == ["lora"]:
        from firmware_sim import lns_uplink  # noqa: PLC0415

        lns_uplink.main(args_in[1:])
        return EXIT_OK
    parser = _parser()
    args = parser.parse_args(args_in)
    path: Path | None = args.config or args.scenario
    if path is None:
        parser.error("give a scenario: -c SCENARIO.yaml")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        scenario = load_scenario(path)
        names = [m.profile for _, m in scenario.modbus_meters()]
        profiles = load_profiles(scenario.profiles_path(path), names)
    except InvalidConfigError as exc:
        for error in exc.errors:
            sys.stderr.write(f"{error}\n")
        return EXIT_FAILED
    site = SimulatedSite(
        scenario,
        profiles,
        base_dir=path.resolve().parent,
        status_path=args.status,
        announce=_say,
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_run(scenario, site, args.control, stdin=args.stdin))
    except (OSError, RuntimeError) as exc:
        sys.stderr.write(f"prepay sim: {exc}\n")
        return EXIT_FAILED
    _say("stopped")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
