"""LoRaWAN (ChirpStack v4, The Things Stack v3) and generic NB-IoT JSON over MQTT.

Pure parts: `codec` (YAML byte layouts), `hooks`, `envelope` (network-server JSON), `frames`
(dedup and counter resets), `valves` (command bookkeeping), `router`. I/O: `adapter`.
"""

from drivers.lorawan.adapter import LnsAdapter, build_lns
from drivers.lorawan.codec import CodecSpec, decode_payload, load_codecs
from drivers.lorawan.config import BrokerConfig, LnsConfig, LnsDeviceConfig
from drivers.lorawan.envelope import NbiotMapping

__all__ = [
    "BrokerConfig",
    "CodecSpec",
    "LnsAdapter",
    "LnsConfig",
    "LnsDeviceConfig",
    "NbiotMapping",
    "build_lns",
    "decode_payload",
    "load_codecs",
]
