"""``prepay meter accept METER``: the operator's decision for a reset or swapped meter.

When a meter's held readings continue plausibly from a new level instead of from its last
billed register (a reset, a swap, a new scale), the gateway keeps them held and raises one
``meter_reset_or_swap`` alarm. Accepting the level bills on from it: the daemon applies a signed
``meter`` command (the backend may send the same), journalled and answered like any command.
"""

from __future__ import annotations

from pathlib import Path

from gateway.config import Site
from gateway.northbound.payloads import CommandKind
from gateway.ops.operator_commands import submit_signed

_MAX_REASON = 500  # `gateway.northbound.commands.Text`


class MeterDecisionError(ValueError):
    """The decision cannot be made as asked (unknown meter, no reason)."""


def queue_accept(site: Site, meter: str, reason: str, operator_key: Path) -> str:
    """Sign "accept the new level of ``meter``" and spool it; returns the command id.

    Raises:
        MeterDecisionError: no account is billed by ``meter``, or ``reason`` is empty or long.
        KeyPermissionError: the operator's key file is readable by its group or others.
        OSError: the key file cannot be read, or the spool cannot be written.
    """
    if not any(a.meter == meter for a in site.config.accounts):
        known = ", ".join(sorted(a.meter for a in site.config.accounts)) or "none"
        raise MeterDecisionError(f"no account is billed by meter {meter!r} (meters: {known})")
    reason = reason.strip()
    if not 1 <= len(reason) <= _MAX_REASON:
        raise MeterDecisionError(f"--reason: say why, in 1 to {_MAX_REASON} characters")
    fields = {"meter": meter, "action": "accept_level", "reason": f"operator: {reason}"}
    return str(submit_signed(site, CommandKind.METER, fields, operator_key)["id"])
