"""A publish-only meter (the site's ``publish_only:``): every reading journalled and published
with ``"billing": "none"`` and the consumption since the meter's previous reading, never billed,
never held, no ledger entry and no alarm; its base survives a restart; `prepay status` shows it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from drivers.ports import Reading
from gateway.config import load_site
from gateway.ops import status
from gateway.store import JournalState
from tests.fixtures.mosquitto import free_port
from tests.gateway.crash_support import all_rows
from tests.gateway.site import water_account, write_site
from tests.support.gateways import offline_gateway, running, settled
from tests.support.waiting import eventually

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
PUBLISH_ONLY = {"publish_only": [{"meter": "p1", "unit": "kWh"}]}


def _published(messages: list[Any], meter: str) -> list[dict[str, Any]]:
    return [
        json.loads(m.payload)
        for m in messages
        if m.topic == f"prepay/test-site/meter/{meter}/reading"
    ]


async def test_publish_only_meter_published_with_its_delta_never_billed(tmp_path: Path) -> None:
    site = load_site(
        write_site(
            tmp_path,
            mqtt_port=free_port(),  # no broker: every message stays in the outbox
            accounts=[water_account("A1", "m1")],
            extra=PUBLISH_ONLY,
        )
    )
    p1 = [
        Reading("p1", T0, 1_000),  # the meter's first reading: delta 0
        Reading("p1", T0 + timedelta(hours=1), 1_500),  # 1,500 - 1,000 = 500 Wh
        Reading("p1", T0 + timedelta(minutes=30), 1_200),  # older than the last: delta 0
        Reading("p1", T0 + timedelta(hours=2), 400),  # below 1,500 (reset or swap): delta 0
        Reading("p1", T0 + timedelta(hours=3), 700),  # 700 - 400 = 300 Wh
    ]
    m1 = [Reading("m1", T0, 0), Reading("m1", T0 + timedelta(hours=1), 2_000)]
    gateway, feed = offline_gateway(site, lambda: T0 + timedelta(hours=5))
    async with running(gateway):
        await feed.put(p1[0], m1[0], *p1[1:3], m1[1], *p1[3:])
        await eventually(lambda: settled(gateway), what="7 readings settled")
        messages = gateway.store.pending(1000)
        rows = all_rows(gateway.store)
        entries = gateway.store.entries(None, limit=1000)
        events = gateway.store.events(None, limit=1000)
        # 2 m3 at 5.00 yuan/m3 (Beijing water, tier 1) = 10.00 yuan, billed to A1 as before.
        assert gateway.store.balance("A1") == -1_000

    assert [(p["reading_id"], p["register"], p["delta"]) for p in _published(messages, "p1")] == [
        (p1[0].reading_id, 1_000, 0),
        (p1[1].reading_id, 1_500, 500),
        (p1[2].reading_id, 1_200, 0),
        (p1[3].reading_id, 400, 0),
        (p1[4].reading_id, 700, 300),
    ]
    assert {(p["billing"], p["unit"]) for p in _published(messages, "p1")} == {("none", "Wh")}
    # The billed meter's messages carry no mark: their bytes are as before the field existed.
    billed = _published(messages, "m1")
    assert [(p["delta"], "billing" in p) for p in billed] == [(0, False), (2_000, False)]

    mine = [r for r in rows if r.reading.meter_id == "p1"]
    assert [(r.state, r.bill_status, r.deduction_minor) for r in mine] == [
        (JournalState.BILLED, "publish_only", 0)
    ] * 5
    assert [e.ref for e in entries if e.ref.startswith("p1@")] == []
    assert {e.account_id for e in entries} == {"A1"}
    assert [e for e in events if "p1" in json.dumps(e.detail)] == []
    assert not [m for m in messages if "/account/" in m.topic and b"p1" in m.payload]


async def test_publish_only_meter_delta_continues_after_a_restart(tmp_path: Path) -> None:
    site = load_site(write_site(tmp_path, mqtt_port=free_port(), extra=PUBLISH_ONLY))
    clock = lambda: T0 + timedelta(hours=5)  # noqa: E731 - one fixed instant for both runs
    first, feed = offline_gateway(site, clock)
    async with running(first):
        await feed.put(Reading("p1", T0, 5_000), Reading("p1", T0 + timedelta(hours=1), 5_250))
        await eventually(lambda: settled(first), what="2 readings settled")
    second, feed = offline_gateway(site, clock)
    async with running(second):
        await feed.put(Reading("p1", T0 + timedelta(hours=2), 5_600))
        await eventually(lambda: settled(second), what="the third reading settled")
        published = _published(second.store.pending(1000), "p1")
    # 250 Wh before the restart (5,250 - 5,000), 350 Wh after it (5,600 - 5,250): the base
    # came from the store, not from a reading of this run.
    assert [p["delta"] for p in published] == [0, 250, 350]

    shown = status.collect(site)
    assert [(m.meter, m.unit, m.published, m.register_milli) for m in shown.publish_only] == [
        ("p1", "Wh", 3, 5_600)
    ]
    assert status.to_json(shown)["publish_only"] == [
        {
            "meter": "p1",
            "billing": "none",
            "unit": "Wh",
            "published": 3,
            "last_read_at": "2026-06-01T10:00:00.000Z",
            "register": 5_600,
        }
    ]
    assert (
        "  p1  3 readings published; last read 2026-06-01T10:00:00.000Z, register 5,600 Wh"
        in status.render(shown)
    )


async def test_meter_neither_billed_nor_publish_only_is_still_held(tmp_path: Path) -> None:
    site = load_site(write_site(tmp_path, mqtt_port=free_port(), extra=PUBLISH_ONLY))
    gateway, feed = offline_gateway(site, lambda: T0 + timedelta(hours=5))
    async with running(gateway):
        await feed.put(Reading("x9", T0, 100), Reading("p1", T0, 100))
        await eventually(lambda: settled(gateway), what="2 readings settled")
        held = gateway.store.held(10)
        published = {m.topic for m in gateway.store.pending(1000)}
    assert [(r.reading.meter_id, r.hold_reason) for r in held] == [("x9", "unknown_meter")]
    assert "prepay/test-site/meter/x9/reading" not in published
    assert "prepay/test-site/meter/p1/reading" in published
