"""A lost state directory is not a silent fresh start, and a fresh start made deliberately is
told apart from the store before it.

The first start records its store (site and incarnation) in a marker next to the ledger key.
With the marker there and the state file gone, ``prepay run`` refuses and says how to recover;
``prepay init --new-store`` starts a new store deliberately and journals that it did. Published
event ids and receipts carry the store's incarnation, so the ids of a new store never repeat
the old one's (its counters restart at 1).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.config import Site
from gateway.daemon import Gateway
from gateway.northbound.receipts import verify_receipt
from gateway.northbound.signing import load_public_key
from gateway.startup import (
    STATE_FILE,
    StateMissingError,
    StoreMismatchError,
    marker_path,
    read_ledger_key,
)
from gateway.store import Store
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import ROOT, load
from tests.support.gateways import offline_gateway, running

pytestmark = pytest.mark.integration

PREPAY = str(ROOT / ".venv" / "bin" / "prepay")
PROCESS_TIMEOUT_S = 90.0  # a loaded 2-core machine starts Python and loads the site slowly
T0 = datetime(2026, 6, 1, tzinfo=UTC)


def marker(site: Site) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(marker_path(site).read_text())
    return doc


def store_of(site: Site) -> Store:
    key = read_ledger_key(site.resolve(site.config.keys.ledger_key_file))
    return Store(site.state_dir / STATE_FILE, ledger_key=key)


async def top_up(site: Site, amount: str) -> dict[str, Any]:
    """An operator top-up through the spool, as ``prepay topup`` on the box makes it."""
    argv = ["topup", "-c", str(site.path), "--account", "A1", "--amount", amount]
    argv += ["--operator-key", str(site.path.parent / "keys" / "operator.pem"), "--wait", "60"]
    out = await asyncio.to_thread(_run_cli, argv)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "applied", result
    return result


def _run_cli(argv: list[str]) -> str:
    proc = subprocess.run(
        [PREPAY, *argv], capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


async def run_with_topup(site: Site, amount: str) -> dict[str, Any]:
    gateway, _ = offline_gateway(site, lambda: datetime.now(UTC))
    async with running(gateway):
        return await top_up(site, amount)


def published_event_ids(site: Site) -> list[str]:
    with store_of(site) as store:
        return [
            json.loads(m.payload)["event_id"]
            for m in store.pending(10_000)
            if m.topic.endswith("/event")
        ]


async def test_fresh_start_refused_after_the_state_directory_is_lost(tmp_path: Path) -> None:
    site = load(tmp_path, mqtt_port=free_port())
    assert not marker_path(site).exists()
    first = await run_with_topup(site, "10.00")
    with store_of(site) as store:
        incarnation = store.incarnation
    assert marker(site)["site"] == "test-site"
    assert marker(site)["incarnation"] == incarnation
    assert first["receipt"]["store"] == incarnation

    shutil.rmtree(site.state_dir)
    with pytest.raises(StateMissingError) as refused:
        Gateway(site, sources=[], actuators=[], connect_mqtt=False)
    reason = str(refused.value)
    assert f"the state directory {site.state_dir} is missing" in reason
    assert f"this site has run before (incarnation {incarnation}" in reason
    assert "restore it from a backup" in reason
    assert "prepay init --new-store" in reason
    assert not (site.state_dir / STATE_FILE).exists()  # nothing was created

    # The daemon as the operator runs it says the same and exits 1.
    proc = await asyncio.create_subprocess_exec(
        PREPAY, "run", "-c", str(site.path), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    async with asyncio.timeout(PROCESS_TIMEOUT_S):
        _, err = await proc.communicate()
    assert proc.returncode == 1
    assert "refusing to start: the state directory" in err.decode()
    assert not (site.state_dir / STATE_FILE).exists()


async def test_fresh_start_made_deliberately_with_init_new_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = load(tmp_path, mqtt_port=free_port())
    old = await run_with_topup(site, "10.00")
    old_ids = published_event_ids(site)
    old_incarnation = marker(site)["incarnation"]
    assert old_ids
    assert all(i.startswith(f"test-site-{old_incarnation}-") for i in old_ids)

    # A store exists: init never replaces it.
    capsys.readouterr()
    assert main(["init", "--new-store", "-c", str(site.path)]) == 1
    assert "never replaces a store" in capsys.readouterr().err
    assert marker(site)["incarnation"] == old_incarnation
    assert main(["init", "-c", str(site.path)]) == 2  # says what it is for, does nothing

    shutil.rmtree(site.state_dir)
    assert main(["init", "--new-store", "-c", str(site.path)]) == 0
    out = capsys.readouterr().out
    new_incarnation = marker(site)["incarnation"]
    assert new_incarnation != old_incarnation
    assert f"new store {new_incarnation}" in out
    assert f"replacing store {old_incarnation}" in out
    with store_of(site) as store:
        assert store.incarnation == new_incarnation
        created = [e for e in store.events() if e.kind == "store_created"]
        assert len(created) == 1
        assert created[0].detail["previous_incarnation"] == old_incarnation
        assert created[0].detail["deliberate"] is True

    # It starts; its counters restart, its published ids do not repeat the old store's.
    new = await run_with_topup(site, "5.00")
    assert new["receipt"]["receipt_seq"] == old["receipt"]["receipt_seq"] == 1
    assert (new["receipt"]["store"], old["receipt"]["store"]) == (new_incarnation, old_incarnation)
    gateway_key = load_public_key((tmp_path / "keys" / "gateway.pub.pem").read_bytes())
    assert verify_receipt(new["receipt"], gateway_key).store == new_incarnation
    new_ids = published_event_ids(site)
    assert new_ids
    assert all(i.startswith(f"test-site-{new_incarnation}-") for i in new_ids)
    assert not set(new_ids) & set(old_ids)
    with store_of(site) as store:
        assert store.balance("A1") == 500


async def test_fresh_start_state_of_another_store_refused(tmp_path: Path) -> None:
    site = load(tmp_path, mqtt_port=free_port())
    await run_with_topup(site, "1.00")
    # The state directory is swapped for a store that is not this site's current one.
    shutil.rmtree(site.state_dir)
    site.state_dir.mkdir()
    key = read_ledger_key(site.resolve(site.config.keys.ledger_key_file))
    with Store(site.state_dir / STATE_FILE, ledger_key=key) as other:
        other_incarnation = other.incarnation
    with pytest.raises(StoreMismatchError, match=f"holds store {other_incarnation}"):
        Gateway(site, sources=[], actuators=[], connect_mqtt=False)


async def test_fresh_start_store_made_before_markers_is_adopted(tmp_path: Path) -> None:
    site = load(tmp_path, mqtt_port=free_port())
    site.state_dir.mkdir()
    with store_of(site) as store:  # a store as an older gateway left it: no marker
        incarnation = store.incarnation
    assert not marker_path(site).exists()
    gateway, _ = offline_gateway(site, lambda: T0)
    async with running(gateway):
        assert marker(site)["incarnation"] == incarnation
