"""Backend ``tariff`` and ``account`` commands: applied once, persisted, survive a restart."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from drivers.ports import Reading
from gateway.config import Site, load_site
from gateway.daemon import Gateway
from gateway.northbound.commands import new_command, sign_command
from gateway.northbound.payloads import CommandKind
from gateway.northbound.signing import load_private_key
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import water_account, write_site
from tests.support import gateways
from tests.support.gateways import FeedSource
from tests.support.waiting import eventually

T0 = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


def make_site(tmp_path: Path) -> Site:
    accounts = [water_account("A1", "m1"), water_account("A2", "m2", class_name="special")]
    meters = [{"id": "m1", "max_rate_per_h": 100}]  # 1 m3 in a minute is billed here
    return load_site(
        write_site(tmp_path, mqtt_port=free_port(), accounts=accounts, extra={"meters": meters})
    )


class Running:
    def __init__(self, gateway: Gateway, feed: FeedSource, tmp_path: Path, clock: Clock) -> None:
        self.gateway = gateway
        self.feed = feed
        self.key = load_private_key((tmp_path / "keys" / "backend.pem").read_bytes())
        self.clock = clock

    async def command(self, kind: str, fields: dict[str, Any], command_id: str) -> dict[str, Any]:
        body = new_command(
            CommandKind(kind), "test-site", fields, now=self.clock.now, command_id=command_id
        )
        raw = json.dumps(sign_command(body, self.key)).encode()
        await self.gateway.commands.handle(kind, raw)
        results = [
            json.loads(m.payload)
            for m in self.gateway.store.pending(100_000)
            if m.topic.endswith(f"cmd/{kind}/result")
        ]
        return next(r for r in reversed(results) if r.get("id") == command_id)

    async def reading(self, meter: str, minutes: int, register_l: int) -> None:
        """Hand over one reading; returns once it is billed."""
        await self.feed.put(
            Reading(meter, T0 + timedelta(minutes=minutes), register_l, source="test")
        )
        await eventually(lambda: gateways.settled(self.gateway), what="the reading billed")


@contextlib.asynccontextmanager
async def running(site: Site, tmp_path: Path, clock: Clock) -> AsyncIterator[Running]:
    gateway, feed = gateways.offline_gateway(site, clock)
    async with gateways.running(gateway):
        yield Running(gateway, feed, tmp_path, clock)


def _create(account: str, meter: str) -> dict[str, Any]:
    """The fields of an ``account`` command creating a resident account on one meter."""
    return {
        "action": "create",
        "account": account,
        "currency": "CNY",
        "tariff_class": "resident",
        "meters": [meter],
    }


def version(price: str, special: str, at: datetime) -> dict[str, Any]:
    return {
        "effective_from": at.isoformat(),
        "classes": {"resident": {"energy": price}, "special": {"energy": special}},
    }


def tariff_doc(*versions: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "beijing_residential_water",
        "name": "Beijing water",
        "currency": "CNY",
        "unit": "m3",
        "timezone": "Asia/Shanghai",
        "cycle": {"reset": "annual", "start_month": 1, "start_day": 1},
        "versions": list(versions),
    }


async def test_tariff_command_site_scope_reprices_from_effective_instant(tmp_path: Path) -> None:
    clock = Clock()
    site = make_site(tmp_path)
    async with running(site, tmp_path, clock) as run:
        await run.command(
            "topup", {"account": "A1", "amount_minor": 100_000, "currency": "CNY"}, "top-1"
        )
        await run.reading("m1", 1, 0)
        await run.reading("m1", 2, 1_000)  # 1 m3 at 5.00 = 500 fen
        change_at = T0 + timedelta(hours=1)
        result = await run.command(
            "tariff",
            {
                "tariff_version": "2026-06",
                "effective_at": change_at.isoformat(),
                "scope": "site",
                "tariff": tariff_doc(version("6.00", "7.00", change_at)),
            },
            "tariff-1",
        )
        assert result["status"] == "applied"
        # 1000 L over 00:02-02:00 (118 min), split at 01:00: floor(1000 x 58/118) = 491 L at
        # 5.00 = 2.455; 509 L at 6.00 = 3.054. Cycle: 5 + 2.455 + 3.054 = 10.509 -> 1051 fen,
        # so this reading deducts 1051 - 500 = 551.
        await run.reading("m1", 120, 2_000)
        assert run.gateway.probe.balance_minor("A1") == 100_000 - 1051

        # Repricing the past is refused, and so is a broken tariff; nothing changes.
        clock.now = T0 + timedelta(hours=3)
        past = await run.command(
            "tariff",
            {
                "tariff_version": "old",
                "effective_at": T0.isoformat(),
                "scope": "site",
                "tariff": tariff_doc(version("1.00", "1.00", T0)),
            },
            "tariff-past",
        )
        assert (past["status"], past["reason"]) == ("rejected", "effective_in_past")
        later = T0 + timedelta(hours=4)
        broken = await run.command(
            "tariff",
            {
                "tariff_version": "bad",
                "effective_at": later.isoformat(),
                "scope": "site",
                "tariff": tariff_doc(version("-1.00", "7.00", later)),
            },
            "tariff-bad",
        )
        assert (broken["status"], broken["reason"]) == ("rejected", "invalid_tariff")

    # After a restart the new version is still in force (the overlay is in the store).
    clock.now = T0 + timedelta(hours=5)
    async with running(load_site(site.path), tmp_path, clock) as run:
        tariff = run.gateway.probe.tariff("beijing_residential_water")
        assert [v.effective_from for v in tariff.versions][-1] == T0 + timedelta(hours=1)
        assert run.gateway.probe.balance_minor("A1") == 100_000 - 1051


async def test_tariff_command_class_scope_only_moves_that_class(tmp_path: Path) -> None:
    clock = Clock()
    async with running(make_site(tmp_path), tmp_path, clock) as run:
        at = T0 + timedelta(hours=1)
        result = await run.command(
            "tariff",
            {
                "tariff_version": "special-2026",
                "effective_at": at.isoformat(),
                "scope": "class",
                "target": "special",
                "tariff": tariff_doc(version("5.00", "8.00", at)),
            },
            "tariff-class",
        )
        assert result["status"] == "applied"
        probe = run.gateway.probe
        assert probe.tariff_of("A2") == "beijing_residential_water__special_2026"
        assert probe.tariff_of("A1") == "beijing_residential_water"


async def test_account_command_create_update_and_rejections(tmp_path: Path) -> None:
    clock = Clock()
    site = make_site(tmp_path)
    async with running(site, tmp_path, clock) as run:
        created = await run.command("account", _create("A3", "m3"), "acc-1")
        assert created["status"] == "applied"
        await run.command(
            "topup", {"account": "A3", "amount_minor": 1_000, "currency": "CNY"}, "top-3"
        )
        await run.reading("m3", 1, 0)
        await run.reading("m3", 2, 100)  # 0.1 m3 at 5.00 = 50 fen
        assert run.gateway.probe.balance_minor("A3") == 950

        again = await run.command("account", _create("A3", "m9"), "acc-2")
        assert (again["status"], again["reason"]) == ("rejected", "account_exists")
        stolen = await run.command("account", _create("A4", "m1"), "acc-3")
        assert (stolen["status"], stolen["reason"]) == ("rejected", "meter_in_use")
        fields = {"action": "update", "account": "A3", "low_balance_minor": 700, "exempt": True}
        update = await run.command("account", fields, "acc-4")
        assert update["status"] == "applied"
        policy = run.gateway.probe.policy("A3")
        assert (policy.low_thresholds_minor, policy.exempt) == ((700,), True)
        duplicate = await run.command("account", fields, "acc-4")
        assert duplicate["status"] == "duplicate"

    async with running(load_site(site.path), tmp_path, clock) as run:
        assert run.gateway.probe.balance_minor("A3") == 950
        assert run.gateway.probe.policy("A3").exempt is True


def test_mqtt_doc_tariff_example_is_a_valid_tariff() -> None:
    import re  # noqa: PLC0415

    from billing_engine.tariff import Tariff  # noqa: PLC0415

    doc = (Path(__file__).resolve().parents[2] / "docs" / "mqtt-api.md").read_text()
    example = re.search(r"<!-- example:TariffCommand -->\n```json\n(.*?)\n```", doc, re.S)
    assert example is not None
    assert Tariff.model_validate(json.loads(example.group(1))["tariff"]).id == (
        "beijing_residential_water"
    )
