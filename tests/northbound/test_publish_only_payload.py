"""The reading message's publish-only mark (``"billing": "none"``) as docs/mqtt-api.md shows it:
both reading examples are byte for byte what the gateway encodes, the billed one without the
field (its bytes as before the field existed), the publish-only one with it."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.northbound.payloads import (
    ReadingBilling,
    ReadingPayload,
    decode_payload,
    encode_payload,
)

DOC = Path(__file__).parents[2] / "docs" / "mqtt-api.md"
READING_EXAMPLE = re.compile(r"<!-- example:ReadingPayload -->\n```json\n(.*?)\n```", re.DOTALL)


def test_publish_only_reading_examples_are_what_the_gateway_encodes() -> None:
    billed, publish_only = READING_EXAMPLE.findall(DOC.read_text(encoding="utf-8"))
    for text in (billed, publish_only):
        assert encode_payload(decode_payload(ReadingPayload, text.encode())) == text.encode()
    assert decode_payload(ReadingPayload, billed.encode()).billing is None
    assert '"billing"' not in billed
    marked = decode_payload(ReadingPayload, publish_only.encode())
    assert marked.billing is ReadingBilling.NONE
    # 5,120,450 Wh now, 5,118,000 Wh at the previous reading: 2,450 Wh since.
    assert (marked.register_value, marked.delta) == (5_120_450, 2_450)
    assert '"quality":"good","billing":"none","ts":' in publish_only
