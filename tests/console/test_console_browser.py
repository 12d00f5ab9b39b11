"""The operator console in a real browser: log in, see the ledger's balances, watch a balance
fall live, top up and see the supply restored, be refused as a viewer and without the CSRF
token, and be stopped after too many failed logins. Every action is journalled with the
operator's name.

The money (the Beijing residential water tariff's first tier, 5.00 CNY per m3, on account A1
opened with 50.00 CNY): 2 m3 cost 10.00 (50.00 -> 40.00); 10 m3 more cost 50.00 (40.00 ->
-10.00, below the resident policy's disconnect threshold of 0: cut); a top-up of 20.00 brings it
to 10.00, above the restore threshold of 1.00: restored.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.async_api import expect

from drivers.ports import Reading
from gateway.store import EntryKind
from tests.console.support import (
    LOGIN_FAILURES,
    OPERATOR,
    VIEWER,
    browser,
    console_site,
    logged_in,
    running_console,
    screenshots_dir,
)
from tests.fixtures.mosquitto import Broker
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


async def test_console_operator_sees_ledger_watches_balance_fall_and_restores_supply(
    mosquitto: Broker, tmp_path: Path
) -> None:
    site = console_site(tmp_path, mosquitto.port)
    async with running_console(site) as run, browser() as chromium:
        store = run.gateway.store
        context, page = await logged_in(chromium, run.url, OPERATOR)
        await expect(page.locator("#user")).to_have_text("alice (operator)")
        await expect(page.locator("#link")).to_have_text("connected")

        # The accounts page shows the ledger's balance: the opening 50.00.
        await page.goto("/accounts")
        balance = page.locator("#balance-A1")
        assert store.balance("A1") == 5_000
        await expect(balance).to_have_text("50.00 CNY")

        # Readings billed while the page is open: the balance falls on the page by itself.
        await run.feed.put(Reading("m1", T0, 0), Reading("m1", T0 + timedelta(hours=1), 2_000))
        await expect(balance).to_have_text("40.00 CNY")
        assert store.balance("A1") == 4_000

        # The account page, live too: 10 m3 more cut the supply.
        await page.goto("/accounts/A1")
        await run.feed.put(Reading("m1", T0 + timedelta(hours=2), 12_000))
        await expect(page.locator("#balance-A1")).to_have_text("-10.00 CNY")
        await expect(page.locator("#supply-wanted")).to_have_text("off")
        await expect(page.locator("#supply-confirmed")).to_have_text("off")
        assert store.balance("A1") == -1_000
        assert run.relay.on is False

        # A top-up from the console restores it.
        await page.fill("#topup-amount", "20.00")
        await page.fill("#topup-reference", "cash book 7")
        await page.click("#topup-submit")
        await expect(page.locator("#flash")).to_contain_text("Top-up 20.00 CNY: applied")
        await expect(page.locator("#balance-A1")).to_have_text("10.00 CNY")
        await expect(page.locator("#supply-wanted")).to_have_text("on")
        await expect(page.locator("#supply-confirmed")).to_have_text("on")
        await eventually(lambda: run.relay.on, what="relay v1 switched back on")
        assert store.balance("A1") == 1_000
        topups = [e.amount_minor for e in store.entries("A1") if e.kind is EntryKind.TOPUP]
        assert topups == [2_000]
        # The statement lists it with its receipt.
        topup_row = page.locator("#statement tr", has_text="topup")
        await expect(topup_row).to_contain_text("20.00 CNY")
        await expect(topup_row).to_contain_text("no. 1")  # the site's first receipt

        # An override with a reason, from the same page.
        await page.select_option("#supply-override", "off")
        await page.fill("#supply-reason", "leak reported by the tenant")
        await page.click("#supply-submit")
        await expect(page.locator("#flash")).to_contain_text("Supply override off: applied")
        await expect(page.locator("#supply-confirmed")).to_have_text("off")

        # Every action is in the events journal with the operator's name.
        actions = [e.detail for e in store.events() if e.kind == "console_action"]
        assert [(a["operator"], a["action"], a["status"]) for a in actions] == [
            ("alice", "topup", "applied"),
            ("alice", "supply", "applied"),
        ]
        assert actions[0]["payment_ref"] == "console:alice: cash book 7"
        assert actions[1]["reason"] == "console:alice: leak reported by the tenant"

        # The CSV export is the ledger, line for line.
        async with page.expect_download() as download_info:
            await page.click("#csv")
        csv_text = (await (await download_info.value).path()).read_text()
        rows = [line.split(",") for line in csv_text.strip().splitlines()[1:]]
        assert [int(r[3]) for r in rows] == [e.amount_minor for e in store.entries("A1")]
        assert int(rows[-1][5]) == store.balance("A1")

        # Screenshots of the main pages (for the operator's guide: `screenshots_dir`).
        shots = screenshots_dir(tmp_path)
        shots.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=shots / "account.png", full_page=True)
        for name, path in (("health", "/"), ("accounts", "/accounts"), ("devices", "/devices")):
            await page.goto(path)
            await page.screenshot(path=shots / f"{name}.png", full_page=True)
        await page.goto("/events")
        await expect(page.locator("#event-rows")).to_contain_text("console_action")
        await page.screenshot(path=shots / "events.png", full_page=True)
        await context.close()


async def test_console_viewer_reads_but_is_refused_every_action(
    mosquitto: Broker, tmp_path: Path
) -> None:
    site = console_site(tmp_path, mosquitto.port)
    async with running_console(site) as run, browser() as chromium:
        store = run.gateway.store
        context, page = await logged_in(chromium, run.url, VIEWER)
        await page.goto("/accounts/A1")
        await expect(page.locator("#balance-A1")).to_have_text("50.00 CNY")
        await expect(page.locator("#topup-form")).to_have_count(0)  # no forms to act with
        # Posting the form anyway, with the viewer's own session and CSRF token: 403.
        csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
        assert csrf
        before = run.gateway.probe.counters()
        response = await context.request.post(
            "/accounts/A1/topup", form={"csrf": csrf, "amount": "20.00"}, max_redirects=0
        )
        assert response.status == 403
        assert "viewer" in await response.text()
        # The refusal is the whole answer: nothing applied, nothing written.
        assert run.gateway.probe.counters().commands_applied == before.commands_applied
        assert store.balance("A1") == 5_000
        assert [e for e in store.events() if e.kind == "console_action"] == []
        await context.close()


async def test_console_action_without_the_csrf_token_is_refused(
    mosquitto: Broker, tmp_path: Path
) -> None:
    site = console_site(tmp_path, mosquitto.port)
    async with running_console(site) as run, browser() as chromium:
        store = run.gateway.store
        context, page = await logged_in(chromium, run.url, OPERATOR)
        forms: list[dict[str, str | float | bool]] = [
            {"amount": "20.00"},
            {"amount": "20.00", "csrf": "forged"},
        ]
        for form in forms:
            response = await context.request.post("/accounts/A1/topup", form=form, max_redirects=0)
            assert response.status == 403
            assert "CSRF" in await response.text()
        assert run.gateway.probe.counters().commands_applied == 0
        assert store.balance("A1") == 5_000
        # The same post with the session's token is taken (the refusals were the token's).
        csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
        response = await context.request.post(
            "/accounts/A1/topup", form={"amount": "20.00", "csrf": csrf or ""}, max_redirects=0
        )
        assert response.status == 303
        assert store.balance("A1") == 7_000  # 50.00 + 20.00
        await context.close()


async def test_console_login_is_refused_after_too_many_failures(
    mosquitto: Broker, tmp_path: Path
) -> None:
    site = console_site(tmp_path, mosquitto.port)
    async with running_console(site) as run, browser() as chromium:
        context = await chromium.new_context(base_url=run.url)
        page = await context.new_page()
        await page.goto("/login")
        for _ in range(LOGIN_FAILURES):
            await page.fill("#login-user", OPERATOR[0])
            await page.fill("#login-password", "not-the-password")
            await page.click("#login-submit")
            await expect(page.locator("#login-error")).to_have_text("Wrong user name or password.")
        # The right password now is refused too, without being checked, until the pause ends.
        await page.fill("#login-user", OPERATOR[0])
        await page.fill("#login-password", OPERATOR[1])
        await page.click("#login-submit")
        await expect(page.locator("#login-error")).to_contain_text("Too many failed logins")
        response = await context.request.get("/accounts", max_redirects=0)
        assert response.status == 303  # still not logged in: sent to the login page
        await context.close()


async def test_console_operator_acknowledges_an_alarm_and_reissues_a_receipt(
    mosquitto: Broker, tmp_path: Path
) -> None:
    site = console_site(tmp_path, mosquitto.port)
    async with running_console(site) as run, browser() as chromium:
        store = run.gateway.store
        context, page = await logged_in(chromium, run.url, OPERATOR)
        await page.goto("/accounts/A1")

        # A top-up, then its receipt reissued from the statement.
        await page.fill("#topup-amount", "5.00")
        await page.click("#topup-submit")
        await expect(page.locator("#flash")).to_contain_text("Top-up 5.00 CNY: applied")
        topup_row = page.locator("#statement tr", has_text="topup")
        await topup_row.get_by_role("button", name="Reissue").click()
        await expect(page.locator("#flash")).to_contain_text("Receipt no. 1: applied")
        await expect(page.locator("#flash")).to_contain_text(": applied")

        # A relay that ignores its command: the gateway raises an alarm, the console lists it.
        run.relay.obey = False
        await page.select_option("#supply-override", "off")
        await page.fill("#supply-reason", "meter swap")
        await page.click("#supply-submit")
        await eventually(
            lambda: any(e.kind == "alarm" for e in store.events()), what="the supply alarm"
        )
        await page.goto("/")
        alarm = page.locator("#alarms tr").first
        await alarm.get_by_role("button", name="Acknowledge").click()
        await expect(page.locator("#flash")).to_contain_text("acknowledged")
        await expect(page.locator("#alarms tr").first).to_contain_text("acknowledged by alice")

        actions = [e.detail for e in store.events() if e.kind == "console_action"]
        assert [(a["operator"], a["action"]) for a in actions] == [
            ("alice", "topup"),
            ("alice", "receipt"),
            ("alice", "supply"),
            ("alice", "acknowledge"),
        ]
        acks = [e.detail for e in store.events() if e.kind == "alarm_acknowledged"]
        assert [a["operator"] for a in acks] == ["alice"]
        await context.close()
