"""Mesh health: what `recorder doctor`, `recorder ctl status` and the LED say about the mesh.

A mesh is **degraded** when, for longer than ``[mesh] degraded_after`` seconds, a peer is
disconnected (not paused: pausing is deliberate) or a mesh folder is out of sync (this device
lacks files of a peer's folder, or a connected peer lacks files of ours); and at once when a
folder reports errors, two devices claim one recorder id, or Syncthing cannot be reached.

Everything is read from Syncthing's REST API. How long a peer has been away comes from
``/rest/stats/device``: ``lastSeen`` is when its last connection started and
``lastConnectionDurationS`` how long that one lasted (measured on 1.19.2), so `doctor`, which
keeps no history, knows it too. Out-of-sync durations are remembered by the service's
`HealthTracker` (monotonic clock).

**Local changes** in a receive-only copy (a file added, changed or deleted there by hand, which
Syncthing then never updates) are reverted through ``POST /rest/db/revert`` by the service at
once and logged with the file names: the owner's version comes back; a file added locally is
deleted.

**Dead connections.** Syncthing 1.19 has no setting for its ping interval (90 s) or receive
timeout (300 s), so a silently cut link (no RST, no ICMP error) stays "connected" for minutes
(448 s measured: tests/bench/bench_mesh.py). The service therefore pings (ICMP echo, an
unprivileged datagram socket: ``net.ipv4.ping_group_range`` must include the service's group,
as systemd sets it) the address of every connected peer every ``[mesh] probe_interval``
seconds, checking a missed answer again a second later; after `PROBE_FAILURES` missed answers
in a row, while no byte arrived from the peer either, it reports the peer down and makes
Syncthing drop the connection (pause, then resume the device). It then pings that address
every `REDIAL_CHECK` seconds and, once it answers, has Syncthing dial the peer at once (pause
and resume again): Syncthing's own redial waits a minute or more after failed dials, so the mesh
is whole again seconds after the link is back.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from recorder.errors import RemoteError
from recorder.mesh.membership.provision import FOLDER_PREFIX, folder_id, owner_of

if TYPE_CHECKING:
    from recorder.mesh.net.syncthing import (
        Connection,
        DeviceStats,
        Folder,
        FolderStatus,
        SyncthingClient,
    )

log = logging.getLogger(__name__)

PROBE_FAILURES = 2
PROBE_TIMEOUT = 2.0
# A peer dropped as unreachable is pinged at its last address this often; once it answers,
# Syncthing is asked to dial it at once (pause, resume), since its own redial waits a minute
# or more after failed dials.
REDIAL_CHECK = 5.0
_EPOCH_YEAR = 1971  # lastSeen "1970-01-01T00:00:00Z" means never connected


def _parse_time(value: Any) -> float | None:
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.timestamp() if when.year >= _EPOCH_YEAR else None


def down_since(stats: DeviceStats) -> float | None:
    """When (wall clock) a disconnected device's last connection ended; None if never seen."""
    seen = _parse_time(stats.get("lastSeen"))
    if seen is None:
        return None
    return seen + float(stats.get("lastConnectionDurationS") or 0.0)


def _need(db: FolderStatus) -> int:
    return int((db.get("needFiles") or 0) + (db.get("needDirectories") or 0)
               + (db.get("needDeletes") or 0) + (db.get("needSymlinks") or 0))


class HealthTracker:
    """The service's view of mesh health over time (used by one thread: the keeper's).

    `check` reads Syncthing once and returns the status; `probe` pings connected peers.
    `clock` (monotonic) and `wall` are seams for tests."""

    def __init__(self, own_id: str, degraded_after: float, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.own_id = own_id
        self.own_folder = folder_id(own_id)
        self.degraded_after = degraded_after
        self.clock = clock
        self.wall = wall
        self._first_seen: dict[str, float] = {}  # problem key -> monotonic time first seen
        self._misses: dict[str, int] = {}  # device -> probe misses in a row
        self._dead: dict[str, float] = {}  # device -> wall time it was found unreachable
        self._dead_hosts: dict[str, str] = {}  # device found unreachable -> its last address
        self._redial_at: dict[str, float] = {}  # device -> monotonic time of its next check
        self._bytes: dict[str, Any] = {}  # device -> inBytesTotal at its first missed ping
        self._recovered: set[str] = set()  # dropped as dead, then reconnected
        self._unpingable: set[str] = set()  # ICMP filtered: never pinged again
        self.reverted = 0
        self.last_revert: dict[str, Any] | None = None
        self.probe_state = "off"

    # -- one look at Syncthing ----------------------------------------------------------

    def check(self, client: SyncthingClient, conflicts: list[str] | None = None,
              revert: bool = True) -> dict[str, Any]:
        """Peers, folders, local changes (reverted when `revert`) and the verdict:
        ``{"degraded", "problems", "peers", "folders", "reverted", "conflicts", ...}``."""
        problems: list[str] = list(conflicts or [])
        seen: set[str] = set()
        try:
            peers = self._peers(client, problems, seen)
            folders = self._folders(client, problems, seen, revert, peers)
        except RemoteError as exc:
            problems.append(f"Syncthing unreachable: {exc}")
            peers, folders = [], []
        for key in list(self._first_seen):
            if key not in seen:
                del self._first_seen[key]
        return {"degraded": bool(problems), "problems": problems, "peers": peers,
                "folders": folders, "reverted": self.reverted, "last_revert": self.last_revert,
                "conflicts": list(conflicts or []), "probe": self.probe_state,
                "degraded_after_s": self.degraded_after, "checked_at": self.wall()}

    def _lasting(self, key: str, seen: set[str]) -> float:
        """Seconds this problem has been seen (monotonic), remembering it."""
        seen.add(key)
        first = self._first_seen.setdefault(key, self.clock())
        return self.clock() - first

    def _peers(self, client: SyncthingClient, problems: list[str],
               seen: set[str]) -> list[dict[str, Any]]:
        my_id = client.device_id()
        connections = client.connections().get("connections", {})
        stats = client.device_stats()
        folders = [f for f in client.folders() if f["id"].startswith(FOLDER_PREFIX)]
        owners = {d["deviceID"]: owner_of(f["id"]) for f in folders
                  if f["id"] != self.own_folder for d in f.get("devices", [])
                  if d["deviceID"] != my_id}
        mesh = {d["deviceID"] for f in folders for d in f.get("devices", [])}
        out = []
        now = self.wall()
        for dev in client.devices():
            did = dev["deviceID"]
            if did == my_id or did not in mesh:
                continue  # a device sharing no mesh folder (a laptop, say) is not a peer
            conn = connections.get(did, {})
            self._forget_dead(did, conn)
            name = owners.get(did) or dev.get("name") or did[:7]
            paused = bool(dev.get("paused") or conn.get("paused"))
            connected = bool(conn.get("connected")) and did not in self._dead
            since = None
            if not connected:
                since = self._dead.get(did) or down_since(stats.get(did, {}))
            down_for = None
            if not connected and not paused:
                down_for = now - since if since is not None else self._lasting(f"peer:{did}",
                                                                               seen)
                if down_for > self.degraded_after:
                    what = ("unreachable (no answer to pings)" if did in self._dead else
                            "disconnected" if since is not None else "never connected")
                    problems.append(f"peer {name} {what} for {down_for:.0f} s")
            out.append({"id": name, "syncthing_id": did, "connected": connected,
                        "paused": paused, "down_for_s": None if down_for is None
                        else round(down_for, 1), "address": conn.get("address") or None})
        return out

    def _folders(self, client: SyncthingClient, problems: list[str], seen: set[str],
                 revert: bool, peers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        connected = {p["syncthing_id"]: p["id"] for p in peers if p["connected"]}
        out = []
        for f in client.folders():
            fid = f["id"]
            if not fid.startswith(FOLDER_PREFIX):
                continue
            db = client.db_status(fid)
            changed = int(db.get("receiveOnlyChangedFiles") or 0) + int(
                db.get("receiveOnlyChangedDeletes") or 0)
            errors = int(db.get("errors") or 0) + int(db.get("pullErrors") or 0)
            need = _need(db)
            item: dict[str, Any] = {"id": fid, "type": f.get("type"), "state": db.get("state"),
                                    "need": need, "errors": errors, "locally_changed": changed}
            if changed and f.get("type") == "receiveonly":
                if revert:
                    self._revert(client, fid, changed)
                else:
                    problems.append(f"{fid}: {changed} local change(s) in a receive-only copy "
                                    "(the service reverts them)")
            if errors or db.get("state") == "error":
                problems.append(f"{fid}: {errors} error(s), state {db.get('state')}")
            if need:
                lasting = self._lasting(f"need:{fid}", seen)
                if lasting > self.degraded_after:
                    problems.append(f"{fid}: {need} item(s) out of sync for {lasting:.0f} s")
            if fid == self.own_folder:
                item["peers_missing"] = self._own_completion(client, fid, f, connected,
                                                             problems, seen)
            out.append(item)
        return out

    def _own_completion(self, client: SyncthingClient, fid: str, folder: Folder,
                        connected: dict[str, str], problems: list[str],
                        seen: set[str]) -> dict[str, int]:
        missing = {}
        for d in folder.get("devices", []):
            did = d["deviceID"]
            if did not in connected:
                continue
            comp = client.completion(fid, did)
            need = int(comp.get("needItems") or 0) + int(comp.get("needDeletes") or 0)
            if need:
                missing[connected[did]] = need
                lasting = self._lasting(f"own:{did}", seen)
                if lasting > self.degraded_after:
                    problems.append(f"peer {connected[did]} lacks {need} item(s) of {fid} for "
                                    f"{lasting:.0f} s")
        return missing

    def _revert(self, client: SyncthingClient, fid: str, count: int) -> None:
        try:
            names = client.local_changed(fid)
            client.revert(fid)
        except RemoteError as exc:
            log.error("mesh: %s has %d local change(s); revert failed: %s", fid, count, exc)
            return
        self.reverted += count
        self.last_revert = {"folder": fid, "count": count, "files": names, "at": self.wall()}
        log.warning("mesh: reverted %d local change(s) in receive-only %s: %s", count, fid,
                    ", ".join(names) or "?")

    # -- dead connections ---------------------------------------------------------------

    @property
    def suspects(self) -> bool:
        """True while a connected peer has missed a ping that is not yet confirmed."""
        return bool(self._misses)

    def probe(self, client: SyncthingClient, ping: Callable[[str, float], bool] | None = None,
              timeout: float = PROBE_TIMEOUT) -> list[str]:
        """Ping every connected peer's address once; drop connections that stopped answering
        while no byte arrived from them either. Returns the devices found dead this round.

        A peer that answers no ping although its connection works (bytes keep arriving, or it
        reconnected at once after being dropped) has ICMP filtered: it is not pinged again."""
        ping = ping or icmp_ping
        found: list[str] = []
        try:
            connections = client.connections().get("connections", {})
        except RemoteError:
            return found
        for did, conn in connections.items():
            if not conn.get("connected") or did in self._unpingable or did in self._dead:
                continue
            host = _host(conn.get("address"))
            if host is None:
                continue
            try:
                ok = ping(host, timeout)
            except OSError as exc:
                self.probe_state = f"unavailable: {exc.strerror or exc}"
                return found
            self.probe_state = "on"
            received = conn.get("inBytesTotal")
            if ok:
                self._misses.pop(did, None)
                self._recovered.discard(did)
                continue
            misses = self._misses[did] = self._misses.get(did, 0) + 1
            if misses == 1:
                self._bytes[did] = received
            if did in self._recovered or (misses > 1 and received != self._bytes.get(did)):
                self._unpingable.add(did)
                self._misses.pop(did, None)
                log.info("mesh: peer %s at %s answers no ping but its connection works: not "
                         "pinged any more", did[:7], host)
            elif misses >= PROBE_FAILURES:
                self._dead[did] = self.wall()
                self._dead_hosts[did] = host
                self._redial_at[did] = self.clock() + REDIAL_CHECK
                self._misses.pop(did, None)
                found.append(did)
                log.warning("mesh: peer %s at %s stopped answering while Syncthing still calls "
                            "it connected: dropping the connection so Syncthing redials",
                            did[:7], host)
                with contextlib.suppress(RemoteError):
                    client.redial(did)
        self._redial(client, connections, ping, timeout)
        return found

    def _redial(self, client: SyncthingClient, connections: dict[str, Any],
                ping: Callable[[str, float], bool], timeout: float) -> None:
        """Ask Syncthing to dial a peer dropped as unreachable as soon as it answers again."""
        for did, host in list(self._dead_hosts.items()):
            if connections.get(did, {}).get("connected") or \
                    self.clock() < self._redial_at.get(did, 0.0):
                continue
            self._redial_at[did] = self.clock() + REDIAL_CHECK
            try:
                answered = ping(host, timeout)
            except OSError:
                return
            if answered:
                log.info("mesh: peer %s at %s answers again: asking Syncthing to dial it now",
                         did[:7], host)
                with contextlib.suppress(RemoteError):
                    client.redial(did)

    def _forget_dead(self, did: str, conn: Connection) -> None:
        """A device dropped as dead that has a new connection is alive again."""
        dead_at = self._dead.get(did)
        started = _parse_time(conn.get("startedAt"))
        if dead_at is not None and conn.get("connected") and started is not None \
                and started >= dead_at - 1.0:
            del self._dead[did]
            self._dead_hosts.pop(did, None)
            self._redial_at.pop(did, None)
            self._recovered.add(did)


def _host(address: Any) -> str | None:
    """The IP of a connection's ``address`` (``1.2.3.4:22000``, ``[200::1]:22000``)."""
    text = str(address or "")
    host = text.rsplit(":", 1)[0].strip("[]") if ":" in text else ""
    try:
        return str(ipaddress.ip_address(host.split("%")[0]))
    except ValueError:
        return None


_ident = os.getpid() & 0xFFFF


def icmp_ping(host: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """One ICMP echo to `host` through an unprivileged datagram socket; True if answered.

    Raises OSError (PermissionError) when this user may not open ICMP sockets
    (``net.ipv4.ping_group_range``). A network or host unreachable error is False."""
    ip = ipaddress.ip_address(host)
    v6 = ip.version == 6
    family, proto = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6 else \
        (socket.AF_INET, socket.IPPROTO_ICMP)
    request, reply = (128, 129) if v6 else (8, 0)
    with socket.socket(family, socket.SOCK_DGRAM, proto) as sock:
        seq = int(time.monotonic() * 1000) & 0xFFFF
        payload = b"recorderpi"
        header = struct.pack("!BBHHH", request, 0, 0, _ident, seq)
        try:  # the kernel fills in the identifier and checksum of a datagram ICMP socket
            sock.sendto(header + payload, (host, 0))
        except OSError as exc:
            if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
                return False
            raise
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                return False
            try:
                data = sock.recv(2048)
            except OSError:
                return False
            if len(data) >= 8 and data[0] == reply and struct.unpack("!H", data[6:8])[0] == seq:
                return True


def doctor_check(client: SyncthingClient, own_id: str, degraded_after: float,
                 conflicts: list[str]) -> str:
    """`recorder doctor`'s mesh line: a summary, or RemoteError naming the problems."""
    tracker = HealthTracker(own_id, degraded_after)
    status = tracker.check(client, conflicts, revert=False)
    peers = status["peers"]
    up = sum(1 for p in peers if p["connected"])
    if status["problems"]:
        raise RemoteError("; ".join(status["problems"]))
    return f"{up} of {len(peers)} peer(s) connected, {len(status['folders'])} folder(s) in sync"
