"""papad credentials: DRF tokens and the papadam fork's JWT flow.

An :class:`Auth` gives the headers for a request and, after a 401, tries once to obtain
fresh credentials (`renew`). Secret values live only in these objects: their ``repr`` hides
them and nothing here logs them.

papadam throttles anonymous requests, logins included, to 100 an hour per address. The JWT
flow therefore never spends that budget in a loop: a 429 on login or refresh blocks every
further attempt until its ``Retry-After`` has passed, and a refused password is not tried
again for `LOGIN_RETRY` seconds unless the password file changes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from recorder.papad.errors import PapadError, UnavailableError, scheme_hint

log = logging.getLogger(__name__)

LOGIN_RETRY = 300.0  # seconds before a refused password is tried again (unless it changed)
THROTTLE_WAIT = 60.0  # a 429 without Retry-After blocks logins this long

# POST a JSON body to a path without credentials; returns the decoded JSON object.
PostJson = Callable[[str, Mapping[str, Any]], dict[str, Any]]


class Auth(Protocol):
    def headers(self) -> dict[str, str]:
        """Headers that authenticate a request (may log in or refresh first)."""
        ...

    def renew(self, failed: Mapping[str, str]) -> bool:
        """After a 401 on a request sent with `failed` headers: get fresh credentials.

        True if a retry with new headers is worth making.
        """
        ...


class TokenAuth:
    """``Authorization: Token <key>``; the key is re-read after a 401 (it may have been fixed)."""

    def __init__(self, load: Callable[[], str]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._token = load()

    def __repr__(self) -> str:
        return "TokenAuth(token=<hidden>)"

    def headers(self) -> dict[str, str]:
        with self._lock:
            return {"Authorization": f"Token {self._token}"}

    def renew(self, failed: Mapping[str, str]) -> bool:
        with self._lock:
            if failed.get("Authorization") != f"Token {self._token}":
                return True  # another request already picked up a new token
            try:
                fresh = self._load()
            except PapadError:
                raise
            except Exception as exc:  # a ConfigError from read_secret, say
                log.warning("papad token could not be re-read: %s", exc)
                return False
            changed = fresh != self._token
            self._token = fresh
            return changed


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, decoded without verifying its signature (we only read `exp`)."""
    try:
        payload = token.split(".")[1]
        padded = payload + "=" * (-len(payload) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (IndexError, ValueError, binascii.Error, UnicodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


class JwtAuth:
    """papadam's JWT: log in for an access/refresh pair, refresh before expiry or after a 401.

    The refresh token rotates: each refresh may return a new one, which replaces the old.
    When the refresh is refused (expired, blacklisted) the client logs in again.
    """

    def __init__(
        self,
        username: str,
        load_password: Callable[[], str],
        post_json: PostJson,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._username = username
        self._load_password = load_password
        self._post = post_json
        self._clock = clock
        self._lock = threading.Lock()
        self._access: str | None = None
        self._refresh: str | None = None
        self._exp: float | None = None
        self._margin = 30.0
        self._blocked: tuple[float, str] | None = None  # (until, why): throttled
        self._refused: tuple[str, float, str] | None = None  # (password digest, when, why)

    def __repr__(self) -> str:
        return f"JwtAuth(username={self._username!r}, tokens=<hidden>)"

    def headers(self) -> dict[str, str]:
        with self._lock:
            if self._access is None:
                self._login()
            elif self._exp is not None and self._clock() >= self._exp - self._margin:
                self._refresh_or_login()
            return {"Authorization": f"Bearer {self._access}"}

    def renew(self, failed: Mapping[str, str]) -> bool:
        with self._lock:
            if self._access is not None and failed.get("Authorization") != (
                f"Bearer {self._access}"
            ):
                return True  # another thread renewed meanwhile
            self._refresh_or_login()
            return True

    def login(self) -> None:
        """Log in now (used by ``recorder doctor`` to test the credentials)."""
        with self._lock:
            self._login()

    # -- under the lock --------------------------------------------------------------------

    def _store(self, body: Mapping[str, Any]) -> None:
        access = body.get("access")
        if not isinstance(access, str) or not access:
            raise UnavailableError("papad JWT response has no access token")
        self._access = access
        refresh = body.get("refresh")
        if isinstance(refresh, str) and refresh:
            self._refresh = refresh
        claims = jwt_claims(access)
        exp = claims.get("exp")
        self._exp = float(exp) if isinstance(exp, (int, float)) else None
        iat = claims.get("iat")
        if self._exp is not None and isinstance(iat, (int, float)):
            # Renew within the last tenth of the lifetime (at most 30 s before expiry).
            self._margin = min(30.0, max(0.0, (self._exp - float(iat)) / 10))

    def _check_blocked(self) -> None:
        if self._blocked is not None:
            until, message = self._blocked
            wait = until - self._clock()
            if wait > 0:
                raise UnavailableError(message, retry_after=wait)
            self._blocked = None

    def _login(self) -> None:
        self._check_blocked()
        password = self._load_password()
        digest = hashlib.sha256(password.encode()).hexdigest()
        if self._refused is not None:
            was, at, message = self._refused
            if was == digest and self._clock() < at + LOGIN_RETRY:
                raise UnavailableError(message, retry_after=at + LOGIN_RETRY - self._clock())
            self._refused = None
        try:
            body = self._post(
                "/auth/jwt/create/", {"username": self._username, "password": password}
            )
        except PapadError as exc:
            if exc.status == 429:
                self._block(exc)
                raise
            if exc.retryable:
                raise
            if exc.status in (404, 405):
                # No JWT endpoint: an upstream papad (DRF tokens only).
                message = f"{scheme_hint('Token')} ({exc})"
                log.warning("papad JWT login impossible: %s", message)
            else:
                # Wrong credentials refuse every request: wait for a fix, do not park entries.
                message = f"papad JWT login refused for {self._username!r}: {exc}"
            self._refused = (digest, self._clock(), message)
            raise UnavailableError(message, status=exc.status, request=exc.request) from None
        self._store(body)
        log.info("papad JWT login as %s", self._username)

    def _block(self, exc: PapadError) -> None:
        wait = exc.retry_after if exc.retry_after is not None else THROTTLE_WAIT
        self._blocked = (self._clock() + wait, f"papad throttles logins: {exc}")
        log.warning("papad throttled the JWT login; next try in %.0f s", wait)

    def _refresh_or_login(self) -> None:
        self._check_blocked()
        if self._refresh is not None:
            try:
                self._store(self._post("/auth/jwt/refresh/", {"refresh": self._refresh}))
                log.debug("papad JWT access token refreshed")
                return
            except PapadError as exc:
                if exc.status == 429:
                    self._block(exc)
                    raise
                if exc.unavailable:
                    raise
                log.info("papad JWT refresh refused (%s); logging in again", exc)
        self._access = self._refresh = None
        self._login()
