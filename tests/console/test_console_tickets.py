"""The console's water-ticket and vending pages on a real box: a batch of paper tickets imported
with ``prepay ticket``'s own function, a paper ticket poured at a simulated BLE dispenser (the
production driver over the real ``BleakClient``), an emergency ticket issued at the counter, and
both pages read in a real browser; the pages need a login, and a site without tickets says so.

The figures (batch B1: serials 1-100 of one product, valid now, for the box's region; the box's
restock level set to 150, its emergency cap to 2): one ticket poured leaves 100 - 1 = 99 paper
tickets, below 150: restock; one emergency ticket issued today: 1 of 2; the dispenser pours at
most one 18.9 L bucket (18 900 ml) for a ticket and the customer takes all of it; no money moves.
"""

from __future__ import annotations

import asyncio
import http.client
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from playwright.async_api import expect

from drivers.ble.gatt import IdentityKind
from firmware_sim.ble_backend import SimulatedAir
from firmware_sim.dispenser import SimulatedDispenser
from gateway.config import Site, load_site
from gateway.console.users import Role, add_user
from gateway.ops import tickets
from gateway.store.vending import SessionState
from tests.console.support import (
    OPERATOR,
    VIEWER,
    browser,
    console_site,
    logged_in,
    running_console,
    screenshots_dir,
)
from tests.fixtures.mosquitto import Broker
from tests.support.gateways import running
from tests.support.waiting import DEFAULT_TIMEOUT_S, eventually
from tests.tickets.box import PRODUCT, Box, code, electronic, import_b1, write_box
from tests.vending.conftest import (
    ADDRESSES,
    CARD,
    MAX_ML,
    dispenser_entry,
    gateway_for,
    present,
    sessions,
    topup,
)

pytestmark = pytest.mark.integration

TODAY = datetime.now(ZoneInfo("Asia/Shanghai")).date()  # the box's local day
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")  # a time, as the pages show it


@pytest.fixture
def air() -> SimulatedAir:
    return SimulatedAir()


def kiosk_box(directory: Path) -> tuple[Site, Box]:
    """A ticket box (batch B1 imported) with dispenser kiosk-1 pouring tickets, and a console
    with users alice (operator) and victor (viewer)."""
    box = write_box(directory, settings={"paper_restock_level": 150})
    import_b1(box, TODAY)
    site_doc: dict[str, Any] = yaml.safe_load(box.site_file.read_text())
    site_doc["devices"] = {"ble_dispensers": [dispenser_entry("kiosk-1", ticket_product=PRODUCT)]}
    site_doc["console"] = {
        "port": 0,
        "users_file": "console-users.json",
        "operator_key": "keys/operator.pem",
    }
    box.site_file.write_text(yaml.safe_dump(site_doc, sort_keys=False))
    users = directory / "console-users.json"
    add_user(users, OPERATOR[0], Role.OPERATOR, OPERATOR[1])
    add_user(users, VIEWER[0], Role.VIEWER, VIEWER[1])
    return load_site(box.site_file), box


def kiosk_site(directory: Path) -> Site:
    return kiosk_box(directory)[0]


async def test_console_tickets_and_vending_pages_show_a_poured_ticket(
    tmp_path: Path, air: SimulatedAir
) -> None:
    site = kiosk_site(tmp_path)
    kiosk = air.add(SimulatedDispenser(ADDRESSES["kiosk-1"]))
    ticket_site = tickets.load_ticket_site(site.path)
    with tickets.open_ticket_store(ticket_site) as store:  # at the counter, `prepay ticket`
        tickets.issue_emergency(ticket_site, store, PRODUCT, now=datetime.now(UTC), note="net down")
    gateway, _ = gateway_for(site, air)
    async with running(gateway), browser() as chromium:
        console = gateway.console
        assert console is not None
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            await console.started.wait()
        await present(kiosk, IdentityKind.TICKET, code(7))
        await eventually(lambda: kiosk.max_ml > 0, what="the dispenser authorised")
        assert kiosk.pour(20_000) == 18_900  # a ticket is one 18.9 L bucket at most
        await eventually(lambda: gateway.vending.counters.settled == 1, what="session settled")
        [session] = sessions(gateway)
        assert session.state is SessionState.SETTLED
        feed = gateway.tickets
        assert feed is not None  # the ticket feed queues the emergency ticket for the backend
        await eventually(lambda: feed.emergency_reported == 1, what="emergency ticket reported")

        context, page = await logged_in(chromium, console.url, VIEWER)  # reading needs no role
        await page.click("nav >> text=Tickets")
        await expect(page.locator("#stock")).to_contain_text("99 valid paper tickets")
        await expect(page.locator("#restock")).to_have_text("restock now")  # 99 < 150
        await expect(page.locator("#emergency-today")).to_have_text("1 of 2 issued")
        await expect(page.locator("#conflict-count")).to_have_text("0")
        product = page.locator(f"[id='product-{PRODUCT}']")
        # paper issued 100, used 1, converted 0, expired 0, remaining 99; electronic used 0;
        # emergency issued 1, used 0, not reported 0 (queued for the backend by the feed)
        await expect(product.locator("td")).to_have_text(
            [PRODUCT, "100", "1", "0", "0", "99", "0", "1", "0", "0"]
        )
        redeemed = page.locator(f"#redemptions tr[data-code='{code(7)}']")
        await expect(redeemed).to_contain_text("this box")
        await expect(redeemed).to_contain_text("dispenser kiosk-1 session 1")
        await expect(redeemed).to_contain_text(f"{TODAY.year}-")  # when, in UTC to the second
        await expect(page.locator("#emergency tr")).to_contain_text("net down")
        await expect(page.locator("#emergency tr")).to_contain_text(re.compile(r"reported \d{4}-"))

        # A card of account A1 (funded with 10.00 CNY) at the same dispenser: 10.00 CNY buys
        # 1000 / 35 = 28.571 L at 0.35 CNY/L, so the session is capped at the dispenser's
        # 20 L, and a full pour would cost 20 x 35 = 700 fen: 7.00 CNY held while it is open.
        await topup(gateway, 1_000)
        await present(kiosk, IdentityKind.ACCOUNT_CARD, CARD)
        await eventually(lambda: kiosk.max_ml > 0, what="the card's session authorised")
        assert kiosk.max_ml == MAX_ML
        await page.click("nav >> text=Vending")
        opened = page.locator("#open-sessions tr[data-session='kiosk-1/2']")
        await expect(opened.locator("td")).to_have_text(
            ["kiosk-1", "2", "account A1 (card)", STAMP, "20.000 L", "-", "up to 7.00 CNY",
             "open", "-"]
        )  # fmt: skip
        # The customer takes 2 L and presses done: 2 x 35 = 70 fen.
        assert kiosk.pour(2_000) == 2_000
        kiosk.finish()
        await eventually(lambda: gateway.vending.counters.settled == 2, what="card session")
        await page.reload()
        await expect(page.locator("#none-open")).to_be_visible()
        recent = page.locator("#recent-sessions tr")
        await expect(recent.locator("td:nth-child(2)")).to_have_text(["2", "1"])  # newest first
        await expect(recent.nth(1).locator("td")).to_have_text(
            ["kiosk-1", "2", "account A1 (card)", STAMP, "20.000 L", "2.000 L", "0.70 CNY",
             "settled", STAMP]
        )  # fmt: skip
        # The ticket: 18 900 ml authorised and poured; no charge.
        await expect(recent.nth(2).locator("td")).to_have_text(
            ["kiosk-1", "1", f"ticket {code(7)}", STAMP, "18.900 L", "18.900 L",
             "none (ticket)", "settled", STAMP]
        )  # fmt: skip
        shots = screenshots_dir(tmp_path)
        shots.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=shots / "vending.png", full_page=True)
        await context.close()

        # An operator reissues the card pour's receipt from A1's statement, by its number. The
        # site's receipts so far: 1 the emergency ticket sold, 2 the ticket's pour, 3 the
        # top-up, 4 the card's pour.
        context, page = await logged_in(chromium, console.url, OPERATOR)
        await page.goto("/accounts/A1")
        pour = page.locator("#statement tr", has_text="kiosk-1:2")
        await expect(pour).to_contain_text("no. 4")
        await pour.get_by_role("button", name="Reissue").click()
        await expect(page.locator("#flash")).to_contain_text("Receipt no. 4: applied")
        await context.close()


async def test_console_operator_redeems_at_the_counter_once_and_a_viewer_cannot(
    tmp_path: Path, air: SimulatedAir
) -> None:
    site, box = kiosk_box(tmp_path)
    air.add(SimulatedDispenser(ADDRESSES["kiosk-1"]))
    gateway, _ = gateway_for(site, air)
    ticket_site = tickets.load_ticket_site(site.path)

    def verdict(text: str) -> str:
        """What ``prepay ticket check`` says of ``text`` now."""
        with tickets.open_ticket_store(ticket_site) as store:
            found = tickets.check(ticket_site, store, text, now=datetime.now(UTC))
        return "accepted" if found.refusal is None else found.refusal.reason.value

    async with running(gateway), browser() as chromium:
        console = gateway.console
        assert console is not None
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            await console.started.wait()
        context, page = await logged_in(chromium, console.url, OPERATOR)
        await page.goto("/tickets")
        form_id = await page.locator("input[name=redemption_id]").get_attribute("value")
        csrf = await page.locator("#redeem-form input[name=csrf]").get_attribute("value")
        await page.fill("#redeem-code", code(8))
        await page.fill("#redeem-where", "counter 2")
        await page.click("#redeem-submit")
        await expect(page.locator("#flash")).to_have_text(
            f"Ticket {code(8)} (paper) redeemed: hand out 1 x {PRODUCT}"
        )
        row = page.locator(f"#redemptions tr[data-code='{code(8)}']")
        await expect(row).to_contain_text("console:alice: counter 2")
        await expect(row).to_contain_text("this box")
        assert verdict(code(8)) == "already_used"

        # The same form sent again (a double click): answered with the first, nothing new.
        sent: dict[str, str | float | bool] = {
            "csrf": csrf or "",
            "code": code(8),
            "where": "",
            "redemption_id": form_id or "",
        }
        again = await context.request.post("/tickets/redeem", form=sent, max_redirects=0)
        assert again.status == 303
        await page.goto("/tickets")
        await expect(page.locator("#flash")).to_contain_text("was redeemed by this same form")
        # A new form with the same code: refused, with why.
        await page.fill("#redeem-code", code(8))
        await page.click("#redeem-submit")
        await expect(page.locator("#flash")).to_contain_text(
            f"Ticket {code(8)} refused: already_used"
        )
        await expect(page.locator("#flash")).to_contain_text("console:alice: counter 2")  # where
        # An electronic ticket, scanned: verified against the plant's keys, then redeemed.
        today = datetime.now(ZoneInfo("Asia/Shanghai")).date()
        scanned = electronic(box, 500, valid_from=today, valid_until=today + timedelta(days=5))
        await page.fill("#redeem-code", scanned)
        await page.click("#redeem-submit")
        await expect(page.locator("#flash")).to_have_text(
            f"Ticket {code(500)} (electronic) redeemed: hand out 1 x {PRODUCT}"
        )
        assert verdict(scanned) == "already_used"
        shots = screenshots_dir(tmp_path)  # the operator's page, for the operator's guide
        shots.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=shots / "tickets.png", full_page=True)
        # Not a ticket: refused, nothing recorded.
        await page.fill("#redeem-code", "12345")
        await page.click("#redeem-submit")
        await expect(page.locator("#flash")).to_contain_text("refused")

        # Every redemption at the console is journalled with the operator's name.
        actions = [e.detail for e in gateway.store.events() if e.kind == "console_action"]
        assert [(a["operator"], a["action"], a["status"]) for a in actions] == [
            ("alice", "ticket_redeem", "redeemed"),
            ("alice", "ticket_redeem", "duplicate"),
            ("alice", "ticket_redeem", "refused"),
            ("alice", "ticket_redeem", "redeemed"),
            ("alice", "ticket_redeem", "refused"),
        ]
        assert actions[2]["reason"] == "already_used"
        await context.close()

        # A viewer sees no form, and posting one anyway is refused: nothing redeemed.
        context, page = await logged_in(chromium, console.url, VIEWER)
        await page.goto("/tickets")
        await expect(page.locator("#redeem-form")).to_have_count(0)
        csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
        refused = await context.request.post(
            "/tickets/redeem",
            form={"csrf": csrf or "", "code": code(9), "redemption_id": "console-x"},
            max_redirects=0,
        )
        assert refused.status == 403
        assert "viewer" in await refused.text()
        assert verdict(code(9)) == "accepted"
        assert len([e for e in gateway.store.events() if e.kind == "console_action"]) == 5
        await context.close()


# --- the same pages over plain HTTP -----------------------------------------------------------
def _request(
    port: int, method: str, path: str, *, cookie: str = "", body: str = ""
) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEFAULT_TIMEOUT_S)
    try:
        headers = {"Cookie": cookie} if cookie else {}
        if body:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body or None, headers=headers)
        response = conn.getresponse()
        return (
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            (response.read().decode()),
        )
    finally:
        conn.close()


async def _get(port: int, path: str, cookie: str = "") -> tuple[int, dict[str, str], str]:
    return await asyncio.to_thread(_request, port, "GET", path, cookie=cookie)


async def _login(port: int, user: tuple[str, str]) -> str:
    status, headers, _ = await asyncio.to_thread(
        _request, port, "POST", "/login", body=f"user={user[0]}&password={user[1]}"
    )
    assert status == 303
    return headers["set-cookie"].split(";")[0]


async def test_console_tickets_page_on_a_site_without_tickets_says_so_and_pages_need_a_login(
    mosquitto: Broker, tmp_path: Path
) -> None:
    site = console_site(tmp_path, mosquitto.port)
    async with running_console(site) as run:
        port = int(run.url.rsplit(":", 1)[1].strip("/"))
        for path in ("/tickets", "/vending"):
            status, headers, _ = await _get(port, path)
            assert (status, headers["location"]) == (303, "/login")
        cookie = await _login(port, VIEWER)
        status, _, html = await _get(port, "/tickets", cookie)
        assert status == 200
        assert 'id="no-tickets"' in html
        status, _, html = await _get(port, "/vending", cookie)
        assert status == 200
        assert 'id="none-open"' in html
        assert 'id="no-sessions"' in html  # a site without dispensers has none
        # An operator's redemption on this site: refused with why, nothing done.
        cookie = await _login(port, OPERATOR)
        _, _, html = await _get(port, "/tickets", cookie)
        csrf = re.search(r'name="csrf" value="([^"]+)"', html)
        assert csrf is not None
        status, headers, _ = await asyncio.to_thread(
            _request,
            port,
            "POST",
            "/tickets/redeem",
            cookie=cookie,
            body=f"csrf={csrf.group(1)}&code={code(8)}&redemption_id=console-1",
        )
        assert (status, headers["location"]) == (303, "/tickets")
        _, _, html = await _get(port, "/tickets", cookie)
        assert "Ticket not redeemed: this site takes no water tickets" in html
        assert not [e for e in run.gateway.store.events() if e.kind == "console_action"]
