"""The console's operator accounts: a JSON file of names, roles and scrypt password hashes.

Hashing uses the standard library's ``hashlib.scrypt`` (RFC 7914) rather than argon2-cffi or
passlib: it is a memory-hard password hash, as the task needs, with no compiled dependency to
add to the box. The parameters (n=2**14, r=8, p=1: 16 MiB, about 50 ms) are the ones RFC 7914
section 2 suggests for interactive logins. A login against an unknown name still runs one
scrypt, so the time taken does not tell which names exist.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from billing_engine.base.errors import PrepayError

_N, _R, _P = 2**14, 8, 1
_SALT_BYTES = 16
_KEY_BYTES = 32
_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
MIN_PASSWORD = 10


class Role(enum.StrEnum):
    """``viewer`` reads; ``operator`` also acts (top-ups, overrides, acknowledgements)."""

    VIEWER = "viewer"
    OPERATOR = "operator"


class UsersFileError(PrepayError):
    """The users file cannot be read or written, or a name or password is refused."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    salt: bytes
    key: bytes


def hash_password(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=64 * 1024 * 1024, dklen=_KEY_BYTES
    )


def load_users(path: Path) -> dict[str, User]:
    """The users in ``path``, by name; none when the file does not exist.

    Raises:
        UsersFileError: the file cannot be read or is not a users file.
    """
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
        return {
            name: User(
                name, Role(entry["role"]), bytes.fromhex(entry["salt"]), bytes.fromhex(entry["key"])
            )
            for name, entry in doc["users"].items()
        }
    except OSError as exc:
        raise UsersFileError(f"{path}: cannot read the console users: {exc}") from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsersFileError(f"{path}: not a console users file ({exc})") from None


def save_users(path: Path, users: dict[str, User]) -> None:
    """Write ``users`` to ``path`` atomically, readable by its owner only (it holds hashes)."""
    doc = {
        "users": {
            u.name: {"role": u.role.value, "salt": u.salt.hex(), "key": u.key.hex()}
            for u in sorted(users.values(), key=lambda u: u.name)
        }
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except OSError as exc:
        raise UsersFileError(f"{path}: cannot write the console users: {exc}") from exc


def add_user(path: Path, name: str, role: Role, password: str) -> User:
    """Add ``name`` (or replace its role and password) in the users file at ``path``.

    Raises:
        UsersFileError: a bad name, a short password, or the file cannot be read or written.
    """
    if not _NAME.match(name):
        raise UsersFileError(
            f"user name {name!r}: 1 to 32 of a-z, 0-9, '_', '.', '-', starting with a letter"
        )
    if len(password) < MIN_PASSWORD:
        raise UsersFileError(f"password: at least {MIN_PASSWORD} characters")
    users = load_users(path)
    salt = secrets.token_bytes(_SALT_BYTES)
    user = User(name, role, salt, hash_password(password, salt))
    users[name] = user
    save_users(path, users)
    return user


def remove_user(path: Path, name: str) -> None:
    """Remove ``name`` from the users file.

    Raises:
        UsersFileError: no such user, or the file cannot be read or written.
    """
    users = load_users(path)
    if users.pop(name, None) is None:
        raise UsersFileError(f"no console user {name!r} in {path}")
    save_users(path, users)


_DUMMY_SALT = b"\0" * _SALT_BYTES


def check_password(users: dict[str, User], name: str, password: str) -> User | None:
    """The user when ``password`` is theirs; None otherwise (one scrypt either way)."""
    user = users.get(name)
    key = hash_password(password, user.salt if user else _DUMMY_SALT)
    if user is not None and hmac.compare_digest(key, user.key):
        return user
    return None


def new_password() -> str:
    """A random password for a one-time login (the demo's), 16 URL-safe characters."""
    return secrets.token_urlsafe(12)
