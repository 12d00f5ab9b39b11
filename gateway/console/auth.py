"""Console sessions, CSRF tokens and the login rate limit, held in the daemon's memory.

A session is a random 32-byte token in an ``HttpOnly``, ``SameSite=Strict`` cookie (``Secure``
under TLS); it names the user and carries its own CSRF token, which every form posts back
(the synchroniser-token pattern). Sessions end at logout, after ``session_idle_s`` without a
request, and when the daemon restarts (nothing about them is written to disk).

The login limit counts failures per user name and per client address: after ``max_failures``
within the pause, further attempts are refused without checking the password until the pause
has passed since the last failure. Both keys are counted, so neither guessing many names from
one address nor one name from many addresses gets round it.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.console.users import Role

SESSION_COOKIE = "prepay_console"


@dataclass(slots=True)
class Session:
    token: str
    user: str
    role: Role
    csrf: str
    last_seen: float
    #: one message for the next page (the outcome of the last action)
    flash: str | None = None

    @property
    def can_act(self) -> bool:
        return self.role is Role.OPERATOR

    def csrf_ok(self, submitted: str | None) -> bool:
        return submitted is not None and hmac.compare_digest(submitted, self.csrf)


@dataclass
class Sessions:
    idle_s: float
    clock: Callable[[], float] = time.monotonic
    _by_token: dict[str, Session] = field(default_factory=dict)

    def open(self, user: str, role: Role) -> Session:
        session = Session(
            secrets.token_urlsafe(32), user, role, secrets.token_urlsafe(32), self.clock()
        )
        self._by_token[session.token] = session
        return session

    def get(self, token: str | None) -> Session | None:
        """The live session of ``token``; None when there is none or it has expired."""
        if token is None:
            return None
        session = self._by_token.get(token)
        now = self.clock()
        if session is None or now - session.last_seen > self.idle_s:
            self._by_token.pop(token or "", None)
            return None
        session.last_seen = now
        return session

    def alive(self, session: Session) -> bool:
        """Whether ``session`` is still open (not logged out, not idle too long), without
        counting this as a request: an open page's event stream does not keep it alive."""
        return (
            self._by_token.get(session.token) is session
            and self.clock() - session.last_seen <= self.idle_s
        )

    def close(self, token: str | None) -> None:
        self._by_token.pop(token or "", None)


@dataclass
class LoginLimiter:
    """Failures per key (``user:NAME``, ``addr:IP``) within ``pause_s`` of the last one."""

    max_failures: int
    pause_s: float
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, tuple[int, float]] = field(default_factory=dict)
    #: refused attempts (for the health page and the tests)
    refused: int = 0

    def blocked(self, *keys: str) -> bool:
        now = self.clock()
        for key in keys:
            count, last = self._failures.get(key, (0, 0.0))
            if now - last > self.pause_s:
                self._failures.pop(key, None)
            elif count >= self.max_failures:
                self.refused += 1
                return True
        return False

    def failed(self, *keys: str) -> None:
        now = self.clock()
        for key in keys:
            count, last = self._failures.get(key, (0, now))
            if now - last > self.pause_s:
                count = 0
            self._failures[key] = (count + 1, now)

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)
