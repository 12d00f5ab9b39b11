"""The console over HTTPS (``console.tls_cert`` and ``tls_key``): the certificate is served,
and the session cookie is marked ``Secure``."""

from __future__ import annotations

import asyncio
import re
import ssl
from pathlib import Path

import pytest

from tests.console.support import OPERATOR, console_site, running_console
from tests.fixtures.mosquitto import Broker
from tests.fixtures.mosquitto_tls import make_pki

pytestmark = pytest.mark.integration


async def test_console_over_tls_serves_https_and_marks_the_cookie_secure(
    mosquitto: Broker, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    files = make_pki(pki)
    site = console_site(
        tmp_path,
        mosquitto.port,
        tls_cert=str(files["server_cert"]),
        tls_key=str(files["server_key"]),
    )
    trust = ssl.create_default_context(cafile=str(files["ca"]))
    async with running_console(site) as run:
        assert run.url.startswith("https://127.0.0.1:")
        port = int(run.url.rsplit(":", 1)[1].strip("/"))
        body = f"user={OPERATOR[0]}&password={OPERATOR[1]}"
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trust)
        writer.write(
            (
                "POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
            ).encode()
        )
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        writer.close()
        assert head.startswith("HTTP/1.1 303")
        cookie = re.search(r"set-cookie: prepay_console=[^\r\n]+", head, re.IGNORECASE)
        assert cookie is not None
        assert "; secure" in cookie.group(0).lower()
