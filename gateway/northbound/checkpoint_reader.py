"""Reads the site's retained checkpoint back from the broker, once, at start.

The daemon calls `read_retained_checkpoint` before it bills or answers a command; the start
check (`gateway.startup.check_against_checkpoint`) compares the checkpoint with the ledger. A
short-lived connection of its own (clean session, a client id of its own), so the link's
persistent session and its queued commands are left alone; it publishes nothing.

How it knows there is no retained checkpoint without waiting for one: it subscribes to the
checkpoint topic, then unsubscribes. A broker handles a client's packets in order and sends the
retained message right after the SUBACK, before the UNSUBACK, on the same connection; so once
the UNSUBACK is in, a retained checkpoint has arrived, or there is none.

Next to `gateway.northbound.mqtt`, the only other module that imports aiomqtt.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from pathlib import Path
from typing import Final

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from billing_engine.base.errors import PrepayError
from gateway.northbound.settings import MqttSettings, TlsSettings
from gateway.northbound.topics import QOS, SiteTopics

logger = logging.getLogger(__name__)

#: How long the whole read may take before the broker counts as unreachable.
DEFAULT_TIMEOUT_S: Final = 5.0
_UNSUPPORTED_PROTOCOL: Final = frozenset({1, 0x84})


class CheckpointUnavailableError(PrepayError):
    """The broker could not be asked (unreachable, refused, too slow)."""


def _tls_context(tls: TlsSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


def _read_secret(path: Path) -> str:
    return path.read_text().strip()


async def read_retained_checkpoint(
    settings: MqttSettings, site_id: str, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> bytes | None:
    """The payload retained on ``prepay/{site_id}/checkpoint``, or None when there is none.

    Raises:
        CheckpointUnavailableError: the broker could not be reached or answered within
            ``timeout_s`` (or the TLS or password files cannot be read).
    """
    try:
        password = (
            await asyncio.to_thread(_read_secret, settings.password_file)
            if settings.password_file
            else None
        )
        tls = await asyncio.to_thread(_tls_context, settings.tls) if settings.tls else None
    except OSError as exc:  # ssl.SSLError is an OSError
        raise CheckpointUnavailableError(f"cannot read the MQTT credentials: {exc}") from exc
    versions = [aiomqtt.ProtocolVersion.V311] if settings.protocol == "3.1.1" else []
    if settings.protocol != "3.1.1":
        versions.append(aiomqtt.ProtocolVersion.V5)
    if settings.protocol == "auto":
        versions.append(aiomqtt.ProtocolVersion.V311)
    base = settings.client_id or f"prepay-gw-{site_id}"
    topic = SiteTopics(site_id).checkpoint
    try:
        async with asyncio.timeout(timeout_s):
            for index, version in enumerate(versions):
                client = aiomqtt.Client(
                    settings.host,
                    settings.port,
                    username=settings.username,
                    password=password,
                    identifier=f"{base}-check-{secrets.token_hex(3)}",
                    protocol=version,
                    clean_session=True if version is aiomqtt.ProtocolVersion.V311 else None,
                    timeout=timeout_s,
                    tls_context=tls,
                    logger=logger,
                )
                try:
                    return await _read(client, topic)
                except MqttConnectError as exc:
                    code = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
                    if code not in _UNSUPPORTED_PROTOCOL or index + 1 == len(versions):
                        raise
    except (aiomqtt.MqttError, OSError) as exc:  # TimeoutError is an OSError
        detail = "no answer" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        raise CheckpointUnavailableError(
            f"broker {settings.host}:{settings.port}: {detail}"
        ) from exc
    raise AssertionError("unreachable: the last protocol either answers or raises")


async def _read(client: aiomqtt.Client, topic: str) -> bytes | None:
    found: bytes | None = None
    async with client:
        granted = await client.subscribe(topic, qos=QOS)
        codes = [code.value if isinstance(code, ReasonCode) else code for code in granted]
        if any(code >= 0x80 for code in codes):  # an ACL said no: nothing would ever come
            raise aiomqtt.MqttError(f"the broker refused the subscription to {topic}")
        await client.unsubscribe(topic)
        while len(client.messages):
            message = await anext(client.messages)
            payload = message.payload
            if message.topic.matches(topic) and isinstance(payload, bytes | bytearray):
                found = bytes(payload) or None
    return found
