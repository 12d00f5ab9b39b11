"""Named Python decode hooks for devices a byte table cannot describe (pure).

A codec names its hook (``hook: axioma_w1_enhanced``); hooks are looked up in `HOOKS`, never
imported from a path in a config file. A hook gets ``(payload, f_port, values)`` where
``values`` is what the codec's table decoded, and returns values to add or replace. It raises
`ValueError` (or `TypeError`) for a payload it cannot accept; the caller turns that into
`FrameError`.

To add one: write a function with the `Hook` signature here and register it with `hook`.
"""

from __future__ import annotations

from collections.abc import Callable

from drivers.lorawan.codec_types import Hook, Values

HOOKS: dict[str, Hook] = {}


def hook(name: str) -> Callable[[Hook], Hook]:
    """Register a decode hook under ``name``."""

    def register(func: Hook) -> Hook:
        HOOKS[name] = func
        return func

    return register


def _bits_le(data: bytes, start_bit: int, length: int) -> int:
    """``length`` bits from ``start_bit`` on, least significant bit first (Axioma packing)."""
    value = 0
    for i in range(length):
        position = start_bit + i
        index = position // 8
        if index >= len(data):
            break
        if data[index] & (1 << (position % 8)):
            value |= 1 << i
    return value


AXIOMA_DELTAS = 23
AXIOMA_DELTA_BITS = 14


@hook("axioma_w1_enhanced")
def axioma_w1_enhanced(payload: bytes, f_port: int | None, values: Values) -> Values:
    """Axioma Qalcosonic W1 "enhanced 24 h" frame: 23 hourly deltas, 14 bits each, LSB first.

    Layout (TheThingsNetwork/lorawan-devices ``vendor/axioma/qalcosonic-w1-codec.js``): byte 0
    frame version 1, bytes 1-4 timestamp, byte 5 status, bytes 6-9 log volume in litres, then
    from byte 10 the deltas in litres and a 6-bit history multiplier. The current volume is the
    log volume plus the deltas.
    """
    del f_port  # the codec's f_ports already restrict it to 100
    if payload[0] != 0x01:
        raise ValueError(f"unsupported frame version 0x{payload[0]:02x}")
    log_volume = values["log_volume_l"]
    if not isinstance(log_volume, int):
        raise TypeError("log_volume_l must be an integer")
    body = payload[10:]
    out: Values = {}
    total = 0
    for i in range(AXIOMA_DELTAS):
        delta = _bits_le(body, i * AXIOMA_DELTA_BITS, AXIOMA_DELTA_BITS)
        out[f"delta_{i + 1}_l"] = delta
        total += delta
    multiplier = _bits_le(body, AXIOMA_DELTAS * AXIOMA_DELTA_BITS, 6)
    if multiplier != 0:
        # The vendor decoder only warns; we refuse, as a scaled history would bill wrongly.
        raise ValueError(f"history multiplier {multiplier} is not supported")
    out["history_total_l"] = total
    out["current_volume_l"] = log_volume + total
    out["history_multiplier"] = multiplier
    return out
