"""A command signed with the operator's key and dropped in the spool (`gateway.flows.spool`).

``prepay topup``, ``prepay supply`` and ``prepay meter accept`` all take this path: the running
daemon verifies and applies the command exactly like one from the backend (same checks, same
journal, same idempotency by command id, one answer), and it waits in the spool while the daemon
is down or the broker unreachable.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config import Site
from gateway.flows.spool import submit
from gateway.northbound.commands import new_command, sign_command
from gateway.northbound.payloads import CommandKind
from gateway.northbound.signing import load_private_key
from gateway.startup import read_private_key_file


def submit_signed(
    site: Site, kind: CommandKind, fields: dict[str, Any], operator_key: Path
) -> dict[str, Any]:
    """Sign a ``kind`` command of ``fields`` with the operator's key and spool it; returns the
    signed command (its ``id`` names the result to wait for, `topup.wait_for_result`).

    Raises:
        KeyPermissionError: the operator's key file is readable by its group or others.
        OSError: the key file cannot be read, or the spool cannot be written.
    """
    key = load_private_key(read_private_key_file(operator_key))
    body = new_command(
        kind, site.config.site, fields, now=datetime.now(UTC), command_id=f"op-{uuid.uuid4()}"
    )
    command = sign_command(body, key)
    submit(site.state_dir, kind.value, command)
    return command
