"""`InfluxSink`: readings, ledger entries and events to an InfluxDB v2 write API, losing nothing.

The only module that imports influxdb_client. The store stays the truth: the sink reads
committed rows after its durable cursor (`gateway.store.export_reads.ExportReader`), writes them
with the client's SYNCHRONOUS write API, and moves the cursor only after the server answered
2xx. The client's batching write API is not used: it keeps its buffer in memory and drops a
batch that runs out of retries, where the store keeps every row until it is acknowledged.
Retries and their backoff are the library's own (`WritesRetry`, a urllib3 `Retry`), made anew
for each batch (its ``max_retry_time`` counts from when it is made); a batch that exhausts them
stays in the store and is tried again after ``retry_interval_s``.

A crash between the server's answer and the cursor's commit sends that batch again after the
restart. InfluxDB keeps one point per measurement, tag set and timestamp, so the second copy
overwrites the first with the same values: each row is one point with a timestamp of its own
(a reading's is its ``read_at``, unique per meter; a ledger entry's and an event's carry their
id in the nanoseconds, as InfluxDB's guide to duplicate points advises), never doubled.

Points (docs/operator-guide.md, "InfluxDB"; ``site`` is a tag of each):

- ``prepay_reading,meter=,quality= register_milli=<int>i`` at ``read_at``;
- ``prepay_ledger,account=,kind=,currency= amount_minor=,balance_minor=,seq=`` at ``created_at``
  (+ seq mod 1000 ns);
- ``prepay_event,kind=[,account=] event_id=`` at the event (+ event_id mod 1000 ns).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Final, TypeVar

import urllib3
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write.point import Point
from influxdb_client.client.write.retry import WritesRetry
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from billing_engine.base.errors import PrepayError
from drivers.ports import Clock, utc_now
from gateway.northbound.sink_settings import InfluxSettings
from gateway.store.export_reads import ExportBatch, ExportCursor, ExportLag, ExportReader

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_NS_PER_US: Final = 1_000
# The library's client exceptions, and what urllib3 raises once its retries are spent.
_WRITE_ERRORS: Final = (ApiException, urllib3.exceptions.HTTPError, OSError)


class SinkTokenError(PrepayError):
    """The token file named by the ``influx`` section cannot be read."""


def _ns(at: datetime) -> int:
    return int(at.timestamp()) * 1_000_000_000 + at.microsecond * _NS_PER_US


def batch_points(batch: ExportBatch, site: str) -> list[Point]:
    """The points of a batch (see the module docstring for their shape)."""
    points = [
        Point("prepay_reading")
        .tag("site", site)
        .tag("meter", r.meter_id)
        .tag("quality", r.quality)
        .field("register_milli", r.register_milli)
        .time(_ns(r.read_at), WritePrecision.NS)
        for r in batch.readings
    ]
    points += [
        Point("prepay_ledger")
        .tag("site", site)
        .tag("account", e.account_id)
        .tag("kind", e.kind)
        .tag("currency", e.currency)
        .field("amount_minor", e.amount_minor)
        .field("balance_minor", e.balance_minor)
        .field("seq", e.seq)
        .time(_ns(e.created_at) + e.seq % 1_000, WritePrecision.NS)
        for e in batch.entries
    ]
    for event in batch.events:
        point = Point("prepay_event").tag("site", site).tag("kind", event.kind)
        if event.account_id is not None:
            point = point.tag("account", event.account_id)
        points.append(
            point.field("event_id", event.event_id).time(
                _ns(event.at) + event.event_id % 1_000, WritePrecision.NS
            )
        )
    return points


@dataclass
class SinkStatus:
    """What the sink has done since the gateway started. Read it; do not write it."""

    written_points: int = 0
    written_batches: int = 0
    failed_writes: int = 0  # batches whose retries ran out (each is tried again)
    cursor: ExportCursor = field(default_factory=ExportCursor)
    lag: ExportLag = field(default_factory=lambda: ExportLag(0, 0, 0, None))
    failing: bool = False
    last_error: str | None = None
    last_success_at: datetime | None = None


def read_token(path: Path | None) -> str | None:
    """The API token in ``path`` (stripped), or None without a file.

    Raises:
        SinkTokenError: the file cannot be read or is empty.
    """
    if path is None:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SinkTokenError(f"influx.token_file {path}: {exc.strerror or exc}") from exc
    if not token:
        raise SinkTokenError(f"influx.token_file {path}: the file is empty")
    return token


async def _in_daemon_thread(fn: Callable[[], _T]) -> _T:
    """Run ``fn`` in a daemon thread and await its result.

    Not `asyncio.to_thread`: the library's retry sleeps in the calling thread and cannot be
    interrupted, and a pool thread would hold the process at exit for as long as its backoff
    lasts. A write left behind by a shutdown is harmless: its cursor was not moved.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[_T] = loop.create_future()

    def settle(result: _T | None, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]  # None only with an error

    def work() -> None:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                loop.call_soon_threadsafe(settle, None, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=work, name="influx-write", daemon=True).start()
    return await done


class InfluxSink:
    """Catch an InfluxDB v2 server up with the store, forever (see the module docstring)."""

    def __init__(
        self,
        settings: InfluxSettings,
        site: str,
        reader: ExportReader,
        *,
        token: str | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.settings = settings
        self.site = site
        self.status = SinkStatus()
        self._reader = reader
        self._token = token
        self._clock = clock

    def close(self) -> None:
        """Close the reader's connection (the cursor is already durable)."""
        self._reader.close()

    def _write(self, points: list[Point]) -> None:
        s = self.settings
        retries = WritesRetry(
            total=s.max_retries,
            retry_interval=s.retry_interval_s,
            max_retry_delay=s.max_retry_delay_s,
            exponential_base=s.exponential_base,
            # The library's default budget (180 s) counts from here: one batch's attempts.
            max_retry_time=max(s.max_retry_delay_s * (s.max_retries + 1), s.timeout_s),
        )
        with InfluxDBClient(
            url=str(s.url),
            token=self._token or "",
            org=s.org,
            timeout=int(s.timeout_s * 1000),
            retries=retries,
        ) as client:
            client.write_api(write_options=SYNCHRONOUS).write(
                bucket=s.bucket, org=s.org, record=points, write_precision=WritePrecision.NS
            )

    async def run(self) -> None:
        """Send what the store holds after the cursor, batch by batch; then wait for more."""
        s = self.settings
        reader = self._reader
        cursor = await asyncio.to_thread(reader.cursor)
        self.status.cursor = cursor
        while True:
            batch = await asyncio.to_thread(reader.batch, cursor, s.batch_size)
            if not len(batch):
                self.status.lag = await asyncio.to_thread(reader.lag, cursor)
                await asyncio.sleep(s.poll_interval_s)
                continue
            points = batch_points(batch, self.site)
            try:
                await _in_daemon_thread(functools.partial(self._write, points))
            except _WRITE_ERRORS as exc:
                self._note_failure(exc)
                self.status.lag = await asyncio.to_thread(reader.lag, cursor)
                await asyncio.sleep(s.retry_interval_s)
                continue
            await asyncio.to_thread(reader.advance, batch.after)
            cursor = batch.after
            self._note_success(cursor, len(points))
            self.status.lag = await asyncio.to_thread(reader.lag, cursor)

    def _note_failure(self, exc: BaseException) -> None:
        status = self.status
        status.failed_writes += 1
        status.last_error = f"{type(exc).__name__}: {exc}"
        if not status.failing:  # once, until it works again
            status.failing = True
            logger.warning(
                "influx %s: write failed (%s); the rows stay in the store and are sent again"
                " every %.1f s",
                self.settings.url,
                status.last_error,
                self.settings.retry_interval_s,
            )

    def _note_success(self, cursor: ExportCursor, points: int) -> None:
        status = self.status
        status.cursor = cursor
        status.written_points += points
        status.written_batches += 1
        status.last_success_at = self._clock()
        if status.failing:
            status.failing = False
            logger.info("influx %s: writing again", self.settings.url)
