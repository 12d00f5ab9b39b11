"""Redemption through the store: exactly once, idempotent by request id, refused with when and
where, across boxes (imported events, conflicts), raced from threads; batches, conversion,
extension and emergency tickets on a real store file."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from gateway.flows import ticket_feed
from gateway.ops import tickets
from gateway.store.errors import IdempotencyConflictError
from gateway.store.tickets import BatchConflictError, EmergencyCapError, TicketStore
from gateway.tickets import electronic
from gateway.tickets.batches import BatchError
from gateway.tickets.electronic import ElectronicTicket, Origin
from gateway.tickets.reasons import Reason, Refusal
from gateway.tickets.scope import Scope
from tests.tickets.box import DEPOT, Box, batch_document, code, write_box

# 10:00 in Shanghai on 15 January 2027.
NOW = datetime(2027, 1, 15, 2, 0, tzinfo=UTC)
FROM, UNTIL = date(2026, 12, 1), date(2027, 6, 30)


@pytest.fixture
def box(tmp_path: Path) -> Box:
    box = write_box(tmp_path / "box1")
    with box.store() as store:
        doc = batch_document(
            box, "B1", [(10_000, 100), (20_000, 50)], valid_from=FROM, valid_until=UNTIL
        )
        tickets.import_batch(box.site(), store, json.dumps(doc).encode())
    return box


def _rows(box: Box, table: str) -> int:
    with sqlite3.connect(box.site().store_path) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608


def _refusal(result: tickets.RedeemResult) -> Reason | None:
    return None if result.refusal is None else result.refusal.reason


def test_redemption_paper_once_then_refused_with_when_and_where(box: Box) -> None:
    site = box.site()
    with box.store(lambda: NOW) as store:
        first = tickets.redeem(site, store, code(10_005), now=NOW, where="counter 2")
        again = tickets.redeem(site, store, code(10_005), now=NOW, where="counter 3")
    assert first.redeemed is not None
    assert (first.redeemed.kind, first.redeemed.product, first.redeemed.quantity) == (
        "paper",
        "18.9L",
        1,
    )
    assert first.redeemed.box_id == "depot3-box1"
    assert _refusal(again) is Reason.ALREADY_USED
    assert again.refusal is not None
    assert "depot3-box1 (counter 2) on 2027-01-15T02:00:00+00:00" in again.refusal.detail
    assert _rows(box, "ticket_redemptions") == 1


def test_redemption_same_request_replayed_changes_nothing(box: Box) -> None:
    site = box.site()
    with box.store(lambda: NOW) as store:
        first = tickets.redeem(site, store, code(10_005), now=NOW, redemption_id="scan-1")
        later = NOW + timedelta(days=300)  # even after the ticket's expiry: the answer stands
        replay = tickets.redeem(site, store, code(10_005), now=later, redemption_id="scan-1")
        with pytest.raises(IdempotencyConflictError):
            tickets.redeem(site, store, code(10_006), now=NOW, redemption_id="scan-1")
    assert replay.replayed == first.redeemed
    assert _rows(box, "ticket_redemptions") == 1


def test_redemption_outside_every_range_and_mistyped_refused(box: Box) -> None:
    site = box.site()
    with box.store() as store:
        outside = tickets.redeem(
            site, store, code(10_100), now=NOW
        )  # B1's first range ends at 10_099
        between = tickets.redeem(site, store, code(15_000), now=NOW)
        typo = code(10_005)
        typo = typo[:8] + str((int(typo[8]) + 1) % 10) + typo[9:]
        mistyped = tickets.redeem(site, store, typo, now=NOW)
        last = tickets.redeem(site, store, code(20_049), now=NOW)  # last of the second range
    assert _refusal(outside) is Reason.NOT_ISSUED
    assert _refusal(between) is Reason.NOT_ISSUED
    assert _refusal(mistyped) is Reason.BAD_CHECK_DIGIT
    assert last.redeemed is not None
    assert _rows(box, "ticket_redemptions") == 1


def test_redemption_electronic_forged_altered_other_depot_product_refused(box: Box) -> None:
    site = box.site()
    good = tickets.make_electronic(
        box.plant_key, code=code(500), product="18.9L", valid_from=FROM, valid_until=UNTIL,
        scope=Scope(depot=DEPOT),
    )  # fmt: skip
    forged = tickets.make_electronic(
        box.stranger_key, code=code(501), product="18.9L", valid_from=FROM, valid_until=UNTIL,
        scope=Scope(depot=DEPOT),
    )  # fmt: skip
    head, _payload, signature = good.split(".")
    other_payload = tickets.make_electronic(
        box.plant_key, code=code(502), product="18.9L", valid_from=FROM, valid_until=UNTIL,
        scope=Scope(depot=DEPOT),
    ).split(".")[1]  # fmt: skip
    altered = f"{head}.{other_payload}.{signature}"  # another ticket's payload, this signature
    other_depot = tickets.make_electronic(
        box.plant_key, code=code(503), product="18.9L", valid_from=FROM, valid_until=UNTIL,
        scope=Scope(depot="hz-binjiang-01"),
    )  # fmt: skip
    other_product = tickets.make_electronic(
        box.plant_key, code=code(504), product="11.3L", valid_from=FROM, valid_until=UNTIL,
        scope=Scope(depot=DEPOT),
    )  # fmt: skip
    with box.store() as store:
        assert _refusal(tickets.redeem(site, store, forged, now=NOW)) is Reason.UNKNOWN_KEY
        assert _refusal(tickets.redeem(site, store, altered, now=NOW)) is Reason.BAD_SIGNATURE
        assert _refusal(tickets.redeem(site, store, other_depot, now=NOW)) is Reason.WRONG_SCOPE
        assert _refusal(tickets.redeem(site, store, other_product, now=NOW)) is (
            Reason.WRONG_PRODUCT
        )
        assert tickets.redeem(site, store, good, now=NOW).redeemed is not None
        assert _refusal(tickets.redeem(site, store, good, now=NOW)) is Reason.ALREADY_USED
    assert _rows(box, "ticket_redemptions") == 1


def test_redemption_key_rotation_tickets_of_both_keys_taken(box: Box) -> None:
    site = box.site()
    made = [
        tickets.make_electronic(
            key,
            code=code(serial),
            product="18.9L",
            valid_from=FROM,
            valid_until=UNTIL,
            scope=Scope(depot=DEPOT),
        )
        for key, serial in ((box.plant_key, 600), (box.plant_key_old, 601))
    ]
    with box.store() as store:
        assert all(tickets.redeem(site, store, t, now=NOW).redeemed for t in made)


def test_redemption_not_yet_valid_expired_and_extended(box: Box) -> None:
    site = box.site()
    before, after = datetime(2026, 11, 20, tzinfo=UTC), datetime(2027, 7, 5, tzinfo=UTC)
    with box.store() as store:
        assert _refusal(tickets.redeem(site, store, code(10_001), now=before)) is (
            Reason.NOT_YET_VALID
        )
        assert _refusal(tickets.redeem(site, store, code(10_001), now=after)) is Reason.EXPIRED
        extension = tickets.extend(site, store, code(10_001), now=after)
        assert not isinstance(extension, Refusal)
        assert (extension.old_until, extension.new_until) == (UNTIL, date(2027, 8, 5))
        again = tickets.extend(site, store, code(10_001), now=after)
        assert isinstance(again, Refusal)
        assert again.reason is Reason.ALREADY_EXTENDED
        fresh = tickets.extend(site, store, code(10_002), now=NOW)
        assert isinstance(fresh, Refusal)
        assert fresh.reason is Reason.NOT_EXPIRED
        assert tickets.redeem(site, store, code(10_001), now=after).redeemed is not None
        late = datetime(2027, 8, 6, tzinfo=UTC)  # Shanghai: 6 August, the day after
        assert _refusal(tickets.redeem(site, store, code(10_003), now=late)) is Reason.EXPIRED
    assert _rows(box, "ticket_extensions") == 1


def test_redemption_conversion_voids_paper_and_the_electronic_twin_is_taken_once(box: Box) -> None:
    site = box.site()
    with box.store() as store:
        conversion = tickets.convert(site, store, code(10_010), now=NOW)
        assert isinstance(conversion, tickets.Conversion)
        twice = tickets.convert(site, store, code(10_010), now=NOW)
        paper = tickets.redeem(site, store, code(10_010), now=NOW)
        twin = tickets.redeem(site, store, conversion.ticket, now=NOW)
        twin_again = tickets.redeem(site, store, conversion.ticket, now=NOW)
        used = tickets.redeem(site, store, code(10_011), now=NOW)
        assert used.redeemed is not None
        after_use = tickets.convert(site, store, code(10_011), now=NOW)
    made = electronic.verify(conversion.ticket, site.keys)
    assert isinstance(made, ElectronicTicket)
    assert (made.code, made.origin, made.valid_until) == (code(10_010), Origin.CONVERTED, UNTIL)
    assert made.scope == Scope(region="hz")  # the batch's scope
    assert isinstance(twice, Refusal)
    assert twice.reason is Reason.VOIDED
    assert _refusal(paper) is Reason.VOIDED
    assert twin.redeemed is not None
    assert twin.redeemed.kind == "electronic"
    assert _refusal(twin_again) is Reason.ALREADY_USED
    assert isinstance(after_use, Refusal)
    assert after_use.reason is Reason.ALREADY_USED


def test_redemption_emergency_capped_per_day_and_redeemable_here(box: Box) -> None:
    site = box.site()  # cap 2 a day, box number 7
    with box.store() as store:
        first = tickets.issue_emergency(site, store, "18.9L", now=NOW, note="typhoon")
        second = tickets.issue_emergency(site, store, "18.9L", now=NOW)
        with pytest.raises(EmergencyCapError):
            tickets.issue_emergency(site, store, "18.9L", now=NOW)
        tomorrow = tickets.issue_emergency(site, store, "18.9L", now=NOW + timedelta(days=1))
        with pytest.raises(tickets.TicketUsageError):
            tickets.issue_emergency(site, store, "5L", now=NOW)
        assert tickets.redeem(site, store, first.code, now=NOW).redeemed is not None
        made_up = tickets.redeem(site, store, code(900_700_099), now=NOW)
        assert store.mark_reconciled([first.code]) == 1
        pending = [t.code for t in store.emergency_tickets(unreconciled_only=True)]
    assert [first.seq, second.seq, tomorrow.seq] == [1, 2, 3]
    assert first.code == code(900_700_001)  # 9 + box 007 + 00001
    assert first.valid_until == date(2027, 2, 15)
    assert _refusal(made_up) is Reason.NOT_ISSUED
    assert pending == [second.code, tomorrow.code]
    assert _rows(box, "ticket_emergency") == 3


def test_redemption_emergency_off_when_cap_is_zero(tmp_path: Path) -> None:
    box = write_box(tmp_path, settings={"emergency_cap_per_day": 0})
    with box.store() as store, pytest.raises(tickets.TicketUsageError, match="no emergency"):
        tickets.issue_emergency(box.site(), store, "18.9L", now=NOW)


def test_redemption_seen_at_another_box_refused_here_and_a_double_is_a_conflict(
    tmp_path: Path,
) -> None:
    one = write_box(tmp_path / "one", site_id="box-one")
    two = write_box(tmp_path / "two", site_id="box-two", plant_keys_from=one)
    doc = json.dumps(
        batch_document(one, "B1", [(10_000, 100)], valid_from=FROM, valid_until=UNTIL)
    ).encode()
    with one.store() as a, two.store() as b:
        tickets.import_batch(one.site(), a, doc)
        tickets.import_batch(two.site(), b, doc)
        # Box two redeems 10_001; box one learns of it and refuses it afterwards.
        at_two = tickets.redeem(two.site(), b, code(10_001), now=NOW, where="van 3")
        assert at_two.redeemed is not None
        event = json.dumps(ticket_feed.redemption_event(at_two.redeemed))
        imported = ticket_feed.import_redemption(a, event)
        again = ticket_feed.import_redemption(a, event)
        refused = tickets.redeem(one.site(), a, code(10_001), now=NOW)
        # Both offline: both redeem 10_002; when the events cross, each box sees the conflict.
        here = tickets.redeem(one.site(), a, code(10_002), now=NOW)
        there = tickets.redeem(two.site(), b, code(10_002), now=NOW)
        assert here.redeemed is not None
        assert there.redeemed is not None
        outcome = ticket_feed.import_redemption(
            a, json.dumps(ticket_feed.redemption_event(there.redeemed))
        )
        own = ticket_feed.import_redemption(
            a, json.dumps(ticket_feed.redemption_event(here.redeemed))
        )
        conflicts = a.conflicts()
    assert (imported.new, imported.conflict) == (True, None)
    assert (again.new, again.conflict) == (False, None)
    assert _refusal(refused) is Reason.USED_ELSEWHERE
    assert refused.refusal is not None
    assert "box-two (van 3)" in refused.refusal.detail
    assert outcome.conflict is not None
    assert outcome.conflict.here == here.redeemed
    assert outcome.conflict.elsewhere.box_id == "box-two"
    assert outcome.conflict.elsewhere.redemption_id == there.redeemed.redemption_id
    assert own.own
    assert [c.code for c in conflicts] == [code(10_002)]
    assert _rows(one, "ticket_redemptions") == 1  # both of box one's own were kept: 10_002 only
    assert _rows(one, "ticket_remote_redemptions") == 2


def test_redemption_raced_from_threads_exactly_one_wins(box: Box) -> None:
    site = box.site()
    racers = 8
    stores = [TicketStore(site.store_path, box_id=site.site_id) for _ in range(racers)]
    start = threading.Barrier(racers)
    results: list[tickets.RedeemResult] = []
    lock = threading.Lock()

    def race(store: TicketStore) -> None:
        start.wait()
        result = tickets.redeem(site, store, code(10_020), now=NOW)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=race, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert len(results) == racers
    assert sum(r.redeemed is not None for r in results) == 1
    assert sorted(_refusal(r) or "" for r in results if r.redeemed is None) == (
        [Reason.ALREADY_USED] * (racers - 1)
    )
    assert _rows(box, "ticket_redemptions") == 1


def test_redemption_batches_forged_overlapping_and_repeated(box: Box) -> None:
    site = box.site()
    good = batch_document(box, "B2", [(30_000, 10)], valid_from=FROM, valid_until=UNTIL)
    forged = batch_document(
        box, "B3", [(40_000, 10)], valid_from=FROM, valid_until=UNTIL, key=box.stranger_key
    )
    altered = {**good, "ranges": [{"first_serial": 30_000, "count": 1000}]}
    overlapping = batch_document(box, "B4", [(10_050, 100)], valid_from=FROM, valid_until=UNTIL)
    same_id = batch_document(box, "B2", [(50_000, 10)], valid_from=FROM, valid_until=UNTIL)
    with box.store() as store:
        assert tickets.import_batch(site, store, json.dumps(good).encode())[1] is True
        assert tickets.import_batch(site, store, json.dumps(good).encode())[1] is False
        with pytest.raises(BatchError, match="does not trust"):
            tickets.import_batch(site, store, json.dumps(forged).encode())
        with pytest.raises(BatchError, match="forged or altered"):
            tickets.import_batch(site, store, json.dumps(altered).encode())
        with pytest.raises(BatchConflictError, match="overlap batch B1"):
            tickets.import_batch(site, store, json.dumps(overlapping).encode())
        with pytest.raises(BatchConflictError, match="other content"):
            tickets.import_batch(site, store, json.dumps(same_id).encode())
        with pytest.raises(BatchError):
            tickets.import_batch(site, store, b"{not json")
        assert _refusal(tickets.redeem(site, store, code(30_005), now=NOW)) is None
        assert _refusal(tickets.redeem(site, store, code(10_120), now=NOW)) is Reason.NOT_ISSUED
    with box.store() as store:
        assert [b.batch_id for b in store.batches()] == ["B1", "B2"]


def test_redemption_stats_count_by_hand(box: Box) -> None:
    # B1: 100 + 50 = 150 paper codes valid to 30 June 2027.
    site = box.site()
    with box.store(lambda: NOW) as store:
        for serial in (10_000, 10_001, 10_002):
            assert tickets.redeem(site, store, code(serial), now=NOW).redeemed
        assert isinstance(tickets.convert(site, store, code(10_003), now=NOW), tickets.Conversion)
        tickets.issue_emergency(site, store, "18.9L", now=NOW)
        now_stats = tickets.stats(site, store, now=NOW)
        # After 30 June: the 150 - 3 used - 1 converted = 146 left have expired.
        later = tickets.stats(site, store, now=datetime(2027, 7, 2, tzinfo=UTC))
    counts = now_stats["products"]["18.9L"]
    assert counts == {
        "paper_issued": 150,
        "paper_used": 3,
        "paper_converted": 1,
        "paper_expired": 0,
        "paper_remaining": 146,  # 150 - 3 - 1
        "electronic_used": 0,
        "emergency_issued": 1,
        "emergency_used": 0,
        "emergency_unreconciled": 1,
    }
    assert now_stats["periods"] == [
        {"period": "2027-01", "product": "18.9L", "kind": "paper", "used": 3}
    ]
    assert now_stats["stock"] == {
        "depot": DEPOT,
        "paper_remaining": 146,
        "restock_level": 50,
        "restock": False,
    }
    assert later["products"]["18.9L"]["paper_expired"] == 146
    assert later["stock"]["paper_remaining"] == 0
    assert later["stock"]["restock"] is True


def test_redemption_events_listed_in_order_for_publishing(box: Box) -> None:
    site = box.site()
    with box.store(lambda: NOW) as store:
        for serial in (10_030, 10_031, 10_032):
            tickets.redeem(site, store, code(serial), now=NOW, redemption_id=f"s{serial}")
        first = store.redemptions(limit=2)
        rest = store.redemptions(after_seq=first[-1].seq)
    assert [r.redemption_id for r in first] == ["s10030", "s10031"]
    assert [r.redemption_id for r in rest] == ["s10032"]
    event = ticket_feed.redemption_event(rest[0])
    assert event == {
        "event": "ticket_redeemed",
        "code": code(10_032),
        "redemption_id": "s10032",
        "kind": "paper",
        "product": "18.9L",
        "qty": 1,
        "box": "depot3-box1",
        "incarnation": rest[0].incarnation,
        "where": "",
        "at": "2027-01-15T02:00:00.000Z",
    }


def test_redemption_bad_event_refused_and_nothing_imported(box: Box) -> None:
    with box.store() as store:
        with pytest.raises(ValueError, match="incarnation"):
            ticket_feed.import_redemption(
                store,
                json.dumps(
                    {"event": "ticket_redeemed", "code": code(10_001), "redemption_id": "x",
                     "kind": "paper", "product": "18.9L", "qty": 1, "box": "b2",
                     "incarnation": "not hex", "at": "2027-01-15T02:00:00Z"}
                ),
            )  # fmt: skip
        assert tickets.redeem(box.site(), store, code(10_001), now=NOW).redeemed is not None
    assert _rows(box, "ticket_remote_redemptions") == 0
