"""The InfluxDB sink's own line protocol (`gateway.influx_sink.LineFormatter`) and its reader's
cheap rows (`gateway.store.export_reads`): the lines are the library's `Point` lines byte for
byte, ids that need escaping come back from a real VictoriaMetrics exactly as they were
journalled, and the ledger balances carried from batch to batch stay exact."""

# influxdb_client leaves Point's builder methods unannotated; the reference lines below call them.
# mypy: allow-untyped-calls

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision

from drivers.ports import Reading
from gateway.influx_sink import InfluxSink, LineFormatter
from gateway.northbound.sink_settings import InfluxSettings
from gateway.store import EntryKind, Store
from gateway.store.export_reads import (
    ExportBatch,
    ExportCursor,
    ExportedEntry,
    ExportedEvent,
    ExportedReading,
    ExportReader,
)
from tests.fixtures.victoria_metrics import VictoriaMetrics
from tests.support.waiting import eventually

T0 = datetime(2026, 6, 1, tzinfo=UTC)
T0_US = 1_780_272_000_000_000  # 2026-06-01T00:00:00Z: 20,605 days x 86,400 s, in µs
T0_MS = T0_US // 1_000
KEY = b"influx-lines-test-key-32-bytes!!"

# Each character that line protocol gives a meaning in a tag (space, comma, equals sign), a
# quote, a lone backslash and text beyond ASCII: the server must give each back unchanged.
HOSTILE = ["m 1", "m,2", "m=3", 'm"4', "m\\5", "电表-6", 'a b,c=d"e\\f€']
# What line protocol cannot carry in a tag at all (InfluxDB unescapes only "\,", "\ " and "\="
# in tags, so a backslash before those or at the end, a tab or a newline cannot come back
# exactly): written as the library writes them, never refused, and not read back here.
UNREPRESENTABLE = ["m\\", "m\\ x", "m\\,x", "m\\\\x", "m\tx", "m\nx", "m\rx"]


def library_lines(batch: ExportBatch, site: str) -> list[str]:
    """The reference: the points the sink used to build with the library's `Point`."""
    lines = [
        Point("prepay_reading")
        .tag("site", site)
        .tag("meter", r.meter_id)
        .tag("quality", r.quality)
        .field("register_milli", r.register_milli)
        .time(r.read_at_us * 1_000, WritePrecision.NS)
        .to_line_protocol()
        for r in batch.readings
    ]
    lines += [
        Point("prepay_ledger")
        .tag("site", site)
        .tag("account", e.account_id)
        .tag("kind", e.kind)
        .tag("currency", e.currency)
        .field("amount_minor", e.amount_minor)
        .field("balance_minor", e.balance_minor)
        .field("seq", e.seq)
        .time(e.created_at_us * 1_000 + e.seq % 1_000, WritePrecision.NS)
        .to_line_protocol()
        for e in batch.entries
    ]
    lines += [
        Point("prepay_event")
        .tag("site", site)
        .tag("kind", e.kind)
        .tag("account", e.account_id)
        .field("event_id", e.event_id)
        .time(e.at_us * 1_000 + e.event_id % 1_000, WritePrecision.NS)
        .to_line_protocol()
        for e in batch.events
    ]
    return lines


def hostile_batch(ids: list[str]) -> ExportBatch:
    return ExportBatch(
        readings=tuple(
            ExportedReading(
                row_id=i + 1,
                meter_id=m,
                read_at_us=T0_US + i,
                register_milli=-i,
                quality=m or "good",
            )
            for i, m in enumerate(ids)
        ),
        entries=tuple(
            ExportedEntry(
                seq=1_000 + i,
                account_id=a,
                kind=a,
                amount_minor=-(10**15) - i,
                balance_minor=10**18 + i,
                currency=a,
                created_at_us=T0_US,
            )
            for i, a in enumerate(ids)
        ),
        events=(
            *(
                ExportedEvent(event_id=2_000 + i, account_id=a, kind=a or "k", at_us=T0_US)
                for i, a in enumerate(ids)
            ),
            ExportedEvent(event_id=2_999, account_id=None, kind="site_event", at_us=T0_US - 1),
        ),
        after=ExportCursor(),
    )


@pytest.mark.parametrize("site", ["s1", "site one", "s,1=\\x"])
def test_lines_are_the_librarys_point_lines_for_hostile_ids(site: str) -> None:
    batch = hostile_batch([*HOSTILE, *UNREPRESENTABLE, ""])
    formatter = LineFormatter(site)
    expected = library_lines(batch, site)
    assert formatter.lines(batch) == expected
    # Again: the second time the series' prefixes come from the formatter's memory.
    assert formatter.lines(batch) == expected
    assert formatter.body(batch) == "\n".join(expected).encode()


def test_lines_golden() -> None:
    batch = ExportBatch(
        readings=(
            ExportedReading(
                row_id=1,
                meter_id="m 1",
                read_at_us=T0_US + 7,
                register_milli=12_345,
                quality="good",
            ),
        ),
        entries=(
            ExportedEntry(
                seq=4_321,
                account_id="A,1",
                kind="deduction",
                amount_minor=-50,
                balance_minor=950,
                currency="CNY",
                created_at_us=T0_US,
            ),
        ),
        events=(ExportedEvent(event_id=1_002, account_id=None, kind="supply_cut", at_us=T0_US),),
        after=ExportCursor(),
    )
    assert LineFormatter("s=1").lines(batch) == [
        # T0 + 7 µs = 1,780,272,000,000,007 µs = 1,780,272,000,000,007,000 ns
        "prepay_reading,meter=m\\ 1,quality=good,site=s\\=1 register_milli=12345i"
        " 1780272000000007000",
        # T0 in ns plus seq mod 1000 (4,321 -> 321)
        "prepay_ledger,account=A\\,1,currency=CNY,kind=deduction,site=s\\=1"
        " amount_minor=-50i,balance_minor=950i,seq=4321i 1780272000000000321",
        # no account: no account tag; T0 in ns plus event_id mod 1000 (1,002 -> 2)
        "prepay_event,kind=supply_cut,site=s\\=1 event_id=1002i 1780272000000000002",
    ]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "state.sqlite3", ledger_key=KEY) as opened:
        yield opened


def test_export_reader_balances_carry_across_batches_and_reads_again(store: Store) -> None:
    with store.transaction() as tx:
        for account in ("A1", "A2"):
            tx.append_entry(account, EntryKind.TOPUP, 1_000, "CNY", "fund", created_at=T0)
        for i in range(6):  # A1, A2, A1, ...: -10, -20, -30, ... fen
            account = ("A1", "A2")[i % 2]
            tx.append_entry(
                account, EntryKind.DEDUCTION, -10 * (i + 1), "CNY", f"d{i}", created_at=T0
            )
    reader = ExportReader(store.path, key="~test")
    try:

        def balances(batch: ExportBatch) -> list[tuple[str, int]]:
            return [(e.account_id, e.balance_minor) for e in batch.entries]

        first = reader.batch(ExportCursor(), 3)
        # A1 1000; A2 1000; A1 1000 - 10 = 990
        assert balances(first) == [("A1", 1_000), ("A2", 1_000), ("A1", 990)]
        second = reader.batch(first.after, 3)
        # A2 1000 - 20 = 980; A1 990 - 30 = 960; A2 980 - 40 = 940
        assert balances(second) == [("A2", 980), ("A1", 960), ("A2", 940)]
        # A failed write reads the same batch again: the same balances, summed afresh.
        assert balances(reader.batch(first.after, 3)) == balances(second)
        assert balances(reader.batch(ExportCursor(), 3)) == balances(first)
        assert balances(reader.batch(first.after, 3)) == balances(second)
        third = reader.batch(second.after, 3)
        # A1 960 - 50 = 910; A2 940 - 60 = 880
        assert balances(third) == [("A1", 910), ("A2", 880)]
        assert [e.seq for e in (*first.entries, *second.entries, *third.entries)] == list(
            range(1, 9)
        )
    finally:
        reader.close()


async def test_influx_sink_hostile_ids_read_back_exactly(
    store: Store, victoria_metrics: VictoriaMetrics
) -> None:
    with store.transaction() as tx:
        tx.journal_readings(
            [
                Reading(meter, T0 + timedelta(minutes=i), 1_000 * (i + 1))
                for i, meter in enumerate(HOSTILE)
            ],
            T0,
        )
        for i, account in enumerate(HOSTILE):
            tx.append_entry(account, EntryKind.TOPUP, 100 * (i + 1), "CNY", "fund", created_at=T0)
        tx.record_event(HOSTILE[0], "supply_cut", None, T0)
    rows = 2 * len(HOSTILE) + 1
    settings = InfluxSettings.model_validate(
        {"url": victoria_metrics.url, "batch_size": 3, "poll_interval_s": 0.05}
    )
    sink = InfluxSink(settings, "site 1", ExportReader(store.path))
    task = asyncio.create_task(sink.run())
    try:
        await eventually(lambda: sink.status.written_points == rows, what="every row written")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        sink.close()
    assert sink.status.written_batches == 3  # 7 readings, 7 entries, 1 event; 3 of a kind each

    def series(metric: str, label: str) -> dict[str, tuple[list[int], list[float]]]:
        return {
            s["metric"][label]: (s["timestamps"], s["values"])
            for s in victoria_metrics.export(metric)
            if s["metric"].get("site") == "site 1"
        }

    # Reading i: register 1,000 x (i + 1) at T0 + i minutes.
    expected_readings = {
        meter: ([T0_MS + 60_000 * i], [1_000.0 * (i + 1)]) for i, meter in enumerate(HOSTILE)
    }
    await eventually(
        lambda: series("prepay_reading_register_milli", "meter") == expected_readings,
        what="the readings searchable under their own meter ids",
    )
    # Account i: one top-up of 100 x (i + 1) fen at T0, the balance after it the same.
    expected_balances = {account: ([T0_MS], [100.0 * (i + 1)]) for i, account in enumerate(HOSTILE)}
    assert series("prepay_ledger_balance_minor", "account") == expected_balances
    events = victoria_metrics.export("prepay_event_event_id")
    assert [(e["metric"]["account"], e["metric"]["kind"]) for e in events] == [
        (HOSTILE[0], "supply_cut")
    ]
