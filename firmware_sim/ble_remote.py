"""Simulated BLE dispensers across processes: a Unix-socket "air" and a bleak backend for it.

`firmware_sim.ble_backend` puts `SimulatedDispenser`s behind bleak in the driver's own process.
This module lets another process reach them: `BleAirServer` runs inside ``prepay sim`` and
serves the scenario's dispensers on a Unix-domain socket; `RemoteSimBackend` is a bleak backend
(`BaseBleakClient`) that talks to that socket, so the gateway (``prepay run``) drives the
simulated site's dispensers with its production `DispenserClient` and the real ``BleakClient``.
The GATT table and the bleak plumbing that does not depend on the transport are
`firmware_sim.ble_gatt_sim`'s, shared with `ble_backend`.
The socket path comes from ``PREPAY_BLE_SIM_SOCKET`` (default `DEFAULT_SOCKET`, the demo
scenario's), so the class can be named by import path in a site file
(``backend: firmware_sim.ble_remote:RemoteSimBackend``).

Protocol: one Unix connection is one BLE link to one dispenser. Each side sends JSON objects, one
per line (UTF-8, ``\\n``-terminated); bytes travel as hex.

Requests (client to server), each with an ``id`` echoed in its answer::

    {"id": 1, "op": "connect", "address": "AA:BB:CC:00:00:01"}
    {"id": 2, "op": "read", "uuid": "..."}
    {"id": 3, "op": "write", "uuid": "...", "data": "010101", "response": true}
    {"id": 4, "op": "notify", "uuid": "...", "on": true}
    {"id": 5, "op": "disconnect"}

Answers: ``{"id": 2, "ok": true, "data": "..."}`` (``data`` for reads; ``connect`` answers with
``name``, ``model``, ``firmware``), or ``{"id": 3, "ok": false, "att": 128}`` (an ATT error
response), or ``{"id": 1, "ok": false, "error": "not_found" | "refused" | "not_connected" |
"bad_request", "message": "..."}``.

Pushed by the server (no ``id``): ``{"event": "notify", "uuid": "...", "data": "..."}`` for a
subscribed characteristic, and ``{"event": "lost"}`` when the radio link drops (the server then
closes the connection). A notification caused by a write is sent before the write's answer, as
on air.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Final

from bleak.args import SizedBuffer
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.exc import BleakDeviceNotFoundError, BleakError, BleakGATTProtocolError

from firmware_sim.ble_gatt_sim import SimulatedBackendBase, build_services, serve_read, serve_write
from firmware_sim.dispenser import AttError, ConnectRefusedError, SimulatedDispenser

logger = logging.getLogger(__name__)

SOCKET_ENV: Final = "PREPAY_BLE_SIM_SOCKET"
#: The socket of ``configs/sites/demo-scenario.yaml``, used when ``PREPAY_BLE_SIM_SOCKET`` is unset.
DEFAULT_SOCKET: Final = "/tmp/prepay-demo/ble.sock"  # noqa: S108 - the demo's fixed, documented path

_LINE_LIMIT: Final = 64 * 1024


def socket_path() -> Path:
    """The simulator's socket: ``$PREPAY_BLE_SIM_SOCKET``, else `DEFAULT_SOCKET`."""
    return Path(os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET)


def _encode(message: Mapping[str, object]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


# ---- server side (inside `prepay sim`) -----------------------------------------------------


class _RemoteLink:
    """One gateway connection, as the dispenser sees it (`firmware_sim.dispenser.Link`)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.device: SimulatedDispenser | None = None
        self.subscribed: set[str] = set()

    def send(self, message: Mapping[str, object]) -> None:
        if not self._writer.is_closing():
            self._writer.write(_encode(message))

    def deliver(self, uuid: str, data: bytes) -> None:
        """A notification: pushed when the central subscribed to ``uuid``."""
        if uuid in self.subscribed:
            self.send({"event": "notify", "uuid": uuid, "data": data.hex()})

    def is_subscribed(self, uuid: str) -> bool:
        """True when the central subscribed to ``uuid``."""
        return uuid in self.subscribed

    def lose(self) -> None:
        """The radio link dropped: say so, then hang up."""
        self.device = None
        self.hang_up()

    def hang_up(self) -> None:
        """Tell the central its link is gone and close the connection."""
        self.subscribed.clear()
        self.send({"event": "lost"})
        self._writer.close()


class BleAirServer:
    """Serves `SimulatedDispenser`s by address on a Unix-domain socket (protocol: module doc).

    Use as an async context manager: entering creates the socket (its directory too, and replaces
    a stale socket of a killed run), leaving closes every link and removes it.

    Args:
        path: the socket path.
        dispensers: the dispensers in range, by address (any case).
        on_change: called after every accepted write (lock state may have changed) and on
            connects and disconnects.
    """

    def __init__(
        self,
        path: Path,
        dispensers: Mapping[str, SimulatedDispenser],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.path = path
        self._devices = {address.upper(): d for address, d in dispensers.items()}
        self._on_change = on_change
        self._server: asyncio.Server | None = None
        self._links: set[_RemoteLink] = set()
        self.requests = 0

    async def __aenter__(self) -> BleAirServer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise RuntimeError(f"{self.path} exists and is not a socket; not replacing it")
            self.path.unlink()  # a stale socket from a killed run
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=_LINE_LIMIT
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links):
            if link.device is not None:
                link.device.detach(link)
            link.device = None
            link.hang_up()
        if server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _RemoteLink(writer)
        self._links.add(link)
        try:
            while line := await reader.readline():
                if not line.endswith(b"\n"):
                    break  # half a line at EOF
                link.send(self._answer(link, line))
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            logger.info("ble air: connection dropped: %s", exc)
        finally:
            self._links.discard(link)
            if link.device is not None:
                link.device.detach(link)
                link.device = None
                self._on_change()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _answer(self, link: _RemoteLink, line: bytes) -> dict[str, object]:
        self.requests += 1
        try:
            request = json.loads(line)
        except ValueError as exc:
            return {"id": None, "ok": False, "error": "bad_request", "message": str(exc)}
        if not isinstance(request, dict) or "op" not in request:
            message = "a request is a JSON object with an op"
            return {"id": None, "ok": False, "error": "bad_request", "message": message}
        rid, op = request.get("id"), request["op"]
        try:
            return {"id": rid, "ok": True, **self._do(link, op, request)}
        except AttError as exc:
            return {"id": rid, "ok": False, "att": exc.code}
        except _RequestError as exc:
            return {"id": rid, "ok": False, "error": exc.kind, "message": str(exc)}
        except (ValueError, TypeError, KeyError) as exc:
            return {"id": rid, "ok": False, "error": "bad_request", "message": repr(exc)}

    def _do(self, link: _RemoteLink, op: object, request: dict[str, Any]) -> dict[str, object]:
        if op == "connect":
            return self._connect(link, str(request["address"]))
        device = link.device
        if op == "disconnect":
            if device is not None:
                device.detach(link)
                link.device = None
                link.subscribed.clear()
                self._on_change()
            return {}
        if device is None:
            raise _RequestError("not_connected", "connect first")
        uuid = str(request["uuid"])
        if op == "read":
            return {"data": serve_read(device, uuid).hex()}
        if op == "write":
            data = bytes.fromhex(str(request["data"]))
            serve_write(device, uuid, data, response=bool(request.get("response", True)))
            self._on_change()
            return {}
        if op == "notify":
            if request.get("on", True):
                link.subscribed.add(uuid)
            else:
                link.subscribed.discard(uuid)
            return {}
        raise _RequestError("bad_request", f"unknown op {op!r}")

    def _connect(self, link: _RemoteLink, address: str) -> dict[str, object]:
        if link.device is not None:
            raise _RequestError("bad_request", "this connection already has a link")
        device = self._devices.get(address.upper())
        if device is None:
            raise _RequestError("not_found", f"no simulated dispenser at {address}")
        try:
            device.accept(link)
        except ConnectRefusedError:
            raise _RequestError("refused", f"{address}: simulated connection failure") from None
        link.device = device
        self._on_change()
        return {
            "name": device.name,
            "model": device.model,
            "firmware": device.firmware,
            "profile": device.profile_version,
        }


class _RequestError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ---- client side (a bleak backend, in the gateway's process) ------------------------------


class RemoteSimBackend(SimulatedBackendBase):
    """bleak's view of one connection to a dispenser simulated by another process.

    The socket is `socket_path` (``$PREPAY_BLE_SIM_SOCKET``) unless a subclass made by `bound`
    names one. For simulation only: production site files leave ``backend`` unset.
    """

    socket: ClassVar[Path | None] = None

    @classmethod
    def bound(cls, path: Path) -> type[RemoteSimBackend]:
        """A subclass that talks to ``path`` whatever the environment says."""

        class RemoteSimBackendBound(RemoteSimBackend):
            socket: ClassVar[Path | None] = path

        return RemoteSimBackendBound

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # bleak's signature, as the base's
        super().__init__(*args, **kwargs)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pump: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._connected = False
        self._closing = False

    # ---- bleak's BaseBleakClient: the transport ---------------------------------------------

    @property
    def is_connected(self) -> bool:
        """True between a successful `connect` and a disconnect or link loss."""
        return self._connected

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        """Open the socket, connect to the address, build the GATT table.

        Raises:
            BleakDeviceNotFoundError: nothing at this address.
            BleakError: the simulator is not running, or refused the link.
        """
        path = self.socket or socket_path()
        try:
            async with asyncio.timeout(self._timeout):
                self._reader, self._writer = await asyncio.open_unix_connection(
                    str(path), limit=_LINE_LIMIT
                )
        except (OSError, TimeoutError) as exc:
            raise BleakError(f"BLE simulator not reachable at {path}: {exc}") from exc
        self._closing = False
        self._pump = asyncio.create_task(self._read_loop(), name=f"ble-sim[{self.address}]")
        try:
            answer = await self._request({"op": "connect", "address": self.address})
        except BaseException:
            await self._close_socket()
            raise
        self._name = str(answer.get("name") or self.address)
        self._callbacks.clear()
        self._connected = True
        # the same table as every simulated dispenser's of that profile version
        profile = answer.get("profile", 1)
        self.services = build_services(profile if isinstance(profile, int) else 1)

    async def disconnect(self) -> None:
        """Disconnect on purpose (no disconnected callback, as in bleak's backends)."""
        if self._writer is None:
            return
        self._closing = True
        self._connected = False
        with contextlib.suppress(BleakError, TimeoutError):
            async with asyncio.timeout(self._timeout):
                await self._request({"op": "disconnect"})
        await self._close_socket()

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        """Read a characteristic from the simulated server."""
        answer = await self._request({"op": "read", "uuid": characteristic.uuid})
        return bytearray.fromhex(str(answer["data"]))

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        """Write a characteristic; ATT errors come back as `BleakGATTProtocolError`."""
        await self._request(
            {
                "op": "write",
                "uuid": characteristic.uuid,
                "data": bytes(memoryview(data)).hex(),
                "response": response,
            }
        )

    async def _subscription_changed(self, uuid: str, *, on: bool) -> None:
        await self._request({"op": "notify", "uuid": uuid, "on": on})

    # ---- the socket -------------------------------------------------------------------------

    def _check_connected(self) -> None:
        if self._writer is None or self._writer.is_closing():
            raise BleakError("Not connected")

    async def _request(self, message: dict[str, object]) -> dict[str, Any]:
        self._check_connected()
        assert self._writer is not None  # noqa: S101 - checked just above
        self._next_id += 1
        rid = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            self._writer.write(_encode({"id": rid, **message}))
            await self._writer.drain()
            answer = await future
        except ConnectionError as exc:
            raise BleakError(f"{self.address}: link to the simulator lost: {exc}") from exc
        finally:
            self._pending.pop(rid, None)
        if answer.get("ok"):
            return answer
        if "att" in answer:
            raise BleakGATTProtocolError(int(answer["att"]))
        error, text = answer.get("error"), str(answer.get("message", ""))
        if error == "not_found":
            raise BleakDeviceNotFoundError(self.address, f"Device {self.address} not found")
        raise BleakError(f"{self.address}: {error}: {text}")

    async def _read_loop(self) -> None:
        assert self._reader is not None  # noqa: S101 - set before the task starts
        reader = self._reader
        try:
            while line := await reader.readline():
                message = json.loads(line)
                if "id" in message:
                    future = self._pending.get(message["id"])
                    if future is not None and not future.done():
                        future.set_result(message)
                elif message.get("event") == "notify":
                    self._notified(str(message["uuid"]), bytes.fromhex(str(message["data"])))
                elif message.get("event") == "lost":
                    break
        except (ConnectionError, ValueError) as exc:
            logger.info("ble sim %s: socket error: %s", self.address, exc)
        finally:
            self._link_lost()

    def _link_lost(self) -> None:
        was_connected, self._connected = self._connected, False
        self._callbacks.clear()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the simulator closed the link"))
        if self._writer is not None:
            self._writer.close()
        if was_connected and not self._closing and self._disconnected_callback is not None:
            asyncio.get_running_loop().call_soon(self._disconnected_callback)

    async def _close_socket(self) -> None:
        writer, self._writer = self._writer, None
        pump, self._pump = self._pump, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        if pump is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.wait([pump])
            pump.cancel()
