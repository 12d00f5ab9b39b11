"""Key files of a site: generate a set, and the operator's local signing key.

``prepay keys init DIR`` writes:

- ``ledger.key``: 32 random bytes in hex, the HMAC key of the ledger chain;
- ``gateway.pem`` / ``gateway.pub.pem``: Ed25519, the gateway signs receipts;
- ``operator.pem`` / ``operator.pub.pem``: Ed25519, signs local ``prepay topup`` commands;
- ``backend.pem`` / ``backend.pub.pem``: only with ``--with-backend`` (demos and tests), a stand-in
  for the utility's command-signing key; in production the utility gives you its public key.

Private keys are written with mode 0600 and never overwritten; public keys 0644 and the directory
0755 at most (the umask may narrow them, never widen them): nobody else may replace a key.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from gateway.northbound.signing import generate_private_key, private_key_to_pem, public_key_to_pem


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _write_public(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def init_keys(directory: Path, *, with_backend: bool = False) -> list[Path]:
    """Create the key set in ``directory``; existing files are kept, never overwritten.

    Returns:
        The files written.
    """
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    written: list[Path] = []
    ledger = directory / "ledger.key"
    if not ledger.exists():
        _write_private(ledger, (secrets.token_hex(32) + "\n").encode())
        written.append(ledger)
    names = ["gateway", "operator"] + (["backend"] if with_backend else [])
    for name in names:
        private = directory / f"{name}.pem"
        if private.exists():
            continue
        key = generate_private_key()
        _write_private(private, private_key_to_pem(key))
        _write_public(directory / f"{name}.pub.pem", public_key_to_pem(key.public_key()))
        written += [private, directory / f"{name}.pub.pem"]
    return written
