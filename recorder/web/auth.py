"""Who may use the controls: one password, sessions, CSRF tokens and a login rate limit.

The password comes from ``web.password_file`` (`recorder.secrets`: a loose file is refused at
start-up) and is compared in constant time. A good login makes a session: a random token in
an HttpOnly, SameSite=Strict cookie, and a second random token the page sends back in the
``X-CSRF-Token`` header of every control request. A form or script on another site can make a
browser send the cookie, but cannot read the CSRF token nor set that header without a CORS
preflight this server never grants. Sessions live in memory: a restart logs everyone out.

Failed logins are limited per client address and in total, so the password cannot be guessed
at network speed, and a flood from many addresses locks the login (not the recorder) for a
minute at a time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

SESSION_SECONDS = 12 * 3600  # idle time after which a session ends
MAX_SESSIONS = 64
WINDOW_SECONDS = 60.0
FAILS_PER_CLIENT = 5  # failed logins per address in the window
FAILS_TOTAL = 30  # failed logins from all addresses in the window


class LoginRefused(Exception):
    """The login was refused; `retry_after` (seconds) is set when it was rate-limited."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Session:
    token: str
    csrf: str
    expires: float


class Auth:
    """Sessions for one password (None: no password configured, no control works)."""

    def __init__(self, password: str | None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._digest = hashlib.sha256(password.encode()).digest() if password else None
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._fails: dict[str, deque[float]] = {}
        self._all_fails: deque[float] = deque()

    @property
    def configured(self) -> bool:
        """Whether a password is set (controls possible at all)."""
        return self._digest is not None

    def login(self, password: str, client: str) -> Session:
        """A new session for the right password; LoginRefused otherwise (or when `client`, or
        everyone, failed too often in the last minute)."""
        if self._digest is None:
            raise LoginRefused("no password is configured (web.password_file): the controls "
                               "are off")
        now = self._clock()
        with self._lock:
            wait = self._lockout(client, now)
            if wait is not None:
                raise LoginRefused("too many failed logins: try again later", wait)
            given = hashlib.sha256(password.encode()).digest()
            if not hmac.compare_digest(given, self._digest):
                self._fails.setdefault(client, deque()).append(now)
                self._all_fails.append(now)
                raise LoginRefused("wrong password")
            self._fails.pop(client, None)
            session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32),
                              now + SESSION_SECONDS)
            self._sessions[session.token] = session
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
            return session

    def _lockout(self, client: str, now: float) -> float | None:
        """Seconds `client` must wait before trying again, or None (under the lock)."""
        for fails in (*self._fails.values(), self._all_fails):
            while fails and fails[0] <= now - WINDOW_SECONDS:
                fails.popleft()
        for key in [k for k, v in self._fails.items() if not v]:
            del self._fails[key]
        mine = self._fails.get(client, deque())
        for fails, limit in ((mine, FAILS_PER_CLIENT), (self._all_fails, FAILS_TOTAL)):
            if len(fails) >= limit:
                return max(1.0, fails[0] + WINDOW_SECONDS - now)
        return None

    def session(self, token: str | None) -> Session | None:
        """The live session of a cookie's token (its idle time starts again), or None."""
        if not token:
            return None
        now = self._clock()
        with self._lock:
            session = self._sessions.get(token)
            if session is None or session.expires <= now:
                self._sessions.pop(token, None)
                return None
            session.expires = now + SESSION_SECONDS
            self._sessions.move_to_end(token)
            return session

    def logout(self, token: str | None) -> None:
        """End a session (unknown tokens are ignored)."""
        with self._lock:
            self._sessions.pop(token or "", None)

    @staticmethod
    def csrf_ok(session: Session, header: str | None) -> bool:
        """Whether a request's ``X-CSRF-Token`` matches its session's."""
        return bool(header) and hmac.compare_digest(session.csrf.encode(),
                                                    (header or "").encode())
