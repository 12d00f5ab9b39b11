"""Local operator commands: signed files dropped in ``STATE_DIR/spool`` by ``prepay topup``.

This is how a top-up is applied on the box while the utility's broker is unreachable: the CLI
signs the command with the operator's Ed25519 key and writes it atomically into the spool; the
daemon verifies it against ``keys.operator_public_key`` and applies it exactly like a backend
command (same ledger, same idempotency by command id, same receipt), then writes the result to
``spool/results/<id>.json`` and removes the request. The file waits if the daemon is down.

Polling the directory (twice a second) is deliberate: inotify is Linux-only and not in the
standard library, and an operator top-up does not need millisecond latency.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.errors import CommandRejectedError
from gateway.northbound.commands import Command, parse_and_verify
from gateway.northbound.payloads import CommandResultPayload

logger = logging.getLogger(__name__)

POLL_S = 0.5


def spool_dir(state_dir: Path) -> Path:
    return state_dir / "spool"


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def submit(state_dir: Path, kind: str, command: dict[str, Any]) -> Path:
    """Drop a signed command in the spool (the CLI side)."""
    path = spool_dir(state_dir) / f"{command['id']}.{kind}.json"
    write_atomically(path, json.dumps(command, sort_keys=True).encode())
    return path


def result_path(state_dir: Path, command_id: str) -> Path:
    return spool_dir(state_dir) / "results" / f"{command_id}.json"


class Spool:
    """The daemon side: watch the spool and apply what arrives."""

    def __init__(
        self,
        state_dir: Path,
        site_id: str,
        operator_key: Ed25519PublicKey | None,
        apply: Callable[[Command, datetime], Awaitable[CommandResultPayload]],
        clock: Callable[[], datetime],
    ) -> None:
        self._dir = spool_dir(state_dir)
        self._site = site_id
        self._key = operator_key
        self._apply = apply
        self._clock = clock

    async def run(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        while True:
            for path in sorted(self._dir.glob("*.json")):
                await self._one(path)
            await asyncio.sleep(POLL_S)

    async def _one(self, path: Path) -> None:
        parts = path.name.split(".")
        kind = parts[-2] if len(parts) >= 3 else ""
        raw = await asyncio.to_thread(path.read_bytes)
        now = self._clock()
        command_id = path.name.split(".")[0]
        if self._key is None:
            result: dict[str, Any] = {
                "id": command_id,
                "status": "rejected",
                "reason": "no_operator_key",
                "detail": "the site config has no keys.operator_public_key",
            }
        else:
            try:
                command = parse_and_verify(
                    kind, raw, site_id=self._site, backend_public_key=self._key, now=now
                )
            except CommandRejectedError as exc:
                result = {
                    "id": command_id,
                    "status": "rejected",
                    "reason": exc.reason,
                    "detail": exc.detail,
                }
            else:
                applied = await self._apply(command, now)
                logger.info("operator command %s (%s): %s", command.id, kind, applied.status)
                result = applied.model_dump(mode="json", exclude_none=True, by_alias=True)
        out = result_path(self._dir.parent, command_id)
        await asyncio.to_thread(write_atomically, out, json.dumps(result, sort_keys=True).encode())
        await asyncio.to_thread(path.unlink)
