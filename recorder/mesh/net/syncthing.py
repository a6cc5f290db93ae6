"""A small client for Syncthing's REST API (tested against Syncthing 1.19).

Every request has a timeout; every failure (Syncthing down, refused key, bad request, bad JSON)
raises :class:`recorder.errors.RemoteError` with a one-line message naming the method and path.
Config changes made through the REST API apply without a restart.

What the mesh reads comes back as typed values (`Device`, `Folder`, `Connections`,
`Completion`, `FolderStatus`, the pending devices and folders): the shape the mesh relies on
(ids as strings, lists and objects where it iterates) is checked here, at the client's edge, and
an answer of another shape is a RemoteError like any other failure. The values are Syncthing's
own JSON objects, keys as Syncthing spells them; keys the mesh does not read pass through, so a
folder or device read here can be patched back unchanged.

`scan_quietly()` is the publishing hand-off: it never raises, so a recording is published even
when Syncthing is down (the watcher or the periodic rescan picks the file up later).
"""

from __future__ import annotations

import contextlib
import http.client
import json as jsonlib
import logging
import socket
import threading
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Required, TypedDict, cast

from recorder.config import SyncthingConfig
from recorder.errors import RemoteError
from recorder.secrets import read_secret

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
# A quiet scan runs on the publishing path: it must give up fast when Syncthing is busy or gone.
QUIET_SCAN_TIMEOUT = 3.0
# The standard library's http.client, not requests: Syncthing's REST API is one local server
# speaking plain JSON, and importing requests (urllib3, idna, charset_normalizer) cost every
# `recorder mesh` command about 100 ms of start-up, more than the rest of the command.
_DROPPED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class FolderDevice(TypedDict, total=False):
    """One device a folder is shared with (``devices`` of a folder's config)."""

    deviceID: Required[str]
    introducedBy: str
    encryptionPassword: str


class Folder(TypedDict, total=False):
    """A folder's config (``/rest/config/folders``), the keys the mesh reads or sets."""

    id: Required[str]
    label: str
    path: str
    type: str  # sendreceive, sendonly, receiveonly, receiveencrypted
    devices: list[FolderDevice]
    paused: bool
    fsWatcherEnabled: bool
    fsWatcherDelayS: float
    rescanIntervalS: int


class Device(TypedDict, total=False):
    """A device's config (``/rest/config/devices``), the keys the mesh reads or sets."""

    deviceID: Required[str]
    name: str
    addresses: list[str]
    paused: bool
    autoAcceptFolders: bool
    introducer: bool


class Connection(TypedDict, total=False):
    """One device's connection state (``/rest/system/connections``)."""

    connected: bool
    paused: bool
    address: str
    clientVersion: str
    type: str
    inBytesTotal: int
    outBytesTotal: int


class Connections(TypedDict, total=False):
    """``/rest/system/connections``."""

    connections: dict[str, Connection]
    total: Connection


class Completion(TypedDict, total=False):
    """``/rest/db/completion``: how complete a device is for a folder."""

    completion: float  # percent
    needItems: int
    needDeletes: int
    needBytes: int
    globalItems: int
    globalBytes: int


class FolderStatus(TypedDict, total=False):
    """``/rest/db/status``, the keys the mesh reads."""

    state: str
    localFiles: int
    needFiles: int
    needDirectories: int
    needSymlinks: int
    needDeletes: int
    needTotalItems: int
    receiveOnlyChangedFiles: int
    receiveOnlyChangedDeletes: int
    errors: int
    pullErrors: int


class PendingDevice(TypedDict, total=False):
    """A device that tried to connect and is not configured (its own name and address)."""

    name: str
    address: str
    time: str


class PendingFolder(TypedDict, total=False):
    """A folder offered by peers: ``offeredBy`` maps each offering device to its offer."""

    offeredBy: dict[str, dict[str, Any]]


class DeviceStats(TypedDict, total=False):
    """``/rest/stats/device`` for one device."""

    lastSeen: str
    lastConnectionDurationS: float


def _object(body: Any, where: str) -> dict[str, Any]:
    """`body` as a JSON object (None, an empty answer, as {}); RemoteError otherwise."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise RemoteError(f"{where}: unexpected answer (not an object)")
    return body


def _objects_by_id(body: Any, where: str) -> dict[str, dict[str, Any]]:
    """`body` as an object whose every value is an object (keyed by device or folder id)."""
    out = _object(body, where)
    if not all(isinstance(v, dict) for v in out.values()):
        raise RemoteError(f"{where}: unexpected answer (an entry is not an object)")
    return out


def _listed(body: Any, key: str, where: str) -> list[dict[str, Any]]:
    """`body` as a list of objects each with the string `key`; RemoteError otherwise."""
    if not isinstance(body, list) or not all(
            isinstance(x, dict) and isinstance(x.get(key), str) for x in body):
        raise RemoteError(f"{where}: unexpected answer (not a list of objects with {key!r})")
    return body


def _folders(body: Any, where: str) -> list[Folder]:
    folders = _listed(body, "id", where)
    for f in folders:
        _listed(f.setdefault("devices", []), "deviceID", where)
    return cast(list[Folder], folders)


class SyncthingClient:
    """REST calls to one Syncthing instance (``url`` like ``http://127.0.0.1:8384``).

    One client is shared by the service's threads (the publisher's scan hand-off, the bridge
    and its event long poll): each thread gets its own keep-alive connection, since one HTTP
    connection carries one request at a time.
    """

    def __init__(self, url: str, api_key: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._api_key = api_key
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"syncthing url must be http(s)://HOST[:PORT], not {url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._base = parts.path.rstrip("/")
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._connections_lock = threading.Lock()

    def _connection(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection (made on first use) and whether it served a request
        before."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            return conn, True
        factory = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = factory(self._host, self._port, timeout=timeout)
        self._local.conn = conn
        with self._connections_lock:
            self._connections.append(conn)
        return conn, False

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()
            with self._connections_lock:
                if conn in self._connections:
                    self._connections.remove(conn)

    @classmethod
    def from_config(cls, cfg: SyncthingConfig) -> SyncthingClient:
        """A client for `cfg.url` with the API key read from `cfg.api_key_file`.

        The key file must be configured, exist and not be group/world-readable
        (`recorder.secrets`); otherwise ConfigError.
        """
        return cls(cfg.url, read_secret(cfg.api_key_file, "syncthing.api_key_file"))

    def close(self) -> None:
        """Close every thread's connection; a thread waiting on one (the event long poll)
        gets RemoteError at once."""
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            if conn.sock is not None:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked read with EOF
            conn.close()
        self._local = threading.local()

    # --- transport ----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        timeout: float | None = None,
    ) -> Any:
        """One REST call; returns the decoded JSON body (None when the body is empty)."""
        where = f"syncthing {method} {path}"
        target = self._base + path
        if params:
            target += "?" + urllib.parse.urlencode(params)
        headers = {"X-API-Key": self._api_key, "Accept": "application/json"}
        body = None
        if json is not None:
            body = jsonlib.dumps(json).encode("utf-8")
            headers["Content-Type"] = "application/json"
        limit = self.timeout if timeout is None else timeout
        while True:
            conn, reused = self._connection(limit)
            try:
                conn.request(method, target, body=body, headers=headers)
                resp = conn.getresponse()
                status, data = resp.status, resp.read()
            except _DROPPED:
                self._drop_connection()
                if reused:  # Syncthing closed an idle keep-alive connection: dial again
                    continue
                raise RemoteError(f"{where}: {self.url} closed the connection") from None
            except TimeoutError:
                self._drop_connection()
                raise RemoteError(f"{where}: no answer from {self.url} (timeout)") from None
            except OSError:
                self._drop_connection()
                raise RemoteError(
                    f"{where}: cannot connect to {self.url} (is Syncthing running?)") from None
            except http.client.HTTPException as exc:
                self._drop_connection()
                raise RemoteError(f"{where}: {type(exc).__name__}") from None
            except (AttributeError, ValueError):
                # close() from another thread took the connection away mid-request
                # (http.client then reads from a file object that is None or closed).
                self._drop_connection()
                raise RemoteError(f"{where}: the client was closed") from None
            break
        if resp.will_close:
            self._drop_connection()
        if status == 403:
            raise RemoteError(f"{where}: forbidden (wrong API key?)")
        if status >= 400:
            detail = " ".join(data.decode("utf-8", "replace").split())[:200]
            raise RemoteError(f"{where}: HTTP {status}: {detail}")
        if not data:
            return None
        try:
            return jsonlib.loads(data)
        except ValueError:
            raise RemoteError(f"{where}: answer is not JSON") from None

    def _get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    # --- system -------------------------------------------------------------------------------

    def ping(self) -> None:
        """Raise RemoteError unless Syncthing answers ``/rest/system/ping`` with pong."""
        body = self.request("GET", "/rest/system/ping")
        if not isinstance(body, dict) or body.get("ping") != "pong":
            raise RemoteError(f"syncthing GET /rest/system/ping: unexpected answer {body!r}")

    def ping_quietly(self) -> bool:
        """True if Syncthing answers a ping; never raises."""
        try:
            self.ping()
        except RemoteError:
            return False
        return True

    def device_id(self) -> str:
        """This instance's Syncthing device id (``myID``)."""
        return str(self.request("GET", "/rest/system/status")["myID"])

    def connections(self) -> Connections:
        """``/rest/system/connections``: ``{"connections": {device_id: {...}}, "total": ...}``."""
        where = "syncthing GET /rest/system/connections"
        body = _object(self._get("/rest/system/connections"), where)
        _objects_by_id(body.get("connections"), where)
        return cast(Connections, body)

    def pause(self, device_id: str | None = None) -> None:
        """Pause every device, or one (pause-all is saved in the config)."""
        self.request("POST", "/rest/system/pause",
                     params={"device": device_id} if device_id else None)

    def resume(self, device_id: str | None = None) -> None:
        self.request("POST", "/rest/system/resume",
                     params={"device": device_id} if device_id else None)

    def redial(self, device_id: str) -> None:
        """Drop any connection to the device and dial it now: pause, then resume (Syncthing
        1.19 has no call of its own for this, and its own redial waits a minute or more after
        failed dials)."""
        self.pause(device_id)
        try:
            self.resume(device_id)
        except RemoteError:  # never leave the device paused by a dropped answer
            self.resume(device_id)

    def is_connected(self, device_id: str) -> bool:
        """Syncthing has a connection to the device now."""
        conn = self.connections().get("connections", {}).get(device_id, {})
        return bool(conn.get("connected"))

    def dial_unless_connected(self, device_id: str) -> bool:
        """`redial` the device unless it is connected; True if it was asked to dial."""
        if self.is_connected(device_id):
            return False
        self.redial(device_id)
        return True

    def shutdown(self) -> None:
        self.request("POST", "/rest/system/shutdown")

    # --- config -------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The whole configuration (``/rest/config``)."""
        return _object(self._get("/rest/config"), "syncthing GET /rest/config")

    def devices(self) -> list[Device]:
        """Every configured device (this one too)."""
        body = self._get("/rest/config/devices")
        return cast(list[Device], _listed(body, "deviceID", "syncthing GET /rest/config/devices"))

    def get_device(self, device_id: str) -> Device | None:
        """The device's config, or None if it is not configured."""
        return next((d for d in self.devices() if d.get("deviceID") == device_id), None)

    def add_device(self, device: dict[str, Any]) -> None:
        """Add (or replace) one device; missing keys take Syncthing's defaults."""
        self.request("POST", "/rest/config/devices", json=device)

    def patch_device(self, device_id: str, changes: dict[str, Any]) -> None:
        self.request("PATCH", f"/rest/config/devices/{device_id}", json=changes)

    def remove_device(self, device_id: str) -> None:
        """Remove a device from the config (its folders stop being shared with it)."""
        self.request("DELETE", f"/rest/config/devices/{device_id}")

    def folders(self) -> list[Folder]:
        """Every configured folder (``devices`` always present)."""
        return _folders(self._get("/rest/config/folders"), "syncthing GET /rest/config/folders")

    def get_folder(self, folder_id: str) -> Folder | None:
        """The folder's config, or None if it is not configured."""
        return next((f for f in self.folders() if f.get("id") == folder_id), None)

    def add_folder(self, folder: dict[str, Any]) -> None:
        """Add (or replace) one folder; missing keys take the configured folder defaults."""
        self.request("POST", "/rest/config/folders", json=folder)

    def patch_folder(self, folder_id: str, changes: dict[str, Any]) -> None:
        self.request("PATCH", f"/rest/config/folders/{folder_id}", json=changes)

    def remove_folder(self, folder_id: str) -> None:
        """Remove a folder from the config; its files stay on disk."""
        self.request("DELETE", f"/rest/config/folders/{folder_id}")

    def options(self) -> dict[str, Any]:
        """The global options (``/rest/config/options``), as Syncthing spells them."""
        return _object(self._get("/rest/config/options"), "syncthing GET /rest/config/options")

    def patch_options(self, changes: dict[str, Any]) -> None:
        self.request("PATCH", "/rest/config/options", json=changes)

    def pending_folders(self, device_id: str | None = None) -> dict[str, PendingFolder]:
        """Folders peers offer that are not configured here (``/rest/cluster/pending/folders``).

        ``{folder_id: {"offeredBy": {device_id: {"time", "label", ...}}}}``.
        """
        where = "syncthing GET /rest/cluster/pending/folders"
        body = _objects_by_id(self._get("/rest/cluster/pending/folders", device=device_id),
                              where)
        for info in body.values():
            _objects_by_id(info.get("offeredBy"), where)
        return cast(dict[str, PendingFolder], body)

    def pending_devices(self) -> dict[str, PendingDevice]:
        """Devices that tried to connect and are not configured here
        (``/rest/cluster/pending/devices``): ``{device_id: {"time", "name", "address"}}``; the
        name is the one the device gives itself."""
        body = self._get("/rest/cluster/pending/devices")
        return cast(dict[str, PendingDevice],
                    _objects_by_id(body, "syncthing GET /rest/cluster/pending/devices"))

    def device_stats(self) -> dict[str, DeviceStats]:
        """``/rest/stats/device``: ``{device_id: {"lastSeen", "lastConnectionDurationS"}}``."""
        body = self._get("/rest/stats/device")
        return cast(dict[str, DeviceStats],
                    _objects_by_id(body, "syncthing GET /rest/stats/device"))

    # --- database -----------------------------------------------------------------------------

    def scan(self, folder: str, sub: str | Path | None = None) -> None:
        """Ask Syncthing to rescan `folder` now (only `sub`, relative to the folder, if given)."""
        params: dict[str, Any] = {"folder": folder}
        if sub is not None:
            params["sub"] = str(sub)
        self.request("POST", "/rest/db/scan", params=params)

    def scan_quietly(self, folder: str, sub: str | Path | None = None,
                     timeout: float = QUIET_SCAN_TIMEOUT) -> bool:
        """`scan()` that never raises: True if Syncthing accepted it, else False (logged)."""
        params: dict[str, Any] = {"folder": folder}
        if sub is not None:
            params["sub"] = str(sub)
        try:
            self.request("POST", "/rest/db/scan", params=params, timeout=timeout)
        except RemoteError as exc:
            log.warning("scan hand-off skipped: %s", exc)
            return False
        except Exception as exc:  # publishing must never fail because of the hand-off
            log.warning("scan hand-off skipped: %s: %s", type(exc).__name__, exc)
            return False
        return True

    def file_info(self, folder: str, name: str) -> dict[str, Any]:
        """``/rest/db/file``: what the index holds of one file (``local``, ``global``...);
        RemoteError when the index has no such file."""
        return _object(self._get("/rest/db/file", folder=folder, file=name),
                       "syncthing GET /rest/db/file")

    def db_status(self, folder: str) -> FolderStatus:
        """``/rest/db/status``: state, file counts, ``receiveOnlyChangedFiles``, errors..."""
        return cast(FolderStatus, _object(self._get("/rest/db/status", folder=folder),
                                          "syncthing GET /rest/db/status"))

    def completion(self, folder: str, device: str | None = None) -> Completion:
        """How complete `device` (default: this one) is for `folder` (``completion`` percent)."""
        body = self._get("/rest/db/completion", folder=folder, device=device)
        return cast(Completion, _object(body, "syncthing GET /rest/db/completion"))

    def revert(self, folder: str) -> None:
        """Drop local changes in a receive-only folder (``/rest/db/revert``)."""
        self.request("POST", "/rest/db/revert", params={"folder": folder})

    def local_changed(self, folder: str, limit: int = 20) -> list[str]:
        """Names of up to `limit` locally changed files of a receive-only folder."""
        body = self._get("/rest/db/localchanged", folder=folder, page=1, perpage=limit)
        return [str(f.get("name")) for f in (body or {}).get("files", [])]

    # --- events -------------------------------------------------------------------------------

    def events(
        self,
        since: int = 0,
        timeout: float = 60.0,
        types: Iterable[str] | None = None,
        limit: int | None = None,
        disk: bool = False,
    ) -> list[dict[str, Any]]:
        """Long-poll events with id > `since`, waiting up to `timeout` s; [] when none came.

        `disk=True` reads ``/rest/events/disk`` (LocalChangeDetected, RemoteChangeDetected).
        A bridge loops ``since = events[-1]["id"]``; ids restart from 1 when Syncthing restarts,
        so a last id larger than the newest one means "start over from 0".
        """
        params: dict[str, Any] = {"since": since, "timeout": max(0, int(timeout))}
        if types:
            params["events"] = ",".join(types)
        if limit is not None:
            params["limit"] = limit
        path = "/rest/events/disk" if disk else "/rest/events"
        # The HTTP timeout must outlast the long poll itself.
        body = self.request("GET", path, params=params, timeout=timeout + self.timeout)
        return list(body or [])
