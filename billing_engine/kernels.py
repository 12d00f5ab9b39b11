"""Which build of the billing kernel a process runs: ahead of time (AOT) or just in time (JIT).

Both are Numba builds of the same function, `kernel.bill_batch`:

- **JIT**: ``import billing_engine.kernel``. Numba and LLVM stay resident, about 140 MB (llvmlite
  alone is about 40 MB, Numba's lowering registries another 45 MB), which is most of what a
  Raspberry-Pi-class box has to spare.
- **AOT**: Numba's ahead-of-time compiler (`numba.pycc`) turns the same Python source into a C
  extension module once, in a child process, so Numba's memory is given back when the child
  ends. Loading the module takes NumPy only (under 1 MB). The build needs a C compiler and
  the Python headers, as any extension module build does, and takes a few seconds.

The module's name carries a fingerprint of the kernel's source, the Numba version and the
interpreter ABI, so a module built from other code is never loaded; a stale one is just left
in the cache directory. ``auto`` uses AOT when it can be built or is already there, and falls
back to JIT (and says why) when it cannot; ``aot`` refuses to start without it; ``jit`` never
builds. Tests and the reference comparison run both, and they must agree to the last unit.

`numba.pycc` is marked "pending deprecation" by Numba (since 0.57) with no replacement yet; if
a later Numba drops it, ``auto`` keeps working on the JIT.
"""

from __future__ import annotations

import enum
import hashlib
import importlib.util
import logging
import os
import platform
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from billing_engine.base.errors import PrepayError

logger = logging.getLogger(__name__)

BillBatch = Callable[..., None]
"""`kernel.bill_batch`'s calling convention (20 NumPy arrays and integers, filled in place)."""

_PACKAGE_DIR = Path(__file__).resolve().parent
_SOURCES = ("kernel.py", "layout.py")  # what the compiled code is made of
_BUILD_TIMEOUT_S = 900.0  # a cold Numba compile on a slow ARM board takes minutes


class KernelMode(enum.StrEnum):
    AUTO = "auto"
    AOT = "aot"
    JIT = "jit"


class KernelUnavailableError(PrepayError):
    """The ahead-of-time kernel could not be built or loaded."""


@dataclass(frozen=True)
class Kernel:
    """A loaded kernel and how it came to be the one in use."""

    bill_batch: BillBatch
    mode: KernelMode  # AOT or JIT: what runs, never AUTO
    path: Path | None  # the AOT module's file
    reason: str  # one line for the log and `prepay kernel info`


def fingerprint() -> str:
    """Identifies the compiled code: kernel source, Numba version, interpreter ABI, machine."""
    digest = hashlib.sha256()
    for name in _SOURCES:
        digest.update((_PACKAGE_DIR / name).read_bytes())
    for part in (
        metadata.version("numba"),
        sys.implementation.cache_tag or "",
        platform.machine(),
        _ext_suffix(),
    ):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:16]


def module_name() -> str:
    return f"prepay_kernel_{fingerprint()}"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/prepay-gateway/kernels`` (``~/.cache`` when unset); systemd's
    ``CacheDirectory=`` points ``XDG_CACHE_HOME`` at ``/var/cache/prepay-gateway``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prepay-gateway" / "kernels"


def aot_path(cache_dir: Path) -> Path:
    return cache_dir / f"{module_name()}{_ext_suffix()}"


def build_aot(cache_dir: Path, *, timeout_s: float = _BUILD_TIMEOUT_S) -> Path:
    """Compile the AOT module into ``cache_dir`` in a child process; returns its path.

    Raises:
        KernelUnavailableError: the build failed (no C compiler or Python headers, no
            `numba.pycc`), with the tail of the compiler's output.
    """
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only or foreign cache directory: `auto` falls back
        raise KernelUnavailableError(f"cannot use {cache_dir} for the kernel: {exc}") from exc
    env = dict(os.environ)
    env.pop("NUMBA_DISABLE_JIT", None)  # pycc compiles the njit helpers; it needs them compiled
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_PACKAGE_DIR.parent), env.get("PYTHONPATH")) if p
    )
    command = [sys.executable, "-m", "billing_engine.aot", str(cache_dir), module_name()]
    try:
        done = subprocess.run(  # noqa: S603 - our own interpreter and module
            command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelUnavailableError(f"building the ahead-of-time kernel: {exc}") from exc
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise KernelUnavailableError(
            f"building the ahead-of-time kernel failed (exit {done.returncode}): {tail}"
        )
    path = aot_path(cache_dir)
    if not path.is_file():
        raise KernelUnavailableError(f"the ahead-of-time build left no {path}")
    return path


def load_aot(path: Path) -> BillBatch:
    """Import the AOT module at ``path``.

    Raises:
        KernelUnavailableError: it cannot be imported (wrong ABI, damaged file).
    """
    name = path.name.split(".")[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise KernelUnavailableError(f"{path} is not an extension module")
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError as exc:
        raise KernelUnavailableError(f"loading {path}: {exc}") from exc
    bill_batch: BillBatch = module.bill_batch
    return bill_batch


def load_jit() -> BillBatch:
    from billing_engine import kernel  # noqa: PLC0415 - Numba and LLVM load only when asked

    return kernel.bill_batch


def select(mode: KernelMode | str, cache_dir: Path | None = None) -> Kernel:
    """Load the kernel ``mode`` asks for (building the AOT module when it is missing).

    Raises:
        KernelUnavailableError: ``mode`` is ``aot`` and the AOT module can be neither loaded
            nor built.
    """
    mode = KernelMode(mode)
    if mode is KernelMode.JIT:
        return Kernel(load_jit(), KernelMode.JIT, None, "jit: configured")
    if mode is KernelMode.AUTO and os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0"):
        return Kernel(load_jit(), KernelMode.JIT, None, "jit: NUMBA_DISABLE_JIT is set")
    directory = cache_dir if cache_dir is not None else default_cache_dir()
    path = aot_path(directory)
    try:
        how = "loaded"
        if not path.is_file():
            logger.info("building the ahead-of-time billing kernel into %s", directory)
            path = build_aot(directory)
            how = "built"
        return Kernel(load_aot(path), KernelMode.AOT, path, f"aot: {how} {path}")
    except KernelUnavailableError as exc:
        if mode is KernelMode.AOT:
            raise
        return Kernel(load_jit(), KernelMode.JIT, None, f"jit: no ahead-of-time kernel ({exc})")


_active: Kernel | None = None


def use(kernel: Kernel) -> None:
    """Make ``kernel`` the one engines without their own use (the daemon picks it at start)."""
    global _active  # noqa: PLW0603 - one kernel per process, like Numba's own configuration
    _active = kernel


def active() -> Kernel:
    """The kernel in use; the JIT unless `use` chose another."""
    global _active  # noqa: PLW0603
    if _active is None:
        _active = Kernel(load_jit(), KernelMode.JIT, None, "jit: default")
    return _active


def _ext_suffix() -> str:
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    return str(suffix) if suffix else ".so"
