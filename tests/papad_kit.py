"""The real papad servers for tests, started from the papad test kit.

The kit (third-party, AGPL: used from where it lies, never copied here) is found at
``$RECORDER_PAPAD_KIT``, else at ``<repo>/../shared/papad``. It starts papad's real Django server
on 127.0.0.1 with SQLite and local-disk media, seeds a user ``recorder`` in group 1 ("Radio")
and a user ``other`` in group 2 ("Closed"), and prints one JSON line. Two flavours:

- ``upstream``: papad-api, ``Authorization: Token <key>``;
- ``papadam``: the current fork, JWT ``Authorization: Bearer <access>`` (Python >= 3.12 and
  ``redis-server``), throttled unless started with ``--no-throttle``.

Fixtures (registered through ``tests/conftest.py``):

- ``papad_servers`` (session): both flavours, started side by side, ``--no-throttle``;
  ``papad_upstream`` / ``papad_papadam`` pick one; ``papad_real`` is parametrised over both.
  Tests share them: each works only with its own recordings (recording ids are unique), so
  nothing needs a clean server.
- ``papad_fresh`` (function): a factory for a server of its own (fresh data directory, about
  6 s), for tests that stop papad or need its throttling.

One venv per flavour is shared by every run: ``$RECORDER_PAPAD_VENVS/papad-venv-<flavour>``
(default ``~/.cache/recorderpi-test``), built by the kit on first use (about 30 s).

Without the kit the tests skip, saying how to run them; with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import IN_CI, free_port, need

REPO = Path(__file__).resolve().parent.parent
KIT_ENV = "RECORDER_PAPAD_KIT"
VENVS_ENV = "RECORDER_PAPAD_VENVS"
FLAVOURS = ("upstream", "papadam")
GROUP, OTHER_GROUP = 1, 2
START_TIMEOUT = 900  # the first start builds a venv from PyPI


def kit_path() -> Path | None:
    """The papad kit directory, or None when there is none."""
    value = os.environ.get(KIT_ENV)
    candidate = Path(value) if value else REPO.parent / "shared" / "papad"
    return candidate if (candidate / "start-papad").is_file() else None


def require_kit() -> Path:
    """The kit, or fail (CI) / skip with how to get it."""
    kit = kit_path()
    if kit is not None:
        return kit
    msg = (f"the real papad servers are needed: set {KIT_ENV}=/path/to/papad-kit (the directory "
           "holding start-papad), or put the kit at ../shared/papad next to this repository")
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)  # outside CI only: IN_CI fails above


def venv_dir(flavour: str) -> Path:
    """The shared venv for `flavour` (made by the kit when missing)."""
    base = Path(os.environ.get(VENVS_ENV) or Path.home() / ".cache" / "recorderpi-test")
    base.mkdir(parents=True, exist_ok=True)
    return base / f"papad-venv-{flavour}"


class PapadServer:
    """One real papad started by the kit, plus a test-side API client (the ``recorder`` user, or
    the ``other`` one with `account`).

    The test side talks to papad directly (its own requests session and credentials) so tests
    check what papad holds independently of the recorder's client.
    """

    def __init__(self, kit: Path, flavour: str, data: Path, *, throttle: bool = False,
                 port: int | None = None, account: str = "recorder") -> None:
        """`account`: the seeded user this object (and a device configured from it) acts as:
        ``recorder`` (group 1, "Radio") or ``other`` (group 2, "Closed")."""
        self.kit = kit
        self.flavour = flavour
        self.data = data
        self.throttle = throttle
        self.port = port or free_port()
        self.account = account
        self.group = GROUP if account == "recorder" else OTHER_GROUP
        self.info: dict[str, Any] = {}
        self._session = requests.Session()
        self._session.trust_env = False
        self._access: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PapadServer({self.flavour}, {self.url})"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> PapadServer:
        """Start (or restart on the same data and port); fail with papad's log tail."""
        if self.flavour == "papadam":
            need("redis-server", "redis-server")
        cmd = [str(self.kit / "start-papad"), self.flavour, "--port", str(self.port),
               "--data", str(self.data), "--venv", str(venv_dir(self.flavour))]
        if not self.throttle and self.flavour == "papadam":
            cmd.append("--no-throttle")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=START_TIMEOUT)
        if proc.returncode == 3:  # no suitable Python for this flavour
            msg = f"papad {self.flavour}: {proc.stderr.strip()[-300:]} (pyenv install 3.12)"
            if IN_CI:
                pytest.fail(msg)
            pytest.skip(msg)
        if proc.returncode != 0:
            pytest.fail(f"start-papad {self.flavour} failed ({proc.returncode}): "
                        f"{proc.stderr.strip()[-2000:]}")
        self.info = json.loads(proc.stdout.strip().splitlines()[-1])
        self._access = None
        return self

    def stop(self) -> None:
        """Stop the server (its data stays for a later `start`)."""
        subprocess.run([str(self.kit / "stop-papad"), str(self.data)], capture_output=True,
                       text=True, timeout=60)

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- facts ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.info.get("url") or f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> str:
        return "token" if self.flavour == "upstream" else "jwt"

    @property
    def _credentials(self) -> dict[str, Any]:
        return self.info if self.account == "recorder" else self.info[self.account]

    @property
    def username(self) -> str:
        return self._credentials["username"]

    @property
    def password(self) -> str:
        return self._credentials["password"]

    @property
    def token(self) -> str | None:
        return self._credentials.get("token")

    def papad_section(self, secrets_dir: Path, **overrides: Any) -> dict[str, Any]:
        """A ``[papad]`` config section for this server and account (secret files written,
        mode 600)."""
        from tests.papad_setup import write_secret

        section: dict[str, Any] = {"api": "papad", "url": self.url, "group": self.group,
                                   "timeout": 10.0}
        if self.auth == "token":
            token = write_secret(secrets_dir / f"papad-token-{self.flavour}", self.token or "")
            section.update(auth="token", token_file=str(token))
        else:
            pw = write_secret(secrets_dir / f"papad-password-{self.flavour}", self.password)
            section.update(auth="jwt", username=self.username, password_file=str(pw))
        section.update(overrides)
        return section

    # -- test-side API -------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        if self.auth == "token":
            return {"Authorization": f"Token {self.token}"}
        with self._lock:
            if self._access is None:
                r = self._session.post(f"{self.url}/auth/jwt/create/", timeout=30,
                                       json={"username": self.username,
                                             "password": self.password})
                r.raise_for_status()
                self._access = r.json()["access"]
            return {"Authorization": f"Bearer {self._access}"}

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        """An authenticated request as this object's account (JWT renewed after a 401)."""
        kw.setdefault("timeout", 30)
        url = path if path.startswith("http") else self.url + path
        resp = self._session.request(method, url, headers=self._headers(), **kw)
        if resp.status_code == 401 and self.auth == "jwt":
            self._access = None
            resp = self._session.request(method, url, headers=self._headers(), **kw)
        return resp

    def get_json(self, path: str, **params: Any) -> Any:
        resp = self.request("GET", path, params=params)
        assert resp.status_code == 200, (path, resp.status_code, resp.text[:300])
        return resp.json()

    def all_media(self) -> list[dict[str, Any]]:
        """Every media of this account's group (papad lists all the user's groups: filtered
        here)."""
        out: list[dict[str, Any]] = []
        page: str | None = "/api/v1/archive/"
        params: dict[str, Any] = {"searchFrom": "my_collections", "page_size": 1000}
        while page:
            body = self.get_json(page, **params)
            out += [m for m in body["results"] if m["group"]["id"] == self.group]
            page, params = body["next"], {}
        return out

    def media(self, recording_id: str) -> list[dict[str, Any]]:
        """The media of this account's group whose description names `recording_id` (on its
        own line, as the recorder writes it); more than one would be duplicates."""
        body = self.get_json("/api/v1/archive/", searchFrom="my_collections",
                             search=recording_id, page_size=1000)
        line = f"Recording id: {recording_id}"
        return [m for m in body["results"]
                if line in m["description"].splitlines() and m["group"]["id"] == self.group]

    def one_media(self, recording_id: str) -> dict[str, Any]:
        found = self.media(recording_id)
        assert len(found) == 1, f"{len(found)} media for {recording_id} on {self}"
        return found[0]

    def annotations(self, media_uuid: str) -> list[dict[str, Any]]:
        return self.get_json(f"/api/v1/annotate/search/{media_uuid}/")

    def annotation_set(self, media_uuid: str) -> set[tuple[str, str, tuple[str, ...]]]:
        """(media_target, text, sorted tag names) of every annotation on a media."""
        return {(a["media_target"], a["annotation_text"],
                 tuple(sorted(t["name"] for t in a["tags"])))
                for a in self.annotations(media_uuid)}

    def add_annotation(self, media_uuid: str, text: str, target: str,
                       tags: tuple[str, ...] = ("note",)) -> dict[str, Any]:
        """An annotation made in papad by a person (not through the recorder)."""
        resp = self.request("POST", "/api/v1/annotate/", data={
            "media_reference_id": media_uuid, "annotation_text": text, "media_target": target,
            "tags": ",".join(tags)})
        assert resp.status_code in (200, 201), resp.text[:300]
        return resp.json()

    def edit_annotation(self, uuid: str, **fields: str) -> dict[str, Any]:
        resp = self.request("PATCH", f"/api/v1/annotate/{uuid}/", data=fields)
        assert resp.status_code == 200, resp.text[:300]
        return resp.json()

    def delete_annotation(self, uuid: str) -> None:
        """DELETE; papadam may answer 500 "Event loop is closed" with the delete done."""
        resp = self.request("DELETE", f"/api/v1/annotate/{uuid}/")
        if resp.status_code == 500:
            resp = self.request("DELETE", f"/api/v1/annotate/{uuid}/")
            assert resp.status_code == 404, resp.text[:300]
            return
        assert resp.status_code == 204, resp.text[:300]

    def download(self, upload: str) -> bytes:
        """The stored bytes of a media's ``upload`` (relative or absolute URL)."""
        url = upload if upload.startswith("http") else self.url + upload
        resp = self._session.get(url, timeout=30)
        assert resp.status_code == 200, (url, resp.status_code)
        return resp.content

    def spend_budget(self, scope: str, requests_made: int) -> None:
        """Leave papadam's throttle history as if `requests_made` requests had just been made
        (scope "user": the ``recorder`` account, 1000 an hour; "anon": this address, 100 an
        hour, logins and health checks included).

        DRF keeps that history in papad's Redis cache as a pickled list of timestamps under
        ``:1:throttle_<scope>_<ident>``; written here directly because spending it for real
        takes 20 s for 1000 requests, and concurrent requests lose updates of the counter.
        """
        assert self.flavour == "papadam" and self.throttle
        ident = "127.0.0.1"
        if scope == "user":
            ident = self.get_json("/auth/users/me/")["id"]
        now = time.time()
        value = pickle.dumps([now] * requests_made, pickle.HIGHEST_PROTOCOL)
        _redis(self.info["redis_url"], b"SET", f":1:throttle_{scope}_{ident}".encode(), value,
               b"EX", b"3600")

    def access_count(self, method: str, path: str) -> int:
        """Requests papad logged for `method` and a path starting with `path`."""
        log = self.data / "logs" / "access.log"
        pattern = re.compile(rf'"{re.escape(method)} {re.escape(path)}')
        try:
            return sum(1 for line in log.read_text(errors="replace").splitlines()
                       if pattern.search(line))
        except FileNotFoundError:
            return 0


def _redis(url: str, *args: bytes) -> bytes:
    """One command to the Redis at `url` (RESP over a socket: no client library needed)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379),
                                  timeout=10) as sock:
        db = (parts.path or "/0").strip("/") or "0"
        sock.sendall(_resp(b"SELECT", db.encode()) + _resp(*args))
        reply = b""
        while reply.count(b"\r\n") < 2:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"+OK\r\n+OK"), reply[:200]
    return reply


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def _start_all(kit: Path, base: Path) -> dict[str, PapadServer]:
    servers = {f: PapadServer(kit, f, base / f) for f in FLAVOURS}
    errors: dict[str, BaseException] = {}

    def start(flavour: str) -> None:
        try:
            servers[flavour].start()
        except BaseException as exc:  # pytest.fail/skip raise BaseException subclasses
            errors[flavour] = exc

    threads = [threading.Thread(target=start, args=(f,)) for f in FLAVOURS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for server in servers.values():
            if server.info:
                server.stop()
        raise next(iter(errors.values()))
    return servers


@pytest.fixture(scope="session")
def papad_servers(tmp_path_factory) -> Iterator[dict[str, PapadServer]]:
    """Both real papad flavours, started side by side for the whole session (no throttle)."""
    kit = require_kit()
    servers = _start_all(kit, tmp_path_factory.mktemp("papad-real"))
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def papad_upstream(papad_servers) -> PapadServer:
    return papad_servers["upstream"]


@pytest.fixture(scope="session")
def papad_papadam(papad_servers) -> PapadServer:
    return papad_servers["papadam"]


@pytest.fixture(params=FLAVOURS)
def papad_real(request, papad_servers) -> PapadServer:
    """Each real flavour in turn (shared session servers)."""
    return papad_servers[request.param]


@pytest.fixture
def papad_fresh(tmp_path) -> Iterator[Any]:
    """A factory: ``papad_fresh("papadam", throttle=True)`` starts a server of the test's own."""
    kit = require_kit()
    started: list[PapadServer] = []

    def make(flavour: str, *, throttle: bool = False) -> PapadServer:
        server = PapadServer(kit, flavour, tmp_path / f"papad-{flavour}-{len(started)}",
                             throttle=throttle)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        with contextlib.suppress(Exception):
            server.stop()
