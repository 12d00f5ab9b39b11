"""The console's users file (scrypt hashes, owner-only) and its login limit, without a server."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest

from gateway.console.auth import LoginLimiter
from gateway.console.users import (
    Role,
    UsersFileError,
    add_user,
    check_password,
    load_users,
    remove_user,
)

PASSWORD = "correct horse battery"  # noqa: S105 - a test user's


def test_users_file_holds_an_scrypt_hash_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    add_user(path, "alice", Role.OPERATOR, PASSWORD)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entry = json.loads(path.read_text())["users"]["alice"]
    assert PASSWORD not in path.read_text()
    # RFC 7914 scrypt, n=2**14, r=8, p=1, 32 bytes, over the stored salt: the stdlib's own.
    expected = hashlib.scrypt(
        PASSWORD.encode(), salt=bytes.fromhex(entry["salt"]), n=2**14, r=8, p=1, dklen=32
    )
    assert entry == {"role": "operator", "salt": entry["salt"], "key": expected.hex()}


def test_users_check_password_takes_the_right_one_only(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    add_user(path, "alice", Role.OPERATOR, PASSWORD)
    add_user(path, "victor", Role.VIEWER, "another password")
    users = load_users(path)
    found = check_password(users, "alice", PASSWORD)
    assert found is not None
    assert found.role is Role.OPERATOR
    assert check_password(users, "alice", "another password") is None
    assert check_password(users, "nobody", PASSWORD) is None
    remove_user(path, "alice")
    assert sorted(load_users(path)) == ["victor"]


@pytest.mark.parametrize(
    ("name", "password", "message"),
    [
        ("Alice", PASSWORD, "user name 'Alice': 1 to 32 of a-z"),
        ("alice", "short", "password: at least 10 characters"),
    ],
)
def test_users_add_refuses_a_bad_name_or_password_and_writes_nothing(
    tmp_path: Path, name: str, password: str, message: str
) -> None:
    path = tmp_path / "users.json"
    with pytest.raises(UsersFileError, match=message):
        add_user(path, name, Role.VIEWER, password)
    assert not path.exists()


def test_users_file_that_is_not_one_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    path.write_text('{"users": {"alice": {"role": "root"}}}')
    with pytest.raises(UsersFileError, match=r"users\.json: not a console users file"):
        load_users(path)


def test_login_limiter_blocks_after_the_failures_until_the_pause_has_passed() -> None:
    now = [1000.0]
    limiter = LoginLimiter(max_failures=3, pause_s=60.0, clock=lambda: now[0])
    for _ in range(3):
        assert not limiter.blocked("user:alice", "addr:10.0.0.9")
        limiter.failed("user:alice", "addr:10.0.0.9")
    assert limiter.blocked("user:alice", "addr:10.0.0.9")
    assert limiter.blocked("user:alice", "addr:10.0.0.7")  # the name, from another address
    assert not limiter.blocked("user:bob", "addr:10.0.0.7")
    now[0] += 61.0  # the pause since the last failure has passed
    assert not limiter.blocked("user:alice", "addr:10.0.0.9")
    assert limiter.refused == 2
