"""The northbound side: the MQTT contract with utility backends.

- `topics`: pure topic builders/parsers and payload models (what goes out).
- `commands`: pure command models, canonical JSON, Ed25519 signatures and receipts (what comes in).
- `mqtt`: the one adapter over aiomqtt that moves bytes between the outbox and the broker.
"""
