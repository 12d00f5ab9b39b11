"""``/metrics`` of a running gateway, scraped over HTTP: the counters move as readings are
journalled and billed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drivers.ports import Reading
from gateway.config import load_site
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import write_site
from tests.support.gateways import offline_gateway, running, settled
from tests.support.metrics import scrape
from tests.support.waiting import eventually

T0 = datetime(2026, 6, 1, tzinfo=UTC)


async def test_metrics_counters_move_as_readings_are_billed(tmp_path: Path) -> None:
    port = free_port()
    extra = {"metrics": {"port": port, "refresh_s": 0.1}}
    site = load_site(write_site(tmp_path, mqtt_port=free_port(), extra=extra))
    gateway, feed = offline_gateway(site, lambda: T0 + timedelta(hours=1))

    async def figures() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return await asyncio.to_thread(scrape, port)

    async with running(gateway):
        seen: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

        async def wait_for(name: str, value: float, **labels: str) -> None:
            key = (name, tuple(sorted(labels.items())))
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                try:
                    seen.update(await figures())
                except OSError:
                    seen.clear()  # the server is not up yet
                if seen.get(key) == value:
                    return
                assert asyncio.get_running_loop().time() < deadline, (key, seen.get(key))
                await asyncio.sleep(0.05)

        await wait_for("prepay_readings_journalled_total", 0)
        # The site's one account, A1 (opening balance 0), in exactly one state.
        states = {labels: v for (name, labels), v in seen.items() if name == "prepay_accounts"}
        assert len(states) == 7  # every PolicyMode, those without accounts at 0
        assert sum(states.values()) == 1
        await feed.put(*(Reading("m1", T0 + timedelta(minutes=i), 100 * i) for i in range(5)))
        await eventually(lambda: settled(gateway), what="5 readings billed")
        await wait_for("prepay_readings_journalled_total", 5)
        await wait_for("prepay_readings_billed_total", 5)
        await wait_for("prepay_readings_held_total", 0)
        await feed.put(*(Reading("m1", T0 + timedelta(minutes=i), 100 * i) for i in range(5, 12)))
        await eventually(lambda: settled(gateway), what="12 readings billed")
        await wait_for("prepay_readings_journalled_total", 12)
        await wait_for("prepay_readings_billed_total", 12)
        # The same reading again is a duplicate, not a new row.
        await feed.put(Reading("m1", T0 + timedelta(minutes=11), 1_100))
        await wait_for("prepay_readings_duplicate_total", 1)
        await wait_for("prepay_journal_rows", 12, state="billed")
        assert seen[("prepay_readings_journalled_total", ())] == 12
        # Each reading was handed over alone, after the one before was committed: 13 commits.
        await wait_for("prepay_journal_commits_total", 13)
        # Each of them timed, from the end of its window to its commit.
        await wait_for("prepay_journal_commit_seconds_count", 13)
        assert seen[("prepay_journal_commit_seconds_bucket", (("le", "+Inf"),))] == 13
        assert seen[("prepay_journal_commit_seconds_sum", ())] > 0
        buckets = sorted(
            (float(labels[0][1]), n)
            for (name, labels), n in seen.items()
            if name == "prepay_journal_commit_seconds_bucket"
        )
        assert len(buckets) == 13  # 12 bounds and +Inf
        assert [n for _, n in buckets] == sorted(n for _, n in buckets)  # cumulative
        # A broker-less gateway has no link figures; the process figures are there.
        assert not any(name.startswith("prepay_mqtt_") for name, _ in seen)
        assert seen[("process_resident_memory_bytes", ())] > 0
