"""In-process imitations of papad for tests, one per API generation.

The real current papad (upstream papad-api and the papadam fork) runs in the tests from the papad
kit (`tests.papad_kit`): use it. These imitations remain for what the real servers cannot give
here, and as the fast baseline of the papad benchmark:

- `FakeLegacyPapad`: the legacy papad-api (Bottle + MongoDB), which cannot run here. No auth,
  trailing slashes matter, the station must exist (400), missing ``station_name`` → 500, an
  empty 200 on create, ``{"$oid"}`` ids, a duplicate station fails.
- `FakePapad(flavour="upstream"|"papadam")`: current papad with faults on demand, honest where
  it overlaps the real servers (tests/test_papad_fake_vs_real.py sends the same requests to both
  and compares status codes and response shapes): one auth scheme per flavour (upstream
  ``Token``, papadam ``Bearer`` with ``/auth/jwt/``; the other scheme is a 401 whose
  ``WWW-Authenticate`` names the expected one); the listing needs ``searchFrom`` on upstream
  (500 without), ``group`` is a permission check (403) and not a filter, results oldest first,
  ``page_size`` honoured, ``search``/``searchWhere`` as papad does them (``tags`` compares
  single characters); nested ``group`` and ``created_by``, tags ``{id,name,count}``, ``upload``
  relative in the create answer and absolute elsewhere; media create 200, annotation create
  200 (upstream) or 201 (papadam); upstream's 500s for missing fields and unknown media;
  soft deletes. Not imitated: papadam's throttling and its flaky "Event loop is closed" 500s.

Both run a threaded `http.server` on 127.0.0.1, port 0 (or a given port, to come back after
`stop()` at the same address). Their state lives in plain attributes the tests inspect
(`media`, `annotations`, `recordings`, `fragments`, ...).

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
    headers: dict[str, str] = field(default_factory=dict)


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
                for name, value in reply.headers.items():
                    self.send_header(name, value)
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
    """Current papad, one flavour per server: ``upstream`` (DRF ``Token``) or ``papadam``
    (JWT ``Bearer``). See the module docstring for what it imitates and what it does not."""

    create_paths = ("/api/v1/archive/",)

    def __init__(self, port: int = 0, *, flavour: str = "upstream", page_size: int = 10,
                 access_lifetime: float = 3600.0, refresh_lifetime: float = 7 * 86400.0) -> None:
        super().__init__(port)
        if flavour not in ("upstream", "papadam"):
            raise ValueError(f"unknown papad flavour {flavour!r}")
        self.flavour = flavour
        self.page_size = page_size
        self.access_lifetime = access_lifetime
        self.refresh_lifetime = refresh_lifetime
        self.tokens: dict[str, str] = {}  # DRF token → username
        self.passwords: dict[str, str] = {}
        self.user_ids: dict[str, str] = {}
        self.groups: dict[int, dict[str, Any]] = {}  # id → {"name", "members": set}
        self.media: list[dict[str, Any]] = []  # list/detail shape; "_deleted" is internal
        self.files: dict[str, dict[str, Any]] = {}  # media uuid → stored upload part
        self.annotations: list[dict[str, Any]] = []
        self.access_tokens: dict[str, tuple[str, float]] = {}  # token → (user, exp)
        self.refresh_tokens: dict[str, tuple[str, float]] = {}
        self.jwt_logins = 0
        self.jwt_refreshes = 0
        self._secret = secrets.token_bytes(16)
        self._ids = itertools.count(1)
        self._annotation_ids = itertools.count(1)
        self._tag_ids: dict[str, int] = {}

    def add_user(self, username: str, *, token: str | None = None, password: str | None = None,
                 groups: tuple[int, ...] = ()) -> None:
        with self.lock:
            self.user_ids.setdefault(username, str(uuidlib.uuid4()))
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
            return [m for m in self.media if m["_group"] == gid]

    # -- shapes --------------------------------------------------------------------------

    @staticmethod
    def _now() -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S+0530", time.gmtime(time.time() + 19800))

    def _person(self, user: str) -> dict[str, Any]:
        return {"id": self.user_ids.get(user, ""), "username": user, "first_name": user,
                "last_name": ""}

    def _group_obj(self, gid: int) -> dict[str, Any]:
        """papad nests the whole group in each media: members, its media's tags and counts."""
        group = self.groups[gid]
        media = [m for m in self.media if m["_group"] == gid and not m.get("_deleted")]
        counts: dict[str, int] = {}
        for m in media:
            for t in m["tags"]:
                counts[t["name"]] = counts.get(t["name"], 0) + 1
        return {"id": gid, "name": group["name"], "description": "", "is_active": True,
                "is_public": False, "users": [self._person(u) for u in sorted(group["members"])],
                "users_count": len(group["members"]), "extra_group_questions": [],
                "delete_wait_for": 0,
                "tags": [{"id": self._tag_ids[n], "name": n, "count": c}
                         for n, c in sorted(counts.items())],
                "created_at": group.setdefault("created_at", self._now()),
                "updated_at": group["created_at"], "media_count": len(media)}

    def _tags(self, csv: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name in (t.strip().lower() for t in csv.split(",")):
            if name and all(t["name"] != name for t in out):
                tid = self._tag_ids.setdefault(name, len(self._tag_ids) + 1)
                out.append({"id": tid, "name": name, "count": 1})
        return out

    def _public(self, item: dict[str, Any]) -> dict[str, Any]:
        """The JSON papad answers for a stored item (internal ``_`` keys dropped)."""
        out = {k: v for k, v in item.items() if not k.startswith("_")}
        if "_group" in item:
            out["group"] = self._group_obj(item["_group"])
        return out

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

    def _unauthorized(self, detail: str) -> Reply:
        scheme = "Token" if self.flavour == "upstream" else 'Bearer realm="api"'
        return Reply(401, {"detail": detail}, headers={"WWW-Authenticate": scheme})

    def _user(self, headers: Any) -> str | Reply:
        """The authenticated user, or the 401 this flavour answers."""
        kind, _, cred = headers.get("Authorization", "").partition(" ")
        with self.lock:
            if self.flavour == "upstream":
                if kind == "Token":
                    return self.tokens.get(cred) or self._unauthorized("Invalid token.")
            elif kind == "Bearer":
                user, exp = self.access_tokens.get(cred, (None, 0.0))
                if user and exp > time.time():
                    return user
                return self._unauthorized("Given token not valid for any token type")
        return self._unauthorized("Authentication credentials were not provided.")

    # -- routes --------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], headers: Any,
               body: bytes) -> Reply:
        if path == "/healthcheck/" and method == "GET":
            return Reply(200, None)
        if path.startswith("/auth/jwt/") and method == "POST" and self.flavour == "papadam":
            if path == "/auth/jwt/create/":
                return self._jwt_create(body)
            if path == "/auth/jwt/refresh/":
                return self._jwt_refresh(body)
        if path == "/auth/token/login/" and method == "POST" and self.flavour == "upstream":
            return self._token_login(headers, body)
        if path.startswith("/auth/") and path != "/auth/users/me/":
            return _NOT_FOUND  # the other flavour's login endpoints do not exist
        if path.startswith("/media/archive/") and method == "GET":
            with self.lock:
                stored = next((f for f in self.files.values() if f["path"] == path), None)
            if stored is None:
                return Reply(404, b"<h1>Not Found</h1>", "text/html")
            return Reply(200, stored["data"], stored["content_type"])
        user = self._user(headers)
        if isinstance(user, Reply):
            return user
        if path == "/auth/users/me/" and method == "GET":
            return self._me(user)
        if path == "/api/v1/" and method == "GET":
            return Reply(200, {"archive": f"{self.url}/api/v1/archive/"})
        if path == "/api/v1/archive/" and method == "POST":
            return self._create_media(user, headers, body)
        if path == "/api/v1/archive/" and method == "GET":
            return self._list_media(user, query)
        if path.startswith("/api/v1/archive/") and path.count("/") == 5:
            return self._one_media(method, path.split("/")[4])
        if path.startswith("/api/v1/group/") and method == "GET":
            return self._group(user, path)
        if path == "/api/v1/annotate/" and method == "POST":
            return self._create_annotation(user, headers, body)
        if path.startswith("/api/v1/annotate/search/") and method == "GET":
            media_uuid = path[len("/api/v1/annotate/search/"):].strip("/")
            with self.lock:
                found = [a for a in self.annotations
                         if a["media_reference_id"] == media_uuid and not a.get("_deleted")]
            return Reply(200, [self._public(a) for a in found])
        if path.startswith("/api/v1/annotate/") and path.endswith("/"):
            ann_uuid = path[len("/api/v1/annotate/"):].strip("/")
            if ann_uuid and "/" not in ann_uuid:
                return self._annotation(method, ann_uuid, headers, body)
        return Reply(404, {"detail": "Not found."})

    def _me(self, user: str) -> Reply:
        with self.lock:
            groups = [{"id": gid, "name": g["name"], "description": "", "is_public": False,
                       "created_at": g.setdefault("created_at", self._now()),
                       "updated_at": g["created_at"]}
                      for gid, g in sorted(self.groups.items()) if user in g["members"]]
            me = {"id": self.user_ids.get(user, ""), "username": user, "first_name": user,
                  "last_name": "", "is_superuser": False, "groups": groups,
                  "users_count": len(self.user_ids)}
            if self.flavour == "upstream":
                me["media_count"] = len(self.media)
            return Reply(200, me)

    def add_annotation(self, media_uuid: str, text: str, target: str,
                       tags: tuple[str, ...] = (), user: str = "someone") -> dict[str, Any]:
        """An annotation made directly in papad's web UI (not through the appliance)."""
        with self.lock:
            return self._store_annotation(user, media_uuid, text, target, ",".join(tags))

    def _store_annotation(self, user: str, media_uuid: str, text: str, target: str,
                          tags: str) -> dict[str, Any]:
        now = self._now()
        item: dict[str, Any] = {
            "id": next(self._annotation_ids), "annotation_text": text, "tags": self._tags(tags),
            "media_reference_id": media_uuid, "media_target": target,
            "annotation_image": None, "uuid": str(uuidlib.uuid4()), "created_at": now,
            "updated_at": now, "created_by": self._person(user),
        }
        if self.flavour == "papadam":
            item.update(annotation_type="text", annotation_audio=None, annotation_video=None,
                        reply_to=None, media_ref_uuid=None, group=1)
        self.annotations.append(item)
        return item

    def _annotation(self, method: str, ann_uuid: str, headers: Any, body: bytes) -> Reply:
        """``GET|PATCH|PUT|DELETE /api/v1/annotate/<uuid>/``: a soft delete, after which the
        annotation is 404 everywhere and gone from lists."""
        with self.lock:
            item = next((a for a in self.annotations
                         if a["uuid"] == ann_uuid and not a.get("_deleted")), None)
        if item is None:
            return Reply(404, {"detail": "No Annotation matches the given query."})
        if method == "GET":
            return Reply(200, self._public(item))
        if method == "DELETE":
            with self.lock:
                item["_deleted"] = True
            return Reply(204, None)
        if method in ("PUT", "PATCH"):
            form = self._form(headers, body)
            if isinstance(form, Reply):
                return form
            fields, _ = form
            with self.lock:
                if "annotation_text" in fields:
                    item["annotation_text"] = fields["annotation_text"]
                if "media_target" in fields:
                    item["media_target"] = fields["media_target"]
                if "tags" in fields:  # sending tags replaces the whole set
                    item["tags"] = self._tags(fields["tags"])
                item["updated_at"] = self._now()
            return Reply(200, self._public(item))
        return Reply(405, {"detail": f'Method "{method}" not allowed.'})

    def _token_login(self, headers: Any, body: bytes) -> Reply:
        ctype = headers.get("Content-Type", "")
        try:
            data = (json.loads(body or b"{}") if ctype.startswith("application/json")
                    else dict(parse_qsl(body.decode())))
        except ValueError:
            return Reply(400, {"detail": "JSON parse error"})
        with self.lock:
            user = data.get("username")
            if not data.get("password") or self.passwords.get(user) != data.get("password"):
                return Reply(400, {"non_field_errors": ["Unable to log in with provided "
                                                        "credentials."]})
            token = next((t for t, u in self.tokens.items() if u == user), None)
            if token is None:
                token = secrets.token_hex(20)
                self.tokens[token] = user
            return Reply(200, {"auth_token": token})

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
        if ctype.startswith("application/x-www-form-urlencoded"):
            return dict(parse_qsl(body.decode(), keep_blank_values=True)), {}
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
            if self.flavour == "upstream":  # the permission check reads data["group"]
                return _SERVER_ERROR
            return Reply(403, {"detail": "Missing required field: group"})
        try:
            gid = int(fields["group"])
        except ValueError:
            return _SERVER_ERROR  # Group.objects.get(id="x")
        with self.lock:
            group = self.groups.get(gid)
            if group is None:
                return _SERVER_ERROR  # Group.DoesNotExist
            if user not in group["members"]:
                return Reply(403, {"detail": _NOT_MEMBER})
        upload = files.get("upload")
        if upload is None:
            return Reply(400, {"detail": "Media missing"})
        if not fields.get("name"):
            return Reply(400, {"detail": "Name not found"})
        if "description" not in fields:
            return _SERVER_ERROR  # data["description"], outside the view's try
        if "tags" not in fields:
            return Reply(500, {"detail": "An error occurred: 'tags'"})
        ctype = upload["content_type"].split(";")[0].strip().lower()
        digest = hashlib.md5(upload["data"]).hexdigest()
        with self.lock:
            path = f"/media/archive/{digest}.ogg"
            if any(f["path"] == path for f in self.files.values()):
                path = f"/media/archive/{digest}_{secrets.token_urlsafe(5)[:7]}.ogg"
            now = self._now()
            item: dict[str, Any] = {
                "id": next(self._ids), "name": fields["name"],
                "description": fields["description"], "upload": self.url + path,
                "tags": self._tags(fields["tags"]), "extra_group_response": [],
                "uuid": str(uuidlib.uuid4()), "created_at": now, "_group": gid,
                "group": {"id": gid}, "created_by": self._person(user),
                "orig_size": len(upload["data"]), "orig_name": upload["filename"],
                "file_extension": ctype,
            }
            if self.flavour == "upstream":
                item["annotations"] = []
            else:
                item.update(updated_at=now, media_processing_status="Yet to process",
                            is_public=True, transcript_vtt_url="")
            self.media.append(item)
            self.files[item["uuid"]] = {"data": upload["data"], "content_type": ctype,
                                        "filename": upload["filename"], "path": path}
        self._after_create("/api/v1/archive/")
        created = {**self._public(item), "upload": path}  # relative in the create answer
        if self.flavour == "papadam":
            created["job_id"] = uuidlib.uuid4().hex
        return Reply(200, created)

    def _visible(self, user: str, item: dict[str, Any]) -> bool:
        return not item.get("_deleted") and user in self.groups.get(
            item["_group"], {}).get("members", ())

    def _list_media(self, user: str, query: dict[str, str]) -> Reply:
        search_from = query.get("searchFrom")
        if search_from is None and self.flavour == "upstream":
            return _SERVER_ERROR  # get_queryset returns None
        with self.lock:
            if "group" in query:  # a permission check, not a filter
                try:
                    group = self.groups.get(int(query["group"]))
                except ValueError:
                    return _SERVER_ERROR
                if group is None:
                    return _SERVER_ERROR
                if user not in group["members"]:
                    return Reply(403, {"detail": _NOT_MEMBER})
            items = [m for m in self.media if self._visible(user, m)]  # oldest first
        needle, where = query.get("search"), query.get("searchWhere")
        if needle:
            if where == "tags":  # papad tests each character of the string as a tag name
                items = [m for m in items if any(t["name"] in needle for t in m["tags"])]
            elif where in ("name", "description"):
                items = [m for m in items if needle.lower() in m[where].lower()]
            elif where is None:
                items = [m for m in items if needle.lower() in m["name"].lower()
                         or needle.lower() in m["description"].lower()]
        size = int(query.get("page_size") or self.page_size)
        page = int(query.get("page", "1") or 1)
        start = (page - 1) * size
        chunk = items[start:start + size]
        nxt = None
        if start + size < len(items):
            rest = "&".join(f"{k}={v}" for k, v in query.items() if k != "page")
            nxt = f"{self.url}/api/v1/archive/?{rest + '&' if rest else ''}page={page + 1}"
        prev = None
        if page > 1:
            rest = "&".join(f"{k}={v}" for k, v in query.items() if k != "page")
            prev = f"{self.url}/api/v1/archive/?{rest}"
        return Reply(200, {"count": len(items), "next": nxt, "previous": prev,
                           "results": [self._public(m) for m in chunk]})

    def _one_media(self, method: str, media_uuid: str) -> Reply:
        with self.lock:
            item = next((m for m in self.media if m["uuid"] == media_uuid), None)
            if item is None:
                return Reply(404, {"detail": "No MediaStore matches the given query."})
            if method == "GET":  # still there after a (soft) delete
                return Reply(200, self._public(item))
            if method == "DELETE":
                item["_deleted"] = True
                return Reply(204, None)
        return Reply(405, {"detail": f'Method "{method}" not allowed.'})

    def _group(self, user: str, path: str) -> Reply:
        try:
            gid = int(path.rstrip("/").rsplit("/", 1)[1])
        except ValueError:
            return Reply(404, {"detail": "Not found."})
        with self.lock:
            group = self.groups.get(gid)
            if group is None or user not in group["members"]:
                return Reply(404, {"detail": "Not found."})
            return Reply(200, self._group_obj(gid))

    def _create_annotation(self, user: str, headers: Any, body: bytes) -> Reply:
        form = self._form(headers, body)
        if isinstance(form, Reply):
            return form
        fields, _ = form
        media_uuid = fields.get("media_reference_id")
        with self.lock:
            known = any(m["uuid"] == media_uuid and not m.get("_deleted") for m in self.media)
        if self.flavour == "papadam":
            if not media_uuid:
                return Reply(403, {"detail": "Missing required field: media_reference_id"})
            if not known:
                return Reply(403, {"detail": "Referenced media not found."})
        else:
            required = ("media_reference_id", "annotation_text", "media_target", "tags")
            if not known or any(k not in fields for k in required):
                return _SERVER_ERROR  # MediaStore.DoesNotExist / data[...] KeyError
        with self.lock:
            item = self._store_annotation(user, media_uuid or "",
                                          fields.get("annotation_text", ""),
                                          fields.get("media_target", ""), fields.get("tags", ""))
        self._after_create("/api/v1/annotate/")
        return Reply(200 if self.flavour == "upstream" else 201, self._public(item))


_SERVER_ERROR = Reply(500, b"<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Server Error "
                      b"(500)</title>\n</head>\n<body>\n  <h1>Server Error (500)</h1><p></p>\n"
                      b"</body>\n</html>\n", "text/html")
_NOT_FOUND = Reply(404, b"<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Not Found</title>"
                   b"\n</head>\n<body>\n  <h1>Not Found</h1><p>The requested resource was not "
                   b"found on this server.</p>\n</body>\n</html>\n", "text/html")
_NOT_MEMBER = "You are not a member of the group to perform this action"


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
