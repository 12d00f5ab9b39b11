"""A running gateway with its console, and a real Chromium driven by Playwright.

The gateway is the daemon's own `Gateway` (in the test's event loop, as ``prepay run`` has it)
with a `FeedSource` for readings and a relay that obeys at once; the console is served by the
daemon itself on a free port. The browser is Debian's ``chromium`` package: Playwright's own
browser download is not reachable from the build machines, so it is launched by path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from drivers.ports import SupplyState
from gateway.config import Site
from gateway.console.users import Role, add_user
from gateway.daemon import Gateway
from tests.gateway.site import load, water_account
from tests.support.gateways import FeedSource, running
from tests.support.waiting import DEFAULT_TIMEOUT_S

CHROMIUM = os.environ.get("PREPAY_CHROMIUM", "/usr/bin/chromium")
#: Where the screenshots of the main pages go: docs/console/ (docs/operator-guide.md shows
#: them) when PREPAY_CONSOLE_SCREENSHOTS=1, so that a test run leaves the checkout as it was.
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"


def screenshots_dir(tmp_path: Path) -> Path:
    if os.environ.get("PREPAY_CONSOLE_SCREENSHOTS") == "1":
        return DOCS_SCREENSHOTS
    return tmp_path / "screenshots"


#: Playwright waits on the page this long at most (ms): a loaded 2-core machine is slow.
PAGE_TIMEOUT_MS = DEFAULT_TIMEOUT_S * 1000
expect.set_options(timeout=PAGE_TIMEOUT_MS)

OPERATOR = ("alice", "alice-password-1")
VIEWER = ("victor", "victor-password-1")
LOGIN_FAILURES = 3


class Relay:
    """One relay ``v1`` that obeys at once and reads back what it was told; a stuck one
    (``obey = False``) reads back where it was."""

    name = "relay"

    def __init__(self) -> None:
        self.on = True  # a new installation leaves it on
        self.obey = True

    def handles(self, device_id: str) -> bool:
        return device_id == "v1"

    async def set_supply(self, device_id: str, on: bool) -> None:
        if self.obey:
            self.on = on

    async def read_supply(self, device_id: str) -> SupplyState:
        return SupplyState.ON if self.on else SupplyState.OFF


def console_site(directory: Path, mqtt_port: int, **console: Any) -> Site:
    """A site with account A1 (meter m1, relay v1, 50.00 CNY to start) and a console on a free
    port, signing with the site's operator key; users alice (operator) and victor (viewer)."""
    account = {**water_account("A1", "m1", actuator="v1"), "opening_balance_minor": 5_000}
    site = load(
        directory,
        mqtt_port=mqtt_port,
        accounts=[account],
        extra={
            "console": {
                "port": 0,
                "users_file": "console-users.json",
                "operator_key": "keys/operator.pem",
                "login_failures": LOGIN_FAILURES,
                **console,
            }
        },
    )
    users = directory / "console-users.json"
    add_user(users, OPERATOR[0], Role.OPERATOR, OPERATOR[1])
    add_user(users, VIEWER[0], Role.VIEWER, VIEWER[1])
    return site


@dataclass
class Running:
    gateway: Gateway
    feed: FeedSource
    relay: Relay
    url: str


@contextlib.asynccontextmanager
async def running_console(site: Site) -> AsyncIterator[Running]:
    feed, relay = FeedSource(), Relay()
    gateway = Gateway(site, sources=[feed], actuators=[relay])
    async with running(gateway):
        console = gateway.console
        assert console is not None
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):  # the port is bound and listening
            await console.started.wait()
        yield Running(gateway, feed, relay, console.url)


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install -y chromium;"
            " `make test-console` does) or point PREPAY_CHROMIUM at one"
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


async def logged_in(
    browser: Browser, url: str, user: tuple[str, str]
) -> tuple[BrowserContext, Page]:
    """A new browser context (its own cookies) logged in as ``user``, on the health page."""
    context = await browser.new_context(base_url=url, viewport={"width": 1200, "height": 800})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = await context.new_page()
    await page.goto("/login")
    await page.fill("#login-user", user[0])
    await page.fill("#login-password", user[1])
    await page.click("#login-submit")
    await page.wait_for_url(url)
    return context, page
