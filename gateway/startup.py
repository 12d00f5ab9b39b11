"""What a start of the gateway opens, shared by the daemon and the operator's commands: the key
files, the state file, and the billing kernel the site asks for.

`prepay run` opens all three; `prepay status` and `prepay ledger verify` open the store and the
ledger key without the rest, so they work next to a running daemon and without the network.

**Before anything.** `preflight` is what ``prepay check-config`` runs and what ``prepay run``
runs first, one code path: the site file and the files it names, the devices' cross-references
(`gateway.site_checks`), the key files (present, private, keys) and a state directory this user
can write, each problem a ``FILE:LINE: field: message`` line; it creates nothing.

Only the daemon claims the state directory (`claim_state_dir`): one ``prepay run`` per store,
held by an exclusive lock on ``STATE_DIR/prepay.lock`` for the life of the process; the directory
is kept 0700 and the store's files 0600 whatever the umask. A private key file that its group or
others may read is refused (`KeyPermissionError`), as ssh does.

**Which store.** When a store is first created, a marker next to the ledger key
(``<ledger_key_file>.store``: the site and the store's incarnation) records it. A start that
finds the marker but no state file refuses (`StateMissingError`) instead of silently starting
from zero balances; a state directory holding another store than the marker names is refused
too (`StoreMismatchError`). ``prepay init --new-store`` starts a new store deliberately.
**Rollback.** At start the daemon reads back the signed checkpoint it published (the ledger's
head, retained at the broker) and `check_against_checkpoint` refuses a ledger that is behind it
or diverges from it (`RollbackError`): a state directory restored from an older copy would
otherwise credit the top-ups applied since a second time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from billing_engine import kernels
from billing_engine.base.errors import ConfigError, InvalidConfigError, PrepayError
from gateway.config import Site, load_site
from gateway.northbound.payloads import format_rfc3339
from gateway.northbound.receipts import InvalidCheckpointError, verify_checkpoint
from gateway.northbound.signing import key_id, load_private_key, load_public_key, loads_strict
from gateway.site_checks import reference_errors
from gateway.store import Store

logger = logging.getLogger(__name__)

#: The SQLite file inside the site's state directory.
STATE_FILE = "prepay.sqlite"
#: The daemon's lock file inside the state directory (it holds the daemon's pid).
LOCK_FILE = "prepay.lock"
#: Appended to the ledger key file's name: the marker of the site's current store.
MARKER_SUFFIX = ".store"

_KeyT = TypeVar("_KeyT")

_DIR_MODE = 0o700
_FILE_MODE = 0o600


class KeyPermissionError(PrepayError):
    """A private key file may be read by its group or by others: it is not used."""


class AlreadyRunningError(PrepayError):
    """Another ``prepay run`` holds the site's state directory."""


class StateMissingError(PrepayError):
    """The state file is missing, but the marker says this site has run with a store before."""


class StoreMismatchError(PrepayError):
    """The state directory holds another store than the one this site's marker names."""


class StoreMarkerError(PrepayError):
    """The store marker next to the ledger key cannot be read."""


class RollbackError(PrepayError):
    """The ledger is behind, or diverges from, the checkpoint the gateway published."""


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


def _read_public_key(path: Path) -> Ed25519PublicKey:
    return load_public_key(path.read_bytes())


def _read_gateway_key(path: Path) -> Ed25519PrivateKey:
    return load_private_key(read_private_key_file(path))


class _KeyReader:
    """Reads the site's key files one by one, keeping a `ConfigError` at the site file's
    ``keys.<field>`` line for each that cannot be used, so that all are reported at once."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.errors: list[ConfigError] = []

    def read(self, field: str, path: Path, reader: Callable[[Path], _KeyT]) -> _KeyT | None:
        full = self.site.resolve(path)
        try:
            return reader(full)
        except KeyPermissionError as exc:
            self.errors.append(self.site.error(("keys", field), str(exc)))
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self.errors.append(self.site.error(("keys", field), f"cannot read {full}: {reason}"))
        except ValueError as exc:
            self.errors.append(self.site.error(("keys", field), f"{full}: {exc}"))
        return None


def load_keys(site: Site) -> Keys:
    """Read the key files the site names (paths relative to the site file).

    Raises:
        InvalidConfigError: one ``FILE:LINE: keys.<field>: message`` per key file that is
            missing, unreadable, readable by its group or others (a private key), or not a
            key of the expected kind.
    """
    cfg = site.config.keys
    keys = _KeyReader(site)
    ledger = keys.read("ledger_key_file", cfg.ledger_key_file, read_ledger_key)
    gateway = keys.read("gateway_private_key", cfg.gateway_private_key, _read_gateway_key)
    backend = keys.read("backend_public_key", cfg.backend_public_key, _read_public_key)
    operator = None
    if cfg.operator_public_key is not None:
        operator = keys.read("operator_public_key", cfg.operator_public_key, _read_public_key)
    if keys.errors or ledger is None or gateway is None or backend is None:
        raise InvalidConfigError(keys.errors)
    return Keys(ledger=ledger, gateway=gateway, backend=backend, operator=operator)


def load_plant_keys(site: Site) -> dict[str, Ed25519PublicKey]:
    """The water-ticket issuers' public keys the site trusts, by key id (none without a
    ``tickets:`` section).

    Raises:
        InvalidConfigError: ``FILE:LINE: tickets.issuer_public_keys.N: message`` per key file
            that is missing, unreadable or not an Ed25519 public key.
    """
    tickets = site.config.tickets
    if tickets is None:
        return {}
    found: dict[str, Ed25519PublicKey] = {}
    errors: list[ConfigError] = []
    for i, path in enumerate(tickets.issuer_public_keys):
        full = site.resolve(path)
        try:
            key = _read_public_key(full)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            errors.append(
                site.error(("tickets", "issuer_public_keys", i), f"cannot read {full}: {reason}")
            )
            continue
        except ValueError as exc:
            errors.append(site.error(("tickets", "issuer_public_keys", i), f"{full}: {exc}"))
            continue
        found[key_id(key)] = key
    if errors:
        raise InvalidConfigError(errors)
    return found


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path.parent != path:
        path = path.parent
    return path


def state_dir_errors(site: Site) -> list[ConfigError]:
    """Whether this process can use the state directory, found without changing anything (no
    directory created, no lock taken, no store opened): it is a directory this user may write,
    with the store's files writable, or it does not exist and its nearest existing parent is a
    directory this user may write (``prepay run`` creates it)."""
    # os.access, not a probe file: the check must create nothing. It answers for this
    # process's user, as the kernel would (EROFS included), which is what `prepay run` meets.
    state_dir = site.state_dir
    existing = _nearest_existing(state_dir)
    user = f"user {os.getuid()}"
    if existing != state_dir:
        if not existing.is_dir():
            return [
                site.error(
                    ("state_dir",),
                    f"{existing} is not a directory: {state_dir} cannot be created under it",
                )
            ]
        if not os.access(existing, os.W_OK | os.X_OK):
            return [
                site.error(
                    ("state_dir",),
                    f"{state_dir} does not exist and {existing} is not writable by {user}:"
                    f" create {state_dir} (mode 0700) for the gateway's user",
                )
            ]
        return []
    if not state_dir.is_dir():
        return [site.error(("state_dir",), f"{state_dir} is not a directory")]
    if not os.access(state_dir, os.W_OK | os.X_OK):
        return [site.error(("state_dir",), f"{state_dir} is not writable by {user}")]
    return [
        site.error(("state_dir",), f"{state_dir / name} is not writable by {user}")
        for name in (STATE_FILE, f"{STATE_FILE}-wal", f"{STATE_FILE}-shm", LOCK_FILE)
        if (state_dir / name).exists() and not os.access(state_dir / name, os.R_OK | os.W_OK)
    ]


def preflight(path: Path) -> Site:
    """Load the site file and check everything ``prepay run`` needs before it creates
    anything: the file and what it names (`load_site`), the devices' cross-references
    (`site_checks.reference_errors`), the key files (`load_keys`) and the state directory
    (`state_dir_errors`). ``prepay check-config`` runs exactly this, and it changes nothing (no
    directory, lock or store is made). What only a start can find out follows it in the
    daemon: the instance lock, the store and its marker (`check_state_present`,
    `adopt_store`), the checkpoint at the broker and the kernel build.

    Raises:
        InvalidConfigError: every problem, as ``FILE:LINE: field: message`` at the line of
            the site file (or of the tariff, profile or codec file) that names the thing.
    """
    site = load_site(path)
    errors = reference_errors(site)
    for load in (load_keys, load_plant_keys):
        try:
            load(site)
        except InvalidConfigError as exc:
            errors += exc.errors
    errors += state_dir_errors(site)
    if errors:
        raise InvalidConfigError(errors)
    return site


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


@dataclass(frozen=True)
class StoreMarker:
    """What the marker next to the ledger key says: the site's current store."""

    path: Path
    site: str
    incarnation: str


def marker_path(site: Site) -> Path:
    """``<ledger_key_file>.store``: kept with the keys, which outlive a lost state directory."""
    key_file = site.resolve(site.config.keys.ledger_key_file)
    return key_file.with_name(key_file.name + MARKER_SUFFIX)


def read_marker(site: Site) -> StoreMarker | None:
    """The site's store marker, or None when there is none (a store never created, or one
    created by a gateway older than the marker).

    Raises:
        StoreMarkerError: the marker exists but cannot be read or is not a marker.
    """
    path = marker_path(site)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StoreMarkerError(f"{path}: cannot read the store marker: {exc}") from exc
    if not (
        isinstance(doc, dict)
        and isinstance(doc.get("site"), str)
        and isinstance(doc.get("incarnation"), str)
    ):
        raise StoreMarkerError(f"{path}: not a store marker (site and incarnation expected)")
    return StoreMarker(path, doc["site"], doc["incarnation"])


def write_marker(site: Site, incarnation: str, *, created_at: str) -> Path:
    """Record ``incarnation`` as the site's current store (replacing the marker atomically).

    Raises:
        OSError: the key directory is not writable.
    """
    path = marker_path(site)
    body = {"site": site.config.site, "incarnation": incarnation, "created_at": created_at}
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(body, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    return path


def _own_marker(site: Site) -> StoreMarker | None:
    marker = read_marker(site)
    if marker is not None and marker.site != site.config.site:
        logger.warning(
            "%s names site %s, not %s: another site shares this ledger key file; the check"
            " for a lost state directory is off for %s",
            marker.path,
            marker.site,
            site.config.site,
            site.config.site,
        )
        return None
    return marker


def check_state_present(site: Site) -> None:
    """Refuse to start from nothing where this site has run before: call it before
    `open_store`, which would create an empty store.

    Raises:
        StateMissingError: the marker exists but the state file does not.
        StoreMarkerError: the marker cannot be read.
    """
    marker = _own_marker(site)
    if marker is None or (site.state_dir / STATE_FILE).exists():
        return
    raise StateMissingError(
        f"the state directory {site.state_dir} is missing (no {STATE_FILE}) but this site has"
        f" run before (incarnation {marker.incarnation}, recorded in {marker.path}); restore it"
        " from a backup, or start a new store deliberately with"
        f" prepay init --new-store -c {site.path}"
    )


def adopt_store(site: Site, store: Store) -> None:
    """Check that ``store`` is the site's current store, and record it when no store was
    recorded yet (a store just created, or one made before markers existed).

    A marker that cannot be written (a read-only key directory) is logged, not fatal: the
    gateway runs, without the check for a lost state directory.

    Raises:
        StoreMismatchError: the marker names another store (incarnation).
        StoreMarkerError: the marker cannot be read.
    """
    marker = _own_marker(site)
    if marker is None:
        try:
            path = write_marker(site, store.incarnation, created_at=format_rfc3339(store.clock()))
        except OSError as exc:
            logger.warning(
                "cannot record the store in %s (%s): a lost state directory will not be noticed",
                marker_path(site),
                exc,
            )
        else:
            logger.info("store incarnation %s recorded in %s", store.incarnation, path)
        return
    if marker.incarnation != store.incarnation:
        raise StoreMismatchError(
            f"the state directory {site.state_dir} holds store {store.incarnation}, but this"
            f" site's store is {marker.incarnation} (recorded in {marker.path}); restore that"
            " store's state directory, or start a new store deliberately with"
            f" prepay init --new-store -c {site.path}"
        )


@dataclass(frozen=True)
class CheckpointCheck:
    """What the start check made of the retained checkpoint: ``compared`` when it was this
    store's and the ledger still holds it; else ``message`` says why it was not compared."""

    compared: bool
    message: str


def check_against_checkpoint(
    site: Site, store: Store, raw: bytes, gateway_public_key: Ed25519PublicKey
) -> CheckpointCheck:
    """Compare the ledger with the checkpoint read back from the broker (``raw``).

    A checkpoint that is not validly signed by this gateway's key, or is of another store
    (incarnation), is not compared: it is not this store's history (a store started anew
    deliberately, or another gateway publishing under the same site id).

    Raises:
        RollbackError: the ledger ends before the checkpoint's seq, or holds another entry
            there: the state was restored from an older copy (or cut back, or emptied).
    """
    try:
        doc = loads_strict(raw)
    except ValueError as exc:
        return CheckpointCheck(False, f"the retained checkpoint is not JSON ({exc}); ignored")
    if not isinstance(doc, dict):
        return CheckpointCheck(False, "the retained checkpoint is not a JSON object; ignored")
    try:
        checkpoint = verify_checkpoint(doc, gateway_public_key)
    except InvalidCheckpointError as exc:
        return CheckpointCheck(False, f"the retained checkpoint is not valid ({exc}); ignored")
    if checkpoint.site != site.config.site:
        return CheckpointCheck(False, f"the retained checkpoint is of site {checkpoint.site}")
    if checkpoint.incarnation != store.incarnation:
        return CheckpointCheck(
            False,
            f"the retained checkpoint is of store {checkpoint.incarnation}, not of this store"
            f" {store.incarnation} (a store started anew, or another gateway's); not compared",
        )
    seq, _ = store.ledger_head()
    published = f"the checkpoint this gateway published at {format_rfc3339(checkpoint.ts)}"
    recover = (
        f"restore the newest copy of {site.state_dir} (check a copy with prepay ledger verify"
        f" --expected-head {checkpoint.seq}:{checkpoint.mac}); if there is none, move this one"
        f" away and start a new store deliberately with prepay init --new-store -c {site.path}"
    )
    if seq < checkpoint.seq:
        raise RollbackError(
            f"the ledger of store {store.incarnation} ends at seq {seq}, behind {published}"
            f" (seq {checkpoint.seq}): the state was restored from an older copy or the ledger"
            f" was cut back, and top-ups applied since would be credited again; {recover}"
        )
    mac = store.mac_at(checkpoint.seq)
    if mac is None or mac.hex() != checkpoint.mac:
        raise RollbackError(
            f"the ledger of store {store.incarnation} diverges from {published}: its entry"
            f" {checkpoint.seq} is not the published one (the state was restored from an"
            f" older copy and written anew, or rewritten); {recover}"
        )
    return CheckpointCheck(
        True,
        f"the ledger (head seq {seq}) holds {published} (seq {checkpoint.seq})",
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
