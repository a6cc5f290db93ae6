"""In-process papad servers for tests, one per API generation, enforcing papad's rules.

`FakePapad` (current papad / papadam) and `FakeLegacyPapad` (papad-api) each run a threaded
`http.server` on 127.0.0.1, port 0 (or a given port, to come back after `stop()` at the same
address). Their state lives in plain attributes the tests inspect (`media`, `annotations`,
`recordings`, `fragments`, ...). The rules come from shared/papad-api.md:

current: token or JWT auth (401 otherwise), group membership (403), missing ``group`` → 403
"Missing required field: group", missing ``description`` → 500, success 200 with the media
object, non-``audio/*`` part stored as type "unknown", no deduplication, paginated lists,
annotations 201. legacy: no auth, trailing slashes matter, the station must exist (400),
missing ``station_name`` → 500, empty 200 on create, ``{"$oid"}`` ids, duplicate station fails.

Fault hooks (both): `fail_next(n, mode)` ("reset": drop the connection unanswered, "503"),
`drop_after_commit(n)` (commit the next n creates, then drop the connection: a lost response),
`force_error(status, message, n)` (answer the next n creates with an error).
"""

from __future__ import annotations

import base64
import contextlib
import email.parser
import email.policy
import hashlib
import hmac
import itertools
import json
import secrets
import socket
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


class _Drop(Exception):
    """Close the connection without answering."""


@dataclass
class Reply:
    status: int
    body: Any = None  # dict/list → JSON, bytes → as is, None → empty
    content_type: str = "application/json"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class _Faults:
    fail_mode: str = "reset"
    fail_count: int = 0
    drop_creates: int = 0
    drop_path: str = ""
    force: list[tuple[int, Any]] = field(default_factory=list)


class _Base:
    """A threaded HTTP server with request accounting and fault injection."""

    create_paths: tuple[str, ...] = ()

    def __init__(self, port: int = 0) -> None:
        self.lock = threading.RLock()
        self.faults = _Faults()
        self.requests: list[tuple[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.0  # seconds each API request takes (to make overlap measurable)
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> _Base:
        server = ThreadingHTTPServer(("127.0.0.1", self._port), self._handler_class())
        server.daemon_threads = True
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (connections are refused) but keep all state for a later start().

        Kept-alive client connections are cut too: a server that went down answers nothing."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self.lock:
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._connections.clear()

    def __enter__(self) -> _Base:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # -- faults --------------------------------------------------------------------------

    def fail_next(self, n: int, mode: str = "reset") -> None:
        """The next `n` requests fail: "reset" drops the connection, "503" answers 503."""
        with self.lock:
            self.faults.fail_mode, self.faults.fail_count = mode, n

    def drop_after_commit(self, n: int = 1, path: str = "") -> None:
        """The next `n` creates (POSTs to `path`, default the media create path) are stored,
        then the connection drops without an answer."""
        with self.lock:
            self.faults.drop_creates = n
            self.faults.drop_path = path or self.create_paths[0]

    def force_error(self, status: int, body: Any, n: int = 1) -> None:
        """The next `n` creates are refused with `status` and `body`."""
        with self.lock:
            self.faults.force.extend([(status, body)] * n)

    # -- plumbing ------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes: without this, Nagle plus the
            # client's delayed ACK adds 40 ms to every response.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with fake.lock:
                    fake._connections.add(self.connection)

            def finish(self) -> None:
                with fake.lock:
                    fake._connections.discard(self.connection)
                super().finish()

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                query = dict(parse_qsl(parts.query, keep_blank_values=True))
                with fake.lock:
                    fake.requests.append((self.command, parts.path))
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    try:
                        if fake.delay:
                            time.sleep(fake.delay)
                        reply = fake._pre(self.command, parts.path) or fake.handle(
                            self.command, parts.path, query, self.headers, body
                        )
                    except _Drop:
                        self.close_connection = True
                        with contextlib.suppress(OSError):
                            self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self._reply(reply)
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

            def _reply(self, reply: Reply) -> None:
                if reply.body is None:
                    data = b""
                elif isinstance(reply.body, bytes):
                    data = reply.body
                else:
                    data = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                if data:
                    self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        return Handler

    def _pre(self, method: str, path: str) -> Reply | None:
        with self.lock:
            if self.faults.fail_count > 0:
                self.faults.fail_count -= 1
                if self.faults.fail_mode == "reset":
                    raise _Drop()
                return Reply(503, b"<h1>503 Service Unavailable</h1>", "text/html")
            if method == "POST" and path in self.create_paths and self.faults.force:
                status, body = self.faults.force.pop(0)
                return Reply(status, body)
        return None

    def _after_create(self, path: str) -> None:
        """Call after a create to `path` is committed: maybe lose the response."""
        with self.lock:
            if self.faults.drop_creates > 0 and path == self.faults.drop_path:
                self.faults.drop_creates -= 1
                raise _Drop()

    def handle(self, method: str, path: str, query: dict[str, str], headers: Any,
               body: bytes) -> Reply:
        raise NotImplementedError

    def count(self, method: str, path: str) -> int:
        """How many requests were made to `method path`."""
        with self.lock:
            return sum(1 for r in self.requests if r == (method, path))


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, Any]]:
    """(text fields, file parts {name: {"filename", "content_type", "data"}}) of a form body."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode() + body
    )
    fields: dict[str, str] = {}
    files: dict[str, Any] = {}
    if not msg.is_multipart():
        raise ValueError("not multipart")
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_param("filename", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        if filename is not None:
            files[name] = {
                "filename": filename,
                "content_type": part.get("Content-Type", "application/octet-stream"),
                "data": data,
            }
        else:
            fields[name] = data.decode("utf-8")
    return fields, files


class FakePapad(_Base):
    """Current papad (papad-backend, papadam): ``/api/v1/`` plus ``/auth/jwt/``."""

    create_paths = ("/api/v1/archive/",)

    def __init__(self, port: int = 0, *, page_size: int = 10, access_lifetime: float = 3600.0,
                 refresh_lifetime: float = 7 * 86400.0) -> None:
        super().__init__(port)
        self.page_size = page_size
        self.access_lifetime = access_lifetime
        self.refresh_lifetime = refresh_lifetime
        self.tokens: dict[str, str] = {}  # DRF token → username
        self.passwords: dict[str, str] = {}
        self.groups: dict[int, dict[str, Any]] = {}  # id → {"name", "members": set}
        self.media: list[dict[str, Any]] = []
        self.files: dict[str, dict[str, Any]] = {}  # media uuid → stored upload part
        self.annotations: list[dict[str, Any]] = []
        self.access_tokens: dict[str, tuple[str, float]] = {}  # token → (user, exp)
        self.refresh_tokens: dict[str, tuple[str, float]] = {}
        self.jwt_logins = 0
        self.jwt_refreshes = 0
        self._secret = secrets.token_bytes(16)
        self._ids = itertools.count(1)

    def add_user(self, username: str, *, token: str | None = None, password: str | None = None,
                 groups: tuple[int, ...] = ()) -> None:
        with self.lock:
            if token:
                self.tokens[token] = username
            if password:
                self.passwords[username] = password
            for gid in groups:
                self.groups.setdefault(gid, {"name": f"group {gid}", "members": set()})
                self.groups[gid]["members"].add(username)

    def add_group(self, gid: int, name: str = "") -> None:
        with self.lock:
            self.groups.setdefault(gid, {"name": name or f"group {gid}", "members": set()})

    def revoke_access_tokens(self) -> None:
        """Invalidate every access token (the next authenticated request gets 401)."""
        with self.lock:
            self.access_tokens.clear()

    def media_in_group(self, gid: int) -> list[dict[str, Any]]:
        with self.lock:
            return [m for m in self.media if m["group"] == gid]

    # -- JWT -----------------------------------------------------------------------------

    def _jwt(self, user: str, kind: str, lifetime: float) -> tuple[str, float]:
        now = time.time()
        exp = now + lifetime
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64(json.dumps({"token_type": kind, "exp": exp, "iat": now, "user": user,
                                   "jti": uuidlib.uuid4().hex}).encode())
        sig = _b64(hmac.new(self._secret, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        return f"{header}.{payload}.{sig}", exp

    def _issue(self, user: str) -> dict[str, str]:
        access, aexp = self._jwt(user, "access", self.access_lifetime)
        refresh, rexp = self._jwt(user, "refresh", self.refresh_lifetime)
        self.access_tokens[access] = (user, aexp)
        self.refresh_tokens[refresh] = (user, rexp)
        return {"access": access, "refresh": refresh}

    def _user(self, headers: Any) -> str | None:
        value = headers.get("Authorization", "")
        kind, _, cred = value.partition(" ")
        with self.lock:
            if kind == "Token":
                return self.tokens.get(cred)
            if kind == "Bearer":
                user, exp = self.access_tokens.get(cred, (None, 0.0))
                return user if user and exp > time.time() else None
        return None

    # -- routes --------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], headers: Any,
               body: bytes) -> Reply:
        if path == "/auth/jwt/create/" and method == "POST":
            return self._jwt_create(body)
        if path == "/auth/jwt/refresh/" and method == "POST":
            return self._jwt_refresh(body)
        if path == "/api/v1/" and method == "GET":
            return Reply(200, {"archive": f"{self.url}/api/v1/archive/"})
        if path.startswith("/media/") and method == "GET":
            media_uuid = path.split("/")[2]
            with self.lock:
                stored = self.files.get(media_uuid)
            if stored is None:
                return Reply(404, {"detail": "Not found."})
            return Reply(200, stored["data"], stored["content_type"])
        user = self._user(headers)
        if user is None:
            if headers.get("Authorization"):
                return Reply(401, {"detail": "Invalid token."})
            return Reply(401, {"detail": "Authentication credentials were not provided."})
        if path == "/api/v1/archive/" and method == "POST":
            return self._create_media(user, headers, body)
        if path == "/api/v1/archive/" and method == "GET":
            return self._list_media(user, query)
        if path.startswith("/api/v1/group/") and method == "GET":
            return self._group(user, path)
        if path == "/api/v1/annotate/" and method == "POST":
            return self._create_annotation(user, headers, body)
        if path.startswith("/api/v1/annotate/search/") and method == "GET":
            media_uuid = path[len("/api/v1/annotate/search/"):].strip("/")
            with self.lock:
                found = [a for a in self.annotations if a["media_reference_id"] == media_uuid]
            return Reply(200, found)
        if path.startswith("/api/v1/annotate/") and path.endswith("/"):
            ann_uuid = path[len("/api/v1/annotate/"):].strip("/")
            if ann_uuid and "/" not in ann_uuid:
                return self._annotation(method, ann_uuid, headers, body)
        return Reply(404, {"detail": "Not found."})

    def add_annotation(self, media_uuid: str, text: str, target: str,
                       tags: tuple[str, ...] = (), user: str = "someone") -> dict[str, Any]:
        """An annotation made directly in papad's web UI (not through the appliance)."""
        with self.lock:
            item = {"uuid": str(uuidlib.uuid4()), "media_reference_id": media_uuid,
                    "annotation_text": text, "media_target": target,
                    "tags": [{"name": t.strip().lower()} for t in tags if t.strip()],
                    "created_by": user}
            self.annotations.append(item)
            return item

    def _annotation(self, method: str, ann_uuid: str, headers: Any, body: bytes) -> Reply:
        """``GET|PUT|PATCH|DELETE /api/v1/annotate/<uuid>/`` (papad soft-deletes: the
        annotation disappears from every list)."""
        with self.lock:
            item = next((a for a in self.annotations if a["uuid"] == ann_uuid), None)
        if item is None:
            return Reply(404, {"detail": "No Annotation matches the given query."})
        if method == "GET":
            return Reply(200, item)
        if method == "DELETE":
            with self.lock:
                self.annotations.remove(item)
            return Reply(204, None)
        if method in ("PUT", "PATCH"):
            form = self._form(headers, body)
            if isinstance(form, Reply):
                return form
            fields, _ = form
            with self.lock:
                if "annotation_text" in fields:
                    item["annotation_text"] = fields["annotation_text"]
                if fields.get("media_target"):
                    item["media_target"] = fields["media_target"]
                if "tags" in fields:  # sending tags replaces the whole set
                    item["tags"] = [{"name": t.strip().lower()}
                                    for t in fields["tags"].split(",") if t.strip()]
            return Reply(200, item)
        return Reply(405, {"detail": f'Method "{method}" not allowed.'})

    def _jwt_create(self, body: bytes) -> Reply:
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return Reply(400, {"detail": "JSON parse error"})
        with self.lock:
            if self.passwords.get(data.get("username")) != data.get("password") or not data.get(
                "password"
            ):
                return Reply(401, {"detail": "No active account found with the given credentials"})
            self.jwt_logins += 1
            return Reply(200, self._issue(data["username"]))

    def _jwt_refresh(self, body: bytes) -> Reply:
        try:
            token = json.loads(body or b"{}").get("refresh", "")
        except ValueError:
            return Reply(400, {"detail": "JSON parse error"})
        with self.lock:
            user, exp = self.refresh_tokens.pop(token, (None, 0.0))  # rotation: single use
            if user is None or exp <= time.time():
                return Reply(401, {"detail": "Token is invalid or expired",
                                   "code": "token_not_valid"})
            self.jwt_refreshes += 1
            return Reply(200, self._issue(user))

    def _form(self, headers: Any, body: bytes) -> tuple[dict[str, str], dict[str, Any]] | Reply:
        ctype = headers.get("Content-Type", "")
        if not ctype.startswith("multipart/form-data"):
            return Reply(415, {"detail": f'Unsupported media type "{ctype}" in request.'})
        try:
            return parse_multipart(ctype, body)
        except ValueError as exc:
            return Reply(400, {"detail": f"Multipart form parse error - {exc}"})

    def _create_media(self, user: str, headers: Any, body: bytes) -> Reply:
        form = self._form(headers, body)
        if isinstance(form, Reply):
            return form
        fields, files = form
        if "group" not in fields:
            return Reply(403, {"detail": "Missing required field: group"})
        try:
            gid = int(fields["group"])
        except ValueError:
            return Reply(400, {"group": ["A valid integer is required."]})
        with self.lock:
            group = self.groups.get(gid)
            if group is None or user not in group["members"]:
                return Reply(403, {"detail": "You are not a member of this group"})
        if "description" not in fields:
            return Reply(500, b"<h1>Server Error (500)</h1>", "text/html")
        if not fields.get("name", "").strip():
            return Reply(400, {"name": ["This field may not be blank."]})
        if "tags" not in fields:
            return Reply(400, {"tags": ["This field is required."]})
        upload = files.get("upload")
        if upload is None:
            return Reply(400, {"upload": ["No file was submitted."]})
        ctype = upload["content_type"].split(";")[0].strip().lower()
        tags = []
        for t in fields["tags"].split(","):
            t = t.strip().lower()
            if t and t not in tags:
                tags.append(t)
        with self.lock:
            mid = next(self._ids)
            media_uuid = str(uuidlib.uuid4())
            item = {
                "id": mid,
                "uuid": media_uuid,
                "name": fields["name"],
                "description": fields["description"],
                "upload": f"{self.url}/media/{media_uuid}/{upload['filename']}",
                "file_type": ctype,
                "media_type": ctype.split("/")[0] if ctype.startswith("audio/") else "unknown",
                "tags": [{"id": i + 1, "name": t, "count": 1} for i, t in enumerate(tags)],
                "group": gid,
                "created_by": user,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            self.media.append(item)
            self.files[media_uuid] = {"data": upload["data"], "content_type": ctype,
                                      "filename": upload["filename"]}
        self._after_create("/api/v1/archive/")
        return Reply(200, item)

    def _list_media(self, user: str, query: dict[str, str]) -> Reply:
        with self.lock:
            items = list(self.media)
            if "group" in query:
                try:
                    gid = int(query["group"])
                except ValueError:
                    return Reply(400, {"group": ["Enter a whole number."]})
                group = self.groups.get(gid)
                if group is None or user not in group["members"]:
                    return Reply(403, {"detail": "You are not a member of this group"})
                items = [m for m in items if m["group"] == gid]
            else:
                items = [m for m in items
                         if user in self.groups.get(m["group"], {}).get("members", ())]
        items.reverse()  # newest first, like the real list
        page = int(query.get("page", "1") or 1)
        start = (page - 1) * self.page_size
        chunk = items[start:start + self.page_size]
        nxt = None
        if start + self.page_size < len(items):
            rest = "&".join(f"{k}={v}" for k, v in query.items() if k != "page")
            nxt = f"{self.url}/api/v1/archive/?{rest + '&' if rest else ''}page={page + 1}"
        return Reply(200, {"count": len(items), "next": nxt, "previous": None, "results": chunk})

    def _group(self, user: str, path: str) -> Reply:
        try:
            gid = int(path.rstrip("/").rsplit("/", 1)[1])
        except ValueError:
            return Reply(404, {"detail": "Not found."})
        with self.lock:
            group = self.groups.get(gid)
            if group is None or user not in group["members"]:
                return Reply(404, {"detail": "Not found."})
            return Reply(200, {"id": gid, "name": group["name"]})

    def _create_annotation(self, user: str, headers: Any, body: bytes) -> Reply:
        form = self._form(headers, body)
        if isinstance(form, Reply):
            return form
        fields, _ = form
        for key in ("media_reference_id", "media_target"):
            if not fields.get(key):
                return Reply(400, {key: ["This field is required."]})
        with self.lock:
            if not any(m["uuid"] == fields["media_reference_id"] for m in self.media):
                return Reply(400, {"media_reference_id": ["Media does not exist."]})
            item = {
                "uuid": str(uuidlib.uuid4()),
                "media_reference_id": fields["media_reference_id"],
                "annotation_text": fields.get("annotation_text", ""),
                "media_target": fields["media_target"],
                "tags": [{"name": t.strip().lower()} for t in fields.get("tags", "").split(",")
                         if t.strip()],
                "created_by": user,
            }
            self.annotations.append(item)
        self._after_create("/api/v1/annotate/")
        return Reply(201, item)


class FakeLegacyPapad(_Base):
    """Legacy papad-api (Bottle + MongoDB on port 9000): no auth, URLs not files."""

    create_paths = ("/recordings/",)
    entities = ("channels", "recordings", "fragments")

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self.channels: list[dict[str, Any]] = []
        self.recordings: list[dict[str, Any]] = []
        self.fragments: list[dict[str, Any]] = []

    def _store(self, entity: str) -> list[dict[str, Any]]:
        return getattr(self, entity)

    @staticmethod
    def _oid() -> dict[str, str]:
        return {"$oid": secrets.token_hex(12)}

    @staticmethod
    def _lookup(doc: Any, dotted: str) -> Any:
        for key in dotted.split("."):
            if not isinstance(doc, dict):
                return None
            doc = doc.get(key)
        return doc

    def handle(self, method: str, path: str, query: dict[str, str], headers: Any,
               body: bytes) -> Reply:
        parts = path.split("/")
        # Bottle routes are exact: "/recordings" (no slash) is not "/recordings/".
        if len(parts) < 3 or parts[1] not in self.entities:
            return Reply(404, b"Not Found", "text/html")
        entity, rest = parts[1], "/".join(parts[2:])
        if rest == "":
            if method == "GET":
                with self.lock:
                    items = [d for d in self._store(entity)
                             if all(str(self._lookup(d, k)) == v for k, v in query.items())]
                return Reply(200, json.loads(json.dumps(items)))
            if method == "POST":
                return self._create(entity, body)
            return Reply(405, b"Method Not Allowed", "text/html")
        if "/" not in rest and method in ("GET", "PUT", "DELETE"):
            with self.lock:
                store = self._store(entity)
                for i, doc in enumerate(store):
                    if doc["_id"]["$oid"] != rest:
                        continue
                    if method == "GET":
                        return Reply(200, doc)
                    if method == "DELETE":
                        del store[i]
                        return Reply(200, None)
                    try:
                        new = json.loads(body)
                    except ValueError:
                        return Reply(500, b"Internal Server Error", "text/html")
                    if not isinstance(new, dict):
                        return Reply(500, b"Internal Server Error", "text/html")
                    new["_id"] = doc["_id"]
                    store[i] = new
                    return Reply(200, None)
            return Reply(404, {"message": "Not found"})
        return Reply(404, b"Not Found", "text/html")

    def _create(self, entity: str, body: bytes) -> Reply:
        try:
            doc = json.loads(body)
        except ValueError:
            return Reply(500, b"Internal Server Error", "text/html")
        if not isinstance(doc, dict):
            return Reply(500, b"Internal Server Error", "text/html")
        with self.lock:
            if entity == "channels":
                if "station_name" not in doc:
                    return Reply(500, b"Internal Server Error", "text/html")
                if any(c["station_name"] == doc["station_name"] for c in self.channels):
                    # The unique index raises DuplicateKeyError, unhandled by the app.
                    return Reply(500, b"Internal Server Error", "text/html")
            if entity == "recordings":
                if "station_name" not in doc:
                    return Reply(500, b"Internal Server Error", "text/html")
                station = next((c for c in self.channels
                                if c["station_name"] == doc["station_name"]), None)
                if station is None:
                    return Reply(400, {"message": "Station does not exist"})
                doc["station_id"] = station["_id"]["$oid"]
            doc["_id"] = self._oid()
            self._store(entity).append(doc)
        self._after_create(f"/{entity}/")
        return Reply(200, None)
