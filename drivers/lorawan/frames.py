"""Frame-counter bookkeeping per device: drop repeats, detect counter resets (pure).

LoRaWAN facts (LoRaWAN 1.0.x, "Frame counter", "Over-the-Air Activation"): FCntUp is per
session; an OTAA join starts a new session with FCntUp = 0; an ABP device that reboots without
persisting it also restarts at 0. A retransmission repeats the same frame: same FCnt, same
payload. The network server drops most repeats, but MQTT redelivery (QoS 1), a bridge or a
replay can still hand us the same uplink twice.

Rule: a frame is a *repeat* when the same ``(f_cnt, payload)`` was seen in the current epoch;
*new* when ``f_cnt`` is above the last one; otherwise the counter went back: a *reset*, which
starts a new epoch. A join event forces a new epoch at the next frame. A gap (lost uplinks) is
not an error: the meters report cumulative registers, so nothing is lost but resolution.

Known limit: right after a reset, a frame whose FCnt *and* payload equal a frame of the old
epoch still in the window counts as a repeat; its register equals one already billed, so
dropping it bills the same.
"""

from __future__ import annotations

import enum
import hashlib
from collections import deque
from dataclasses import dataclass, field

WINDOW = 64
"""How many recent frames per device are remembered for repeat detection."""


class FrameVerdict(enum.StrEnum):
    """What to do with one frame (not the billing verdict of `gateway` quality checks)."""

    NEW = "new"
    REPEAT = "repeat"
    RESET = "reset"


@dataclass(frozen=True, slots=True)
class Observation:
    """The tracker's answer for one frame.

    Attributes:
        verdict: new, repeat or reset.
        epoch: the counter epoch the frame belongs to (0 until the first reset).
        previous_f_cnt: the last counter of the old epoch, for a reset; else None.
        reason: ``"join"`` or ``"counter_back"`` for a reset; ``""`` otherwise.
    """

    verdict: FrameVerdict
    epoch: int
    previous_f_cnt: int | None = None
    reason: str = ""


@dataclass(slots=True)
class _DeviceFrames:
    epoch: int = 0
    last: int | None = None
    joined: bool = False
    recent: deque[tuple[int, bytes]] = field(default_factory=lambda: deque(maxlen=WINDOW))


class FrameTracker:
    """Per-device frame counters. Memory only: after a restart the first frame is new."""

    def __init__(self) -> None:
        self._devices: dict[str, _DeviceFrames] = {}

    def joined(self, device_key: str) -> None:
        """A join event: the next frame starts a new epoch."""
        self._devices.setdefault(device_key, _DeviceFrames()).joined = True

    def observe(self, device_key: str, f_cnt: int, payload: bytes) -> Observation:
        """Classify one frame and remember it (repeats are not remembered twice)."""
        state = self._devices.setdefault(device_key, _DeviceFrames())
        key = (f_cnt, hashlib.blake2s(payload, digest_size=8).digest())
        if state.last is None:
            state.joined = False
            return self._accept(state, key, FrameVerdict.NEW)
        if state.joined:
            return self._reset(state, key, "join")
        if key in state.recent:
            return Observation(FrameVerdict.REPEAT, state.epoch)
        if f_cnt > state.last:
            return self._accept(state, key, FrameVerdict.NEW)
        return self._reset(state, key, "counter_back")

    def epoch(self, device_key: str) -> int:
        """The current epoch of a device (0 when never seen)."""
        state = self._devices.get(device_key)
        return state.epoch if state is not None else 0

    @staticmethod
    def _accept(state: _DeviceFrames, key: tuple[int, bytes], verdict: FrameVerdict) -> Observation:
        state.last = key[0]
        state.recent.append(key)
        return Observation(verdict, state.epoch)

    @staticmethod
    def _reset(state: _DeviceFrames, key: tuple[int, bytes], reason: str) -> Observation:
        previous = state.last
        state.epoch += 1
        state.joined = False
        state.recent.clear()
        state.last = key[0]
        state.recent.append(key)
        return Observation(FrameVerdict.RESET, state.epoch, previous, reason)
