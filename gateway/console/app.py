"""The console's web app: Starlette routes rendering Jinja2 templates, plus one event stream.

Why this stack: pages are rendered on the server from the same reads the CLI uses, forms post
back and redirect (no client state to keep in step), and live updates come over one
server-sent event stream that a few lines of plain JavaScript (``static/console.js``) apply to
the page with the browser's own ``EventSource``. htmx would add a 14 KB file to vendor for what
those lines do; there is no Node build step and nothing loaded from the network, so the console
works on a box that is offline.

Access: every page needs a session (`gateway.console.auth`); every action is a POST that must
carry the session's CSRF token and a user with the ``operator`` role, else 403 and nothing
changes.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billing_engine.money import format_minor
from gateway.console.actions import ActionError, Actions
from gateway.console.auth import SESSION_COOKIE, LoginLimiter, Session, Sessions
from gateway.console.reads import AccountRow, AccountsSnapshot, Reads, litres_text
from gateway.console.tickets import CounterRedemption
from gateway.console.users import User, check_password, load_users
from gateway.northbound.payloads import format_rfc3339
from gateway.store.events import Event

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
#: How often the event stream looks whether anything changed (a counter compare, in memory),
#: and how often it reads the store regardless (for changes no counter shows).
STREAM_TICK_S = 0.5
STREAM_REFRESH_S = 5.0
#: The newest ledger entries an account's page lists (the CSV export has them all).
STATEMENT_LINES = 200


@dataclass
class ConsoleState:
    """What the app needs of the running gateway (built by `gateway.console.server`)."""

    site_id: str
    reads: Reads
    actions: Actions
    users_file: Path
    sessions: Sessions
    limiter: LoginLimiter
    #: changes whenever the gateway did something (the probe's counters): wakes the stream
    activity: Callable[[], object]
    link_state: Callable[[], str]
    kernel: str
    secure_cookies: bool
    closing: asyncio.Event


def _time(value: datetime | None) -> str:
    """A time for a person to read: UTC to the second (exports keep RFC 3339)."""
    return "never" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _key_values(value: object) -> str:
    """An event's detail as ``key=value, ...`` (nested objects the same way)."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_key_values(v)}" for k, v in sorted(value.items()))
    return "" if value is None else str(value)


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(("html",)),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["time"] = _time
    env.filters["kv"] = _key_values
    env.filters["money"] = lambda minor, currency: format_minor(int(minor), str(currency))
    env.filters["litres"] = litres_text
    return env


def _account_json(row: AccountRow) -> dict[str, Any]:
    return {
        "balance": row.balance_text,
        "balance_minor": row.balance_minor,
        "mode": row.book.mode,
        "supply_wanted": row.book.supply_wanted,
        "supply_confirmed": row.supply_confirmed or "unknown",
        "last_reading": _time(row.last_reading_at),
    }


def _redemption_text(outcome: CounterRedemption) -> str:
    """What the counter is told of a redemption (the flash)."""
    code = outcome.code or "?"
    if outcome.refusal is not None:
        return f"Ticket {code} refused: {outcome.refusal.reason.value}: {outcome.refusal.detail}"
    first = outcome.redeemed or outcome.replayed
    if first is None:  # CounterRedemption sets exactly one
        return f"Ticket {code}: no answer"
    if outcome.replayed is not None:
        return f"Ticket {code} was redeemed by this same form at {_time(first.redeemed_at)}"
    return f"Ticket {code} ({first.kind}) redeemed: hand out {first.quantity} x {first.product}"


def _event_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.event_id,
        "at": _time(event.at),
        "account": event.account_id or "-",
        "kind": event.kind,
        "detail": _key_values(event.detail),
    }


def build_app(state: ConsoleState, *, mounts: Sequence[BaseRoute] = ()) -> ASGIApp:
    """The console's ASGI app.

    ``mounts``: more routes served beside the console without a login, e.g.
    ``Route("/metrics", endpoint=metrics_app(...))``: the metrics endpoint (gateway.metrics).
    """
    env = _environment()

    def page(request: Request, name: str, session: Session | None, **values: Any) -> HTMLResponse:
        flash = None
        if session is not None:
            flash, session.flash = session.flash, None
        html = env.get_template(name).render(
            request=request,
            session=session,
            site=state.site_id,
            flash=flash,
            can_act=session is not None and session.can_act and state.actions.enabled,
            **values,
        )
        return HTMLResponse(html)

    # What is the same for every page of one read of the accounts is made once per read: the
    # accounts table (about 10 ms for 1,000 accounts) and the live stream's update.
    made: dict[str, tuple[AccountsSnapshot, Any]] = {}

    def per_snapshot(key: str, snapshot: AccountsSnapshot, make: Callable[[], Any]) -> Any:
        found = made.get(key)
        if found is None or found[0] is not snapshot:
            found = made[key] = (snapshot, make())
        return found[1]

    def accounts_table(snapshot: AccountsSnapshot) -> Markup:
        template = env.get_template("_accounts_table.html")
        return Markup(  # noqa: S704 - rendered by the autoescaping environment
            per_snapshot("table", snapshot, lambda: template.render(rows=snapshot.rows))
        )

    def accounts_update(snapshot: AccountsSnapshot) -> str:
        def make() -> str:
            balances = {r.book.id: _account_json(r) for r in snapshot.rows}
            return f"event: accounts\ndata: {json.dumps(balances)}\n\n"

        return str(per_snapshot("update", snapshot, make))

    def current(request: Request) -> Session | None:
        return state.sessions.get(request.cookies.get(SESSION_COOKIE))

    def to_login() -> RedirectResponse:
        return RedirectResponse("/login", status_code=303)

    async def acting(request: Request) -> tuple[Session, dict[str, str]] | Response:
        """The session and form of an action, or the response refusing it (nothing done)."""
        session = current(request)
        if session is None:
            return PlainTextResponse("log in first", status_code=403)
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if not session.csrf_ok(fields.get("csrf")):
            logger.warning("console: %s: action refused: bad or missing CSRF token", session.user)
            return PlainTextResponse("refused: bad or missing CSRF token", status_code=403)
        if not session.can_act:
            logger.warning("console: %s (viewer): action refused", session.user)
            return PlainTextResponse(
                f"refused: {session.user} is a viewer; actions need the operator role",
                status_code=403,
            )
        return session, fields

    # --- login ---------------------------------------------------------------------------------
    async def login_form(request: Request) -> Response:
        return page(request, "login.html", None, error=None)

    async def login(request: Request) -> Response:
        form = await request.form()
        name = str(form.get("user", "")).strip()
        password = str(form.get("password", ""))
        address = request.client.host if request.client else "?"
        keys = (f"user:{name}", f"addr:{address}")
        if state.limiter.blocked(*keys):
            logger.warning("console: login of %r from %s refused: too many failures", name, address)
            return HTMLResponse(
                env.get_template("login.html").render(
                    site=state.site_id,
                    session=None,
                    error="Too many failed logins: wait a minute and try again.",
                ),
                status_code=429,
            )
        users = await asyncio.to_thread(load_users, state.users_file)
        user: User | None = await asyncio.to_thread(check_password, users, name, password)
        if user is None:
            state.limiter.failed(*keys)
            logger.warning("console: failed login of %r from %s", name, address)
            return HTMLResponse(
                env.get_template("login.html").render(
                    site=state.site_id, session=None, error="Wrong user name or password."
                ),
                status_code=401,
            )
        state.limiter.succeeded(*keys)
        session = state.sessions.open(user.name, user.role)
        logger.info("console: %s (%s) logged in from %s", user.name, user.role.value, address)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session.token,
            httponly=True,
            samesite="strict",
            secure=state.secure_cookies,
        )
        return response

    async def logout(request: Request) -> Response:
        result = await acting_any(request)
        if isinstance(result, Response):
            return result
        state.sessions.close(result.token)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    async def acting_any(request: Request) -> Session | Response:
        """A POST any logged-in user may make (log out): the CSRF token still holds."""
        session = current(request)
        if session is None:
            return to_login()
        form = await request.form()
        token = form.get("csrf")
        if not session.csrf_ok(token if isinstance(token, str) else None):
            return PlainTextResponse("refused: bad or missing CSRF token", status_code=403)
        return session

    # --- pages ---------------------------------------------------------------------------------
    async def health(request: Request) -> Response:
        session = current(request)
        if session is None:
            return to_login()
        return page(
            request,
            "health.html",
            session,
            health=await state.reads.health(),
            link=state.link_state(),
            kernel=state.kernel,
            login_refusals=state.limiter.refused,
            actions_enabled=state.actions.enabled,
        )

    async def accounts(request: Request) -> Response:
        session = current(request)
        if session is None:
            return to_login()
        table = accounts_table(await state.reads.accounts_snapshot())
        return page(request, "accounts.html", session, table=table)

    async def account(request: Request) -> Response:
        session = current(request)
        if session is None:
            return to_login()
        found = await state.reads.account(request.path_params["account"])
        if found is None:
            return PlainTextResponse("no such account", status_code=404)
        peak = max((bar.used_milli for bar in found.usage), default=0)
        return page(
            request, "account.html", session, a=found, peak=peak, statement_lines=STATEMENT_LINES
        )

    async def statement_csv(request: Request) -> Response:
        session = current(request)
        if session is None:
            return to_login()
        account_id = request.path_params["account"]
        found = await state.reads.account(account_id)
        if found is None:
            return PlainTextResponse("no such account", status_code=404)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(
            (
                "seq",
                "at",
                "kind",
                "amount_minor",
                "currency",
                "balance_after_minor",
                "reference",
                "receipt_seq",
            )
        )
        for line in found.statement:
            writer.writerow(
                (
                    line.seq,
                    format_rfc3339(line.at),
                    line.kind.value,
                    line.amount_minor,
                    line.currency,
                    line.balance_after_minor,
                    line.ref,
                    "" if line.receipt_seq is None else line.receipt_seq,
                )
            )
        return Response(
            out.getvalue(),
            media_type="text/csv",
            headers={"content-disposition": f'attachment; filename="statement-{account_id}.csv"'},
        )

    async def devices(request: Request) -> Response:
        session = current(request)
        if session is None:
            return to_login()
        rows = [r for r in await state.reads.accounts() if r.book.actuator is not None]
        alarms = (await state.reads.health()).alarms
        return page(request, "devices.html", session, rows=rows, alarms=alarms)

    async def feed(request: Request) -> Response:
        session = current(request)
        if session is None:
            return to_login()
        return page(request, "events.html", session, events=await state.reads.recent_events(50))

    async def tickets(request: Request) -> Response:
        session = current(request)
        if session is None:
            return to_login()
        period = "day" if request.query_params.get("period") == "day" else "month"
        found = await state.reads.tickets(period)
        return page(
            request,
            "tickets.html",
            session,
            t=found,
            period=period,
            can_redeem=found is not None and session.can_act,
            # names this form's request: sent twice, it is redeemed once
            redemption_id=f"console-{uuid.uuid4()}",
        )

    async def vending(request: Request) -> Response:
        session = current(request)
        if session is None:
            return to_login()
        return page(request, "vending.html", session, v=await state.reads.vending())

    # --- actions -------------------------------------------------------------------------------
    async def topup(request: Request) -> Response:
        acted = await acting(request)
        if isinstance(acted, Response):
            return acted
        session, form = acted
        account_id = request.path_params["account"]
        found = await state.reads.account(account_id)
        if found is None:
            return PlainTextResponse("no such account", status_code=404)
        try:
            outcome = await state.actions.topup(
                session.user,
                account_id,
                found.row.book.currency,
                form.get("amount", ""),
                form.get("reference", ""),
            )
        except ActionError as exc:
            session.flash = f"Top-up not made: {exc}"
        else:
            amount = f"{form.get('amount', '').strip()} {found.row.book.currency}"
            session.flash = f"Top-up {amount}: {outcome.text()}"
        return RedirectResponse(f"/accounts/{account_id}", status_code=303)

    async def supply(request: Request) -> Response:
        acted = await acting(request)
        if isinstance(acted, Response):
            return acted
        session, form = acted
        account_id = request.path_params["account"]
        found = await state.reads.account(account_id)
        if found is None or found.row.book.actuator is None:
            return PlainTextResponse("no such account, or it has no supply device", status_code=404)
        try:
            outcome = await state.actions.supply(
                session.user,
                account_id,
                found.row.book.actuator,
                form.get("override", ""),
                form.get("reason", ""),
            )
        except ActionError as exc:
            session.flash = f"Override not made: {exc}"
        else:
            session.flash = f"Supply override {form.get('override')}: {outcome.text()}"
        return RedirectResponse(f"/accounts/{account_id}", status_code=303)

    async def reissue(request: Request) -> Response:
        acted = await acting(request)
        if isinstance(acted, Response):
            return acted
        session, form = acted
        account_id = request.path_params["account"]
        # By number: a statement line's receipt is a top-up's or a pour's (the same sequence).
        seq = form.get("receipt_seq", "")
        try:
            outcome = await state.actions.reissue_receipt(session.user, account_id, seq)
        except ActionError as exc:
            session.flash = f"Receipt not reissued: {exc}"
        else:
            session.flash = f"Receipt no. {seq}: {outcome.text()}"
        return RedirectResponse(f"/accounts/{account_id}", status_code=303)

    async def redeem(request: Request) -> Response:
        acted = await acting(request)
        if isinstance(acted, Response):
            return acted
        session, form = acted
        try:
            outcome = await state.actions.redeem_ticket(
                session.user,
                form.get("code", ""),
                form.get("where", ""),
                form.get("redemption_id", ""),
            )
        except ActionError as exc:
            session.flash = f"Ticket not redeemed: {exc}"
        else:
            session.flash = _redemption_text(outcome)
        return RedirectResponse("/tickets", status_code=303)

    async def acknowledge(request: Request) -> Response:
        acted = await acting(request)
        if isinstance(acted, Response):
            return acted
        session, _ = acted
        event = await state.reads.event(int(request.path_params["event"]))
        if event is None or event.kind != "alarm":
            return PlainTextResponse("no such alarm", status_code=404)
        await state.actions.acknowledge(session.user, event.event_id, event.account_id)
        session.flash = f"Alarm {event.event_id} acknowledged"
        return RedirectResponse("/", status_code=303)

    # --- the live stream -----------------------------------------------------------------------
    async def stream(request: Request) -> Response:
        session = current(request)
        if session is None:
            return PlainTextResponse("log in first", status_code=403)
        # The event feed resumes after the newest event its page was rendered with; pages
        # without the feed ask for none.
        raw_after = request.query_params.get("after")
        after = int(raw_after) if raw_after is not None and raw_after.isdigit() else None

        async def updates() -> AsyncIterator[str]:
            nonlocal after
            last_activity: object = None
            last_sent: str | None = None
            loop = asyncio.get_running_loop()
            next_refresh = 0.0
            # The stream ends with its session (logged out, or idle for session_idle_s).
            while not state.closing.is_set() and state.sessions.alive(session):
                activity = state.activity()
                if activity != last_activity or loop.time() >= next_refresh:
                    next_refresh = loop.time() + STREAM_REFRESH_S
                    snapshot = await state.reads.accounts_snapshot()
                    # The rows may predate this activity (a shared read, at most
                    # ACCOUNTS_MAX_AGE_S old): then the next tick asks again.
                    last_activity = snapshot.activity
                    update = accounts_update(snapshot)
                    if update != last_sent:
                        last_sent = update
                        yield update
                    new = [] if after is None else await state.reads.events_after(after)
                    if new:
                        after = new[-1].event_id
                        payload = json.dumps([_event_json(e) for e in new])
                        yield f"event: events\ndata: {payload}\n\n"
                # A closed page ends the stream: Starlette cancels this generator.
                try:  # the next tick, or the console closing
                    async with asyncio.timeout(STREAM_TICK_S):
                        await state.closing.wait()
                except TimeoutError:
                    pass

        return StreamingResponse(
            updates(),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    routes: list[BaseRoute] = [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", health),
        Route("/accounts", accounts),
        Route("/accounts/{account}", account),
        Route("/accounts/{account}/statement.csv", statement_csv),
        Route("/accounts/{account}/topup", topup, methods=["POST"]),
        Route("/accounts/{account}/supply", supply, methods=["POST"]),
        Route("/accounts/{account}/receipt", reissue, methods=["POST"]),
        Route("/alarms/{event:int}/ack", acknowledge, methods=["POST"]),
        Route("/devices", devices),
        Route("/events", feed),
        Route("/tickets", tickets),
        Route("/tickets/redeem", redeem, methods=["POST"]),
        Route("/vending", vending),
        Route("/stream", stream),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        # --- extra mounts (e.g. /metrics from the metrics helper): served without a login
        *mounts,
    ]
    return _SecurityHeaders(Starlette(routes=routes))


#: Sent with every response: no framing by other sites (clickjacking), scripts, styles and
#: everything else from the console itself only, no referrer sent elsewhere.
_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class _SecurityHeaders:
    """Adds `_HEADERS` to every HTTP response. A plain ASGI wrapper rather than Starlette's
    ``BaseHTTPMiddleware``, which would buffer the event stream's responses through a task."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)
