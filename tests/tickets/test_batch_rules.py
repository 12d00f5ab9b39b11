"""A batch's own rules (before any store) and the settings' rules, each with its message."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from pydantic import ValidationError

from billing_engine.base.errors import InvalidConfigError
from gateway.northbound.signing import generate_private_key, key_id, sign_document
from gateway.ops import tickets
from gateway.tickets.batches import BatchError, CodeRange, TicketBatch, verify_batch
from gateway.tickets.codes import TicketCode
from gateway.tickets.scope import Scope
from gateway.tickets.settings import TicketSettings
from tests.tickets.box import write_box

KEY = generate_private_key()
KEYS = {key_id(KEY.public_key()): KEY.public_key()}


def _batch(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "batch": "B1",
        "plant": "330102",
        "product": "18.9L",
        "face_minor": 2000,
        "currency": "CNY",
        "from": "2026-12-01",
        "until": "2027-06-30",
        "scope": {"region": "hz"},
        "ranges": [{"first_serial": 10_000, "count": 500}, {"first_serial": 20_000, "count": 250}],
        "kid": key_id(KEY.public_key()),
    }
    fields.update(changes)
    return fields


def test_batch_membership_by_plant_and_range() -> None:
    batch = TicketBatch.model_validate(_batch())
    assert batch.count == 750  # 500 + 250
    assert batch.holds(TicketCode("330102", 10_499))  # 10_000 + 500 - 1
    assert not batch.holds(TicketCode("330102", 10_500))
    assert batch.holds(TicketCode("330102", 20_000))
    assert not batch.holds(TicketCode("420115", 10_000))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"until": "2026-11-30"}, "until is before from"),
        (
            {"ranges": [{"first_serial": 10, "count": 10}, {"first_serial": 19, "count": 5}]},
            "ranges overlap: serials 10-19 and 19-23",
        ),
        ({"ranges": [{"first_serial": 899_999_990, "count": 20}]}, "reserved for emergency"),
        ({"ranges": []}, "at least 1 item"),
        ({"scope": {"region": "hz", "depot": "d1"}}, "exactly one of region or depot"),
        ({"extra": 1}, "Extra inputs are not permitted"),
    ],
)
def test_batch_inconsistent_terms_refused(changes: dict[str, object], message: str) -> None:
    # Signed by a trusted key, but not a batch this box can use.
    signed = sign_document(_batch(**changes), KEY)
    with pytest.raises(BatchError, match=message):
        verify_batch(json.dumps(signed).encode(), KEYS)
    with pytest.raises(ValidationError, match=message):  # nor does the plant's tool make one
        TicketBatch.model_validate(_batch(**changes))


def test_batch_signed_with_a_float_refused_by_the_verifier() -> None:
    # Signed by hand around the strict rules: the verifier still refuses a float.
    raw = json.dumps({**_batch(), "face_minor": 20.5, "signature": "AAAA"}).encode()
    with pytest.raises(BatchError, match="float"):
        verify_batch(raw, KEYS)


def test_batch_of_another_plant_refused_on_import(tmp_path: Path) -> None:
    box = write_box(tmp_path)
    doc = tickets.make_batch(
        box.plant_key, batch_id="B1", plant="420115", product="18.9L", face_minor=2000,
        currency="CNY", valid_from=date(2026, 12, 1), valid_until=date(2027, 6, 30),
        scope=Scope(region="hz"), ranges=[(1, 10)],
    )  # fmt: skip
    with box.store() as store, pytest.raises(BatchError, match="of plant 420115"):
        tickets.import_batch(box.site(), store, json.dumps(doc).encode())


def test_batch_range_count_is_last_minus_first_plus_one() -> None:
    assert CodeRange(first_serial=5, count=1).last_serial == 5
    assert 5 in CodeRange(first_serial=5, count=1)
    assert 6 not in CodeRange(first_serial=5, count=1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"plant_code": "33010"}, "String should match pattern"),
        ({"products": []}, "at least 1 item"),
        ({"emergency_cap_per_day": 3}, "needs emergency_box_number"),
        ({"emergency_box_number": 1000}, "less than or equal to 999"),
    ],
)
def test_settings_rules(changes: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "plant_code": "330102",
        "depot": "d1",
        "region": "r1",
        "products": ["18.9L"],
        "issuer_public_keys": ["plant.pub.pem"],
    }
    fields.update(changes)
    with pytest.raises(ValidationError, match=message):
        TicketSettings.model_validate(fields)


def test_settings_unreadable_key_file_named_by_line(tmp_path: Path) -> None:
    box = write_box(tmp_path, settings={"issuer_public_keys": ["keys/gateway.pub.pem", "nope.pem"]})
    with pytest.raises(InvalidConfigError) as err:
        tickets.load_ticket_site(box.site_file)
    [error] = err.value.errors
    lines = box.site_file.read_text().splitlines()
    assert error.line == lines.index("  - nope.pem") + 1
    assert error.field == "tickets.issuer_public_keys.1"
