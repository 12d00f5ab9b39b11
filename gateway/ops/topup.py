"""``prepay topup``: a top-up signed with the operator's key, applied by the running daemon.

The command goes through the spool (`gateway.flows.spool`): signed here, verified and applied
by the daemon exactly like a backend command (same ledger, same idempotency by command id, same
receipt). It works with the utility's broker unreachable, and waits in the spool while the
daemon is down.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from billing_engine import money
from gateway.config import Site
from gateway.flows.spool import result_path
from gateway.northbound.payloads import CommandKind
from gateway.ops.operator_commands import submit_signed

_POLL_S = 0.2


class TopupError(ValueError):
    """The top-up cannot be made as asked (unknown account, bad amount)."""


@dataclass(frozen=True)
class QueuedTopup:
    """A signed top-up dropped in the spool."""

    command_id: str
    account: str
    amount_minor: int
    currency: str


def queue_topup(
    site: Site,
    account_id: str,
    amount: str,
    operator_key: Path,
    reference: str,
    *,
    invoice: dict[str, str] | None = None,
) -> QueuedTopup:
    """Sign a top-up of ``amount`` (major units, e.g. ``50.00``) and drop it in the spool.
    ``invoice``: title (and tax_id, email) of an invoice the backend is asked for.

    Raises:
        TopupError: no such account, or the amount is not a valid amount of its currency.
        KeyPermissionError: the operator's key file is readable by its group or others.
    """
    account = next((a for a in site.config.accounts if a.id == account_id), None)
    if account is None:
        raise TopupError(f"unknown account {account_id!r}")
    currency = account.currency or site.tariffs[account.tariff].currency
    try:
        amount_minor = money.to_scaled(
            Decimal(amount), 10 ** money.currency_exponent(currency), "amount"
        )
    except (ValueError, ArithmeticError) as exc:
        raise TopupError(f"--amount: {exc}") from None
    fields = {
        "account": account.id,
        "amount_minor": amount_minor,
        "currency": currency,
        "payment_ref": f"operator:{reference}",
    }
    if invoice:
        fields["invoice"] = invoice
    command = submit_signed(site, CommandKind.TOPUP, fields, operator_key)
    return QueuedTopup(command["id"], account.id, amount_minor, currency)


def wait_for_result(site: Site, command_id: str, timeout_s: float) -> dict[str, Any] | None:
    """The daemon's result for ``command_id``, or None if it has not come within
    ``timeout_s`` (the command stays queued)."""
    deadline = time.monotonic() + timeout_s
    path = result_path(site.state_dir, command_id)
    while time.monotonic() < deadline:
        if path.exists():
            doc: dict[str, Any] = json.loads(path.read_text())
            return doc
        time.sleep(_POLL_S)
    return None
