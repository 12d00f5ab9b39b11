"""What a start of the gateway opens, shared by the daemon and the operator's commands: the key
files, the state file, and the billing kernel the site asks for.

`prepay run` opens all three; `prepay status` and `prepay ledger verify` open the store and the
ledger key without the rest, so they work next to a running daemon and without the network.

Only the daemon claims the state directory (`claim_state_dir`): one ``prepay run`` per store,
held by an exclusive lock on ``STATE_DIR/prepay.lock`` for the life of the process; the directory
is kept 0700 and the store's files 0600 whatever the umask. A private key file that its group or
others may read is refused (`KeyPermissionError`), as ssh does.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from billing_engine import kernels
from billing_engine.base.errors import PrepayError
from gateway.config import Site
from gateway.northbound.signing import load_private_key, load_public_key
from gateway.store import Store

logger = logging.getLogger(__name__)

#: The SQLite file inside the site's state directory.
STATE_FILE = "prepay.sqlite"
#: The daemon's lock file inside the state directory (it holds the daemon's pid).
LOCK_FILE = "prepay.lock"

_DIR_MODE = 0o700
_FILE_MODE = 0o600


class KeyPermissionError(PrepayError):
    """A private key file may be read by its group or by others: it is not used."""


class KeyFileError(PrepayError):
    """A key file the site names is missing, unreadable or not a key of the expected kind."""


class AlreadyRunningError(PrepayError):
    """Another ``prepay run`` holds the site's state directory."""


def version() -> str:
    """The installed gateway's version (``0+unknown`` from a bare checkout)."""
    try:
        return metadata.version("prepay-gateway")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def read_private_key_file(path: Path) -> bytes:
    """The bytes of a private key file, refused when its group or others have any access.

    The mode is checked on the opened file, so what is read is what was checked.

    Raises:
        KeyPermissionError: the file's mode has group or other bits (``chmod 600`` fixes it).
        OSError: the file cannot be read.
    """
    with path.open("rb") as handle:
        mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        if mode & 0o077:
            raise KeyPermissionError(
                f"{path}: permissions {mode:04o} are too open; the key must be readable by its "
                f"owner only (chmod 600 {path})"
            )
        return handle.read()


def read_ledger_key(path: Path) -> bytes:
    """The ledger HMAC key: a file of hex digits (``prepay keys init`` writes one).

    Raises:
        KeyPermissionError: the file is readable by its group or others.
        ValueError: not hex, or shorter than 32 bytes.
    """
    key = bytes.fromhex(read_private_key_file(path).decode().strip())
    if len(key) < 32:
        raise ValueError(f"{path}: the ledger key must be at least 32 bytes")
    return key


@dataclass(frozen=True)
class Keys:
    """The site's keys, loaded: the ledger's HMAC key, the gateway's signing key, and the
    public keys that commands are verified against."""

    ledger: bytes
    gateway: Ed25519PrivateKey
    backend: Ed25519PublicKey
    operator: Ed25519PublicKey | None


def load_keys(site: Site) -> Keys:
    """Read the key files the site names (paths relative to the site file).

    Raises:
        KeyPermissionError: a private key file is readable by its group or others.
        KeyFileError: a key file is missing, unreadable or not a key.
    """
    cfg = site.config.keys
    try:
        operator = None
        if cfg.operator_public_key is not None:
            operator = load_public_key(site.resolve(cfg.operator_public_key).read_bytes())
        return Keys(
            ledger=read_ledger_key(site.resolve(cfg.ledger_key_file)),
            gateway=load_private_key(read_private_key_file(site.resolve(cfg.gateway_private_key))),
            backend=load_public_key(site.resolve(cfg.backend_public_key).read_bytes()),
            operator=operator,
        )
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot load the site's keys: {exc}") from exc


def _set_mode(path: Path, mode: int) -> None:
    """Give ``path`` exactly the permission bits ``mode``; log it when they were more open."""
    current = stat.S_IMODE(path.stat().st_mode)
    if current == mode:
        return
    path.chmod(mode)
    if current & ~mode:
        logger.warning("%s had mode %04o, more open than %04o: changed", path, current, mode)


def _private_dir(path: Path) -> None:
    """Create ``path`` mode 0700 whatever the umask (its parents as the umask says)."""
    if not path.is_dir():
        path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        _set_mode(path, _DIR_MODE)


def _private_file(path: Path) -> None:
    """Create an empty ``path`` mode 0600 whatever the umask, unless it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, _FILE_MODE)
    finally:
        os.close(fd)


@contextlib.contextmanager
def claim_state_dir(state_dir: Path) -> Iterator[None]:
    """Hold the state directory for this process: one daemon per store.

    Creates the directory 0700 (or tightens a more open one), takes an exclusive, non-blocking
    `fcntl.flock` on ``LOCK_FILE`` (0600, holding this process's pid) and tightens the store's
    files that exist (the database and its ``-wal`` and ``-shm``) to 0600. The lock goes with the
    process, also on SIGKILL; the file stays.

    Raises:
        AlreadyRunningError: another process holds the lock.
    """
    _private_dir(state_dir)
    _set_mode(state_dir, _DIR_MODE)
    lock_path = state_dir / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise AlreadyRunningError(
                f"already running (pid {pid}): {lock_path} is locked"
            ) from None
        _set_mode(lock_path, _FILE_MODE)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        for name in (STATE_FILE, f"{STATE_FILE}-wal", f"{STATE_FILE}-shm"):
            if (state_dir / name).exists():
                _set_mode(state_dir / name, _FILE_MODE)
        yield
    finally:
        os.close(fd)


def open_store(site: Site, keys: Keys) -> Store:
    """Open (creating the directory and file when needed) the site's state file.

    A new directory is made 0700 and a new file 0600 whatever the umask; SQLite gives the
    ``-wal`` and ``-shm`` files the mode of the database file. Existing files are left as they
    are (`claim_state_dir` tightens them for the daemon; ``prepay status`` only reads).
    """
    state_dir = site.state_dir
    _private_dir(state_dir)
    path = state_dir / STATE_FILE
    if not path.exists():
        _private_file(path)
    return Store(
        path,
        ledger_key=keys.ledger,
        max_outbox_messages=site.config.outbox.max_messages,
    )


def select_kernel(site: Site) -> kernels.Kernel:
    """The billing kernel the site's config asks for (built on first start when needed).

    Raises:
        KernelUnavailableError: ``billing.kernel: aot`` and it can be neither loaded nor built.
    """
    billing = site.config.billing
    cache_dir = site.resolve(billing.kernel_cache_dir) if billing.kernel_cache_dir else None
    kernel = kernels.select(billing.kernel, cache_dir)
    if kernel.mode is kernels.KernelMode.JIT and billing.kernel is kernels.KernelMode.AUTO:
        logger.warning("billing kernel %s", kernel.reason)
    else:
        logger.info("billing kernel %s", kernel.reason)
    return kernel
