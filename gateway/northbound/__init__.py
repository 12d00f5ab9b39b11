"""The northbound side: the MQTT contract with utility backends.

- `settings`: the ``mqtt`` section of the site file (pydantic only, no MQTT library).
- `payloads`: what goes out, as models with their wire vocabulary; `topics`: where it goes.
- `commands`: what comes in (models, `parse_and_verify`); `signing`: canonical JSON and
  Ed25519; `receipts`: the gateway's signed top-up receipts.
- `mqtt`: the one adapter over aiomqtt that moves bytes between the outbox and the broker.
- `schemas`: the JSON Schemas of the models, for docs/mqtt-api.md.
"""
