"""Serving the console inside the daemon: uvicorn's ``Server.serve()`` as one supervised task in
the daemon's own event loop (`gateway.daemon` builds a `Console` when the site file has a
``console:`` section).

One process and one loop keep the console next to what it shows: it reads the daemon's account
book in the loop and the store through read-only snapshots in worker threads, and it acts through
the daemon's command handler. Uvicorn's own signal handling is switched off: SIGTERM and SIGINT
belong to the daemon, which stops the console with everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import datetime

import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from starlette.routing import BaseRoute

from billing_engine.base.errors import PrepayError
from gateway.config import ConsoleConfig, Site
from gateway.console.actions import Actions
from gateway.console.app import ConsoleState, build_app
from gateway.console.auth import LoginLimiter, Sessions
from gateway.console.reads import Reads
from gateway.console.tickets import CounterTickets
from gateway.flows.accounts import Account
from gateway.northbound.commands import Command
from gateway.northbound.payloads import CommandResultPayload
from gateway.northbound.signing import load_private_key
from gateway.startup import STATE_FILE, load_plant_keys, read_private_key_file
from gateway.store import Store

logger = logging.getLogger(__name__)

#: How long open pages (the event stream) may take to finish when the console stops.
GRACEFUL_S = 1


class ConsoleSetupError(PrepayError):
    """The console's settings name a key or certificate that cannot be used."""


class _Server(uvicorn.Server):
    """A uvicorn server that leaves the process's signals to the daemon."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _operator_key(site: Site, config: ConsoleConfig) -> Ed25519PrivateKey | None:
    if config.operator_key is None:
        return None
    path = site.resolve(config.operator_key)
    try:
        return load_private_key(read_private_key_file(path))
    except (OSError, ValueError) as exc:
        raise ConsoleSetupError(f"console.operator_key: {path}: {exc}") from None


def _listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port``.

    Made with the protocol named (``IPPROTO_TCP``), unlike ``socket.create_server``: asyncio
    switches Nagle's algorithm off (``TCP_NODELAY``) only on accepted sockets whose protocol
    says TCP, and uvicorn writes a response's head and body separately, so with Nagle on every
    small answer on a kept-alive connection waited for the client's delayed ACK (about 40 ms).

    Raises:
        OSError: the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as create_server does
        sock.bind((host, port))
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


class Console:
    """The console of one running gateway; `serve` runs it until cancelled."""

    def __init__(
        self,
        site: Site,
        *,
        accounts: Callable[[], Mapping[str, Account]],
        apply: Callable[[Command, datetime], Awaitable[CommandResultPayload]],
        store: Store,
        lock: asyncio.Lock,
        clock: Callable[[], datetime],
        activity: Callable[[], object],
        link_state: Callable[[], str],
        kernel: str,
        operator_public_key: Ed25519PublicKey | None,
        mounts: Sequence[BaseRoute] = (),
    ) -> None:
        """Raises:
        ConsoleSetupError: the site has no console section, or its operator key cannot be
            used.
        """
        config = site.config.console
        if config is None:
            raise ConsoleSetupError("the site file has no console section")
        self._config = config
        self._tls = (
            None
            if config.tls_cert is None or config.tls_key is None
            else (site.resolve(config.tls_cert), site.resolve(config.tls_key))
        )
        tickets = site.config.tickets
        self._tickets = (
            None
            if tickets is None
            else CounterTickets(
                site.state_dir / STATE_FILE,
                site_id=site.config.site,
                settings=tickets,
                plant_keys=load_plant_keys(site),
                clock=clock,
            )
        )
        self.state = ConsoleState(
            site_id=site.config.site,
            reads=Reads(
                site.state_dir / STATE_FILE,
                accounts,
                site_id=site.config.site,
                tickets=self._tickets,
                clock=clock,
                activity=activity,
            ),
            actions=Actions(
                site_id=site.config.site,
                operator_key=_operator_key(site, config),
                operator_public_key=operator_public_key,
                apply=apply,
                store=store,
                lock=lock,
                clock=clock,
                tickets=self._tickets,
            ),
            users_file=site.resolve(config.users_file),
            sessions=Sessions(config.session_idle_s),
            limiter=LoginLimiter(config.login_failures, config.login_pause_s),
            activity=activity,
            link_state=link_state,
            kernel=kernel,
            secure_cookies=self._tls is not None,
            closing=asyncio.Event(),
        )
        self.app = build_app(self.state, mounts=mounts)
        #: the port actually bound (a configured port 0 takes a free one on the first start)
        self.port = config.port
        self.started = asyncio.Event()

    @property
    def url(self) -> str:
        scheme = "https" if self._tls else "http"
        host = self._config.bind
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.port}/"

    async def serve(self) -> None:
        """Serve until cancelled (the daemon's shutdown).

        Raises:
            OSError: the address cannot be bound (the supervisor retries with backoff).
        """
        sock = _listening_socket(self._config.bind, self.port)
        self.port = int(sock.getsockname()[1])
        tls = self._tls
        server = _Server(
            uvicorn.Config(
                self.app,
                lifespan="off",
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=GRACEFUL_S,
                ssl_certfile=None if tls is None else str(tls[0]),
                ssl_keyfile=None if tls is None else str(tls[1]),
            )
        )
        self.state.closing.clear()
        logger.info("console: serving on %s", self.url)
        self.started.set()
        try:
            await server.serve(sockets=[sock])
        finally:
            # Cancelled with the daemon's other tasks: the event streams end by themselves
            # once `closing` is set, so uvicorn's own shutdown (stop listening, finish the
            # responses under way, at most GRACEFUL_S) closes every page without an error.
            # The cancellation carries on when this block ends.
            self.started.clear()
            self.state.closing.set()
            if server.started:
                await server.shutdown(sockets=[sock])
            sock.close()
            self.state.reads.stop()
            if self._tickets is not None:
                await asyncio.to_thread(self._tickets.close)
