"""The web page's URLs: pages, static files, the JSON API, the live meter, recordings, metrics.

A Bottle application (WSGI; Waitress serves it, `recorder.web.server`). Every route is read-only
except the controls under ``/api/control/``, ``/api/outbox/retry`` and the login, and every
read is open (``web.open_read``) or needs a session; the controls always need a session and
its CSRF token. Nothing is served from a path taken from the URL: pages and assets come from
the package (loaded into memory at start), recordings by recording id (`recorder.web.media`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any, NoReturn
from urllib.parse import urlsplit

import bottle

from recorder.config import WebConfig
from recorder.errors import DeviceError, DiskReserveError, RecorderError, ServiceError
from recorder.pump import RecordingStateError
from recorder.web.auth import Auth, LoginRefused, Session
from recorder.web.listing import ListedRecording, Listing
from recorder.web.media import RECORDING_ID, NotServed, open_recording, recording_path_ok
from recorder.web.metrics import CONTENT_TYPE as METRICS_TYPE
from recorder.web.views import Collaborators, Views

log = logging.getLogger(__name__)

COOKIE = "recorder_session"
METER_INTERVAL = 0.125  # seconds between live meter updates: 8 a second
METER_STREAMS = 4  # at once; each holds one server thread
# A stream ends after this long and the browser reconnects by itself: a phone that vanished
# without closing its connection gives its thread back within minutes, not TCP's quarter hour.
METER_STREAM_SECONDS = 300.0
LEVELS_TIMEOUT = 3.0
TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml",
         ".png": "image/png", ".ico": "image/x-icon"}
PAGES = {"/": "now.html", "/recordings": "recordings.html", "/mesh": "mesh.html"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'",
}
INITIAL = "<!--INITIAL-->"


class Asset:
    """A file shipped with the package, held in memory."""

    def __init__(self, name: str, body: bytes) -> None:
        self.name = name
        self.body = body
        self.type = TYPES.get(os.path.splitext(name)[1], "application/octet-stream")
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


def load_assets() -> dict[str, Asset]:
    """Every file of ``recorder/web/static`` by name (a flat folder)."""
    folder = resources.files("recorder.web") / "static"
    return {f.name: Asset(f.name, f.read_bytes()) for f in folder.iterdir() if f.is_file()}


class LevelFeed:
    """The live meter for every watcher: the service is asked at most once per interval,
    and only while somebody watches."""

    def __init__(self, views: Views, interval: float = METER_INTERVAL) -> None:
        self.views = views
        self.interval = interval
        self._lock = threading.Lock()
        self._latest: dict[str, Any] = {}
        self._at = float("-inf")

    def get(self) -> dict[str, Any]:
        with self._lock:  # one request at a time; the others take its answer
            now = time.monotonic()
            if now - self._at >= self.interval * 0.8:
                try:
                    self._latest = self.views.parts.request({"command": "levels"},
                                                            timeout=LEVELS_TIMEOUT)
                except RecorderError as exc:
                    self._latest = {"error": str(exc)}
                self._at = now
            return self._latest


def _fail(status: int, message: str, **headers: str) -> NoReturn:
    raise bottle.HTTPResponse(json.dumps({"error": message}), status,
                              {"Content-Type": "application/json", **headers})


def _status_for(exc: RecorderError) -> int:
    if isinstance(exc, ServiceError):
        return 503
    if isinstance(exc, RecordingStateError | DeviceError | DiskReserveError):
        return 409
    return 400


class Site:
    """The Bottle application over the views, the sessions and the shipped assets."""

    def __init__(self, cfg: WebConfig, parts: Collaborators, auth: Auth,
                 listing: Listing | None, stopping: threading.Event) -> None:
        self.cfg = cfg
        self.parts = parts
        self.auth = auth
        self.listing = listing
        self.views = Views(parts, listing)
        self.stopping = stopping
        self.assets = load_assets()
        self.feed = LevelFeed(self.views)
        self._streams = threading.BoundedSemaphore(METER_STREAMS)
        self._watchers_lock = threading.Lock()
        self.watchers = 0  # live meter streams open (for status)
        self.app = bottle.Bottle(catchall=True)
        self._routes()

    # -- access ----------------------------------------------------------------------------------
    def _session(self) -> Session | None:
        return self.auth.session(bottle.request.get_cookie(COOKIE))

    def _readable(self) -> None:
        if not self.cfg.open_read and self._session() is None:
            _fail(401, "log in to see this page (web.open_read = false)")

    def _same_origin(self) -> None:
        origin = bottle.request.headers.get("Origin")
        if origin and urlsplit(origin).netloc != bottle.request.headers.get("Host"):
            _fail(403, "cross-site request refused")

    def _control(self) -> dict[str, Any]:
        """Refuse unless logged in with the session's CSRF token; returns the JSON body."""
        self._same_origin()
        if not self.auth.configured:
            _fail(403, "the controls are off: no password is configured (web.password_file)")
        session = self._session()
        if session is None:
            _fail(401, "log in to use the controls")
        if not self.auth.csrf_ok(session, bottle.request.headers.get("X-CSRF-Token")):
            _fail(403, "missing or wrong CSRF token: reload the page")
        body = bottle.request.json if bottle.request.content_length else {}
        return body if isinstance(body, dict) else {}

    @staticmethod
    def _client() -> str:
        # The socket's peer, never X-Forwarded-For: a header would let one guesser be many.
        return str(bottle.request.environ.get("REMOTE_ADDR") or "?")

    def _ask(self, command: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.parts.request(command)
        except RecorderError as exc:
            _fail(_status_for(exc), str(exc))

    # -- routes ----------------------------------------------------------------------------------
    def _routes(self) -> None:
        app = self.app
        route: Callable[..., Any] = app.route
        for path, name in PAGES.items():
            route(path, "GET", self._page_handler(name))
        route("/static/<name>", "GET", self.static)
        route("/api/status", "GET", self.status)
        route("/api/levels", "GET", self.levels)
        route("/api/levels/stream", "GET", self.levels_stream)
        route("/api/recordings", "GET", self.recordings)
        route("/api/recordings/<rid>", "GET", self.recording)
        route("/api/recordings/<rid>/waveform", "GET", self.waveform)
        route("/api/mesh", "GET", self.mesh)
        route("/api/session", "GET", self.session)
        route("/api/login", "POST", self.login)
        route("/api/logout", "POST", self.logout)
        route("/api/control/<action>", "POST", self.control)
        route("/api/outbox/retry", "POST", self.outbox_retry)
        route("/media/<rid>.ogg", "GET", self.media)
        route("/metrics", "GET", self.metrics)
        app.add_hook("after_request", self._headers)
        for code in (400, 401, 403, 404, 405, 413, 500):
            app.error(code)(self._error)

    @staticmethod
    def _headers() -> None:
        for key, value in SECURITY_HEADERS.items():
            bottle.response.set_header(key, value)

    @staticmethod
    def _error(err: bottle.HTTPError) -> str:
        bottle.response.content_type = "application/json"
        if err.status_code >= 500:
            log.error("web: %s %s failed: %s", bottle.request.method, bottle.request.path,
                      err.exception or err.body)
            return json.dumps({"error": "internal error (see the service log)"})
        text = err.body if isinstance(err.body, str) and err.body else err.status_line
        return json.dumps({"error": text})

    def _page_handler(self, name: str) -> Callable[[], bytes]:
        def page() -> bytes:
            asset = self.assets[name]
            bottle.response.content_type = asset.type
            bottle.response.set_header("Cache-Control", "no-cache")
            if INITIAL.encode() not in asset.body:
                return asset.body
            # The first page of recordings rides along: one round trip on a phone.
            data = b"null"
            if self.cfg.open_read or self._session() is not None:
                data = _script_json(self.views.recordings(*self._listing_args()))
            return asset.body.replace(INITIAL.encode(), data)

        return page

    def static(self, name: str) -> bytes:
        asset = self.assets.get(name)
        if asset is None:
            _fail(404, "not found")
        bottle.response.set_header("ETag", asset.etag)
        bottle.response.set_header("Cache-Control", "max-age=300")
        if bottle.request.headers.get("If-None-Match") == asset.etag:
            raise bottle.HTTPResponse(status=304)
        bottle.response.content_type = asset.type
        return asset.body

    def status(self) -> dict[str, Any]:
        self._readable()
        try:
            return self.views.status()
        except RecorderError as exc:
            _fail(_status_for(exc), str(exc))

    def levels(self) -> dict[str, Any]:
        self._readable()
        return self.feed.get()

    def levels_stream(self) -> Iterator[str]:
        """Server-Sent Events: the live meter, 8 updates a second, while the page is open."""
        self._readable()
        if not self._streams.acquire(blocking=False):
            _fail(503, "too many live meters open", **{"Retry-After": "5"})
        bottle.response.content_type = "text/event-stream"
        bottle.response.set_header("Cache-Control", "no-cache")
        bottle.response.set_header("X-Accel-Buffering", "no")

        def events() -> Iterator[str]:
            self._count_watcher(+1)
            try:
                yield "retry: 2000\n\n"
                until = time.monotonic() + METER_STREAM_SECONDS
                while not self.stopping.is_set() and time.monotonic() < until:
                    yield "data: " + json.dumps(self.feed.get()) + "\n\n"
                    self.stopping.wait(self.feed.interval)
            finally:  # the client left (the next write failed) or the server stops
                self._count_watcher(-1)
                self._streams.release()

        return events()

    def _count_watcher(self, step: int) -> None:
        with self._watchers_lock:
            self.watchers += step

    def _listing_args(self) -> tuple[int, str, str, str]:
        q = bottle.request.query
        try:
            page = int(q.get("page") or 1)
        except ValueError:
            _fail(400, "page must be a number")
        return (page, q.getunicode("q", default="").strip()[:100],
                q.getunicode("tag", default="").strip()[:100],
                q.getunicode("origin", default="").strip()[:64])

    def recordings(self) -> dict[str, Any]:
        self._readable()
        return self.views.recordings(*self._listing_args())

    def recording(self, rid: str) -> dict[str, Any]:
        self._readable()
        item = self.views.recording(rid) if RECORDING_ID.match(rid) else None
        if item is None:
            _fail(404, "no such recording")
        return item

    def waveform(self, rid: str) -> dict[str, Any]:
        """The peaks to draw (decoded once from the file if the recording came without)."""
        self._readable()
        item = self.listing.get(rid) if self.listing is not None and RECORDING_ID.match(rid) \
            else None
        if item is None:
            _fail(404, "no such recording")
        found = self.parts.waveforms.get(rid)
        if found is None:
            try:
                opened = self._open(item)
                with os.fdopen(opened.fd, "rb") as audio:
                    opened.fd = -1  # the file object closes it
                    found = self.parts.waveforms.compute(rid, audio)
            except RuntimeError as exc:  # soundfile: not decodable
                log.warning("web: waveform of %s: %s", rid, exc)
                _fail(404, "the recording does not decode")
        bottle.response.set_header("Cache-Control", "max-age=86400")
        return {**found.as_dict(), "duration": item.duration, "bookmarks": item.bookmarks or []}

    def _open(self, item: ListedRecording) -> Any:
        if not recording_path_ok(str(item.path or "")):
            _fail(404, "no such recording file")
        try:
            return open_recording(self.parts.layout, item.device_id, item.path)
        except NotServed as exc:
            log.warning("web: refused to serve %s: %s", item.recording_id, exc)
            _fail(404, "the recording file is missing or not a plain file")

    def mesh(self) -> dict[str, Any]:
        self._readable()
        return self.views.mesh()

    def session(self) -> dict[str, Any]:
        session = self._session()
        return {"logged_in": session is not None,
                "csrf": session.csrf if session is not None else None,
                "controls": self.auth.configured, "open_read": self.cfg.open_read}

    def login(self) -> dict[str, Any]:
        self._same_origin()
        body = bottle.request.json  # JSON only: a plain cross-site form cannot send it
        if not isinstance(body, dict) or not isinstance(body.get("password"), str):
            _fail(400, 'send {"password": "..."} as application/json')
        try:
            session = self.auth.login(body["password"], self._client())
        except LoginRefused as exc:
            log.warning("web: login refused for %s: %s", self._client(), exc)
            if exc.retry_after is not None:
                _fail(429, str(exc), **{"Retry-After": str(int(exc.retry_after + 0.999))})
            _fail(401 if self.auth.configured else 403, str(exc))
        bottle.response.set_cookie(COOKIE, session.token, path="/", httponly=True,
                                   samesite="strict")
        log.info("web: login from %s", self._client())
        return {"logged_in": True, "csrf": session.csrf}

    def logout(self) -> dict[str, Any]:
        self._control()
        self.auth.logout(bottle.request.get_cookie(COOKIE))
        bottle.response.delete_cookie(COOKIE, path="/")
        return {"logged_in": False}

    def control(self, action: str) -> dict[str, Any]:
        body = self._control()
        if action in ("start", "stop", "mark"):
            reply = self._ask({"command": action})
        elif action == "live":
            reply = self._ask({"command": "live", "on": bool(body.get("on"))})
        else:
            _fail(404, f"no control {action!r}")
        log.info("web: %s by %s", action, self._client())
        return reply

    def outbox_retry(self) -> dict[str, Any]:
        body = self._control()
        outbox = self.parts.outbox
        if outbox is None:
            _fail(409, "papad is not configured ([papad] api)")
        try:
            if body.get("all") is True:
                result: dict[str, Any] = {"retried": outbox.retry_all()}
            elif isinstance(body.get("id"), int) and not isinstance(body.get("id"), bool):
                result = {"retried": 1, "entry": outbox.retry(body["id"]).as_dict()}
            else:
                _fail(400, 'send {"id": N} or {"all": true}')
        except RecorderError as exc:
            _fail(404, str(exc))
        if self.parts.wake_outbox is not None:
            self.parts.wake_outbox()
        return result

    def media(self, rid: str) -> Any:
        """The recording's OGG, with HTTP range requests (seeking, and what browsers ask)."""
        self._readable()
        item = self.listing.get(rid) if self.listing is not None and RECORDING_ID.match(rid) \
            else None
        if item is None:
            _fail(404, "no such recording")
        opened = self._open(item)
        size = opened.size
        res = bottle.response
        res.content_type = "audio/ogg"
        res.set_header("Accept-Ranges", "bytes")
        res.set_header("Cache-Control", "max-age=3600")
        res.set_header("Last-Modified", bottle.http_date(opened.mtime))
        start, end = 0, size
        ranges = bottle.request.headers.get("Range")
        if ranges:
            wanted = list(bottle.parse_range_header(ranges, size))
            if not wanted:
                opened.close()
                raise bottle.HTTPResponse("", 416, {"Content-Range": f"bytes */{size}"})
            start, end = wanted[0]
            res.status = 206
            res.set_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        res.set_header("Content-Length", str(end - start))
        if bottle.request.method == "HEAD":
            opened.close()
            return b""
        return opened.chunks(start, end)

    def metrics(self) -> str:
        self._readable()
        try:
            text = self.views.metrics()
        except RecorderError as exc:
            _fail(_status_for(exc), str(exc))
        bottle.response.content_type = METRICS_TYPE
        return text


def _script_json(value: Any) -> bytes:
    """JSON safe inside a ``<script type="application/json">`` element."""
    return json.dumps(value).replace("<", "\\u003c").encode()
