"""papad credentials: DRF tokens and the papadam fork's JWT flow.

An :class:`Auth` gives the headers for a request and, after a 401, tries once to obtain
fresh credentials (`renew`). Secret values live only in these objects: their ``repr`` hides
them and nothing here logs them.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from recorder.papad.errors import PapadError, UnavailableError

log = logging.getLogger(__name__)

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

    def _login(self) -> None:
        try:
            body = self._post(
                "/auth/jwt/create/",
                {"username": self._username, "password": self._load_password()},
            )
        except PapadError as exc:
            if exc.retryable:
                raise
            # Wrong credentials refuse every request: wait for a fix, do not park entries.
            raise UnavailableError(
                f"papad JWT login refused for {self._username!r}: {exc}"
            ) from None
        self._store(body)
        log.info("papad JWT login as %s", self._username)

    def _refresh_or_login(self) -> None:
        if self._refresh is not None:
            try:
                self._store(self._post("/auth/jwt/refresh/", {"refresh": self._refresh}))
                log.debug("papad JWT access token refreshed")
                return
            except PapadError as exc:
                if exc.unavailable:
                    raise
                log.info("papad JWT refresh refused (%s); logging in again", exc)
        self._access = self._refresh = None
        self._login()
