"""``prepay ledger verify``: the ledger's chain, and whether it still holds a head published
earlier (``--expected-head SEQ:MACHEX``, or ``--checkpoint FILE``: a checkpoint as the gateway
publishes it on ``prepay/{site}/checkpoint``).

The chain alone cannot tell an older copy of the file, or a ledger cut back with its checkpoint,
or emptied tables, from the real thing: each is a valid chain. A head kept outside the box can:
the ledger must reach its seq, with its MAC there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.northbound.payloads import CheckpointPayload
from gateway.northbound.receipts import InvalidCheckpointError, verify_checkpoint
from gateway.northbound.signing import load_public_key, loads_strict
from gateway.startup import STATE_FILE
from gateway.store import ChainHead, LedgerReport, parse_head, verify_ledger


class CheckpointFileError(ValueError):
    """The checkpoint file cannot be read, is not a checkpoint, or is not validly signed."""


@dataclass(frozen=True)
class Verdict:
    """The ledger report, and what else was found wrong (a checkpoint of another store)."""

    report: LedgerReport
    expected: ChainHead | None
    other_problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.other_problems


def load_checkpoint(path: Path, gateway_public_key: Path | None) -> CheckpointPayload:
    """A saved checkpoint; its signature is checked when the gateway's public key is given.

    Raises:
        CheckpointFileError: unreadable, not a checkpoint, or not signed by that key.
    """
    try:
        doc = loads_strict(path.read_bytes())
        if not isinstance(doc, dict):
            raise CheckpointFileError(f"{path}: not a JSON object")
        if gateway_public_key is None:
            return CheckpointPayload.model_validate(doc)
        return verify_checkpoint(doc, load_public_key(gateway_public_key.read_bytes()))
    except (OSError, ValueError, InvalidCheckpointError) as exc:
        if isinstance(exc, CheckpointFileError):
            raise
        raise CheckpointFileError(f"{path}: not a usable checkpoint: {exc}") from exc


def verify(
    state_dir: Path,
    key: bytes,
    *,
    expected_head: str | None = None,
    checkpoint: CheckpointPayload | None = None,
) -> Verdict:
    """Verify the ledger of the store in ``state_dir``, against a head when one is given.

    Raises:
        ValueError: ``expected_head`` is not ``SEQ:MACHEX``.
        StoreError: there is no store file, or it cannot be read.
    """
    expected = None
    if expected_head is not None:
        expected = parse_head(expected_head)
    elif checkpoint is not None:
        expected = ChainHead(seq=checkpoint.seq, mac_hex=checkpoint.mac, tag_hex="")
    report = verify_ledger(state_dir / STATE_FILE, key, expected)
    other: list[str] = []
    if checkpoint is not None and checkpoint.incarnation != report.incarnation:
        other.append(
            f"the checkpoint is of store {checkpoint.incarnation}, this store is"
            f" {report.incarnation} (a store started anew, or another site's checkpoint)"
        )
    return Verdict(report, expected, tuple(other))
