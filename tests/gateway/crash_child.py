"""A gateway process for the SIGKILL tests: `Gateway` fed by a fast, deterministic source.

Run as ``python -m tests.gateway.crash_child SITE.yaml ACCEPTED [--final]``. The parent kills it
with SIGKILL at random moments and starts it again.

The source produces, for each meter ``m{i}``, reading ``k`` at ``BASE + k * STEP`` with the
register `register_milli` (i, k): pure functions, so the parent can recompute every reading.
On start it resumes each meter from the last journalled reading minus `OVERLAP`, so every
restart re-delivers readings the journal already holds (they must stop at the journal), and
now and then it re-delivers an older reading on purpose.

Every reading for which ``put`` returned is appended to the ``ACCEPTED`` file (one reading id a
line). A plain ``write(2)`` is enough: SIGKILL ends the process, not the kernel, so what was
written is kept (fsync would only matter for a power cut).

With ``--final`` the source only re-delivers the overlap, and the process stops by itself once
the pipeline has billed everything the journal holds, exiting 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drivers.ports import Reading, ReadingSink
from gateway.config import load_site
from gateway.daemon import Gateway
from gateway.store import Store
from tests.support.waiting import eventually

# Crosses the end of the annual cycle (2025-01-01 00:00 Asia/Shanghai = 2024-12-31 16:00 UTC)
# after 240 readings per meter.
BASE = datetime(2024, 12, 31, 12, 0, tzinfo=UTC)
STEP = timedelta(seconds=60)
OVERLAP = 3  # readings re-delivered per meter after each start
REDELIVER_EVERY = 97  # every so many puts, one older reading is sent again
_LITRES_PER_STEP = (0, 20, 57, 133, 250, 9)


def register_milli(meter: int, k: int) -> int:
    """Reading ``k`` of meter ``m{meter}``: non-decreasing in ``k`` (litres, milli-m3)."""
    return k * _LITRES_PER_STEP[meter % len(_LITRES_PER_STEP)] + 5 * (k // 3)


def reading(meter: int, k: int) -> Reading:
    return Reading(
        meter_id=f"m{meter}",
        read_at=BASE + k * STEP,
        register_milli=register_milli(meter, k),
        source="crash-child",
    )


def index_of(read_at: datetime) -> int:
    return (read_at - BASE) // STEP


class DeterministicSource:
    """A `ReadingSource` that resumes from the journal and logs what ``put`` accepted."""

    name = "crash-source"

    def __init__(self, meters: int, store: Store, accepted: Path, *, final: bool) -> None:
        self.meters = meters
        self.store = store
        self.final = final
        self.done = asyncio.Event()
        self._fd = os.open(accepted, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _resume_points(self) -> list[int]:
        points = []
        for i in range(self.meters):
            last = self.store.last_reading(f"m{i}")
            points.append(0 if last is None else max(index_of(last.read_at) + 1 - OVERLAP, 0))
        return points

    async def _put(self, sink: ReadingSink, item: Reading) -> None:
        await sink.put(item)
        os.write(self._fd, f"{item.reading_id}\n".encode())

    async def run(self, sink: ReadingSink) -> None:
        next_k = await asyncio.to_thread(self._resume_points)
        if self.final:
            for i in range(self.meters):
                for k in range(next_k[i], next_k[i] + OVERLAP):
                    await self._put(sink, reading(i, k))
            self.done.set()
            await asyncio.Event().wait()
        puts = 0
        while True:
            for i in range(self.meters):
                await self._put(sink, reading(i, next_k[i]))
                next_k[i] += 1
                puts += 1
                if puts % REDELIVER_EVERY == 0 and next_k[i] > 2:
                    await self._put(sink, reading(i, next_k[i] - 2))


async def _all_billed(gateway: Gateway, source: DeterministicSource) -> None:
    await source.done.wait()

    def billed() -> bool:
        stats = gateway.probe.counters()
        queued = stats.received - stats.journalled - stats.duplicates
        return queued == 0 and not gateway.store.unbilled(1)

    # The parent bounds the whole final run; this only keeps a stuck child from waiting forever.
    await eventually(billed, timeout_s=600, what="everything journalled billed")


async def _main(site_path: Path, accepted: Path, *, final: bool, meters: int) -> int:
    site = load_site(site_path)
    gateway = Gateway(site, sources=[], actuators=[])
    source = DeterministicSource(meters, gateway.store, accepted, final=final)
    gateway.sources = [source]
    if final:
        await gateway.run(lambda: _all_billed(gateway, source))
    else:
        await gateway.run(asyncio.Event().wait)  # until SIGKILL
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crash_child")
    parser.add_argument("site", type=Path)
    parser.add_argument("accepted", type=Path)
    parser.add_argument("--meters", type=int, required=True)
    parser.add_argument("--final", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(_main(args.site, args.accepted, final=args.final, meters=args.meters))


if __name__ == "__main__":
    sys.exit(main())
