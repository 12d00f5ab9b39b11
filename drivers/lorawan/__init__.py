"""LoRaWAN (ChirpStack v4, The Things Stack v3) and generic NB-IoT JSON over MQTT.

Pure parts: `codec` (YAML byte layouts), `hooks`, `codec_types` (the types codec and hooks
share), `envelope` (network-server JSON), `frames` (dedup and counter resets), `valves` (command
bookkeeping), `router`. I/O: `adapter`.

Nothing is imported here, so that a site's config (`config`, pure pydantic) loads without
aiomqtt and paho, which only `adapter` needs (the gateway's billing path must never load them).
"""
