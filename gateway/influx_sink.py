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

It runs in the daemon's process beside the billing, so a point must cost little CPU: the rows are
read and made into one line-protocol body in a worker thread (never on the event loop), each
line from the series' escaped prefix made once (`LineFormatter`) and the integers of the row,
and the body goes to the library's write API as bytes, which it sends as they are.
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
from influxdb_client.client.write.retry import WritesRetry
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from billing_engine.base.errors import PrepayError
from drivers.ports import Clock, utc_now
from gateway.northbound.sink_settings import InfluxSettings
from gateway.store.export_reads import (
    ExportBatch,
    ExportCursor,
    ExportedEntry,
    ExportedEvent,
    ExportedReading,
    ExportLag,
    ExportReader,
)

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_S = TypeVar("_S")
_NS_PER_US: Final = 1_000
# The formatter keeps one escaped prefix per series; a store full of ids nobody configured
# (readings of unknown meters) must not grow it without end.
_MAX_PREFIXES: Final = 20_000
# The library's client exceptions, and what urllib3 raises once its retries are spent.
_WRITE_ERRORS: Final = (ApiException, urllib3.exceptions.HTTPError, OSError)


class SinkTokenError(PrepayError):
    """The token file named by the ``influx`` section cannot be read."""


# Line protocol by hand instead of the library's `Point`: building a `Point` and its
# `to_line_protocol()` cost about 10 µs of CPU a point (cProfile: the sorting, the escaping of
# every key and value and the type checks, again for each point), where a line here is one
# f-string of a prefix made once per series and the row's integers. Tag values are escaped as
# `Point` escapes them (influxdb_client.client.write.point: `_ESCAPE_KEY`, `_escape_tag_value`);
# measurement names, tag and field keys are constants that need no escaping; tags and fields go
# in `Point`'s order (sorted by key); every field is an integer (``i``), none a string.
# tests/sinks/test_influx_lines.py holds the lines equal to `Point.to_line_protocol()` for
# hostile ids and reads them back from a real server.
_ESCAPE_KEY: Final = str.maketrans(
    {",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"}
)


def _tag(key: str, value: str | None) -> str:
    """``,key=value`` escaped as `Point` does; nothing for a missing or empty value (`Point`
    leaves such a tag out: line protocol has no empty tag value)."""
    if not value:
        return ""
    escaped = value.translate(_ESCAPE_KEY)
    if escaped.endswith("\\"):  # `Point`: a final backslash would escape the separator
        escaped += " "
    return f",{key}={escaped}"


class LineFormatter:
    """The line protocol of export batches for one site (see the module docstring).

    Timestamps are nanoseconds (the writer declares `WritePrecision.NS`), worked out from the
    store's integer microseconds: exact, with no float in between.
    """

    def __init__(self, site: str) -> None:
        self._site = _tag("site", site)
        # The escaped start of a line, up to its first field's value, by series: (meter,
        # quality), (account, kind, currency), (account, kind). Plain tuples: made per row.
        self._readings: dict[tuple[str, str], str] = {}
        self._entries: dict[tuple[str, str, str], str] = {}
        self._events: dict[tuple[str | None, str], str] = {}

    def lines(self, batch: ExportBatch) -> list[str]:
        """One line per row: readings, then ledger entries, then events."""
        readings, reading = self._readings, self._reading_prefix
        entries, entry = self._entries, self._entry_prefix
        events, event = self._events, self._event_prefix
        ns = _NS_PER_US
        out = [
            f"{readings.get((r.meter_id, r.quality)) or reading(r)}{r.register_milli}i"
            f" {r.read_at_us * ns}"
            for r in batch.readings
        ]
        out += [
            f"{entries.get((e.account_id, e.kind, e.currency)) or entry(e)}{e.amount_minor}i"
            f",balance_minor={e.balance_minor}i,seq={e.seq}i {e.created_at_us * ns + e.seq % 1_000}"
            for e in batch.entries
        ]
        out += [
            f"{events.get((v.account_id, v.kind)) or event(v)}{v.event_id}i"
            f" {v.at_us * ns + v.event_id % 1_000}"
            for v in batch.events
        ]
        return out

    def body(self, batch: ExportBatch) -> bytes:
        """The batch as one request body (UTF-8 lines)."""
        return "\n".join(self.lines(batch)).encode()

    def _reading_prefix(self, r: ExportedReading) -> str:
        tags = _tag("meter", r.meter_id) + _tag("quality", r.quality) + self._site
        return _remember(
            self._readings, (r.meter_id, r.quality), f"prepay_reading{tags} register_milli="
        )

    def _entry_prefix(self, e: ExportedEntry) -> str:
        tags = (
            _tag("account", e.account_id)
            + _tag("currency", e.currency)
            + _tag("kind", e.kind)
            + self._site
        )
        return _remember(
            self._entries, (e.account_id, e.kind, e.currency), f"prepay_ledger{tags} amount_minor="
        )

    def _event_prefix(self, v: ExportedEvent) -> str:
        tags = _tag("account", v.account_id) + _tag("kind", v.kind) + self._site
        return _remember(self._events, (v.account_id, v.kind), f"prepay_event{tags} event_id=")


def _remember(prefixes: dict[_S, str], series: _S, prefix: str) -> str:
    if len(prefixes) >= _MAX_PREFIXES:
        prefixes.clear()
    prefixes[series] = prefix
    return prefix


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
        self._formatter = LineFormatter(site)

    def close(self) -> None:
        """Close the reader's connection (the cursor is already durable)."""
        self._reader.close()

    def _prepare(self, cursor: ExportCursor) -> tuple[ExportBatch, bytes]:
        """The batch after ``cursor`` and its request body (in a worker thread: CPU work and
        SQLite stay off the event loop)."""
        batch = self._reader.batch(cursor, self.settings.batch_size)
        return batch, self._formatter.body(batch) if len(batch) else b""

    def _acknowledge(self, batch: ExportBatch) -> ExportLag:
        """Move the cursor past ``batch`` (the server took it); the lag from there."""
        self._reader.advance(batch.after)
        return self._reader.lag(batch.after)

    def _write(self, body: bytes) -> None:
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
            # Bytes go out as they are (the library's write API takes prepared line protocol).
            client.write_api(write_options=SYNCHRONOUS).write(
                bucket=s.bucket, org=s.org, record=body, write_precision=WritePrecision.NS
            )

    async def run(self) -> None:
        """Send what the store holds after the cursor, batch by batch; then wait for more.

        A batch with fewer rows than ``batch_size`` of every kind was all there was: the sink
        waits ``poll_interval_s`` before it looks again, so that rows arriving meanwhile go out
        together (a request's fixed cost shared by more points) and no empty read is made.
        """
        s = self.settings
        reader = self._reader
        cursor = await asyncio.to_thread(reader.cursor)
        self.status.cursor = cursor
        while True:
            batch, body = await asyncio.to_thread(self._prepare, cursor)
            if not len(batch):
                self.status.lag = await asyncio.to_thread(reader.lag, cursor)
                await asyncio.sleep(s.poll_interval_s)
                continue
            try:
                await _in_daemon_thread(functools.partial(self._write, body))
            except _WRITE_ERRORS as exc:
                self._note_failure(exc)
                self.status.lag = await asyncio.to_thread(reader.lag, cursor)
                await asyncio.sleep(s.retry_interval_s)
                continue
            self.status.lag = await asyncio.to_thread(self._acknowledge, batch)
            cursor = batch.after
            self._note_success(cursor, len(batch))
            if max(len(batch.readings), len(batch.entries), len(batch.events)) < s.batch_size:
                await asyncio.sleep(s.poll_interval_s)

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
