"""Command parsing, canonical JSON, signatures and receipts (pure)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import CommandRejectedError
from gateway.northbound import commands
from gateway.northbound.commands import (
    TopupCommand,
    command_id_of,
    new_command,
    parse_and_verify,
    sign_command,
)
from gateway.northbound.payloads import CommandKind
from gateway.northbound.receipts import InvalidReceiptError, make_receipt, verify_receipt
from gateway.northbound.signing import (
    canonical_json,
    load_private_key,
    load_public_key,
    private_key_to_pem,
    public_key_to_pem,
)

SITE = "site-1"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
# Fixed keys so the worked example in docs/mqtt-api.md is reproducible (Ed25519 is deterministic).
BACKEND_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
GATEWAY_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))

FIELDS: dict[CommandKind, dict[str, Any]] = {
    CommandKind.TOPUP: {"account": "acc-7", "amount_minor": 2000, "currency": "GBP"},
    CommandKind.REFUND: {
        "account": "acc-7",
        "amount_minor": 500,
        "currency": "GBP",
        "reason": "overpayment",
    },
    CommandKind.TARIFF: {
        "tariff_version": "2026-04",
        "effective_at": "2026-04-01T00:00:00Z",
        "scope": "class",
        "target": "resident",
        "tariff": {"tiers": [{"up_to": "10", "price_minor_per_unit": "2.5"}]},
    },
    CommandKind.ACCOUNT: {
        "action": "create",
        "account": "acc-8",
        "currency": "GBP",
        "tariff_class": "resident",
        "meters": ["m-1"],
    },
    CommandKind.SUPPLY: {"device": "valve-17", "override": "on", "reason": "medical"},
    CommandKind.RECEIPT: {"topup_id": "t-1"},
    CommandKind.METER: {"meter": "m-1", "action": "accept_level", "reason": "swapped"},
    CommandKind.TICKET_BATCH: {"batch": {"batch": "B-1", "signature": "checked by the box"}},
    CommandKind.INVOICE: {"action": "reissue", "invoice_id": "inv-1"},
}


def _signed(kind: CommandKind = CommandKind.TOPUP, **changes: Any) -> dict[str, Any]:
    body = new_command(kind, SITE, FIELDS[kind], now=NOW, command_id="c-1")
    body.update(changes)
    return sign_command(body, BACKEND_KEY)


def _parse(kind: str, raw: bytes, now: datetime = NOW) -> Any:
    return parse_and_verify(
        kind, raw, site_id=SITE, backend_public_key=BACKEND_KEY.public_key(), now=now
    )


def _reason(kind: str, raw: bytes, now: datetime = NOW) -> str:
    with pytest.raises(CommandRejectedError) as info:
        _parse(kind, raw, now)
    return info.value.reason


@pytest.mark.parametrize("kind", list(CommandKind))
def test_parse_and_verify_each_kind_round_trip(kind: CommandKind) -> None:
    command = _parse(kind, json.dumps(_signed(kind), indent=2).encode())
    # each kind has its own model, named after it: topup -> TopupCommand
    assert type(command) is commands.COMMAND_MODELS[kind]
    assert type(command).__name__.lower() == f"{kind.value.replace('_', '')}command"
    assert command.id == "c-1"
    assert command.site == SITE


def test_canonical_json_sorts_keys_strips_signature_and_keeps_unicode() -> None:
    obj = {"b": 1, "a": "café", "signature": "x", "n": {"z": [1, 2], "y": None}}
    assert canonical_json(obj) == '{"a":"café","b":1,"n":{"y":null,"z":[1,2]}}'.encode()


def test_canonical_json_float_raises() -> None:
    with pytest.raises(ValueError, match="float"):
        canonical_json({"amount": 1.5})


def test_signature_independent_of_sender_formatting() -> None:
    signed = _signed()
    spaced = json.dumps(dict(reversed(list(signed.items()))), indent=4, ensure_ascii=True)
    assert isinstance(_parse("topup", spaced.encode()), TopupCommand)


def test_signature_worked_example_is_stable() -> None:
    # The same bytes appear in docs/mqtt-api.md; Ed25519 signatures are deterministic.
    body = new_command(
        CommandKind.TOPUP,
        "site-1",
        {"account": "acc-7", "amount_minor": 2000, "currency": "GBP"},
        now=NOW,
        command_id="5f0c6a1e-0b7e-4f57-9a51-8f3b8f6f2a10",
    )
    assert canonical_json(body) == (
        b'{"account":"acc-7","amount_minor":2000,"currency":"GBP",'
        b'"expires_at":"2026-03-01T12:10:00.000Z","id":"5f0c6a1e-0b7e-4f57-9a51-8f3b8f6f2a10",'
        b'"issued_at":"2026-03-01T12:00:00.000Z","kind":"topup","site":"site-1"}'
    )
    signature = sign_command(body, BACKEND_KEY)["signature"]
    assert (
        BACKEND_KEY.public_key().verify(base64.b64decode(signature), canonical_json(body)) is None
    )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "malformed"),
        (b"\xff\xfe", "malformed"),
        (b"[1, 2]", "malformed"),
        (b'{"id": "a", "id": "b"}', "malformed"),
        (b'{"amount_minor": NaN}', "malformed"),
        (b'{"amount_minor": 1.0}', "malformed"),
        (b'{"id": "a"}', "bad_signature"),
        (b'{"id": "a", "signature": "%%%"}', "bad_signature"),
        (b'{"id": "a", "signature": "AAAA"}', "bad_signature"),
    ],
)
def test_parse_and_verify_rejects_broken_payloads(raw: bytes, reason: str) -> None:
    assert _reason("topup", raw) == reason


def test_parse_and_verify_forged_signature_is_bad_signature() -> None:
    body = new_command(CommandKind.TOPUP, SITE, FIELDS[CommandKind.TOPUP], now=NOW)
    forged = sign_command(body, Ed25519PrivateKey.generate())
    assert _reason("topup", json.dumps(forged).encode()) == "bad_signature"


@pytest.mark.parametrize(
    ("field", "value"),
    [("amount_minor", 200000), ("account", "acc-8"), ("expires_at", "2027-01-01T00:00:00Z")],
)
def test_parse_and_verify_field_tampered_after_signing_is_bad_signature(
    field: str, value: object
) -> None:
    signed = _signed()
    signed[field] = value
    assert _reason("topup", json.dumps(signed).encode()) == "bad_signature"


def test_parse_and_verify_added_field_after_signing_is_bad_signature() -> None:
    signed = _signed()
    signed["payment_ref"] = "mine"
    assert _reason("topup", json.dumps(signed).encode()) == "bad_signature"


def test_parse_and_verify_signed_float_is_malformed() -> None:
    # A sender that signs floats cannot be verified: canonical JSON has no floats.
    body = {**_signed(), "amount_minor": 20.0}
    body.pop("signature")
    raw = json.dumps({**body, "signature": base64.b64encode(bytes(64)).decode()}).encode()
    assert _reason("topup", raw) == "malformed"


def test_parse_and_verify_float_nested_in_tariff_is_malformed() -> None:
    signed = _signed(CommandKind.TARIFF)
    raw = json.dumps(signed).encode().replace(b'"2.5"', b"2.5")
    assert _reason("tariff", raw) == "malformed"


@pytest.mark.parametrize("amount", [0, -1, -2000])
@pytest.mark.parametrize("kind", [CommandKind.TOPUP, CommandKind.REFUND])
def test_parse_and_verify_non_positive_amount(kind: CommandKind, amount: int) -> None:
    raw = json.dumps(_signed(kind, amount_minor=amount)).encode()
    assert _reason(kind, raw) == "non_positive_amount"


@pytest.mark.parametrize(
    "changes",
    [
        {"amount_minor": True},
        {"amount_minor": "2000"},
        {"currency": "gbp"},
        {"account": "a/b"},
        {"extra": 1},
        {"kind": "refund"},
        {"issued_at": "2026-03-01T12:00:00"},  # naive
        {"expires_at": "2026-03-01T11:00:00Z"},  # before issued_at
    ],
)
def test_parse_and_verify_bad_shape_is_malformed(changes: dict[str, Any]) -> None:
    assert _reason("topup", json.dumps(_signed(**changes)).encode()) == "malformed"


def test_parse_and_verify_kind_not_matching_topic_is_malformed() -> None:
    refund = json.dumps(_signed(CommandKind.REFUND)).encode()
    assert _reason("topup", refund) == "malformed"
    assert _reason("nonsense", refund) == "malformed"


def test_parse_and_verify_other_site_is_wrong_site() -> None:
    raw = json.dumps(_signed(site="site-2")).encode()
    assert _reason("topup", raw) == "wrong_site"


def test_parse_and_verify_expired_at_and_after_expiry() -> None:
    raw = json.dumps(_signed()).encode()
    assert _reason("topup", raw, NOW + timedelta(minutes=10)) == "expired"
    assert _reason("topup", raw, NOW + timedelta(days=1)) == "expired"
    assert _parse("topup", raw, NOW + timedelta(minutes=10) - timedelta(milliseconds=1))


def test_parse_and_verify_future_issued_at_beyond_skew_is_not_yet_valid() -> None:
    raw = json.dumps(_signed()).encode()
    assert _reason("topup", raw, NOW - timedelta(minutes=5, seconds=1)) == "not_yet_valid"
    assert _parse("topup", raw, NOW - timedelta(minutes=5))  # within the default skew


def test_parse_and_verify_offsets_normalised_to_utc() -> None:
    raw = json.dumps(
        _signed(issued_at="2026-03-01T13:00:00+01:00", expires_at="2026-03-01T13:10:00+01:00")
    ).encode()
    assert _parse("topup", raw).issued_at == NOW


@pytest.mark.parametrize(
    ("kind", "changes"),
    [
        (CommandKind.TARIFF, {"scope": "site"}),  # target given with site scope
        (CommandKind.ACCOUNT, {"currency": None}),
        (
            CommandKind.ACCOUNT,
            {"action": "update", "currency": None, "tariff_class": None, "meters": None},
        ),
        (CommandKind.SUPPLY, {"override": "auto", "until": "2026-03-02T00:00:00Z"}),
    ],
)
def test_parse_and_verify_cross_field_rules_are_malformed(
    kind: CommandKind, changes: dict[str, Any]
) -> None:
    body = {k: v for k, v in {**_signed(kind), **changes}.items() if v is not None}
    assert _reason(kind, json.dumps(sign_command(body, BACKEND_KEY)).encode()) == "malformed"


def test_command_id_of_reads_what_it_can() -> None:
    assert command_id_of(b'{"id": "abc", "x": 1.5}') == "abc"
    assert command_id_of(b'{"id": 5}') is None
    assert command_id_of(b"[]") is None
    assert command_id_of(b"\xff") is None


@given(
    account=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,20}", fullmatch=True),
    amount=st.integers(min_value=1, max_value=100_000_000),  # the default ceiling
    ref=st.text(min_size=1, max_size=40),
)
def test_sign_then_parse_round_trip(account: str, amount: int, ref: str) -> None:
    body = new_command(
        CommandKind.TOPUP,
        SITE,
        {"account": account, "amount_minor": amount, "currency": "CNY", "payment_ref": ref},
        now=NOW,
    )
    command = _parse("topup", json.dumps(sign_command(body, BACKEND_KEY)).encode())
    assert (command.account, command.amount_minor, command.payment_ref) == (account, amount, ref)


def _topup() -> TopupCommand:
    signed = _signed(payment_ref="pay-99")
    command = _parse("topup", json.dumps(signed).encode())
    assert isinstance(command, TopupCommand)
    return command


def test_receipt_sign_and_verify() -> None:
    receipt = make_receipt(42, _topup(), 3500, applied_at=NOW, gateway_key=GATEWAY_KEY)
    parsed = verify_receipt(receipt, GATEWAY_KEY.public_key())
    assert parsed.receipt_seq == 42
    assert parsed.topup_id == "c-1"
    assert parsed.amount_minor == 2000
    assert parsed.balance_after_minor == 3500
    assert parsed.payment_ref == "pay-99"
    # Survives a JSON round trip (how the backend gets it).
    assert verify_receipt(json.loads(json.dumps(receipt)), GATEWAY_KEY.public_key())


@pytest.mark.parametrize(
    ("field", "value"), [("amount_minor", 20000), ("receipt_seq", 43), ("account", "acc-1")]
)
def test_receipt_tampered_is_bad_signature(field: str, value: object) -> None:
    receipt = make_receipt(42, _topup(), 3500, applied_at=NOW, gateway_key=GATEWAY_KEY)
    receipt[field] = value
    with pytest.raises(InvalidReceiptError) as info:
        verify_receipt(receipt, GATEWAY_KEY.public_key())
    assert info.value.reason == "bad_signature"


def test_receipt_signed_by_other_key_is_bad_signature() -> None:
    receipt = make_receipt(1, _topup(), 3500, applied_at=NOW, gateway_key=BACKEND_KEY)
    with pytest.raises(InvalidReceiptError):
        verify_receipt(receipt, GATEWAY_KEY.public_key())


def test_make_receipt_sequence_starts_at_one() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        make_receipt(0, _topup(), 1, applied_at=NOW, gateway_key=GATEWAY_KEY)


def test_keys_pem_and_raw_base64_round_trip() -> None:
    key = load_private_key(private_key_to_pem(GATEWAY_KEY))
    public = key.public_key()
    assert public_key_to_pem(load_public_key(public_key_to_pem(public))) == public_key_to_pem(
        public
    )
    raw = base64.b64encode(public.public_bytes_raw()).decode()
    assert public_key_to_pem(load_public_key(raw)) == public_key_to_pem(public)
    with pytest.raises(ValueError, match="32 bytes"):
        load_public_key(base64.b64encode(b"short"))
