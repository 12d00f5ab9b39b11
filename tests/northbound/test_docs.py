"""docs/mqtt-api.md matches the models: schemas current, examples valid, worked example exact."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.northbound.receipts import verify_receipt
from gateway.northbound.schemas import SCHEMA_MODELS, render
from gateway.northbound.signing import canonical_json, load_public_key

DOC = Path(__file__).parents[2] / "docs" / "mqtt-api.md"
EXAMPLE = re.compile(r"<!-- example:(\w+) -->\n```json\n(.*?)\n```", re.DOTALL)


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def test_docs_schemas_match_models() -> None:
    assert render(_doc()) == _doc(), "run: python -m gateway.northbound.schemas docs/mqtt-api.md"


def test_docs_document_every_model() -> None:
    documented = set(re.findall(r"<!-- schema:(\w+) -->", _doc()))
    assert documented == set(SCHEMA_MODELS)


@pytest.mark.parametrize(("name", "text"), EXAMPLE.findall(DOC.read_text(encoding="utf-8")))
def test_docs_example_valid(name: str, text: str) -> None:
    model, _ = SCHEMA_MODELS[name]
    model.model_validate_json(text)


def test_docs_worked_signature_example_verifies() -> None:
    examples = dict(EXAMPLE.findall(_doc()))
    topup = json.loads(examples["TopupCommand"])
    backend = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    public = load_public_key("A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=")
    assert public.public_bytes_raw() == backend.public_key().public_bytes_raw()
    canonical = canonical_json(topup)
    assert canonical.decode() in _doc()
    assert f"{len(canonical)} bytes" in _doc()
    public.verify(base64.b64decode(topup["signature"]), canonical)
    receipt = json.loads(examples["ReceiptPayload"])
    gateway = load_public_key("Kay64UG8yvCyLhqU000LxzYeUm0L/hLIl5S8kyKWbdc=")
    assert verify_receipt(receipt, gateway).receipt_seq == 17
    event = json.loads(examples["AccountEventPayload"])
    assert verify_receipt(event["receipt"], gateway) == verify_receipt(receipt, gateway)
