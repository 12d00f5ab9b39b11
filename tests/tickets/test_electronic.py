"""Electronic tickets verified offline: forged, altered, unknown-key and malformed tickets are
refused with their reason; two trusted keys (rotation) both verify."""

from __future__ import annotations

import base64
import json
from datetime import date

import pytest

from gateway.northbound.signing import generate_private_key, key_id
from gateway.tickets.codes import TicketCode
from gateway.tickets.electronic import ElectronicTicket, Origin, encode, verify
from gateway.tickets.reasons import Reason, Refusal
from gateway.tickets.scope import Scope

PLANT_KEY = generate_private_key()
OLD_KEY = generate_private_key()
STRANGER = generate_private_key()
TRUSTED = {key_id(k.public_key()): k.public_key() for k in (PLANT_KEY, OLD_KEY)}
CODE = TicketCode("330102", 5_005).text


def _ticket(key=PLANT_KEY, **changes: object) -> ElectronicTicket:  # type: ignore[no-untyped-def]
    fields: dict[str, object] = {
        "code": CODE,
        "product": "18.9L",
        "qty": 1,
        "valid_from": date(2026, 12, 1),
        "valid_until": date(2027, 6, 30),
        "scope": Scope(depot="hz-xihu-03"),
        "kid": key_id(key.public_key()),
        "origin": Origin.SOLD,
    }
    fields.update(changes)
    return ElectronicTicket.model_validate(fields)


def _parts(text: str) -> tuple[dict[str, object], str]:
    _, payload, signature = text.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return body, signature


def _repack(body: dict[str, object], signature: str) -> str:
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return "PT1." + base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + "." + signature


def test_electronic_valid_ticket_verifies_with_its_fields() -> None:
    text = encode(_ticket(), PLANT_KEY)
    ticket = verify(text, TRUSTED)
    assert isinstance(ticket, ElectronicTicket)
    assert (ticket.code, ticket.product, ticket.qty) == (CODE, "18.9L", 1)
    assert ticket.valid_until == date(2027, 6, 30)
    assert ticket.scope == Scope(depot="hz-xihu-03")
    body, _ = _parts(text)
    # The wire form: aliases, dates as text, the unused scope field left out.
    assert body == {
        "code": CODE,
        "from": "2026-12-01",
        "kid": key_id(PLANT_KEY.public_key()),
        "origin": "sold",
        "product": "18.9L",
        "qty": 1,
        "scope": {"depot": "hz-xihu-03"},
        "until": "2027-06-30",
        "v": 1,
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [("qty", 10), ("until", "2099-12-31"), ("product", "5L"), ("scope", {"region": "hz"})],
)
def test_electronic_altered_field_refused(field: str, value: object) -> None:
    body, signature = _parts(encode(_ticket(), PLANT_KEY))
    body[field] = value
    refusal = verify(_repack(body, signature), TRUSTED)
    assert isinstance(refusal, Refusal)
    assert refusal.reason is Reason.BAD_SIGNATURE


def test_electronic_forged_with_another_key_claiming_the_plants_id_refused() -> None:
    # A forger names the plant's key id but can only sign with a key of their own.
    forged = _ticket(kid=key_id(PLANT_KEY.public_key()))
    raw = json.dumps(forged.payload(), sort_keys=True, separators=(",", ":")).encode()
    signature = base64.urlsafe_b64encode(STRANGER.sign(raw)).rstrip(b"=").decode()
    refusal = verify(_repack(forged.payload(), signature), TRUSTED)
    assert isinstance(refusal, Refusal)
    assert refusal.reason is Reason.BAD_SIGNATURE


def test_electronic_signed_by_an_untrusted_key_refused() -> None:
    refusal = verify(encode(_ticket(STRANGER), STRANGER), TRUSTED)
    assert isinstance(refusal, Refusal)
    assert refusal.reason is Reason.UNKNOWN_KEY


def test_electronic_signature_bit_flipped_refused() -> None:
    text = encode(_ticket(), PLANT_KEY)
    head, signature = text.rsplit(".", 1)
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    refusal = verify(f"{head}.{flipped}", TRUSTED)
    assert isinstance(refusal, Refusal)
    assert refusal.reason is Reason.BAD_SIGNATURE


def test_electronic_key_rotation_both_keys_verify_and_a_dropped_key_does_not() -> None:
    new = encode(_ticket(PLANT_KEY), PLANT_KEY)
    old = encode(_ticket(OLD_KEY), OLD_KEY)
    assert isinstance(verify(new, TRUSTED), ElectronicTicket)
    assert isinstance(verify(old, TRUSTED), ElectronicTicket)
    only_new = {key_id(PLANT_KEY.public_key()): PLANT_KEY.public_key()}
    refusal = verify(old, only_new)
    assert isinstance(refusal, Refusal)
    assert refusal.reason is Reason.UNKNOWN_KEY


@pytest.mark.parametrize(
    "text",
    [
        "PT1.",
        "PT1.a.b.c",
        "PT2.e30.AAAA",
        "PT1.!!!.AAAA",
        "PT1." + base64.urlsafe_b64encode(b"[1,2]").decode() + ".AAAA",
        "PT1." + base64.urlsafe_b64encode(b'{"kid": 1.5}').decode() + ".AAAA",
        "PT1." + "A" * 5000 + ".AAAA",
    ],
)
def test_electronic_malformed_refused(text: str) -> None:
    refusal = verify(text, TRUSTED)
    assert isinstance(refusal, Refusal)
    assert refusal.reason is Reason.MALFORMED


def test_electronic_signed_but_invalid_fields_refused_as_malformed() -> None:
    # A trusted key signed a payload with a mistyped code: authentic, but not a ticket.
    body = _ticket().payload()
    body["code"] = CODE[:-1] + str((int(CODE[-1]) + 1) % 10)
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    signature = base64.urlsafe_b64encode(PLANT_KEY.sign(raw)).rstrip(b"=").decode()
    refusal = verify(_repack(body, signature), TRUSTED)
    assert isinstance(refusal, Refusal)
    assert refusal.reason is Reason.MALFORMED


def test_electronic_encode_refuses_a_key_other_than_the_named_one() -> None:
    with pytest.raises(ValueError, match="names key"):
        encode(_ticket(PLANT_KEY), OLD_KEY)


def test_electronic_junk_inside_the_base64_refused() -> None:
    text = encode(_ticket(), PLANT_KEY)
    head, payload, signature = text.split(".")
    refusal = verify(f"{head}.{payload[:10]}*{payload[10:]}.{signature}", TRUSTED)
    assert isinstance(refusal, Refusal)
    assert refusal.reason is Reason.MALFORMED
