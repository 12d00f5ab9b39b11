"""Profile v2: the Request frame (golden bytes, round trip, malformed frames rejected), and the
v2 request path through the real bleak client and the production driver."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.ble.dispenser import DispenserClient
from drivers.ble.gatt import (
    PROFILE_VERSION,
    REQUEST_UUID,
    REQUEST_VERSION,
    U32_MAX,
    GattFrameError,
    IdentityKind,
    RefuseReason,
    RequestFrame,
    decode_request,
    encode_request,
)
from drivers.ports import (
    DenyReason,
    DispenserCaughtUp,
    IdentityPresented,
    PourReport,
    VendingPort,
)
from drivers.ports import IdentityKind as PortIdentityKind
from firmware_sim.ble_backend import SimulatedAir
from firmware_sim.dispenser import SimulatedDispenser
from tests.ble.conftest import ADDRESS, RecordingSink, make_config, ticking_clock
from tests.support.waiting import eventually

# version 02, request 7, ACCOUNT_CARD, "CARD-0001" NUL-padded to 16 bytes
GOLDEN_REQUEST = bytes.fromhex("02 07000000 01 434152442d30303031 00000000000000")


def test_request_golden_frame() -> None:
    frame = RequestFrame(7, IdentityKind.ACCOUNT_CARD, "CARD-0001")
    assert encode_request(frame) == GOLDEN_REQUEST
    assert len(GOLDEN_REQUEST) == 22  # 1 + 4 + 1 + 16
    assert decode_request(GOLDEN_REQUEST) == frame


@given(
    st.integers(min_value=1, max_value=U32_MAX),
    st.sampled_from(IdentityKind),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=16),
)
def test_request_round_trip(request_id: int, kind: IdentityKind, identity: str) -> None:
    frame = RequestFrame(request_id, kind, identity)
    assert decode_request(encode_request(frame)) == frame


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty frame"),
        (bytes([PROFILE_VERSION]) + GOLDEN_REQUEST[1:], "unsupported profile version 1"),
        (GOLDEN_REQUEST[:-1], "length 21, expected 22"),
        (GOLDEN_REQUEST + b"\0", "length 23, expected 22"),
        (GOLDEN_REQUEST[:5] + b"\x09" + GOLDEN_REQUEST[6:], "unknown IdentityKind 9"),
        (GOLDEN_REQUEST[:1] + bytes(4) + GOLDEN_REQUEST[5:], "request_id"),
        (GOLDEN_REQUEST[:6] + bytes(16), "identity"),
        (GOLDEN_REQUEST[:6] + b"AB\0CD" + bytes(11), "NUL inside"),
        (GOLDEN_REQUEST[:6] + b"\x07" + bytes(15), "identity"),
    ],
)
def test_malformed_request_rejected(data: bytes, reason: str) -> None:
    with pytest.raises(GattFrameError, match=reason):
        decode_request(data)


def test_v1_frames_keep_version_1_and_request_is_version_2() -> None:
    assert (PROFILE_VERSION, REQUEST_VERSION) == (1, 2)
    assert GOLDEN_REQUEST[0] == 2


def shown(device: SimulatedDispenser) -> RefuseReason | None:
    """What the display shows now (read through a call: it changes behind mypy's back)."""
    return device.display


class VendingRecorder:
    """A `VendingSink` that records what the driver reported."""

    def __init__(self) -> None:
        self.requests: list[IdentityPresented] = []
        self.reports: list[PourReport] = []
        self.caught_ups: list[DispenserCaughtUp] = []

    async def presented(self, request: IdentityPresented) -> None:
        self.requests.append(request)

    async def poured(self, report: PourReport) -> None:
        self.reports.append(report)

    async def caught_up(self, status: DispenserCaughtUp) -> None:
        self.caught_ups.append(status)


async def run_client(
    air: SimulatedAir, recorder: VendingRecorder, sink: RecordingSink
) -> tuple[DispenserClient, asyncio.Task[None]]:
    client = DispenserClient(make_config(), backend=air.backend(), clock=ticking_clock())
    assert isinstance(client, VendingPort)
    client.attach_vending(recorder)
    return client, asyncio.create_task(client.run(sink))


async def test_request_path_reports_requests_and_session_end_and_shows_refusals() -> None:
    air = SimulatedAir()
    device = air.add(SimulatedDispenser(ADDRESS))
    recorder, sink = VendingRecorder(), RecordingSink()
    client, task = await run_client(air, recorder, sink)
    try:
        await eventually(lambda: device.listening(REQUEST_UUID))
        assert [c.last_session_id for c in recorder.caught_ups] == [0]
        device.present(IdentityKind.PHONE_ID, "PHONE-77")
        await eventually(lambda: recorder.requests)
        [request] = recorder.requests
        assert (request.dispenser_id, request.request_id, request.kind, request.identity) == (
            "disp-1",
            1,
            PortIdentityKind.PHONE,
            "PHONE-77",
        )
        await client.deny("disp-1", DenyReason.NO_CREDIT)
        assert shown(device) is RefuseReason.NO_CREDIT

        session_id = await client.next_session("disp-1")
        assert session_id == 1
        await client.grant("disp-1", session_id, 300, PortIdentityKind.CARD, "CARD-0001")
        assert (device.session_id, device.max_ml, shown(device)) == (1, 300, None)
        device.pour(500)  # stops at 300
        await eventually(lambda: any(r.ended for r in recorder.reports))
        ended = [r for r in recorder.reports if r.ended]
        assert [(r.session_id, r.session_ml) for r in ended] == [(1, 300)]
    finally:
        task.cancel()
        await asyncio.wait([task])


async def test_v1_device_has_no_request_path_and_still_works() -> None:
    air = SimulatedAir()
    device = air.add(SimulatedDispenser(ADDRESS, profile_version=1))
    recorder, sink = VendingRecorder(), RecordingSink()
    client, task = await run_client(air, recorder, sink)
    try:
        await sink.wait_for(lambda: bool(sink.readings))
        assert not device.listening(REQUEST_UUID)
        with pytest.raises(RuntimeError, match="v1 dispenser"):
            device.present(IdentityKind.ACCOUNT_CARD, "CARD-0001")
        session_id = await client.next_session("disp-1")
        await client.grant("disp-1", session_id, 100, PortIdentityKind.CARD, "CARD-0001")
        device.pour(100)
        await eventually(lambda: any(r.ended for r in recorder.reports))
        # a v1 device forgets the end frame once sent: a read shows no session
        assert device.dispensed_frame().session_id == 0
    finally:
        task.cancel()
        await asyncio.wait([task])
