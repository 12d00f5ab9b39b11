"""The console served by ``prepay run`` itself: users made with ``prepay console user add``, a
login over HTTP, a live event stream open while SIGTERM stops the daemon cleanly (the console
leaves the signals to the daemon), and the web stack kept out of ``import gateway.cli`` and
``import gateway.daemon``."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.mosquitto import Broker
from tests.gateway.site import ROOT, write_site
from tests.support.waiting import DEFAULT_TIMEOUT_S

pytestmark = pytest.mark.integration

PREPAY = str(ROOT / ".venv" / "bin" / "prepay")
PASSWORD = "a-long-enough-password"  # noqa: S105 - a test user's


async def _prepay(*args: str, stdin: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        PREPAY,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(stdin.encode())
    return await process.wait(), out.decode(), err.decode()


async def _login(port: int) -> tuple[str, str]:
    """Log in as olga: the response's head and the session cookie (``name=value``)."""
    body = f"user=olga&password={PASSWORD}"
    head, _, writer = await _http(
        port,
        "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
        f"\r\nContent-Length: {len(body)}\r\n\r\n{body}",
    )
    writer.close()
    assert head.startswith("HTTP/1.1 303"), head
    cookie = re.search(r"set-cookie: (prepay_console=[^;]+)", head, re.IGNORECASE)
    assert cookie is not None
    return head, cookie.group(1)


async def _http(port: int, request: str) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send a raw HTTP/1.1 request; return the head of the response and the open stream."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request.encode())
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    return head, reader, writer


async def test_console_served_by_prepay_run_logs_in_and_stops_on_sigterm_with_a_stream_open(
    mosquitto: Broker, tmp_path: Path
) -> None:
    site_file = write_site(tmp_path, mqtt_port=mosquitto.port)
    doc = yaml.safe_load(site_file.read_text())
    doc["console"] = {"port": 0, "users_file": "users.json", "operator_key": "keys/operator.pem"}
    site_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = await _prepay(
        "console", "user", "add", "olga", "--role", "operator", "--password-stdin",
        "-c", str(site_file), stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert code == 0, err
    assert "olga (operator)" in out
    code, out, err = await _prepay(
        "console", "user", "add", "pete", "--role", "viewer", "--password-stdin",
        "-c", str(site_file), stdin="short\n",
    )  # fmt: skip
    assert code == 1
    assert "password: at least 10 characters" in err
    assert "Traceback" not in err

    daemon = await asyncio.create_subprocess_exec(
        PREPAY, "run", "-c", str(site_file), stderr=asyncio.subprocess.PIPE
    )
    try:
        assert daemon.stderr is not None
        port = None
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            while port is None:
                line = (await daemon.stderr.readline()).decode()
                assert line, "prepay run ended before serving the console"
                found = re.search(r"console: serving on http://127\.0\.0\.1:(\d+)/", line)
                port = int(found.group(1)) if found else None
        # Keep reading the log so the daemon never blocks on a full pipe.
        log = asyncio.create_task(daemon.stderr.read())

        # Prometheus scrapes the console's own server: /metrics answers without a login.
        head, metrics, writer = await _http(
            port, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        body = await metrics.read()
        writer.close()
        assert head.startswith("HTTP/1.1 200"), head
        assert b"prepay_journal_rows" in body  # the gateway's figures, not only the process's
        head, _, writer = await _http(port, "GET /accounts HTTP/1.1\r\nHost: x\r\n\r\n")
        writer.close()
        assert head.startswith("HTTP/1.1 303")
        assert "location: /login" in head.lower()

        head, cookie = await _login(port)
        assert "httponly" in head.lower()
        assert "samesite=strict" in head.lower()
        assert "x-frame-options: deny" in head.lower()

        # Two pages with a live stream each, of two sessions.
        head, stream, writer = await _http(
            port, f"GET /stream HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n"
        )
        assert head.startswith("HTTP/1.1 200")
        assert "text/event-stream" in head
        assert b"event: accounts" in await stream.readuntil(b"\n\n")  # the first update
        _, other = await _login(port)
        _, other_stream, other_writer = await _http(
            port, f"GET /stream HTTP/1.1\r\nHost: x\r\nCookie: {other}\r\n\r\n"
        )
        assert b"event: accounts" in await other_stream.readuntil(b"\n\n")

        # Logging out ends that session's stream (the last, empty chunk of the response).
        page, page_reader, page_writer = await _http(
            port, f"GET / HTTP/1.1\r\nHost: x\r\nCookie: {other}\r\nConnection: close\r\n\r\n"
        )
        csrf = re.search(rb'name="csrf" value="([^"]+)"', await page_reader.read())
        page_writer.close()
        assert page.startswith("HTTP/1.1 200")
        assert csrf is not None
        body = f"csrf={csrf.group(1).decode()}"
        head, _, logout_writer = await _http(
            port,
            f"POST /logout HTTP/1.1\r\nHost: x\r\nCookie: {other}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}",
        )
        logout_writer.close()
        assert head.startswith("HTTP/1.1 303")
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            await other_stream.readuntil(b"\r\n0\r\n\r\n")
        other_writer.close()

        # SIGTERM with the first stream still open: the daemon stops cleanly.
        daemon.send_signal(signal.SIGTERM)
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            assert await daemon.wait() == 0
        writer.close()
        assert "Traceback" not in (await log).decode()
    finally:
        if daemon.returncode is None:
            daemon.kill()
            await daemon.wait()


def test_console_web_stack_stays_out_of_the_cli_and_the_daemon_imports() -> None:
    probe = (
        "import sys, gateway.cli, gateway.daemon; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'starlette', 'uvicorn', 'jinja2', 'multipart', 'python_multipart'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "[]"
