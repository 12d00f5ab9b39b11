"""Publish-only meters: their readings are journalled and published, never billed.

A meter the site lists under ``publish_only:`` (telemetry for a utility that bills elsewhere, a
meter not assigned to an account yet) is billed by no account. The pipeline journals its
readings like any other (durable before anything) and hands them here instead of holding them
as ``unknown_meter``. In the batch's one transaction, each is:

- marked settled in the journal with the status `PUBLISH_ONLY` and no deduction (state
  ``billed``: not waiting for anything, so a restart does not bill it again, journal retention
  prunes it like a billed reading, and the InfluxDB sink exports it like any journalled one);
- published on ``meter/{meter}/reading`` with ``"billing": "none"`` (`ReadingBilling.NONE`) and
  the register unit its ``publish_only:`` entry gives.

No ledger entry, account, policy decision, supply wish or alarm is touched.

``delta`` is the consumption since the meter's previous reading (`next_base`): the register
minus that of the latest earlier reading, 0 for the meter's first reading, for a reading older
than the latest one published (out of order: its place in between is not known here), and for a
register below the previous one (a reset, a swap or a rollover; it becomes the new base, so the
sum of the deltas is what the meter counted while it counted up). The base is kept in a reserved
record of the account-state table per meter (`record_key`), written in the same transaction as
the mark and the message: a reading journalled before a crash and published after it gets the
delta it would have got, and a restart picks up where the last batch left.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final, NamedTuple

from billing_engine.tariff import RegisterUnit
from drivers.ports import Reading
from gateway.northbound.payloads import ReadingBilling, ReadingPayload
from gateway.northbound.topics import SiteTopics
from gateway.store import Transaction
from gateway.store.account_records import AccountRecord
from gateway.store.timestamps import to_micros

#: The journal's ``bill_status`` of a publish-only meter's reading: settled, not billed by design
#: (with ``deduction_minor`` 0). The billing engine's own status words never take this value.
PUBLISH_ONLY: Final = "publish_only"

#: Reserved account-state records: account ids cannot start with ``~``.
RECORD_PREFIX: Final = "~publish_only."


def record_key(meter_id: str) -> str:
    """The account-state record that holds ``meter_id``'s `MeterBase`."""
    return RECORD_PREFIX + meter_id


@dataclass(frozen=True, slots=True)
class MeterBase:
    """What the next reading of a publish-only meter is measured from.

    Attributes:
        read_at_us: the latest reading published, by ``read_at`` (microseconds since the epoch).
        register_milli: its register.
        published: how many readings of the meter were published (`prepay status`).
    """

    read_at_us: int
    register_milli: int
    published: int

    def to_record(self) -> AccountRecord:
        return {
            "read_at_us": self.read_at_us,
            "register_milli": self.register_milli,
            "published": self.published,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, int | str | None]) -> MeterBase:
        return cls(
            read_at_us=int(record["read_at_us"] or 0),
            register_milli=int(record["register_milli"] or 0),
            published=int(record["published"] or 0),
        )


def stored_bases(records: Mapping[str, Mapping[str, int | str | None]]) -> dict[str, MeterBase]:
    """The bases among the account-state records (`Transaction.load_account_states`), by meter."""
    return {
        key.removeprefix(RECORD_PREFIX): MeterBase.from_record(record)
        for key, record in records.items()
        if key.startswith(RECORD_PREFIX)
    }


def next_base(
    base: MeterBase | None, read_at_us: int, register_milli: int
) -> tuple[int, MeterBase]:
    """A reading's ``delta`` after ``base`` (None: the meter's first), and the base after it.

    See the module docstring for the rule; a reading that is not later than the base leaves
    the base where it is (only its count moves).
    """
    if base is None:
        return 0, MeterBase(read_at_us, register_milli, 1)
    count = base.published + 1
    if read_at_us <= base.read_at_us:
        return 0, MeterBase(base.read_at_us, base.register_milli, count)
    delta = register_milli - base.register_milli
    return max(delta, 0), MeterBase(read_at_us, register_milli, count)


class _Step(NamedTuple):
    row_id: int
    reading: Reading
    unit: RegisterUnit
    delta: int


class PublishOnly:
    """The publish-only meters' part of a billing batch; runs under the state lock, in the
    pipeline's worker thread, like the rest of the batch."""

    def __init__(self, topics: SiteTopics) -> None:
        self._topics = topics
        self._bases: dict[str, MeterBase] | None = None  # as committed; loaded on first use
        self._pending: dict[str, MeterBase] = {}
        self._steps: list[_Step] = []

    def begin(self) -> None:
        """Start a batch; what a batch whose transaction did not commit left is dropped (the
        committed bases stand)."""
        self._pending = {}
        self._steps = []

    def add(self, tx: Transaction, row_id: int, reading: Reading, unit: RegisterUnit) -> None:
        """Take a journalled reading of a publish-only meter into the batch (journal order),
        inside the transaction ``tx`` that bills the batch.

        Raises:
            StoreError: the stored bases cannot be read (first use only).
        """
        if self._bases is None:
            self._bases = stored_bases(tx.load_account_states())
        meter = reading.meter_id
        base = self._pending.get(meter) or self._bases.get(meter)
        delta, self._pending[meter] = next_base(
            base, to_micros(reading.read_at), reading.register_milli
        )
        self._steps.append(_Step(row_id, reading, unit, delta))

    def record(self, tx: Transaction, now: datetime) -> None:
        """Write the batch's marks, messages and bases in the billing transaction."""
        for step in self._steps:
            reading = step.reading
            tx.mark_billed(step.row_id, PUBLISH_ONLY, 0)
            tx.enqueue(
                self._topics.reading_message(
                    ReadingPayload(
                        meter=reading.meter_id,
                        reading_id=reading.reading_id,
                        read_at=reading.read_at,
                        register=reading.register_milli,
                        delta=step.delta,
                        unit=step.unit,
                        quality=reading.quality,
                        billing=ReadingBilling.NONE,
                        ts=now,
                    )
                )
            )
        if self._pending:
            tx.save_account_states(
                (record_key(meter), base.to_record()) for meter, base in self._pending.items()
            )

    def committed(self) -> int:
        """The batch's transaction committed: its bases are the ones to measure from. Returns
        how many readings it published."""
        if self._bases is not None:
            self._bases.update(self._pending)
        published = len(self._steps)
        self.begin()
        return published
