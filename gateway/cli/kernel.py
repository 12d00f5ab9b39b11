"""``prepay kernel build|info``: the billing kernel's ahead-of-time build."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from billing_engine import kernels
from billing_engine.base.errors import InvalidConfigError
from gateway.cli.common import EXIT_INVALID, EXIT_OK, Commands, print_errors
from gateway.config import load_site


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
        cache_dir = _kernel_cache_dir(args)
        # The build runs Numba and a C compiler in a child process for tens of seconds: say so.
        print(f"building the ahead-of-time billing kernel in {cache_dir} ...", flush=True)
        started = time.monotonic()
        path = kernels.build_aot(cache_dir)
        kernels.load_aot(path)  # proves it imports here
    except InvalidConfigError as exc:
        return print_errors(exc)
    except kernels.KernelUnavailableError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    print(f"built {path} in {time.monotonic() - started:.0f} s")
    return EXIT_OK


def _kernel_info(args: argparse.Namespace) -> int:
    try:
        path = kernels.aot_path(_kernel_cache_dir(args))
    except InvalidConfigError as exc:
        return print_errors(exc)
    state = "present" if path.is_file() else "not built (`prepay kernel build`)"
    print(f"ahead-of-time kernel: {path}: {state}")
    return EXIT_OK if path.is_file() else EXIT_INVALID


def register(commands: Commands) -> None:
    kernel = commands.add_parser(
        "kernel",
        help="the billing kernel's ahead-of-time build",
        description="The billing kernel's ahead-of-time build: a C extension the daemon loads"
        " instead of compiling with Numba at every start. It goes into the site's"
        " billing.kernel_cache_dir, or $XDG_CACHE_HOME/prepay-gateway/kernels (under systemd:"
        " /var/cache/prepay-gateway/kernels); build it as the user the daemon runs as.",
    )
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
