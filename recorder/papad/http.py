"""HTTP to papad: one timeout on every request, credentials, and error classification.

Every failure becomes a :mod:`recorder.papad.errors` class: connection errors, timeouts,
502/503/504, 429 (with papad's ``Retry-After``) and a 401 that survives one credential renewal
are `UnavailableError`; other 5xx are `ServerError`; any other 4xx is `PermanentError` carrying
the server's reason (first 200 characters, one line).

A 401 whose ``WWW-Authenticate`` names another scheme than the one we sent (DRF names the
scheme its first authentication class expects: upstream papad ``Token``, papadam ``Bearer``)
says so in the message: "this papad expects Bearer ...". That is the one-line hint `recorder
doctor` and the log give for a wrong ``[papad] auth``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from recorder import __version__
from recorder.papad.auth import Auth
from recorder.papad.errors import (
    PermanentError,
    RetryableError,
    ServerError,
    UnavailableError,
    scheme_hint,
)
from recorder.papad.multipart import MultipartBody

log = logging.getLogger(__name__)

_UNAVAILABLE_STATUS = {429, 502, 503, 504}
MAX_RETRY_AFTER = 6 * 3600.0  # a Retry-After beyond this is taken as this (a clock gone wrong)

def retry_after(resp: requests.Response) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    value = resp.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return None
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


def reason_text(resp: requests.Response) -> str:
    """The server's reason for a failure: a JSON message if there is one, else the body text."""
    text = ""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("detail", "message", "error", "non_field_errors"):
            if key in body:
                text = body[key] if isinstance(body[key], str) else json.dumps(body[key])
                break
        else:
            text = json.dumps(body, ensure_ascii=False)
    elif body is not None:
        text = json.dumps(body, ensure_ascii=False)
    elif "html" in resp.headers.get("Content-Type", "") or resp.text.lstrip()[:1] == "<":
        text = _html_reason(resp.text)
    else:
        text = resp.text
    text = " ".join(text.split()) or resp.reason or "no reason given"
    return text[:200]


def _html_reason(page: str) -> str:
    """Django's error pages: the title, and the first paragraph if it says more."""
    found = [" ".join(re.sub(r"<[^>]*>", " ", m).split())
             for m in re.findall(r"<(?:title|p)[^>]*>(.*?)</(?:title|p)>", page, re.S | re.I)]
    found = [f for f in found if f]
    return ": ".join(found[:2]) if found else re.sub(r"<[^>]*>", " ", page)


class Transport:
    """A papad base URL, a per-thread `requests.Session`, a timeout and optional credentials."""

    def __init__(self, base_url: str, timeout: float, auth: Auth | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.auth = auth
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Transport({self.base_url!r}, timeout={self.timeout})"

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = f"recorderpi/{__version__}"
            session.trust_env = False  # a proxy from the environment must not see the LAN papad
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def url(self, path_or_url: str) -> str:
        """An absolute URL for `path_or_url`; absolute URLs must point at the same server."""
        if path_or_url.startswith(("http://", "https://")):
            base, other = urlsplit(self.base_url), urlsplit(path_or_url)
            if (base.scheme, base.netloc) != (other.scheme, other.netloc):
                # A `next` link naming another host (papad behind a proxy): keep our host.
                return urljoin(self.base_url + "/", other.path.lstrip("/")) + (
                    f"?{other.query}" if other.query else ""
                )
            return path_or_url
        return self.base_url + path_or_url

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        form: Callable[[], MultipartBody] | None = None,
        authenticated: bool = True,
    ) -> requests.Response:
        """Send one request; return the 2xx response or raise a classified PapadError.

        `form` builds a fresh multipart body (a body is consumed by sending it, and a 401 may
        need a second attempt).
        """
        url = self.url(path)
        what = f"{method} {urlsplit(url).path}"
        renewed = False
        while True:
            headers = self.auth.headers() if authenticated and self.auth else {}
            body = form() if form is not None else None
            if body is not None:
                headers = {**headers, "Content-Type": body.content_type}
            try:
                resp = self._session().request(
                    method,
                    url,
                    params=params,
                    json=json_body,
                    data=body,
                    headers=headers,
                    timeout=self.timeout,
                    allow_redirects=False,
                )
            except requests.Timeout:
                raise UnavailableError(
                    f"papad {what}: no answer within {self.timeout:g} s", request=what
                ) from None
            except requests.ConnectionError as exc:
                raise UnavailableError(f"papad {what}: cannot connect ({_short(exc)})",
                                       request=what) from None
            except requests.RequestException as exc:
                raise RetryableError(f"papad {what}: {_short(exc)}", request=what) from None
            finally:
                if body is not None:
                    body.close()
            if resp.status_code == 401 and authenticated and self.auth is not None and not renewed:
                renewed = True
                if self.auth.renew(headers):
                    log.info("papad %s: 401, retrying with renewed credentials", what)
                    continue
            return self._classify(what, resp, headers if authenticated else None)

    def _classify(
        self, what: str, resp: requests.Response, sent: Mapping[str, str] | None
    ) -> requests.Response:
        code = resp.status_code
        if 200 <= code < 300:
            return resp
        reason = reason_text(resp)
        message = f"papad {what}: HTTP {code}: {reason}"
        info: dict[str, Any] = {"status": code, "request": what}
        if code == 401 and sent is not None:
            expected = resp.headers.get("WWW-Authenticate", "").split(" ", 1)[0].strip()
            used = sent.get("Authorization", "").split(" ", 1)[0].strip()
            if expected and expected.lower() != used.lower():
                hint = scheme_hint(expected)
                log.warning("papad %s refused the %s scheme: %s", what, used or "missing", hint)
                raise UnavailableError(f"{hint} (papad {what}: HTTP 401: {reason})", **info)
            raise UnavailableError(message + " (credentials refused)", **info)
        if code in _UNAVAILABLE_STATUS:
            wait = retry_after(resp) if code in (429, 503) else None
            if wait is not None:
                message += f" (retry after {wait:.0f} s)"
            raise UnavailableError(message, retry_after=wait, **info)
        if code >= 500:
            raise ServerError(message, **info)
        if code == 408:
            raise RetryableError(message, **info)
        if 300 <= code < 400:
            raise PermanentError(f"papad {what}: unexpected redirect HTTP {code} "
                                 f"to {resp.headers.get('Location', '?')}"[:300], **info)
        raise PermanentError(message, **info)

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET and decode JSON (an undecodable body is a retryable failure)."""
        return decode_json(self.request("GET", path, params=params), f"GET {path}")

    def post_json_noauth(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST JSON without credentials (JWT login and refresh); returns the JSON object."""
        data = decode_json(
            self.request("POST", path, json_body=dict(body), authenticated=False), f"POST {path}"
        )
        if not isinstance(data, dict):
            raise RetryableError(f"papad POST {path}: expected a JSON object")
        return data

    def close(self) -> None:
        """Close every per-thread session."""
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()
        self._local = threading.local()


def decode_json(resp: requests.Response, what: str) -> Any:
    """The JSON of a response, or a RetryableError naming the request."""
    try:
        return resp.json()
    except ValueError:
        raise RetryableError(f"papad {what}: response is not JSON: {resp.text[:80]!r}") from None


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:160] or type(exc).__name__
