"""A gateway started on a store from before millisecond billing (issue 12) bills on from the
last reading the old one billed, to the millisecond."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drivers.ports import Reading
from gateway.config import load_site
from gateway.startup import STATE_FILE
from gateway.store import db as store_db
from gateway.store import jsontext
from tests.fixtures.mosquitto import free_port
from tests.gateway.site import write_site
from tests.support.gateways import offline_gateway, running, settled
from tests.support.waiting import eventually

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)  # 1780300800 s after the epoch
PREVIOUS_VERSION = store_db.MIGRATIONS.index(store_db._V10)  # the file before the step


def _as_previous_release(path: Path) -> None:
    """Turn the file back into what the release before millisecond billing wrote: the same
    tables (schema 10 only rewrites account records) at the previous version, without what later
    versions added, and the last billed reading's instant as ``billing.last_ts`` in whole
    seconds."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute("DELETE FROM schema_version WHERE version > ?", (PREVIOUS_VERSION,))
            # What schema 11 added (the journal's counts) goes: the next start adds it again.
            for trigger in ("readings_counted_in", "readings_counted_move", "readings_counted_out"):
                conn.execute(f"DROP TRIGGER {trigger}")
            conn.execute("DROP TABLE journal_counts")
            (text,) = conn.execute(
                "SELECT state_json FROM account_state WHERE account_id = 'A1'"
            ).fetchone()
            record = json.loads(text)
            assert record.pop("billing.last_ms") == 1_780_300_800_000  # T0 in ms
            record["billing.last_ts"] = 1_780_300_800
            conn.execute(
                "UPDATE account_state SET state_json = ? WHERE account_id = 'A1'",
                (jsontext.dumps_flat(record, "A1"),),
            )
    finally:
        conn.close()


async def test_store_before_millisecond_billing_bills_on_from_its_last_reading(
    tmp_path: Path,
) -> None:
    site = load_site(write_site(tmp_path, mqtt_port=free_port()))  # no broker: all queued
    old, feed = offline_gateway(site, lambda: T0 + timedelta(minutes=1))
    async with running(old):
        await feed.put(Reading("m1", T0, 0))  # the baseline, the last billed reading
        await eventually(lambda: settled(old), what="the baseline billed")
    _as_previous_release(site.state_dir / STATE_FILE)

    new, feed = offline_gateway(site, lambda: T0 + timedelta(hours=2))
    readings = [
        # 400 ms after the migrated baseline, in the same second: billed, +10 L (within the
        # meter's 40 m3/h, which allows at least one second's worth, 11.1 L).
        Reading("m1", T0 + timedelta(milliseconds=400), 10),
        Reading("m1", T0 + timedelta(hours=1), 2_000),  # +1990 L
    ]
    async with running(new):
        assert new.store.schema_version == store_db.SCHEMA_VERSION
        await feed.put(*readings)
        await eventually(lambda: settled(new), what="2 readings settled")
        published = {
            p["reading_id"]: (p["register"], p["delta"])
            for p in (json.loads(m.payload) for m in new.store.pending(1000))
            if "reading_id" in p
        }
        # 10 L + 1990 L = 2 m3 at 5.00 yuan/m3 (Beijing water, tier 1) = 10.00 yuan.
        assert new.store.balance("A1") == -1_000
    assert [published[r.reading_id] for r in readings] == [(10, 10), (2_000, 1_990)]
