"""`prepay topup` on the box while the broker is unreachable: signed by the operator key,
applied by the running daemon exactly once, with a receipt; the messages wait in the outbox."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_site
from gateway.daemon import Gateway
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import write_site
from tests.support.gateways import running

pytestmark = pytest.mark.integration


async def test_offline_operator_topup_applied_once_and_queued(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site_file = write_site(tmp_path, mqtt_port=free_port())  # nothing listens: offline
    site = load_site(site_file)
    gateway = Gateway(site)
    argv = [
        "topup",
        "--wait",
        "60",  # the daemon answers at once; a loaded machine may take seconds
        "-c",
        str(site_file),
        "--account",
        "A1",
        "--amount",
        "25.50",
        "--operator-key",
        str(tmp_path / "keys" / "operator.pem"),
        "--reference",
        "desk-1",
    ]
    async with running(gateway):
        assert await asyncio.to_thread(main, argv) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["status"] == "applied"
        assert result["receipt"]["amount_minor"] == 2550
        assert result["receipt"]["payment_ref"] == "operator:desk-1"
        assert gateway.probe.balance_minor("A1") == 2550

        # A top-up signed with the wrong key (the backend's, not the operator's) is rejected.
        bad = [
            *argv[:-4],
            "--operator-key",
            str(tmp_path / "keys" / "backend.pem"),
            "--reference",
            "x",
        ]
        assert await asyncio.to_thread(main, bad) == 1
        rejected = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (rejected["status"], rejected["reason"]) == ("rejected", "bad_signature")
        assert gateway.probe.balance_minor("A1") == 2550

        stats = gateway.store.outbox_stats()
    # Nothing reached a broker: the result, the event and the state wait in the outbox.
    assert sum(stats.pending.values()) >= 3
